"""Each trial's shuffled stream of training examples, drawn on the device inside the compiled loop.

A trial sees the endless concatenation of per-epoch permutations of the whole training set; the
permutation of epoch ``e`` comes from ``fold_in(data_key, e)``. Its batch ``j`` is
``stream[j * b : (j + 1) * b]``, so a batch may straddle an epoch boundary and every example is
seen exactly once per epoch. The stream does not depend on the batch size or on the population, so
a trial reads the same examples alone and inside any population.

The population consumes the stream in micro-batches of ``m`` examples per tick, the same ``m``
for every trial. Each trial counts its own ticks (a trial that takes a freed slot starts its
stream at 0 while its neighbours go on); the next permutation is drawn under a branch on whether
any trial crosses an epoch at this tick, once per trial and epoch, not once per step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def epoch_permutation(data_key: jax.Array, epoch: jax.Array, num_examples: int) -> jax.Array:
    """The order of the training set in ``epoch`` for the trial whose data key is ``data_key``."""
    return jax.random.permutation(jax.random.fold_in(data_key, epoch), num_examples).astype(
        jnp.int32
    )


def current_epoch(tick: jax.Array, microbatch: int, num_examples: int) -> jax.Array:
    """The epoch in which the first example of micro-batch ``tick`` lies."""
    return (tick * microbatch) // num_examples


def permutations_at(data_keys: jax.Array, ticks: jax.Array, microbatch: int, num_examples: int):
    """Permutations ``[K, n]`` of the current and the next epoch of every trial at its ``ticks``."""
    epochs = current_epoch(ticks, microbatch, num_examples)
    per_trial = jax.vmap(epoch_permutation, in_axes=(0, 0, None))
    return per_trial(data_keys, epochs, num_examples), per_trial(
        data_keys, epochs + 1, num_examples
    )


def microbatch_indices(
    perms: tuple[jax.Array, jax.Array], ticks: jax.Array, microbatch: int, num_examples: int
) -> jax.Array:
    """Indices ``[K, m]`` into the training set of every trial's micro-batch at its ``ticks``."""
    current, upcoming = perms
    positions = ticks[:, None] * microbatch + jnp.arange(microbatch)
    in_next_epoch = (
        positions // num_examples > current_epoch(ticks, microbatch, num_examples)[:, None]
    )
    offsets = positions % num_examples
    return jnp.where(
        in_next_epoch,
        jnp.take_along_axis(upcoming, offsets, axis=1),
        jnp.take_along_axis(current, offsets, axis=1),
    )


def advance_permutations(
    perms: tuple[jax.Array, jax.Array],
    data_keys: jax.Array,
    ticks: jax.Array,
    microbatch: int,
    num_examples: int,
) -> tuple[jax.Array, jax.Array]:
    """The permutations for ``ticks + 1``: a trial's roll forward when its next tick starts a new
    epoch.

    Trials that started together cross epochs together: one branch draws all their permutations.
    A trial that took a freed slot later crosses at its own ticks: only its row is drawn, so a
    population of staggered trials still draws one permutation per trial per epoch.
    """
    epoch_now = current_epoch(ticks, microbatch, num_examples)
    epoch_next = current_epoch(ticks + 1, microbatch, num_examples)
    crossing = epoch_next > epoch_now

    def roll_all(perms):
        per_trial = jax.vmap(epoch_permutation, in_axes=(0, 0, None))
        return perms[1], per_trial(data_keys, epoch_next + 1, num_examples)

    def roll_some(perms):
        rows = jnp.nonzero(crossing, size=crossing.shape[0], fill_value=0)[0]

        def roll_row(i, perms):
            current, upcoming = perms
            k = rows[i]
            drawn = epoch_permutation(data_keys[k], epoch_next[k] + 1, num_examples)
            return current.at[k].set(upcoming[k]), upcoming.at[k].set(drawn)

        return jax.lax.fori_loop(0, crossing.sum(), roll_row, perms)

    branch = jnp.where(crossing.all(), 2, jnp.where(crossing.any(), 1, 0))
    return jax.lax.switch(branch, [lambda perms: perms, roll_some, roll_all], perms)
