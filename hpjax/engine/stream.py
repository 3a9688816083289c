"""Each trial's shuffled stream of training examples, drawn on the device inside the compiled loop.

A trial sees the endless concatenation of per-epoch permutations of the whole training set; the
permutation of epoch ``e`` comes from ``fold_in(data_key, e)``. Its batch ``j`` is
``stream[j * b : (j + 1) * b]``, so a batch may straddle an epoch boundary and every example is
seen exactly once per epoch. The stream does not depend on the batch size or on the population, so
a trial reads the same examples alone and inside any population.

The population consumes the stream in micro-batches of ``m`` examples per tick, the same ``m``
for every trial, so all trials cross epoch boundaries at the same tick: the next permutation is
drawn under a ``lax.cond`` on the shared (unbatched) tick, once per epoch, not once per step.
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


def permutations_at(data_keys: jax.Array, tick: jax.Array, microbatch: int, num_examples: int):
    """Permutations ``[K, n]`` of the current and the next epoch, for every trial at ``tick``."""
    epoch = current_epoch(tick, microbatch, num_examples)
    per_trial = jax.vmap(epoch_permutation, in_axes=(0, None, None))
    return per_trial(data_keys, epoch, num_examples), per_trial(data_keys, epoch + 1, num_examples)


def microbatch_indices(
    perms: tuple[jax.Array, jax.Array], tick: jax.Array, microbatch: int, num_examples: int
) -> jax.Array:
    """Indices ``[K, m]`` into the training set of every trial's micro-batch at ``tick``."""
    current, upcoming = perms
    positions = tick * microbatch + jnp.arange(microbatch)
    in_next_epoch = positions // num_examples > current_epoch(tick, microbatch, num_examples)
    offsets = positions % num_examples
    return jnp.where(in_next_epoch[None, :], upcoming[:, offsets], current[:, offsets])


def advance_permutations(
    perms: tuple[jax.Array, jax.Array],
    data_keys: jax.Array,
    tick: jax.Array,
    microbatch: int,
    num_examples: int,
) -> tuple[jax.Array, jax.Array]:
    """The permutations for ``tick + 1``: rolled forward when that tick starts a new epoch.

    ``tick`` is shared by all trials, so the condition is a real branch, not a select.
    """
    epoch_now = current_epoch(tick, microbatch, num_examples)
    epoch_next = current_epoch(tick + 1, microbatch, num_examples)

    def roll(perms):
        per_trial = jax.vmap(epoch_permutation, in_axes=(0, None, None))
        return perms[1], per_trial(data_keys, epoch_next + 1, num_examples)

    return jax.lax.cond(epoch_next > epoch_now, roll, lambda perms: perms, perms)
