"""Memory of a population before it compiles, and splitting populations that would not fit.

Per trial a population holds its parameters, their best-point copy, the summed micro-batch
gradients, the optimizer state, and one more copy of parameters and optimizer state for the
candidate update; the activations of one micro-batch come from XLA's own memory analysis of a
one-trial step. A population whose estimate exceeds ``memory_fraction`` of the devices' memory
(or holds more than ``max_population`` trials) is split into chunks that run in turn.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import resource

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from hpjax import population, study


def _tree_bytes(tree) -> int:
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


@dataclasses.dataclass(frozen=True)
class TrialMemory:
    """Estimated bytes of one trial in a population."""

    state_bytes: int  # parameters, best copy, gradient sum, optimizer state, update candidate
    activation_bytes: int  # XLA's temporary buffers of one micro-batch step

    @property
    def total(self) -> int:
        return self.state_bytes + self.activation_bytes


def estimate_trial(spec: population.PopulationSpec, input_shape: tuple[int, ...]) -> TrialMemory:
    """The memory one trial adds to a population of ``spec`` (no compilation of the population)."""
    params = jax.eval_shape(spec.model.init, jax.random.PRNGKey(0))
    opt_state = jax.eval_shape(spec.direction().init, params)
    param_bytes, opt_bytes = _tree_bytes(params), _tree_bytes(opt_state)
    state = 4 * param_bytes + 2 * opt_bytes  # params, best, grad sum, candidate; opt, candidate
    return TrialMemory(state, _activation_bytes(spec, input_shape))


@functools.lru_cache(maxsize=32)
def _activation_bytes(spec: population.PopulationSpec, input_shape: tuple[int, ...]) -> int:
    hparams = population.make_hparams(
        learning_rate=[0.1],
        batch_size=[spec.microbatch],
        seed=[0],
        weight_decay=[0.0],
        warmup_steps=[0],
        decay_rate=[0.1],
        end_factor=[0.0],
        max_steps=[1],
    )
    state = jax.eval_shape(lambda: population.init_population(spec, hparams))
    x = jax.ShapeDtypeStruct((1, spec.microbatch, *input_shape), jnp.float32)
    y = jax.ShapeDtypeStruct((1, spec.microbatch), jnp.int32)

    def one_tick(state, hparams, x, y):
        step = jax.vmap(functools.partial(population.micro_step, spec))
        return step(hparams, state.trials, state.early_stop.stopped, x, y)

    compiled = jax.jit(one_tick).lower(state, hparams, x, y).compile()
    analysis = compiled.memory_analysis()
    return int(getattr(analysis, "temp_size_in_bytes", 0) or 0)


def device_memory_bytes() -> int:
    """Memory of one device: the accelerator's limit, or the host's RAM on CPU."""
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def peak_memory_bytes() -> tuple[int, str]:
    """The measured peak so far: the device's own counter, or this process's peak RSS."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"


def fit_plans(
    plans: list[study.PopulationPlan],
    specs: list[population.PopulationSpec],
    input_shape: tuple[int, ...],
    *,
    num_devices: int,
    memory_fraction: float,
    max_population: int,
) -> tuple[list[study.PopulationPlan], list[float]]:
    """Splits plans that would not fit into chunks; returns them with their estimates (MiB)."""
    budget = memory_fraction * device_memory_bytes() * num_devices
    fitted, estimates = [], []
    for plan, spec in zip(plans, specs, strict=True):
        per_trial = estimate_trial(spec, input_shape).total
        size = len(plan.trials)
        limit = max(1, int(budget // max(per_trial, 1)))
        if max_population > 0:
            limit = min(limit, max_population)
        if limit >= size:
            chunks = [plan]
        else:
            if limit >= num_devices:
                limit -= limit % num_devices
            chunks = [
                study.take_trials(plan, range(start, min(start + limit, size)))
                for start in range(0, size, limit)
            ]
            logging.info(
                "population of %d trials (%s): estimated %.1f MiB > %.1f MiB allowed "
                "(or max_population=%d); split into %d chunks of at most %d trials, run in turn",
                size,
                ", ".join(f"{k}={v}" for k, v in plan.architecture.items()) or "one model",
                size * per_trial / 2**20,
                budget / 2**20,
                max_population,
                len(chunks),
                limit,
            )
        for chunk in chunks:
            fitted.append(chunk)
            estimates.append(len(chunk.trials) * per_trial / 2**20)
    fitted = [dataclasses.replace(p, index=i) for i, p in enumerate(fitted)]
    return fitted, estimates
