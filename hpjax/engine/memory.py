"""Memory of a population before it compiles, and splitting populations that would not fit.

Per trial a population holds its parameters, their best-point copy, the summed micro-batch
gradients, the optimizer state, and one more copy of parameters and optimizer state for the
candidate update; the activations of one micro-batch are the intermediate values of its traced
gradient (no compilation). A population whose estimate exceeds ``memory_fraction`` of the
devices' memory (or holds more than ``max_population`` trials) is split into chunks that run in
turn.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import resource

import jax
import jax.numpy as jnp
import numpy as np

from hpjax.engine import population
from hpjax.models import ABSTRACT_KEY


def _tree_bytes(tree) -> int:
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


@dataclasses.dataclass(frozen=True)
class TrialMemory:
    """Estimated bytes of one trial in a population."""

    state_bytes: int  # parameters, best copy, gradient sum, optimizer state, update candidate
    activation_bytes: int  # intermediate values of one micro-batch gradient

    @property
    def total(self) -> int:
        return self.state_bytes + self.activation_bytes


def estimate_trial(
    spec: population.PopulationSpec,
    input_shape: tuple[int, ...],
    target_shape: tuple[int, ...] = (),
    target_dtype: str = "int32",
) -> TrialMemory:
    """The memory one trial adds to a population of ``spec`` (no compilation of the population);
    the targets of one example have ``target_shape`` and ``target_dtype`` (class labels by
    default)."""
    params = jax.eval_shape(spec.model.init, ABSTRACT_KEY)
    opt_state = jax.eval_shape(spec.direction().init, params)
    param_bytes, opt_bytes = _tree_bytes(params), _tree_bytes(opt_state)
    state = 4 * param_bytes + 2 * opt_bytes  # params, best, grad sum, candidate; opt, candidate
    return TrialMemory(
        state, _activation_bytes(spec, input_shape, tuple(target_shape), str(target_dtype))
    )


@functools.lru_cache(maxsize=32)
def _activation_bytes(
    spec: population.PopulationSpec,
    input_shape: tuple[int, ...],
    target_shape: tuple[int, ...],
    target_dtype: str,
) -> int:
    """Bytes of every intermediate value of one trial's micro-batch gradient (traced, not
    compiled): an upper bound, since XLA reuses buffers."""
    params = jax.eval_shape(spec.model.init, ABSTRACT_KEY)
    x = jax.ShapeDtypeStruct((spec.microbatch, *input_shape), jnp.float32)
    y = jax.ShapeDtypeStruct((spec.microbatch, *target_shape), jnp.dtype(target_dtype))

    def loss(params, x, y):
        return spec.task.mean_loss(spec.model.apply(params, x), y)

    jaxpr = jax.make_jaxpr(jax.value_and_grad(loss))(params, x, y)
    return _jaxpr_bytes(jaxpr.jaxpr)


def _jaxpr_bytes(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            aval = var.aval
            if hasattr(aval, "shape"):
                total += int(np.prod(aval.shape)) * np.dtype(aval.dtype).itemsize
        for param in eqn.params.values():  # nested programs (pjit, scan, custom_vjp)
            inner = getattr(param, "jaxpr", None)
            if inner is not None:
                total += _jaxpr_bytes(getattr(inner, "jaxpr", inner))
    return total


def device_memory_bytes() -> int:
    """Memory of one device: the accelerator's limit, or on CPU the host's RAM shared by its
    CPU devices."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return ram // max(1, len(jax.local_devices(backend=device.platform)))


def peak_memory_bytes() -> tuple[int, str]:
    """The measured peak so far: the device's own counter, or this process's peak RSS."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"
