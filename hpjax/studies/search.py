"""Optuna's samplers proposing whole populations: batched ask, one compiled program, tell.

Each round asks the sampler for ``search.population`` trials at once (TPE with a constant liar,
so a batch spreads out), trains them as one study through the runner into
``WORKDIR/round_NNN/`` (populations, early stopping, checkpoints, resume: everything a grid
study has), and tells Optuna each trial's best validation loss (and, for two objectives, its
parameter count). The Optuna study lives in ``sqlite:///WORKDIR/search.db`` (or
``config.optuna_storage``), so optuna-dashboard shows it; ``search.csv``, ``plots/search.png``
and ``search_report.md`` sum it up. A killed search resumes: the trials a round asked for are
kept in its ``asked.json`` and trained (or resumed) before anything new is asked, and each
trial is proposed by a sampler seeded from the search's seed and the trial's number, so a
resumed search asks exactly what the uninterrupted one would have asked.

The search space (``config.search.space``): a key -> ``(low, high, "log" | "linear")`` or a
tuple of choices, for any per-trial hyperparameter of
:data:`hpjax.engine.hparams.SEARCHABLE` and any ``model.KEY`` (an architecture: its own population).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import time
import warnings
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from hpjax import data as data_lib
from hpjax.config import as_tuple
from hpjax.engine import hparams, optim, tasks
from hpjax.errors import config_error
from hpjax.results import files, optuna_shared, optuna_storage
from hpjax.studies import search_outputs
from hpjax.studies.search_outputs import flat_space
from hpjax.study import loop
from hpjax.study import space as space_lib
from hpjax.study import spec as spec_lib
from hpjax.study.run import build_models, chosen_outputs, train_study
from hpjax.study.sections import StudySpec

try:
    import optuna
except ImportError:
    optuna = None

SAMPLERS = (
    "optuna_tpe",
    "optuna_qmc",
    "optuna_random",
    "optuna_cmaes",
    "optuna_gp",
    "optuna_nsga2",
)
OBJECTIVES = ("val_loss", "num_params")
MULTI_OBJECTIVE = ("optuna_tpe", "optuna_random", "optuna_qmc", "optuna_nsga2")


def _fail(key: str, value: Any, why: str) -> None:
    raise config_error(f"search.{key}", value, why)


def validate_search(config) -> dict[str, Any]:
    """Checks ``config.search`` before anything is trained; returns its distributions."""
    optuna_storage.require()
    s = config.search
    if s.sampler not in SAMPLERS:
        _fail("sampler", s.sampler, f"is unknown; allowed: {', '.join(SAMPLERS)}")
    if s.sampler == "optuna_gp" and importlib.util.find_spec("torch") is None:
        _fail(
            "sampler", s.sampler, "needs torch (Optuna's GP sampler runs on it): pip install torch"
        )
    for key in ("num_trials", "population", "heartbeat_s", "grace_s", "reconnect_s"):
        if isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < 1:
            _fail(key, s[key], "must be a positive integer")
    if isinstance(s.max_retry, bool) or not isinstance(s.max_retry, int) or s.max_retry < 0:
        _fail("max_retry", s.max_retry, "must be a non-negative integer")
    if s.grace_s <= s.heartbeat_s:
        _fail("grace_s", s.grace_s, f"must exceed search.heartbeat_s ({s.heartbeat_s})")
    if not isinstance(s.study_name, str) or not s.study_name:
        _fail("study_name", s.study_name, "must be a non-empty name")
    storage = str(config.optuna_storage)
    if storage.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        raise config_error(
            "optuna_storage",
            optuna_shared.shown(storage),
            'needs the PostgreSQL driver psycopg: pip install -e ".[optuna]"',
        )
    if optuna_shared.scheme(storage) == "mysql":
        raise config_error(
            "optuna_storage",
            optuna_shared.shown(storage),
            "is MySQL; search workers share PostgreSQL (several machines) or SQLite (one)",
        )
    objectives = as_tuple(s.objectives)
    if (
        not objectives
        or any(o not in OBJECTIVES for o in objectives)
        or objectives[0] != "val_loss"
    ):
        _fail("objectives", objectives, f"must be ('val_loss',) or {OBJECTIVES}")
    if len(objectives) > 1 and s.sampler not in MULTI_OBJECTIVE:
        _fail("sampler", s.sampler, f"has one objective; with two use {', '.join(MULTI_OBJECTIVE)}")
    space = flat_space(s.space)
    if not space:
        _fail("space", space, "is empty; give at least one key to search")
    optimizer = str(config.optimizer)
    factory_keys = tuple(optim.factory_keywords(optimizer)) if optim.is_factory(optimizer) else ()
    allowed = (*hparams.SEARCHABLE, *factory_keys, "model.KEY")
    return {key: _distribution(key, value, allowed) for key, value in space.items()}


def _distribution(key: str, value: Any, allowed: tuple[str, ...]):
    dim = space_lib.parse_dimension(key, value, where="search.space", allowed=allowed)
    if not dim.is_range:
        return optuna.distributions.CategoricalDistribution(dim.choices)
    log = dim.scale == "log"
    if dim.integer:
        return optuna.distributions.IntDistribution(int(dim.low), int(dim.high), log=log)
    return optuna.distributions.FloatDistribution(dim.low, dim.high, log=log)


def make_sampler(config, number: int = 0):
    """The sampler that proposes trial ``number``: a fresh one seeded from the search's seed and
    the number, so what it proposes depends only on the storage (the trials told and pending),
    never on how many times this process asked before. A resumed search therefore asks what
    the uninterrupted one asked. Sobol keeps the search's seed: its scrambling spans the
    sequence, and it takes its place in the sequence from the storage."""
    s = config.search
    seed = int(s.seed)
    if s.sampler == "optuna_qmc":
        with warnings.catch_warnings():  # experimental since Optuna 3.0, and stable in use
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed)
    seed = int(np.random.SeedSequence([seed, number]).generate_state(1)[0])
    if s.sampler == "optuna_tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True)
    if s.sampler == "optuna_random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.sampler == "optuna_gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=int(s.population))
    if s.sampler == "optuna_cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(2, int(s.population)))


def base_study(config) -> tuple[StudySpec, str]:
    """The study every round runs, parsed once: the config's keys but ``search`` (each round's
    trials are handed to it in memory, :func:`hpjax.study.spec.with_points`); and the search's
    Optuna storage (the rounds write none of their own)."""
    base = {k: v for k, v in config.to_dict().items() if k != "search"}
    study = spec_lib.parse(ml_collections.ConfigDict(base))
    rounds = dataclasses.replace(
        study,
        outputs=dataclasses.replace(study.outputs, optuna_storage="off"),
        config=dict(study.config) | {"optuna_storage": "off"},
    )
    return rounds, study.outputs.optuna_storage


@dataclasses.dataclass
class Worker:
    """One search worker: the shared Optuna study, its storage and this worker's settings."""

    study: Any  # optuna.Study
    url: str
    name: str
    config: Any
    distributions: dict
    objectives: tuple[str, ...]
    retry: optuna_shared.storage_retry.Reconnect | None  # a server's dropped connections
    known: set[int] = dataclasses.field(default_factory=set)  # numbers in this workdir's rounds

    @property
    def settings(self) -> Any:
        return self.config.search


