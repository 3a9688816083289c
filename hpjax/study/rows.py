"""Which trial each row of a compiled population holds: the row policy of the host loop.

The compiled program holds *rows*; ``positions[r]`` is the plan position of the trial in row
``r``, or -1 for an empty row (padding to a multiple of the device count, or a row whose trial
ended with nothing left to take its place). Empty rows have no budget: they are frozen.

One policy serves every study:
- a plain study gives every trial a row (``rows`` = its trial count); once at most
  ``shrink_fraction`` of the rows still train, the loop continues in a smaller program of just
  those (compaction; 0 = never);
- an adaptive study has fewer rows than trials: a row whose trial ended takes the next pending
  trial (a queue), and once the queue is empty and at most half the rows train it shrinks too.

The shapes of a program never change between two shrinks, so nothing recompiles; a checkpoint
always holds the full row count, so that every checkpoint of a population has the same shapes.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from hpjax.engine import hparams as hparams_lib
from hpjax.engine import population
from hpjax.engine.sharding import TrialSharding


def take(tree, rows) -> Any:
    """The rows ``rows`` of every leaf's leading axis."""
    idx = np.asarray(rows)
    return jax.tree.map(lambda a: a[idx], tree)


def take_state(state: population.PopulationState, rows) -> population.PopulationState:
    """The per-trial parts of ``state`` at ``rows`` (the shared tick is kept)."""
    return state.replace(
        trials=take(state.trials, rows),
        best_params=take(state.best_params, rows),
        early_stop=take(state.early_stop, rows),
    )


class RowLayout:
    """The rows of one population's program, the queue of pending trials, the ended ones."""

    def __init__(
        self,
        full_hparams: population.TrialHParams,
        sharding: TrialSharding,
        rows: int,
        shrink_fraction: float,
    ):
        self.full = {k: np.asarray(getattr(full_hparams, k)) for k in hparams_lib.NAMES}
        # an optax factory's per-trial keywords: columns beside hpjax's own, by their names
        self.optimizer_keys = tuple(full_hparams.optimizer_values)
        self.full |= {k: np.asarray(v) for k, v in full_hparams.optimizer_values.items()}
        self.num_trials = len(self.full["seed"])
        self.sharding = sharding
        self.shrink_fraction = shrink_fraction
        rows = min(rows or self.num_trials, self.num_trials)
        self.full_rows = sharding.padded_size(rows)
        self.positions = np.full(self.full_rows, -1)
        self.positions[:rows] = np.arange(rows)
        self.next = rows
        self.columns = {k: v[np.maximum(self.positions, 0)].copy() for k, v in self.full.items()}
        self.columns["max_steps"][self.positions < 0] = 0
        self.finished: list[int] = []  # trials whose final state is in the loop's store
        self.pruned: dict[int, int] = {}  # trial -> the rung (steps) it was pruned at
        self.budget_stopped: list[int] = []  # trials stopped when the study's budget ran out
        self.push()

    @property
    def real(self) -> np.ndarray:
        """Rows that hold a trial."""
        return self.positions >= 0

    @property
    def pending(self) -> int:
        """Trials that have not started yet."""
        return self.num_trials - self.next

    def push(self) -> None:
        """The rows' hyperparameters onto the devices."""
        self.hparams = self.sharding.put_rows(self.make_hparams(self.columns))

    def make_hparams(self, columns: dict[str, np.ndarray]) -> population.TrialHParams:
        """The hyperparameters of ``columns`` (the rows' values, key -> [rows])."""
        own = {k: v for k, v in columns.items() if k not in self.optimizer_keys}
        values = {k: columns[k] for k in self.optimizer_keys}
        return population.make_hparams(**own, optimizer_values=values)

    def start(self, rows: np.ndarray, allowed: bool) -> np.ndarray:
        """The next pending trials take ``rows`` (those left over stay empty); which did."""
        started = np.zeros(len(self.positions), bool)
        for r in np.flatnonzero(rows):
            if allowed and self.next < self.num_trials:
                self.positions[r], self.next = self.next, self.next + 1
                for k, v in self.full.items():
                    self.columns[k][r] = v[self.positions[r]]
                started[r] = True
            else:
                self.positions[r] = -1
                self.columns["max_steps"][r] = 0
        self.push()
        return started

    def alive(self) -> list[int]:
        return [int(p) for p in self.positions if p >= 0]

    def shrink(self, state: population.PopulationState, active: np.ndarray):
        """A program of just the training rows (padded to the device count) once the queue is
        empty and at most ``shrink_fraction`` of the rows train; else None."""
        live = np.flatnonzero(active & self.real)
        size = self.sharding.padded_size(len(live))
        if self.pending or not len(live) or size >= len(self.positions):
            return None
        if len(live) > self.shrink_fraction * len(self.positions):
            return None
        keep = np.concatenate([live, np.full(size - len(live), live[0])])
        self.positions = np.concatenate([self.positions[live], np.full(size - len(live), -1)])
        self.columns = {k: v[keep].copy() for k, v in self.columns.items()}
        self.columns["max_steps"][self.positions < 0] = 0
        self.push()
        host = take_state(self.sharding.to_host(state), keep)
        return self.sharding.put_rows(host.replace(tick=np.asarray(state.tick)))

    def full_size(self, host_state: population.PopulationState) -> population.PopulationState:
        """``host_state`` of a shrunk program at the full row count (its extra rows copies of
        row 0, empty), as every checkpoint holds it."""
        pad = self.full_rows - len(self.positions)
        if not pad:
            return host_state
        rows = np.r_[np.arange(len(self.positions)), [0] * pad]
        return take_state(host_state, rows).replace(tick=np.asarray(host_state.tick))

    def host_state(self) -> dict:
        """The layout as JSON, at its full row count (a shrunk program's extra rows empty)."""
        pad = self.full_rows - len(self.positions)
        columns = {k: np.concatenate([v, np.repeat(v[:1], pad)]) for k, v in self.columns.items()}
        columns["max_steps"][len(self.positions) :] = 0
        return {
            "positions": self.positions.tolist() + [-1] * pad,
            "next": self.next,
            "columns": {k: v.tolist() for k, v in columns.items()},
            "finished": list(self.finished),
            "pruned": dict(self.pruned),
            "budget_stopped": list(self.budget_stopped),
        }

    def load(self, host: dict) -> None:
        """The layout of a checkpoint (at the full row count)."""
        self.positions = np.asarray(host["positions"], int)
        self.next = int(host["next"])
        self.columns = {k: np.asarray(v, self.full[k].dtype) for k, v in host["columns"].items()}
        self.finished = list(host["finished"])
        self.pruned = {int(k): int(v) for k, v in host["pruned"].items()}
        self.budget_stopped = list(host["budget_stopped"])
        self.push()
