"""Training data that stays on the host: every trial's micro-batches gathered there, prefetched.

On the device path the whole training set sits on the device and the compiled loop gathers each
tick's micro-batches from it. When the set is memory-mapped or larger than the device's share,
it stays in host memory (or on disk) instead: for each training call the host computes every
trial's micro-batch indices from the same permutations as the device path (drawn by the same
function from its data key, once per epoch), gathers those examples with numpy, and places
the ``[ticks, trials, micro-batch, ...]`` block on the devices (sharded along the trial axis)
while the previous block trains. The device step then reads its batches from the block, so a
trial sees the very examples it sees on the device path, in the same order.
"""

from __future__ import annotations

import concurrent.futures
import functools
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from hpjax.engine import memory, population, stream
from hpjax.engine.sharding import TRIAL_AXIS, TrialSharding
from hpjax.errors import ConfigError

PLACEMENTS = ("auto", "device", "host")

# At most this many bytes of examples per block placed on the devices: a training call of more
# ticks is cut into blocks, each gathered while the one before trains.
BLOCK_BYTES = 64 * 2**20


def stays_on_host(
    placement: str, x_train: Any, memory_fraction: float, num_devices: int, mapped: bool
) -> tuple[bool, str]:
    """Whether the training set stays on the host, and why (for the log): ``placement`` is
    ``config.train_data``; ``auto`` keeps a memory-mapped set there, and one larger than half of
    the devices' ``memory_fraction`` share (the populations need the rest)."""
    if placement == "host" and jax.process_count() > 1:
        raise ConfigError(
            "train_data='host' runs in one process; with several processes the training set "
            "is replicated on every device (train_data=device)"
        )
    if placement != "auto" or jax.process_count() > 1:
        return placement == "host", f"train_data={placement!r}"
    budget = memory_fraction * memory.device_memory_bytes() * num_devices
    if mapped:
        return True, "it is memory-mapped"
    if x_train.nbytes > budget / 2:
        mib = x_train.nbytes / 2**20
        return True, f"its {mib:.1f} MiB are more than half of the {budget / 2**20:.1f} MiB share"
    return False, ""


@functools.partial(jax.jit, static_argnums=2)
def _permutations(data_keys: jax.Array, epochs: jax.Array, num_examples: int) -> jax.Array:
    return stream.epoch_permutations(data_keys, epochs, num_examples)


class EpochOrders:
    """Each trial's permutation of each epoch, drawn once (on the host's CPU device) with the
    device loop's own :func:`hpjax.engine.stream.epoch_permutations` and kept until the trial
    has passed that epoch: a training call then costs no permutation, where the device loop
    draws two per trial per call."""

    def __init__(self, num_examples: int):
        self.num_examples = num_examples
        self._orders: dict[tuple[bytes, int], np.ndarray] = {}
        self._cpu = jax.devices("cpu")[0]

    def _draw(self, wanted: list[tuple[np.ndarray, int]]) -> None:
        size = 1 << (len(wanted) - 1).bit_length()  # padded to a power of two: few compilations
        keys = np.stack([k for k, _ in wanted] + [wanted[0][0]] * (size - len(wanted)))
        epochs = np.array([e for _, e in wanted] + [0] * (size - len(wanted)), np.int32)
        drawn = np.asarray(
            _permutations(*jax.device_put((keys, epochs), self._cpu), self.num_examples)
        )
        for (key, epoch), order in zip(wanted, drawn, strict=False):
            self._orders[(key.tobytes(), epoch)] = order

    def indices(self, data_keys: np.ndarray, ticks: np.ndarray, num_ticks: int, microbatch: int):
        """``[num_ticks, K, m]`` indices of every trial's micro-batches from its ``ticks`` on:
        what :func:`hpjax.engine.stream.microbatch_indices` gives at those ticks."""
        n = self.num_examples
        steps = ticks[None, :] + np.arange(num_ticks, dtype=np.int64)[:, None]  # [T, K]
        positions = steps[..., None] * microbatch + np.arange(microbatch)  # [T, K, m]
        epochs = positions // n
        needed = {(r, int(e)) for r in range(len(ticks)) for e in np.unique(epochs[:, r])}
        missing = [(data_keys[r], e) for r, e in sorted(needed)]
        missing = [(k, e) for k, e in missing if (k.tobytes(), e) not in self._orders]
        if missing:
            self._draw(missing)
        out = np.empty(positions.shape, np.int32)
        for r, epoch in needed:
            rows = epochs[:, r] == epoch
            order = self._orders[(data_keys[r].tobytes(), epoch)]
            out[:, r][rows] = order[positions[:, r][rows] % n]
        first: dict[bytes, int] = {}  # the earliest epoch a trial of each key reads next
        for r in range(len(ticks)):
            key = data_keys[r].tobytes()
            first[key] = min(first.get(key, 2**62), int(epochs[-1, r].min()))
        self._orders = {
            (k, e): v for (k, e), v in self._orders.items() if k in first and e >= first[k]
        }
        return out


