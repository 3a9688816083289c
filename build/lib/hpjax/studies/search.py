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
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from hpjax import data as data_lib
from hpjax.config import as_tuple
from hpjax.engine import hparams, tasks
from hpjax.errors import config_error
from hpjax.report import figures, markdown
from hpjax.results import files, optuna_storage
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
    for key in ("num_trials", "population"):
        if isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < 1:
            _fail(key, s[key], "must be a positive integer")
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
    return {key: _distribution(key, value) for key, value in space.items()}


def flat_space(space) -> dict[str, Any]:
    """The search space with the nested ``model`` section as ``model.KEY`` entries."""
    space = space.to_dict() if hasattr(space, "to_dict") else dict(space)
    model = space.pop("model", None) or {}
    return space | {f"model.{k}": v for k, v in dict(model).items()}


def _distribution(key: str, value: Any):
    dim = space_lib.parse_dimension(
        key, value, where="search.space", allowed=(*hparams.SEARCHABLE, "model.KEY")
    )
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


def _asked(study, config, distributions: dict, first: int, count: int, path: str) -> list[dict]:
    """The round's trials, numbers ``first`` to ``first + count - 1``: kept from ``asked.json``
    when resuming, else asked now and kept. Trials a killed run had asked before it could
    write ``asked.json`` are in the storage already: they are taken as they are."""
    if os.path.exists(path):
        return files.read_json_file(path, "the trials a search round asked")
    pending = {
        t.number: t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if first <= t.number < first + count
    }
    asked = []
    for number in range(first, first + count):
        trial = pending.get(number)
        if trial is None or set(trial.params) != set(distributions):
            if trial is not None:  # killed while its parameters were drawn
                study.tell(number, state=optuna.trial.TrialState.FAIL)
            study.sampler = make_sampler(config, len(study.get_trials(deepcopy=False)))
            trial = study.ask(distributions)
        asked.append({"number": trial.number, "params": trial.params})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    files.write_json(path, asked)
    return asked


def _trial_dict(params: Mapping[str, Any]) -> dict:
    return {k: (float(v) if isinstance(v, float) else v) for k, v in params.items()}


def _tell(study, asked: list[dict], rows: list[dict], objectives: tuple[str, ...]) -> None:
    finished = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    for entry, row in zip(asked, rows, strict=True):
        if entry["number"] in finished:
            continue
        loss = row.get("best_val_loss")
        if row["status"] == "diverged" or loss is None or not math.isfinite(loss):
            study.tell(entry["number"], state=optuna.trial.TrialState.FAIL)
            continue
        values = [float(loss)] + [float(row["num_params"])] * (len(objectives) > 1)
        study.tell(entry["number"], values if len(values) > 1 else values[0])


def run_search(
    config,
    workdir: str,
    *,
    model=None,
    task: tasks.Task = tasks.CLASSIFICATION,
    dataset: data_lib.Dataset | None = None,
) -> list[dict]:
    """Runs the search ``config.search`` into ``workdir``; returns one row per trial."""
    distributions = validate_search(config)
    s = config.search
    objectives = tuple(as_tuple(s.objectives))
    if dataset is None:
        dataset = data_lib.load_dataset(config)
    # the first round's study is checked in full before the workdir is touched
    study, setting = base_study(config)
    first = spec_lib.with_points(study, [{k: _example(d) for k, d in distributions.items()}])
    spec_lib.check_data(first, dataset.num_train)
    chosen_outputs(first.outputs)
    build_models(first, dataset, model)
    os.makedirs(workdir, exist_ok=True)
    with files.workdir_lock(workdir):
        storage = optuna_storage.storage_url(workdir, setting, database="search.db")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        optuna_study = optuna.create_study(
            study_name="search",
            storage=storage,
            sampler=make_sampler(config),
            directions=["minimize"] * len(objectives),
            load_if_exists=True,
        )
        rows: list[dict] = []
        start = time.perf_counter()
        done, index, first_number = 0, 0, 0
        while done < int(s.num_trials):
            count = min(int(s.population), int(s.num_trials) - done)
            round_dir = os.path.join(workdir, f"round_{index:03d}")
            asked = _asked(
                optuna_study,
                config,
                distributions,
                first_number,
                count,
                os.path.join(round_dir, "asked.json"),
            )
            trials = [_trial_dict(a["params"]) for a in asked]
            logging.info("search round %d: %d trials asked of %s", index, len(trials), s.sampler)
            round_rows = train_study(
                spec_lib.with_points(study, trials),
                round_dir,
                model=model,
                task=task,
                dataset=dataset,
            )
            _tell(optuna_study, asked, round_rows, objectives)
            for entry, row in zip(asked, round_rows, strict=True):
                rows.append({"round": index, "number": entry["number"], **entry["params"], **row})
            done += len(asked)
            first_number = max(a["number"] for a in asked) + 1
            index += 1
        wall = time.perf_counter() - start
        write_outputs(workdir, config, optuna_study, rows, objectives, wall)
    return rows