def open_worker(config, workdir: str, setting: str, distributions: dict) -> Worker:
    """Joins (or creates) the search's Optuna study as the worker of ``workdir``."""
    s = config.search
    url = optuna_storage.storage_url(workdir, setting, database="search.db")
    record = {"storage": optuna_shared.shown(url), "study_name": str(s.study_name)}
    path = os.path.join(workdir, "worker.json")
    if os.path.exists(path):  # a workdir's rounds belong to one study
        earlier = search_outputs.read_worker(workdir)
        if {k: earlier.get(k) for k in record} != record:
            raise config_error(
                "search.study_name",
                str(s.study_name),
                f"with storage {record['storage']} is not the study this workdir ran "
                f"({earlier.get('study_name')!r} in {earlier.get('storage')}); choose another "
                "--workdir",
            )
    retry = None
    if optuna_shared.is_server(url):  # beats and polls at least every heartbeat while it waits
        retry = optuna_shared.reconnect(url, float(s.reconnect_s), float(s.heartbeat_s))
    storage = optuna_shared.open_storage(
        url, int(s.heartbeat_s), int(s.grace_s), int(s.max_retry), retry
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    objectives = tuple(as_tuple(s.objectives))
    with optuna_shared.ask_lock(url, str(s.study_name), retry):
        study = optuna.create_study(
            study_name=str(s.study_name),
            storage=storage,
            sampler=make_sampler(config),
            directions=["minimize"] * len(objectives),
            load_if_exists=True,
        )
    if len(study.directions) != len(objectives):
        raise config_error(
            "search.objectives",
            objectives,
            f"differ from those of the study {s.study_name!r} in {record['storage']} "
            f"({len(study.directions)} objective(s)); every worker of a study has the same",
        )
    name = optuna_shared.worker_id(workdir)
    worker = Worker(study, url, name, config, distributions, objectives, retry)
    files.write_json(
        path, {"worker": worker.name, **record, "search": search_outputs.setup(config)}
    )
    return worker


def _ask_round(worker: Worker, path: str) -> tuple[list[dict], optuna_shared.Heartbeat] | None:
    """Under the storage's lock: takes back this worker's own running trials that no round of
    its workdir holds (asked before a kill), fails trials of lost workers (queuing their
    retries), and asks for the rest of a population within the study's budget, each trial
    beating as soon as it is asked. Returns the round and its running heartbeat; an empty round
    when other workers' trials still run; None when the budget is spent and nothing runs."""
    s, study = worker.settings, worker.study
    with optuna_shared.ask_lock(worker.url, str(s.study_name), worker.retry):
        mine = _own_trials(worker)
        lost = optuna_shared.fail_lost(study, set(worker.distributions))
        if lost:
            logging.warning("search: trials %s lost their worker; queued to run again", lost)
        budget = optuna_shared.budget(study)
        new = min(int(s.population) - len(mine), budget.askable(int(s.num_trials)))
        if not mine and new <= 0:
            return None if budget.running == 0 and budget.waiting == 0 else ([], None)
        for _ in range(max(new, 0)):
            study.sampler = make_sampler(worker.config, len(study.get_trials(deepcopy=False)))
            with warnings.catch_warnings():  # "heartbeat ... used with Study.optimize": ours beats
                warnings.simplefilter("ignore", UserWarning)
                trial = study.ask(worker.distributions)
            _claim(study, trial, worker.name)
            mine.append(trial)
        heartbeat = optuna_shared.Heartbeat(study, [t._trial_id for t in mine])
    try:
        asked = [{"number": t.number, "trial_id": t._trial_id, "params": t.params} for t in mine]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        files.write_json(path, asked)
    except BaseException:
        heartbeat.stop()
        raise
    worker.known |= {a["number"] for a in asked}
    return asked, heartbeat


def _own_trials(worker: Worker) -> list:
    """This worker's running trials that no round of its workdir holds (asked before a kill),
    beating again; one killed while its parameters were drawn is abandoned."""
    study, mine = worker.study, []
    for trial in optuna_shared.own_running(study, worker.name):
        if trial.number in worker.known:
            continue
        if set(trial.params) != set(worker.distributions):
            optuna_shared.abandon(study, trial)
            continue
        if optuna_shared.has_heartbeat(study):
            study._storage.record_heartbeat(trial._trial_id)
        mine.append(trial)
    return mine


def _claim(study, trial, worker: str) -> None:
    """Beats for a trial just asked and names ``worker`` as its; a retry of a lost trial drops
    the rung values it inherited (its own come as it trains)."""
    storage = study._storage
    if optuna_shared.has_heartbeat(study):
        storage.record_heartbeat(trial._trial_id)
    storage.set_trial_user_attr(trial._trial_id, optuna_shared.WORKER, worker)
    for key in trial.user_attrs:
        if key.startswith(optuna_shared.RUNG.format("")):
            storage.set_trial_user_attr(trial._trial_id, key, None)


def _earlier_round(worker: Worker, path: str):
    """A round this workdir asked before: its trials, and a heartbeat when some still run here.
    None when another worker failed its trials after this one stopped (they are retried
    elsewhere or by this worker's next round)."""
    asked = files.read_json_file(path, "the trials a search round asked")
    worker.known |= {a["number"] for a in asked}
    study = worker.study
    with optuna_shared.ask_lock(worker.url, str(worker.settings.study_name), worker.retry):
        every = study.get_trials(deepcopy=False)
        trials = {t.number: t for t in every}
        for entry in asked:  # rounds asked before trial ids were kept
            entry.setdefault("trial_id", trials[entry["number"]]._trial_id)
        states = [trials[a["number"]] for a in asked]
        retried = optuna_shared.retried_numbers(every)
        shared = optuna_shared.has_heartbeat(study)
        if shared and any(optuna_shared.lost(t, retried) for t in states):
            logging.warning(
                "search: %s was taken over after this worker stopped; its trials run again "
                "as retries",
                os.path.dirname(path),
            )
            return None
        running = [t._trial_id for t in states if t.state.name == "RUNNING"]
        heartbeat = optuna_shared.Heartbeat(study, running) if running else None
    return asked, heartbeat


def _round_dirs(workdir: str) -> list[str]:
    """This workdir's rounds that were asked, in order."""
    names = sorted(n for n in os.listdir(workdir) if n.startswith("round_"))
    return [
        os.path.join(workdir, n)
        for n in names
        if os.path.exists(os.path.join(workdir, n, "asked.json"))
    ]


def _trial_dict(params: Mapping[str, Any]) -> dict:
    return {k: (float(v) if isinstance(v, float) else v) for k, v in params.items()}


def _tell(worker: Worker, asked: list[dict], rows: list[dict]) -> None:
    """Tells the study each of ``rows``' trials (one told before, or failed by another worker
    after this one's heartbeat came late, is left as it is)."""
    FAIL, PRUNED = optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED  # noqa: N806
    study, by_trial = worker.study, {int(r["trial"]): r for r in rows}
    for index, entry in enumerate(asked):
        row = by_trial.get(index)
        if row is None or study._storage.get_trial(entry["trial_id"]).state.is_finished():
            continue
        loss = row.get("best_val_loss")
        with optuna_shared.taken_over():
            study._storage.set_trial_user_attr(entry["trial_id"], optuna_shared.TOLD, True)
            if row["status"] == "diverged" or loss is None or not math.isfinite(loss):
                study.tell(entry["number"], state=FAIL, skip_if_finished=True)
            elif row["status"] == "pruned":
                study.tell(entry["number"], state=PRUNED, skip_if_finished=True)
            else:
                values = [float(loss)] + [float(row["num_params"])] * (len(worker.objectives) > 1)
                values = values if len(values) > 1 else values[0]
                study.tell(entry["number"], values, skip_if_finished=True)


class _RoundHook(loop.Hooks):
    """Tells each population's trials as it ends, shares ASHA's rung values with the study and,
    on a server, writes every evaluation's validation loss as Optuna's intermediate value (the
    dashboard shows the curves live)."""

    def __init__(self, worker: Worker, asked: list[dict]):
        self.worker = worker
        self.asked = asked
        self.live = optuna_shared.is_server(worker.url)

    def on_evaluation(self, run, state, rows) -> None:
        if not self.live:
            return
        storage = self.worker.study._storage
        for row in rows:
            if math.isfinite(row["val_loss"]):
                trial_id = self.asked[row["trial"]]["trial_id"]
                with optuna_shared.taken_over():
                    storage.set_trial_intermediate_value(trial_id, row["step"], row["val_loss"])

    def on_end(self, run, summary_rows) -> None:
        _tell(self.worker, self.asked, summary_rows)

    def rung_board(self, run) -> optuna_shared.RungValues:
        ids = {p: self.asked[t.index]["trial_id"] for p, t in enumerate(run.plan.trials)}
        return optuna_shared.RungValues(self.worker.study, ids)


def _train_round(worker: Worker, study: StudySpec, asked, heartbeat, round_dir, **kwargs):
    """Trains (or resumes) the round's trials as one study, each population told as it ends
    (:class:`_RoundHook`, also a population finished before a resume); returns its rows."""
    trials = [_trial_dict(a["params"]) for a in asked]
    try:
        rows = train_study(
            spec_lib.with_points(study, trials),
            round_dir,
            hooks=[_RoundHook(worker, asked)],
            **kwargs,
        )
    finally:
        if heartbeat is not None:
            heartbeat.stop()
    index = int(os.path.basename(round_dir).split("_")[1])
    return [
        {"round": index, "number": entry["number"], **entry["params"], **row}
        for entry, row in zip(asked, rows, strict=True)
    ]


def run_search(
    config,
    workdir: str,
    *,
    model=None,
    task: tasks.Task = tasks.CLASSIFICATION,
    dataset: data_lib.Dataset | None = None,
) -> list[dict]:
    """Runs the search ``config.search`` into ``workdir`` as one worker of its Optuna study
    (alone, or beside others started against the same storage and study name); returns one
    row per trial this worker trained."""
    distributions = validate_search(config)
    s = config.search
    if dataset is None:
        dataset = data_lib.load_dataset(config)
    # the first round's study is checked in full before the workdir is touched
    study, setting = base_study(config)
    first = spec_lib.with_points(study, [{k: _example(d) for k, d in distributions.items()}])
    spec_lib.check_data(first, dataset.num_train)
    chosen_outputs(first.outputs)
    build_models(first, dataset, model)
    optuna_shared.check_reachable(setting)  # a server that is down: one line, nothing written
    os.makedirs(workdir, exist_ok=True)
    train = {"model": model, "task": task, "dataset": dataset}
    with files.workdir_lock(workdir):
        worker = open_worker(config, workdir, setting, distributions)
        rows: list[dict] = []
        start = time.perf_counter()
        earlier = _round_dirs(workdir)
        for round_dir in earlier:
            kept = _earlier_round(worker, os.path.join(round_dir, "asked.json"))
            if kept is not None:
                rows += _train_round(worker, study, *kept, round_dir, **train)
        index, waiting = len(earlier), False
        while True:
            round_dir = os.path.join(workdir, f"round_{index:03d}")
            asked = _ask_round(worker, os.path.join(round_dir, "asked.json"))
            if asked is None:
                break
            if not asked[0]:  # the budget is taken; wait for the other workers' trials
                if not waiting:
                    logging.info(
                        "search: the budget of %d trials is taken; waiting for the trials other "
                        "workers run (a lost one is queued again and trained here)",
                        int(s.num_trials),
                    )
                waiting = True
                time.sleep(float(s.heartbeat_s))
                continue
            waiting = False
            logging.info("search round %d: %d trials asked of %s", index, len(asked[0]), s.sampler)
            rows += _train_round(worker, study, *asked, round_dir, **train)
            index += 1
        search_outputs.write_outputs(workdir, worker.study, rows, time.perf_counter() - start)
    return rows


def _example(distribution) -> Any:
    """A value inside ``distribution``, to check a round's config before asking."""
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return distribution.choices[0]
    return distribution.low