class HostBatches:
    """Gathers blocks of micro-batches from host arrays and prefetches the next one.

    ``next_block(data_keys, ticks, num_ticks)`` returns the device arrays ``(xs, ys)`` of the
    ticks from ``ticks`` on, and starts gathering the block that follows in a background thread
    (the trials' ticks simply advance by ``num_ticks``). A prefetched block is used only when it
    was gathered for exactly the keys and ticks asked for (a refilled slot restarts its stream).
    ``waited_s`` counts the time the caller waited for a block: the device's idle share.
    """

    def __init__(self, x: Any, y: Any, microbatch: int, sharding: TrialSharding):
        self.x, self.y = x, y
        self.microbatch = microbatch
        self.num_examples = int(x.shape[0])
        self.sharding = NamedSharding(sharding.mesh, PartitionSpec(None, TRIAL_AXIS))
        self.to_host = sharding.to_host
        self.orders = EpochOrders(self.num_examples)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="host-batches")
        self._pending: tuple[tuple, concurrent.futures.Future] | None = None
        self.waited_s = 0.0
        self.blocks = 0

    def ticks_per_block(self, num_trials: int) -> int:
        """Ticks whose examples for ``num_trials`` trials fit in :data:`BLOCK_BYTES`."""
        per_tick = (
            num_trials * self.microbatch * (self.x[:1].nbytes + np.asarray(self.y[:1]).nbytes)
        )
        return max(1, BLOCK_BYTES // max(per_tick, 1))

    def _gather(self, data_keys: np.ndarray, ticks: np.ndarray, num_ticks: int):
        indices = self.orders.indices(data_keys, ticks, num_ticks, self.microbatch)
        flat = indices.reshape(-1)
        xs = np.asarray(self.x[flat]).reshape(indices.shape + tuple(self.x.shape[1:]))
        ys = np.asarray(self.y[flat]).reshape(indices.shape + tuple(self.y.shape[1:]))
        return jax.device_put(xs, self.sharding), jax.device_put(ys, self.sharding)

    def next_block(self, data_keys: np.ndarray, ticks: np.ndarray, num_ticks: int):
        data_keys, ticks = np.asarray(data_keys), np.asarray(ticks, np.int32)
        wanted = (data_keys.tobytes(), ticks.tobytes(), num_ticks)
        start = time.perf_counter()
        if self._pending is not None and self._pending[0] == wanted:
            block = self._pending[1].result()
        else:
            block = self._gather(data_keys, ticks, num_ticks)
        self.waited_s += time.perf_counter() - start
        self.blocks += 1
        following = ticks + num_ticks
        key = (data_keys.tobytes(), following.tobytes(), num_ticks)
        self._pending = (key, self._pool.submit(self._gather, data_keys, following, num_ticks))
        return block

    def train(
        self,
        spec: population.PopulationSpec,
        state: population.PopulationState,
        hparams: population.TrialHParams,
        num_ticks: int,
    ) -> population.PopulationState:
        """``num_ticks`` ticks of the population on blocks gathered here, each block gathered
        while the one before trains."""
        keys, ticks = self.to_host((state.trials.data_key, state.trials.ticks))
        per_block = self.ticks_per_block(len(ticks))
        done = 0
        while done < num_ticks:
            count = min(per_block, num_ticks - done)
            xs, ys = self.next_block(keys, ticks + done, count)
            state = population.train_batches(spec, state, hparams, xs, ys)
            done += count
        return state

    def close(self, label: str = "population") -> None:
        """Stops the prefetching thread and logs how long training waited for the host."""
        if self._pending is not None:
            self._pending[1].cancel()
        self._pool.shutdown(wait=True)
        logging.info(
            "%s: training waited %.2f s for the host's batches over %d blocks",
            label,
            self.waited_s,
            self.blocks,
        )
