"""The schedulers a replay runs, each with its settings, and how a setting replays one seed.

A setting is written ``NAME:KEY=VALUE,KEY=VALUE``; several are separated by ``;``:

    asha:eta=3,grace=300; median:warmup=1000; patience:p=3; random:fraction=0.25

Steps (``grace``, ``warmup``) are optimizer steps. :func:`default_settings` gives a small grid
scaled to the study's budget and evaluation interval.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from hpjax.errors import ConfigError
from hpjax.studies.replay import simulate
from hpjax.studies.replay.curves import Curves, DenseStudy
from hpjax.study.sections import BudgetSpec


@dataclasses.dataclass(frozen=True)
class Scheduler:
    title: str
    keys: Mapping[str, float | None]  # its settings with their defaults (None: from the study)
    ordered: bool  # whether the trials' arrival order changes its decisions
    source: str  # whose decisions: hpjax's class, Optuna's pruner, or the rule written here


SCHEDULERS = {
    "asha": Scheduler("ASHA", {"eta": 3, "grace": None}, True, "hpjax.study.schedulers.Asha"),
    "successive_halving": Scheduler(
        "Synchronous successive halving",
        {"eta": 3, "grace": None, "rungs": 8},
        False,
        "hpjax.studies.replay.simulate.successive_halving",
    ),
    "optuna_asha": Scheduler(
        "Optuna successive halving",
        {"eta": 3, "grace": None},
        True,
        "optuna.pruners.SuccessiveHalvingPruner",
    ),
    "hyperband": Scheduler(
        "Hyperband", {"eta": 3, "grace": None}, True, "optuna.pruners.HyperbandPruner"
    ),
    "median": Scheduler(
        "Median stopping", {"warmup": None, "startup": 5}, True, "optuna.pruners.MedianPruner"
    ),
    "wilcoxon": Scheduler(
        "Wilcoxon pruning", {"p": 0.1, "startup": 2}, True, "optuna.pruners.WilcoxonPruner"
    ),
    "patience": Scheduler("Early stopping", {"p": 5}, False, "hpjax.engine.early_stopping"),
    "random": Scheduler(
        "Random search", {"fraction": 0.25}, True, "hpjax.studies.replay.simulate.random_search"
    ),
}


@dataclasses.dataclass(frozen=True)
class Setting:
    """One scheduler with its settings."""

    name: str
    params: tuple[tuple[str, float], ...]

    @property
    def scheduler(self) -> Scheduler:
        return SCHEDULERS[self.name]

    def get(self, key: str) -> float:
        return dict(self.params)[key]

    @property
    def label(self) -> str:
        """``ASHA (eta 3, grace 300)``."""
        shown = []
        for k, v in self.params:
            if self.name == "random" and k == "fraction":
                shown.append(f"{100 * v:g}% of the budget")
            elif self.name == "patience" and k == "p":
                shown.append(f"patience {v:g}")
            else:
                shown.append(f"{k} {v:g}")
        return f"{self.scheduler.title} ({', '.join(shown)})"

    @property
    def key(self) -> str:
        """``asha:eta=3,grace=300``: how it is written, and its name in ``replay.csv``."""
        return f"{self.name}:" + ",".join(f"{k}={v:g}" for k, v in self.params)


def _number(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not a number") from None


def parse_settings(text: str, study: DenseStudy) -> tuple[Setting, ...]:
    """The settings written in ``text`` (``;``-separated), each checked against ``study``."""
    out = []
    for item in (t.strip() for t in text.split(";")):
        if not item:
            continue
        name, _, rest = item.partition(":")
        name = name.strip()
        if name not in SCHEDULERS:
            raise ConfigError(f"scheduler {name!r} in {item!r}: known are {sorted(SCHEDULERS)}")
        keys = SCHEDULERS[name].keys
        given = {}
        for pair in (p.strip() for p in rest.split(",") if p.strip()):
            key, eq, value = pair.partition("=")
            if not eq or key.strip() not in keys:
                raise ConfigError(f"{item!r}: {name} takes {', '.join(keys)} (as KEY=VALUE)")
            given[key.strip()] = _number(value.strip(), item)
        out.append(_checked(Setting(name, _with_defaults(name, given, study)), study))
    out = list({s.key: s for s in out}.values())  # one of each (defaults may coincide)
    if not out:
        raise ConfigError(f"no scheduler setting in {text!r}: write NAME:KEY=VALUE,...")
    return tuple(out)


def check_before_training(text: str, budget: BudgetSpec) -> None:
    """Refuses bad ``text`` against the study about to train (its budget in steps; one in
    epochs is checked once trained), before anything compiles."""
    if not text.strip():
        return
    top = budget.num_steps if budget.num_epochs <= 0 else 2**31 - 1
    rule = (budget.patience, budget.min_delta, budget.min_steps)
    parse_settings(text, DenseStudy("", "loss", (), *rule, top, budget.eval_every))


def _snap(steps: float, study: DenseStudy) -> int:
    """``steps`` on the evaluation grid (at least one interval)."""
    every = max(study.eval_every, 1)
    return int(max(every, round(steps / every) * every))


def _with_defaults(name: str, given: Mapping[str, float], study: DenseStudy):
    values = dict(SCHEDULERS[name].keys) | dict(given)
    if "grace" in values and values["grace"] is None:
        values["grace"] = _snap(study.max_steps / values["eta"] ** 3, study)
    if name == "median" and values["warmup"] is None:
        values["warmup"] = _snap(study.max_steps / 8, study)
    return tuple((k, float(v)) for k, v in values.items())


def _checked(setting: Setting, study: DenseStudy) -> Setting:
    p = dict(setting.params)
    where = setting.key
    if "eta" in p and p["eta"] <= 1:
        raise ConfigError(f"{where}: eta must be above 1 (the factor between rungs)")
    if setting.name in ("optuna_asha", "hyperband") and p["eta"] != int(p["eta"]):
        raise ConfigError(f"{where}: Optuna's reduction factor eta must be a whole number")
    if "grace" in p and not 0 < p["grace"] < study.max_steps:
        raise ConfigError(f"{where}: grace must be within 1 and {study.max_steps - 1} steps")
    if setting.name == "random" and not 0 < p["fraction"] <= 1:
        raise ConfigError(f"{where}: fraction is a share of the dense budget, in (0, 1]")
    if setting.name == "wilcoxon" and not 0 < p["p"] < 1:
        raise ConfigError(f"{where}: p is the Wilcoxon test's p-value threshold, in (0, 1)")
    if setting.name == "patience":
        if p["p"] < 1 or p["p"] != int(p["p"]):
            raise ConfigError(f"{where}: p is a whole number of evaluations, at least 1")
        if study.patience and p["p"] > study.patience:
            raise ConfigError(
                f"{where}: the dense study stopped its trials after {study.patience} "
                "evaluations without improvement, so its curves cannot show a longer patience; "
                f"replay p <= {study.patience}, or train the dense study with patience 0"
            )
    return setting


def default_settings(study: DenseStudy) -> tuple[Setting, ...]:
    """A small grid scaled to ``study``: ASHA, synchronous successive halving, Optuna's
    successive halving and Hyperband at eta 2 and 3; median stopping after 1/8 and 1/4 of the
    budget; Wilcoxon at p 0.1 and 0.01; patience 2, 3, 5 (those shorter than the study's); and
    random search at 1/8, 1/4 and 1/2 of the dense budget."""
    top = study.max_steps
    text = [
        "asha:eta=3",
        f"asha:eta=3,grace={_snap(top / 9, study)}",
        f"asha:eta=2,grace={_snap(top / 16, study)}",
        "successive_halving:eta=3",
        f"successive_halving:eta=2,grace={_snap(top / 16, study)}",
        "optuna_asha:eta=3",
        "hyperband:eta=3",
        f"median:warmup={_snap(top / 8, study)}",
        f"median:warmup={_snap(top / 4, study)}",
        "wilcoxon:p=0.1",
        "wilcoxon:p=0.01",
    ]
    text += [f"patience:p={p}" for p in (2, 3, 5) if not study.patience or p < study.patience]
    text += [f"random:fraction={f}" for f in (0.125, 0.25, 0.5)]
    return parse_settings(";".join(text), study)


def run_setting(
    setting: Setting, curves: Curves, order: np.ndarray, slots: int, study: DenseStudy
) -> simulate.Run:
    """``setting`` replayed on one seed's ``curves`` with trials arriving in ``order``."""
    p, name = dict(setting.params), setting.name
    if name == "asha":
        judge = simulate.AshaJudge(curves, int(p["grace"]), p["eta"], study.max_steps)
        return simulate.run_rows(curves, order, slots, judge)
    if name == "successive_halving":
        return simulate.successive_halving(
            curves, int(p["grace"]), p["eta"], int(p["rungs"]), study.max_steps
        )
    if name == "patience":
        return simulate.patience(curves, int(p["p"]), study.min_delta, study.min_steps)
    if name == "random":
        return simulate.random_search(curves, order, p["fraction"] * curves.final_steps.sum())
    objective = "mean" if name == "wilcoxon" else "best"
    judge = simulate.OptunaJudge(curves, optuna_pruner(setting, study), objective)
    return simulate.run_rows(curves, order, slots, judge)


def optuna_pruner(setting: Setting, study: DenseStudy):
    """The Optuna pruner of ``setting`` (Optuna is the ``optuna`` extra)."""
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            f"{setting.key} replays Optuna's pruner: install the extra (pip install -e "
            "'.[optuna]'), or replay only asha, successive_halving, patience and random"
        ) from None
    p = dict(setting.params)
    pruners = optuna.pruners
    if setting.name == "optuna_asha":
        return pruners.SuccessiveHalvingPruner(
            min_resource=int(p["grace"]), reduction_factor=int(p["eta"])
        )
    if setting.name == "hyperband":
        return pruners.HyperbandPruner(
            min_resource=int(p["grace"]),
            max_resource=study.max_steps,
            reduction_factor=int(p["eta"]),
        )
    if setting.name == "median":
        return pruners.MedianPruner(
            n_startup_trials=int(p["startup"]), n_warmup_steps=int(p["warmup"])
        )
    with warnings.catch_warnings():  # "WilcoxonPruner is experimental"
        warnings.simplefilter("ignore")
        return pruners.WilcoxonPruner(p_threshold=p["p"], n_startup_steps=int(p["startup"]))


def describe(settings: Sequence[Setting]) -> str:
    """Whose decisions each scheduler replays, for the report."""
    names = dict.fromkeys(s.name for s in settings)
    return "; ".join(f"{SCHEDULERS[n].title}: `{SCHEDULERS[n].source}`" for n in names)
