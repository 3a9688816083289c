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
import numpy as np


def _shuffle_rounds(num_examples: int) -> int:
    """The number of sorts ``jax.random.permutation`` makes for ``num_examples`` (its own static
    rule: enough 32-bit keys that all examples get distinct key strings with high probability)."""
    return int(np.ceil(3 * np.log(max(1, num_examples)) / np.log(np.iinfo(np.uint32).max)))


def _sort_rows_by(sort_keys: jax.Array, x: jax.Array) -> jax.Array:
    """Each row of ``x [R, n]`` reordered by its row of ``sort_keys``, ties in order of position:
    ``lax.sort_key_val``'s stable sort.

    XLA's CPU sort of one unsigned array is about six times faster than a sort of keys with
    values, so when no row has two equal keys (all but about n^2 / 2^33 of draws), each key's
    place is found in the sorted keys and the row scattered there; otherwise the stable sort.
    """

    def by_rank(x):
        rank = jax.vmap(jnp.searchsorted)(sorted_keys, sort_keys)
        return jax.vmap(lambda r, row: jnp.zeros_like(row).at[r].set(row, unique_indices=True))(
            rank, x
        )

    sorted_keys = jnp.sort(sort_keys, axis=-1)
    has_ties = jnp.any(sorted_keys[:, 1:] == sorted_keys[:, :-1])
    return jax.lax.cond(
        has_ties, lambda x: jax.lax.sort_key_val(sort_keys, x, dimension=-1)[1], by_rank, x
    )


def epoch_permutations(data_keys: jax.Array, epochs: jax.Array, num_examples: int) -> jax.Array:
    """The order of the training set in epoch ``epochs[r]`` of the trial with data key
    ``data_keys[r]``, for each row ``r``: ``[R, n]`` int32.

    Each row equals ``jax.random.permutation(fold_in(data_keys[r], epochs[r]), n)`` bit for bit
    (the same keys, the same random bits, the same stable sorts), drawn faster on the CPU.
    """
    keys = jax.vmap(jax.random.fold_in)(data_keys, epochs)
    x = jnp.broadcast_to(jnp.arange(num_examples, dtype=jnp.int32), (keys.shape[0], num_examples))
    for _ in range(_shuffle_rounds(num_examples)):
        keys, subkeys = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
        sort_keys = jax.vmap(lambda k: jax.random.bits(k, (num_examples,), jnp.uint32))(subkeys)
        x = _sort_rows_by(sort_keys, x)
    return x


def current_epoch(tick: jax.Array, microbatch: int, num_examples: int) -> jax.Array:
    """The epoch in which the first example of micro-batch ``tick`` lies."""
    return (tick * microbatch) // num_examples


def permutations_at(data_keys: jax.Array, ticks: jax.Array, microbatch: int, num_examples: int):
    """Permutations ``[K, n]`` of the current and the next epoch of every trial at its ``ticks``."""
    epochs = current_epoch(ticks, microbatch, num_examples)
    return (
        epoch_permutations(data_keys, epochs, num_examples),
        epoch_permutations(data_keys, epochs + 1, num_examples),
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
        return perms[1], epoch_permutations(data_keys, epoch_next + 1, num_examples)

    def roll_some(perms):
        rows = jnp.nonzero(crossing, size=crossing.shape[0], fill_value=0)[0]

        def roll_row(i, perms):
            current, upcoming = perms
            k = rows[i]
            drawn = epoch_permutations(data_keys[k][None], epoch_next[k][None] + 1, num_examples)
            return current.at[k].set(upcoming[k]), upcoming.at[k].set(drawn[0])

        return jax.lax.fori_loop(0, crossing.sum(), roll_row, perms)

    branch = jnp.where(crossing.all(), 2, jnp.where(crossing.any(), 1, 0))
    return jax.lax.switch(branch, [lambda perms: perms, roll_some, roll_all], perms)