def _example(distribution) -> Any:
    """A value inside ``distribution``, to check a round's config before asking."""
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return distribution.choices[0]
    return distribution.low


def _objective_values(row: Mapping, objectives: tuple[str, ...]) -> list[float | None]:
    values = [row.get("best_val_loss")]
    if len(objectives) > 1:
        values.append(row.get("num_params"))
    return values


def write_outputs(workdir, config, study_, rows, objectives, wall_s: float) -> dict[str, str]:
    """``search.csv``, ``plots/search.png`` and ``search_report.md``."""
    best_so_far = math.inf
    for row in sorted(rows, key=lambda r: r["number"]):
        loss = row.get("best_val_loss")
        if row.get("status") != "diverged" and loss is not None and math.isfinite(loss):
            best_so_far = min(best_so_far, loss)
        row["best_so_far"] = best_so_far if math.isfinite(best_so_far) else None
    space = list(flat_space(config.search.space))
    columns = ["number", "round", *space, "status", "best_val_loss", "best_so_far", "best_step"]
    columns += [c for c in ("test_loss", "test_accuracy", "num_params") if c in rows[0]]
    paths = {"csv": os.path.join(workdir, "search.csv")}
    files.write_csv(paths["csv"], sorted(rows, key=lambda r: r["number"]), columns)
    pareto = []
    if len(objectives) > 1:
        front = {t.number for t in study_.best_trials}
        pareto = [r for r in rows if r["number"] in front]
    paths["plot"] = plot_search(rows, pareto, os.path.join(workdir, "plots", "search.png"))
    ok = [r for r in rows if r.get("best_so_far") is not None and r["status"] != "diverged"]
    best = min(ok, key=lambda r: r["best_val_loss"]) if ok else None
    s = config.search
    lines = [
        f"# Search: {s.sampler}, {len(rows)} trials in populations of {s.population}",
        "",
        f"{len(rows)} trials asked of Optuna's `{s.sampler}` {s.population} at a time, each "
        f"batch trained as one hpjax study (`round_NNN/`), in {wall_s:.1f} s. Space: "
        + ", ".join(
            f"`{k}` {tuple(as_tuple(v))}" for k, v in flat_space(config.search.space).items()
        )
        + ". The Optuna study: `search.db` (`optuna-dashboard sqlite:///"
        + os.path.abspath(os.path.join(workdir, "search.db"))
        + "`).",
        "",
    ]
    if best is not None:
        lines += [
            f"**Best trial:** number {best['number']} (round {best['round']}): "
            + ", ".join(f"{k}={best.get(k)}" for k in space)
            + f": best validation loss {best['best_val_loss']:.4g}"
            + (f", test accuracy {best['test_accuracy']:.4g}" if "test_accuracy" in best else "")
            + ".",
            "",
        ]
    if pareto:
        lines += [
            "## Pareto front (validation loss against parameter count)",
            "",
            markdown.markdown_table(sorted(pareto, key=lambda r: r["num_params"]), columns),
        ]
    top = sorted(ok, key=lambda r: r["best_val_loss"])[:10]
    lines += ["## The ten best trials", "", markdown.markdown_table(top, columns)]
    lines += ["## Plot", "", "![search](plots/search.png)", ""]
    paths["report"] = files.write_markdown(os.path.join(workdir, "search_report.md"), lines)
    return paths


def plot_search(rows, pareto, path: str) -> str:
    """Left: each trial's best validation loss and the best so far, in the order asked. Right,
    with two objectives: validation loss against parameter count, the Pareto front joined."""
    fig = figures.new_figure((12.0, 4.8) if pareto else (8.0, 5.0))
    axes = fig.subplots(1, 2) if pareto else [fig.add_subplot()]
    ordered = sorted(rows, key=lambda r: r["number"])
    ax = axes[0]
    xs = [r["number"] for r in ordered if r.get("best_so_far") is not None]
    ok = [r for r in ordered if r["status"] != "diverged" and r.get("best_so_far") is not None]
    ax.scatter([r["number"] for r in ok], [r["best_val_loss"] for r in ok], s=12, label="trial")
    ax.step(
        xs,
        [r["best_so_far"] for r in ordered if r.get("best_so_far") is not None],
        where="post",
        color="black",
        label="best so far",
    )
    ax.set_xlabel("trial (order asked)")
    ax.set_ylabel("best validation loss")

    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    if pareto:
        ax = axes[1]
        ax.scatter(
            [r["num_params"] for r in ok],
            [r["best_val_loss"] for r in ok],
            s=12,
            color="grey",
            label="trial",
        )
        front = sorted(pareto, key=lambda r: r["num_params"])
        ax.plot(
            [r["num_params"] for r in front],
            [r["best_val_loss"] for r in front],
            "o-",
            color="C3",
            label="Pareto front",
        )
        ax.set_xscale("log")

        ax.set_xlabel("parameters")
        ax.set_ylabel("best validation loss")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    return figures.save_figure(fig, path)
