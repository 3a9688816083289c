"""Schedulers run after the fact on a dense study's curves: what each would have let train.

A pruned trial's curve is simply cut where the scheduler stopped it, so a replay is exact: it
needs no training, only the order in which trials arrive and how many train at once.

:func:`run_rows` is hpjax's host loop reduced to its decisions (:mod:`hpjax.study.loop`): ``slots``
rows take trials in arrival order; at each tick the running trials are judged in row order (a
trial at its last evaluation is not: it ends), ended rows take the next trials, and every row
advances one evaluation. Who judges is a :class:`Judge`: hpjax's own :class:`Asha` (the live
scheduler's class, so the replay is its live behaviour) or one of Optuna's pruners driven
through an in-memory study by ask and tell. The order-free rules (synchronous successive
halving, patience, random search at a budget) are plain functions over the curves.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Protocol

import numpy as np

from hpjax.studies.replay.curves import Curves, early_stopping_pass
from hpjax.study.schedulers import Asha


@dataclasses.dataclass(frozen=True)
class Run:
    """What one scheduler let each trial of a group train (indices into the group's curves)."""

    seen: np.ndarray  # [N] index of the last evaluation each trial reached (-1: never started)
    completed: np.ndarray  # [N] trials that trained to their curve's end (or patience cut)
    pruned_at: dict[int, int]  # trial index -> the step at which it was stopped


class Judge(Protocol):
    """One scheduler's decisions as the rows report each trial's evaluations."""

    def start(self, trial: int) -> None:
        """``trial`` takes a row."""

    def prune(self, trial: int, k: int) -> int | None:
        """After ``trial``'s evaluation ``k`` (not its last): the step at which it is pruned,
        or None when it goes on."""

    def complete(self, trial: int) -> None:
        """``trial`` reached its last evaluation."""


class AshaJudge:
    """hpjax's live ASHA (:class:`hpjax.study.schedulers.Asha`), judging the running best."""

    def __init__(self, curves: Curves, min_steps: int, eta: float, max_steps: int):
        self.curves = curves
        self.asha = Asha(min_steps, eta, max_steps)

    def start(self, trial: int) -> None:
        pass

    def prune(self, trial: int, k: int) -> int | None:
        c = self.curves
        return self.asha.judge(trial, int(c.steps[trial, k]), float(c.running_best[trial, k]))

    def complete(self, trial: int) -> None:
        pass


class OptunaJudge:
    """One of Optuna's pruners, as a user's objective would drive it: each evaluation's
    monitored value reported at its step from the first after training (step 0, the same
    untrained model for every rate of a seed, is not), ``should_prune`` asked at each (values
    of evaluations a trial passed before its first judgement are reported first), and the trial
    told complete with its best value (or, for the Wilcoxon pruner, whose objective is the mean
    of what it was told, their mean), or pruned."""

    def __init__(self, curves: Curves, pruner: Any, objective: str = "best"):
        import optuna  # an optional extra: only these replays need it

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        self.curves = curves
        self.study = optuna.create_study(
            study_name="replay",
            direction="minimize",
            pruner=pruner,
            sampler=optuna.samplers.RandomSampler(seed=0),  # replayed trials sample nothing
        )
        self.objective = objective  # "best", or "mean" of the reported values (Wilcoxon's)
        self.trials: dict[int, Any] = {}
        self.reported: dict[int, int] = {}

    def start(self, trial: int) -> None:
        self.trials[trial] = self.study.ask()
        self.reported[trial] = 0  # not the evaluation before training, as an objective would

    def _report_to(self, trial: int, k: int) -> None:
        c, live = self.curves, self.trials[trial]
        for j in range(self.reported[trial] + 1, k + 1):
            value = float(c.values[trial, j])
            live.report(value if math.isfinite(value) else math.inf, int(c.steps[trial, j]))
        self.reported[trial] = k

    def prune(self, trial: int, k: int) -> int | None:
        self._report_to(trial, k)
        with warnings.catch_warnings():  # Wilcoxon warns of steps its best trial lacks (curves
            warnings.simplefilter("ignore", UserWarning)  # cut by patience differ in length)
            if not self.trials[trial].should_prune():
                return None
        self.study.tell(self.trials[trial], state=self.optuna.trial.TrialState.PRUNED)
        return int(self.curves.steps[trial, k])

    def complete(self, trial: int) -> None:
        c = self.curves
        self._report_to(trial, int(c.last[trial]))
        value = float(c.dense_best[trial])
        if self.objective == "mean":
            value = float(np.mean(c.values[trial, 1 : c.lengths[trial]]))
        self.study.tell(self.trials[trial], value if math.isfinite(value) else math.inf)


def run_rows(curves: Curves, order: np.ndarray, slots: int, judge: Judge) -> Run:
    """Trials arrive in ``order`` (indices into ``curves``) into ``slots`` rows, as hpjax's loop
    runs an adaptive study; ``judge`` decides at each tick."""
    num = curves.size
    queue = iter(order.tolist())
    seen = np.full(num, -1)
    completed = np.zeros(num, bool)
    pruned_at: dict[int, int] = {}
    rows: list[int | None] = [None] * min(slots, num)

    def take(r: int) -> None:
        trial = next(queue, None)
        rows[r] = trial
        if trial is not None:
            seen[trial] = 0
            judge.start(trial)
            if last[trial] == 0:  # evaluated once, before any training: nothing to judge
                completed[trial] = True
                judge.complete(trial)

    last = curves.last
    for r in range(len(rows)):
        take(r)
    while any(t is not None for t in rows):
        for t in rows:  # the scheduler, in row order, over the trials still training
            if t is not None and seen[t] < last[t]:
                step = judge.prune(t, int(seen[t]))
                if step is not None:
                    pruned_at[t] = step
        for r, t in enumerate(rows):  # ended rows take the next trials
            if t is not None and (t in pruned_at or completed[t]):
                take(r)
        for t in rows:  # one window: every row to its next evaluation
            if t is not None and seen[t] < last[t]:
                seen[t] += 1
                if seen[t] == last[t]:  # its last evaluation: it ends, told before others go on
                    completed[t] = True
                    judge.complete(t)
    return Run(seen, completed, pruned_at)


def successive_halving(
    curves: Curves, min_steps: int, eta: float, max_rungs: int, max_steps: int
) -> Run:
    """Synchronous successive halving: every trial trains to the first rung; the best
    ``1/eta`` of those that got there (by running best) go on to the next, ``eta`` times
    further, and so on; the survivors of the last rung train to their end. A trial whose curve
    ends before a rung completes there. Order-free."""
    num = curves.size
    seen = curves.last.copy()
    completed = np.ones(num, bool)
    pruned_at: dict[int, int] = {}
    alive = np.arange(num)
    rung = float(min_steps)
    for _ in range(max_rungs):
        steps = int(round(rung))
        if steps >= max_steps:  # as ASHA's: no rung at the budget's end, where trials finish
            break
        reached = [t for t in alive if curves.steps[t, curves.last[t]] >= steps]
        if len(reached) <= 1:
            break
        at = {t: int(np.argmax(curves.steps[t, : curves.lengths[t]] >= steps)) for t in reached}
        value = {t: curves.running_best[t, at[t]] for t in reached}
        keep = max(1, int(math.floor(len(reached) / eta)))
        ranked = sorted(reached, key=lambda t: (value[t], t))
        for t in ranked[keep:]:
            seen[t], completed[t] = at[t], False
            pruned_at[int(t)] = int(curves.steps[t, at[t]])
        alive = np.array([t for t in alive if t not in pruned_at])
        rung *= eta
    return Run(seen, completed, pruned_at)


def patience(curves: Curves, patience: int, min_delta: float, min_steps: int) -> Run:
    """Every trial trained with early stopping at ``patience`` evaluations (hpjax's rule):
    its curve cut where it would have stopped. Order-free."""
    _, stop_at = early_stopping_pass(
        curves.values,
        curves.steps,
        curves.lengths,
        patience=patience,
        min_delta=min_delta,
        min_steps=min_steps,
    )
    cut = {int(t): int(curves.steps[t, stop_at[t]]) for t in np.flatnonzero(stop_at < curves.last)}
    return Run(stop_at.copy(), np.ones(curves.size, bool), cut)


def random_search(curves: Curves, order: np.ndarray, budget_steps: float) -> Run:
    """The first trials of ``order``, each trained to its end, while their steps fit in
    ``budget_steps`` (at least one trial)."""
    spent = np.cumsum(curves.final_steps[order])
    count = max(1, int((spent <= budget_steps + 1e-9).sum()))
    chosen = order[:count]
    seen = np.full(curves.size, -1)
    seen[chosen] = curves.last[chosen]
    completed = np.zeros(curves.size, bool)
    completed[chosen] = True
    return Run(seen, completed, {})
