"""A finished dense study's learning curves, as the scheduler replays read them.

A dense study trains every trial to its own end (its budget, its early stop or its divergence)
in a row of its own, so its ``metrics.jsonl`` holds every evaluation a scheduler could have
seen. :func:`read_dense` reads them into one :class:`Curves` per seed (the replay's arrival
queue; each seed is a replication of the whole search), with each trial's running best under
the study's own early-stopping rule (:mod:`hpjax.engine.early_stopping`), the value hpjax's ASHA
judges.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from hpjax.engine import early_stopping
from hpjax.errors import ConfigError
from hpjax.results import files
from hpjax.results.study import monitored_column

NOT_DENSE_STATUSES = ("pruned", "study_budget")


@dataclasses.dataclass(frozen=True)
class Curves:
    """The curves of one seed's trials, padded to the longest: ``[N, E]`` arrays."""

    seed: object
    trials: np.ndarray  # [N] trial numbers of the study
    steps: np.ndarray  # [N, E] optimizer steps at each evaluation (padding: the last step)
    values: np.ndarray  # [N, E] the monitored value (non-finite: +inf; padding: NaN)
    lengths: np.ndarray  # [N] evaluations recorded
    running_best: np.ndarray  # [N, E] the early-stopping best after each evaluation
    test: np.ndarray  # [N] the test value at the trial's dense early-stop point (NaN: none)

    @property
    def size(self) -> int:
        return len(self.trials)

    @property
    def last(self) -> np.ndarray:
        """[N] index of each trial's last evaluation."""
        return self.lengths - 1

    @property
    def final_steps(self) -> np.ndarray:
        """[N] optimizer steps each trial took in the dense study."""
        return self.steps[np.arange(self.size), self.last]

    @property
    def dense_best(self) -> np.ndarray:
        """[N] each trial's best monitored value over its whole curve."""
        return self.running_best[np.arange(self.size), self.last]


@dataclasses.dataclass(frozen=True)
class DenseStudy:
    """What a replay needs of a dense study: its curves by seed and its early-stopping rule."""

    workdir: str
    monitor: str
    groups: tuple[Curves, ...]
    patience: int
    min_delta: float
    min_steps: int
    max_steps: int  # the longest trial's budget in optimizer steps
    eval_every: int  # optimizer steps between evaluations (the first trial's)

    @property
    def num_trials(self) -> int:
        return sum(g.size for g in self.groups)


def _dense_or_refuse(workdir: str, saved: Mapping, summary: Sequence[Mapping]) -> None:
    if not summary:
        raise ConfigError(f"{workdir!r} holds no summary.csv: replay a finished study")
    if saved.get("scheduler", "none") != "none" or saved.get("slots", 0):
        raise ConfigError(
            f"{workdir!r} ran scheduler={saved.get('scheduler')!r} with "
            f"slots={saved.get('slots')}: a replay needs a dense study (scheduler 'none', "
            "slots 0: every trial trained to its own end), whose curves hold every evaluation "
            "a scheduler could have seen"
        )
    if saved.get("budget_trial_steps", 0):
        raise ConfigError(
            f"{workdir!r} ran with budget_trial_steps={saved['budget_trial_steps']}: a replay "
            "needs every trial's whole curve (budget_trial_steps 0)"
        )
    cut = [r["trial"] for r in summary if r.get("status") in NOT_DENSE_STATUSES]
    if cut:
        raise ConfigError(
            f"{workdir!r}: trials {cut[:5]} were cut before their end (pruned or stopped by a "
            "budget); a replay needs every trial's whole curve"
        )


