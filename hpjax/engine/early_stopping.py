"""Per-trial early stopping on a monitored validation value, as arrays updated inside jit.

The monitored value is the validation loss unless the task names a lower-is-better metric.

The guide: do not stop at the first bump up; stop only after the validation loss has failed to
improve by more than ``min_delta`` for ``patience`` evaluations in a row, and never before
``min_steps`` optimizer steps. ``patience == 0`` turns stopping off (the best point is still
tracked, so every trial still has an early-stop point to checkpoint).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class EarlyStopState:
    """Best point and patience counter of each trial (every field has a leading trial axis)."""

    best_value: jax.Array  # f32, the best monitored value; +inf before the first evaluation
    best_step: jax.Array  # i32, optimizer steps at the best evaluation
    bad_evaluations: jax.Array  # i32, evaluations since the last improvement
    stopped: jax.Array  # bool, stopped by patience


def init(num_trials: int, xp: Any = jnp) -> EarlyStopState:
    """The state before any evaluation; ``xp=numpy`` builds it on the host (where each
    ``jnp`` constructor would compile a program of its own)."""
    return EarlyStopState(
        best_value=xp.full((num_trials,), xp.inf, xp.float32),
        best_step=xp.zeros((num_trials,), xp.int32),
        bad_evaluations=xp.zeros((num_trials,), xp.int32),
        stopped=xp.zeros((num_trials,), bool),
    )


def update(
    state: EarlyStopState,
    value: jax.Array,
    step: jax.Array,
    evaluated: jax.Array,
    *,
    patience: int,
    min_delta: float,
    min_steps: int,
) -> tuple[EarlyStopState, jax.Array]:
    """Takes one evaluation; returns the new state and which trials improved.

    ``evaluated`` masks the trials this evaluation counts for (those still training); a
    non-finite value is never an improvement.
    """
    improved = evaluated & jnp.isfinite(value) & (value < state.best_value - min_delta)
    bad = jnp.where(improved, 0, state.bad_evaluations + evaluated.astype(jnp.int32))
    stop_now = evaluated & (patience > 0) & (bad >= patience) & (step >= min_steps)
    new_state = EarlyStopState(
        best_value=jnp.where(improved, value, state.best_value),
        best_step=jnp.where(improved, step, state.best_step),
        bad_evaluations=bad,
        stopped=state.stopped | stop_now,
    )
    return new_state, improved
