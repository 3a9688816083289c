"""Memory of a population before it compiles, and splitting populations that would not fit.

Per trial a population holds its state (the exact bytes of its :class:`TrialState`: parameters,
optimizer state, gradient sum; and its best parameters) and, at its peak, the buffers of one of
its two programs: a micro-batch's gradient (the training tick) or the forward pass of one
evaluation batch (the evaluation, usually the larger: up to 1024 examples at once); on the CPU
also the host copies of its state that checkpoints and ended trials hold. Each program's is
the peak of the values alive at once in the traced program (no compilation), walking its
equations in order, freeing each value after its last use and writing an elementwise result
over a dying input of its size, as XLA's fusions do. ``python tools/bench_memory.py`` prints
the estimate against the measured peak. A population whose estimate exceeds
``memory_fraction`` of the devices' memory (or holds more than ``max_population`` trials) is
split into chunks that run in turn.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import resource

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core

from hpjax.engine import early_stopping, population
from hpjax.models import ABSTRACT_KEY

# Primitives whose body runs many times: its peak adds to the outputs it builds (stacked
# results, carries), where a call's body peak already holds its outputs.
_LOOPS = ("scan", "while")
HOST_COPIES_ON_CPU = 3


def _tree_bytes(tree) -> int:
    return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree)))


@dataclasses.dataclass(frozen=True)
class TrialMemory:
    """Estimated bytes of one trial in a population."""

    state_bytes: int  # its TrialState, best parameters and early-stopping state, alive throughout
    train_bytes: int  # the peak buffers of one micro-batch's gradient
    eval_bytes: int  # the peak buffers of the forward pass of one evaluation batch
    # Host copies of the state alive at the peak on the CPU, where the host is the device: a
    # state checkpoint's copy (Orbax writes it while training goes on), the training tick's new
    # state beside the old (the host view keeps the old buffers from being donated) and the
    # best parameters an ended trial leaves on the host. 0 on an accelerator, whose host
    # copies are not in its memory. Measured: ``python tools/bench_memory.py``.
    host_copies: int = 0

    @property
    def total(self) -> int:
        program = max(self.train_bytes, self.eval_bytes)
        return (1 + self.host_copies) * self.state_bytes + program


def estimate_trial(
    spec: population.PopulationSpec,
    input_shape: tuple[int, ...],
    target_shape: tuple[int, ...] = (),
    target_dtype: str = "int32",
    eval_examples: int | None = None,
) -> TrialMemory:
    """The memory one trial adds to a population of ``spec`` (no compilation of the population);
    the targets of one example have ``target_shape`` and ``target_dtype`` (class labels by
    default); ``eval_examples`` is the largest set it is evaluated on (default: a whole
    evaluation batch, ``spec.eval_batch_size``)."""
    trial = jax.eval_shape(
        functools.partial(population._init_trial, spec), population.one_trial_hparams(spec)
    )
    best = jax.eval_shape(spec.model.init, ABSTRACT_KEY)
    early_stop = jax.eval_shape(functools.partial(early_stopping.init, 1))
    eval_batch = min(spec.eval_batch_size, eval_examples or spec.eval_batch_size)
    shapes = (tuple(input_shape), tuple(target_shape), str(target_dtype))
    state = _tree_bytes(trial) + _tree_bytes(best) + _tree_bytes(early_stop)
    return TrialMemory(
        state_bytes=state,
        train_bytes=_program_peak(spec, *shapes, spec.microbatch, gradient=True),
        eval_bytes=_program_peak(spec, *shapes, eval_batch, gradient=False),
        host_copies=HOST_COPIES_ON_CPU if jax.default_backend() == "cpu" else 0,
    )


@functools.lru_cache(maxsize=64)
def _program_peak(
    spec: population.PopulationSpec,
    input_shape: tuple[int, ...],
    target_shape: tuple[int, ...],
    target_dtype: str,
    batch: int,
    gradient: bool,
) -> int:
    """Peak bytes alive in one trial's micro-batch gradient (``gradient``) or its evaluation
    forward pass over ``batch`` examples, beyond the parameters and the batch."""
    params = jax.eval_shape(spec.model.init, ABSTRACT_KEY)
    x = jax.ShapeDtypeStruct((batch, *input_shape), jnp.float32)
    y = jax.ShapeDtypeStruct((batch, *target_shape), jnp.dtype(target_dtype))

    def loss(params, x, y):
        return spec.task.mean_loss(spec.model.apply(params, x), y, x)

    def per_example(params, x, y):
        if spec.task.reduction == "mean":
            return spec.task.batch_means(spec.model.apply(params, x), y, x)
        return spec.task.per_example(spec.model.apply(params, x), y, x)

    program = jax.value_and_grad(loss) if gradient else per_example
    return _peak_bytes(jax.make_jaxpr(program)(params, x, y).jaxpr)


def _bytes(var) -> int:
    aval = var.aval
    if not hasattr(aval, "shape"):
        return 0
    return int(np.prod(aval.shape)) * aval.dtype.itemsize


def _inner_programs(eqn):
    """The jaxprs an equation runs (a call's, a loop's body, a branch)."""
    for param in eqn.params.values():
        for value in param if isinstance(param, tuple | list) else (param,):
            inner = getattr(value, "jaxpr", value)
            if hasattr(inner, "eqns"):
                yield inner


def _peak_bytes(jaxpr) -> int:
    """The most bytes of values defined inside ``jaxpr`` alive at once (its inputs excluded)."""
    variables = lambda vs: [v for v in vs if not isinstance(v, jax_core.Literal)]  # noqa: E731
    last_use = {}
    for i, eqn in enumerate(jaxpr.eqns):
        for var in variables(eqn.invars):
            last_use[var] = i
    for var in variables(jaxpr.outvars):
        last_use[var] = len(jaxpr.eqns)
    defined: set = set()
    live = peak = 0
    for i, eqn in enumerate(jaxpr.eqns):
        inner = [_peak_bytes(j) for j in _inner_programs(eqn)]
        dying = [_bytes(v) for v in set(variables(eqn.invars)) if v in defined and last_use[v] == i]
        new = 0
        for var in eqn.outvars:
            size = _bytes(var)
            if not inner and size in dying:
                dying.remove(size)  # written over the dying input, in place
            else:
                new += size
        if not inner:
            peak = max(peak, live + new)
        elif eqn.primitive.name in _LOOPS:
            peak = max(peak, live + new + max(inner))
        else:
            peak = max(peak, live + max(new, max(inner)))
        live += new - sum(dying)
        live -= sum(_bytes(v) for v in eqn.outvars if last_use.get(v, -1) <= i)
        defined.update(eqn.outvars)
    return peak


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
