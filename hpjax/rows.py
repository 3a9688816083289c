"""Which trial each row of a compiled population holds, and the rows' state on the host.

The compiled program holds *rows*; ``positions[r]`` is the plan position of the trial in row
``r``, or -1 for a padding row (a frozen copy that makes the row count a multiple of the device
count). Compaction retires stopped trials to the host and places the others in a smaller
program; :meth:`RowLayout.full_state` gives every trial back in plan order.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

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


def concat_states(parts: list[population.PopulationState], tick) -> population.PopulationState:
    """Host states of some trials each, joined along the trial axis."""
    concat = lambda *xs: np.concatenate(xs)  # noqa: E731
    return population.PopulationState(
        trials=jax.tree.map(concat, *[p.trials for p in parts]),
        best_params=jax.tree.map(concat, *[p.best_params for p in parts]),
        early_stop=jax.tree.map(concat, *[p.early_stop for p in parts]),
        tick=np.asarray(tick),
    )


class RowLayout:
    """The rows of one population's program: placement, padding, retirement."""

    def __init__(self, full_hparams: population.TrialHParams, sharding: TrialSharding):
        self.full_hparams = full_hparams
        self.num_trials = full_hparams.num_trials
        self.sharding = sharding
        self.positions = np.arange(self.num_trials)
        self.retired: dict[int, Any] = {}  # plan position -> host slice of its final state
        self.hparams = full_hparams

    @property
    def real(self) -> np.ndarray:
        """Rows that hold a trial (not padding)."""
        return self.positions >= 0

    def place(self, full_state: population.PopulationState, alive) -> population.PopulationState:
        """The program's state for the trials ``alive`` (plan positions), padded and sharded."""
        alive = np.asarray(alive, int)
        pad = self.sharding.padded_size(len(alive)) - len(alive)
        rows = np.concatenate([alive, np.full(pad, alive[0])])
        self.positions = np.concatenate([alive, np.full(pad, -1)])
        hparams = take(self.full_hparams, rows)
        if pad:  # padding rows have no budget: frozen from the start
            hparams = hparams.replace(
                max_steps=jnp.where(jnp.asarray(self.positions) < 0, 0, hparams.max_steps)
            )
        self.hparams = self.sharding.put_rows(hparams)
        state = take_state(full_state, rows)
        return self.sharding.put_rows(state.replace(tick=jnp.asarray(full_state.tick)))

    def retire(self, full_state: population.PopulationState, positions) -> None:
        """Keeps the final host state of the trials at ``positions``."""
        for pos in positions:
            self.retired[int(pos)] = take_state(full_state, [int(pos)])

    def full_state(self, state: population.PopulationState) -> population.PopulationState:
        """All the plan's trials in plan order, on the host: live rows and retired ones."""
        host = self.sharding.to_host(state)
        slices = dict(self.retired)
        for r, pos in enumerate(self.positions):
            if pos >= 0:
                slices[pos] = take_state(host, [r])
        return concat_states([slices[p] for p in range(self.num_trials)], host.tick)

    def compact(
        self, state: population.PopulationState, active: np.ndarray, fraction: float
    ) -> population.PopulationState | None:
        """A smaller program's state once at most ``fraction`` of the rows train; else None."""
        live = int((active & self.real).sum())
        if live == 0 or live > fraction * len(self.positions):
            return None
        if self.sharding.padded_size(live) >= len(self.positions):
            return None
        full = self.full_state(state)
        self.retire(full, [p for r, p in enumerate(self.positions) if p >= 0 and not active[r]])
        return self.place(full, self.positions[active & self.real])

    def alive(self) -> list[int]:
        return [int(p) for p in self.positions if p >= 0]