def early_stopping_pass(
    values: np.ndarray, steps: np.ndarray, lengths: np.ndarray, *, patience, min_delta, min_steps
) -> tuple[np.ndarray, np.ndarray]:
    """The early-stopping rule over padded curves: ``[N, E]`` running best values and ``[N]``
    the index of the evaluation at which each trial stops (its last when it never does)."""
    num, length = values.shape
    state = early_stopping.init(num, np)
    best = np.full(values.shape, np.inf, np.float32)
    stop_at = lengths - 1
    stopped = np.zeros(num, bool)
    for k in range(length):
        evaluated = (k < lengths) & ~stopped
        state, _ = early_stopping.update(
            state,
            np.nan_to_num(values[:, k], nan=np.inf).astype(np.float32),
            steps[:, k].astype(np.int32),
            evaluated,
            patience=patience,
            min_delta=min_delta,
            min_steps=min_steps,
        )
        state = jax.tree.map(np.asarray, state)  # the rule is written with jnp
        best[:, k] = state.best_value
        newly = state.stopped & ~stopped & evaluated
        stop_at = np.where(newly, k, stop_at)
        stopped |= newly
    return best, stop_at


def _group(seed, rows, curves, monitor, rule) -> Curves:
    length = max(len(curves[r["trial"]]) for r in rows)
    num = len(rows)
    steps = np.zeros((num, length), np.int64)
    values = np.full((num, length), np.nan)
    lengths = np.zeros(num, np.int64)
    for i, row in enumerate(rows):
        curve = curves[row["trial"]]
        s = [int(c["step"]) for c in curve]
        v = [c.get(f"val_{monitor}") for c in curve]
        steps[i, : len(s)], steps[i, len(s) :] = s, s[-1]
        values[i, : len(v)] = [x if x is not None and math.isfinite(x) else np.inf for x in v]
        lengths[i] = len(s)
    best, _ = early_stopping_pass(values, steps, lengths, **rule)
    test = [r.get(f"test_{monitor}") for r in rows]
    return Curves(
        seed=seed,
        trials=np.array([r["trial"] for r in rows]),
        steps=steps,
        values=values,
        lengths=lengths,
        running_best=best,
        test=np.array([np.nan if t is None else float(t) for t in test]),
    )


def _budget_steps(saved: Mapping, summary: Sequence[Mapping], groups) -> int:
    """The longest trial's budget in optimizer steps (where the last rung must fall short of)."""
    taken = max(int(g.final_steps.max()) for g in groups)
    epochs = float(saved.get("num_epochs") or 0)
    if epochs <= 0:
        return max(int(saved.get("num_steps") or 0), taken)
    per_epoch = [r["steps"] / r["epochs"] for r in summary if r.get("epochs") and r.get("steps")]
    return max([taken, *(int(epochs * p) for p in per_epoch)])


def read_dense(workdir: str, monitor: str = "loss") -> DenseStudy:
    """The dense study in ``workdir``, one :class:`Curves` per seed; refused in one line when
    it is not dense (a scheduler, slots or a budget cut its trials) or has no such monitor."""
    saved, metrics, summary = files.read_workdir(workdir)
    summary = sorted(summary, key=lambda r: r["trial"])  # the arrival order of the study
    _dense_or_refuse(workdir, saved, summary)
    column = monitored_column(monitor)
    if column not in summary[0]:
        found = sorted(k[len("best_val_") :] for k in summary[0] if k.startswith("best_val_"))
        raise ConfigError(f"summary.csv has no {column!r}: monitor must be one of {found}")
    curves = files.curves_by_trial(metrics)
    missing = [r["trial"] for r in summary if r["trial"] not in curves]
    if missing:
        raise ConfigError(f"metrics.jsonl has no evaluation of trials {missing[:5]}")
    rule = {
        "patience": int(saved.get("patience", 0)),
        "min_delta": float(saved.get("min_delta", 0.0)),
        "min_steps": int(saved.get("min_steps", 0)),
    }
    # one arrival queue per population (as the live loop runs one ASHA each) and seed
    keys = list(dict.fromkeys((r.get("population"), r.get("seed")) for r in summary))
    groups = tuple(
        _group(
            k[1],
            [r for r in summary if (r.get("population"), r.get("seed")) == k],
            curves,
            monitor,
            rule,
        )
        for k in keys
    )
    eval_every = int(saved.get("eval_every") or 1)
    max_steps = _budget_steps(saved, summary, groups)
    return DenseStudy(workdir, monitor, groups, **rule, max_steps=max_steps, eval_every=eval_every)
