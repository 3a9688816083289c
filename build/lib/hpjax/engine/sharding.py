"""The trial axis sharded over a mesh of devices, with JAX's own SPMD partitioning.

Per-trial arrays (parameters, optimizer states, hyperparameters, early-stopping state) are placed
with a ``NamedSharding`` over the mesh axis ``trials``; the data and the shared tick are
replicated. ``jax.jit`` then partitions the vmapped population program over the devices, so a
population of K trials on D devices runs K / D trials per device. A population whose size is not
a multiple of D is padded with frozen rows that never appear in results.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hpjax.errors import ConfigError

TRIAL_AXIS = "trials"


def available_devices() -> int:
    return jax.device_count()


class TrialSharding:
    """Places per-trial pytrees over ``num_devices`` devices (0 = all there are)."""

    def __init__(self, num_devices: int = 0):
        available = jax.devices()
        if num_devices < 0:
            raise ConfigError(f"config.num_devices={num_devices} must be >= 0 (0 = all devices)")
        if num_devices > len(available):
            raise ConfigError(
                f"config.num_devices={num_devices} is more than the {len(available)} "
                f"{jax.default_backend()} device(s) present; allowed: 0 (all) to {len(available)}"
            )
        devices = available[: num_devices or len(available)]
        self.num_devices = len(devices)
        self.mesh = Mesh(np.array(devices), (TRIAL_AXIS,))
        self.rows = NamedSharding(self.mesh, PartitionSpec(TRIAL_AXIS))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())

    def padded_size(self, num_rows: int) -> int:
        """The smallest multiple of the device count that holds ``num_rows`` rows."""
        return -(-num_rows // self.num_devices) * self.num_devices

    def put_rows(self, tree):
        """Shards every leaf's leading (trial) axis; scalars are replicated."""
        return jax.tree.map(
            lambda x: jax.device_put(x, self.rows if np.ndim(x) else self.replicated), tree
        )

    def replicate(self, tree):
        return jax.tree.map(lambda x: jax.device_put(x, self.replicated), tree)

    @property
    def is_writer(self) -> bool:
        """Only process 0 writes the workdir."""
        return jax.process_index() == 0

    def to_host(self, tree):
        """Numpy copies of ``tree``, gathered from every host when there are several."""
        if jax.process_count() == 1:
            return jax.device_get(tree)
        return multihost_utils.process_allgather(tree, tiled=True)


def broadcast_flag(value: bool) -> bool:
    """Process 0's ``value``, on every process."""
    return bool(int(multihost_utils.broadcast_one_to_all(np.int32(value))))


def broadcast_restored(restored: tuple[Any, dict] | None, template: Any) -> tuple[Any, dict] | None:
    """What process 0 restored (host arrays shaped like ``template``, and JSON metadata), on
    every process; None on every process when process 0 had nothing to resume from."""
    if not broadcast_flag(restored is not None):
        return None
    arrays, host = restored if restored is not None else (template, {})
    arrays = multihost_utils.broadcast_one_to_all(jax.tree.map(np.asarray, arrays))
    text = np.frombuffer(json.dumps(host).encode(), np.uint8)
    length = int(multihost_utils.broadcast_one_to_all(np.int32(len(text))))
    padded = np.zeros(length, np.uint8)
    padded[: min(length, len(text))] = text[:length]
    data = np.asarray(multihost_utils.broadcast_one_to_all(padded), np.uint8)
    return jax.tree.map(np.asarray, arrays), json.loads(data.tobytes().decode())
