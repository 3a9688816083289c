"""Per-trial early stopping on the validation loss, as arrays updated inside jit.

The guide: do not stop at the first bump up; stop only after the validation loss has failed to
improve by more than ``min_delta`` for ``patience`` evaluations in a row, and never before
``min_steps`` optimizer steps. ``patience == 0`` turns stopping off (the best point is still
tracked, so every trial still has an early-stop point to checkpoint).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class EarlyStopState:
    """Best point and patience counter of each trial (every field has a leading trial axis)."""

    best_val_loss: jax.Array  # f32, +inf before the first evaluation
    best_val_accuracy: jax.Array  # f32
    best_step: jax.Array  # i32, optimizer steps at the best evaluation
    bad_evaluations: jax.Array  # i32, evaluations since the last improvement
    stopped: jax.Array  # bool, stopped by patience


def init(num_trials: int) -> EarlyStopState:
    """The state before any evaluation."""
    return EarlyStopState(
        best_val_loss=jnp.full((num_trials,), jnp.inf, jnp.float32),
        best_val_accuracy=jnp.zeros((num_trials,), jnp.float32),
        best_step=jnp.zeros((num_trials,), jnp.int32),
        bad_evaluations=jnp.zeros((num_trials,), jnp.int32),
        stopped=jnp.zeros((num_trials,), bool),
    )


def update(
    state: EarlyStopState,
    val_loss: jax.Array,
    val_accuracy: jax.Array,
    step: jax.Array,
    evaluated: jax.Array,
    *,
    patience: int,
    min_delta: float,
    min_steps: int,
) -> tuple[EarlyStopState, jax.Array]:
    """Takes one evaluation; returns the new state and which trials improved.

    ``evaluated`` masks the trials this evaluation counts for (those still training); a
    non-finite loss is never an improvement.
    """
    improved = evaluated & jnp.isfinite(val_loss) & (val_loss < state.best_val_loss - min_delta)
    bad = jnp.where(improved, 0, state.bad_evaluations + evaluated.astype(jnp.int32))
    stop_now = evaluated & (patience > 0) & (bad >= patience) & (step >= min_steps)
    new_state = EarlyStopState(
        best_val_loss=jnp.where(improved, val_loss, state.best_val_loss),
        best_val_accuracy=jnp.where(improved, val_accuracy, state.best_val_accuracy),
        best_step=jnp.where(improved, step, state.best_step),
        bad_evaluations=bad,
        stopped=state.stopped | stop_now,
    )
    return new_state, improved
