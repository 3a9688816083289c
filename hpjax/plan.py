"""From a config to trials and populations: the study's grid, its budget, and its checks.

A study is the Cartesian product of its per-trial axes (learning rates x batch sizes x seeds x
weight decays); the learning rates may instead be sampled log-uniformly or quasi-randomly, or
the trials drawn from a search space (:mod:`hpjax.space`). Trials that share static structure
form one population, compiled once. Every check here runs before anything compiles or touches
the workdir, and raises :class:`ConfigError` with one line that names the key.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

from hpjax import space as space_lib
from hpjax.config import as_tuple
from hpjax.engine import memory, optim, population, tasks
from hpjax.engine.population import PopulationSpec
from hpjax.errors import config_error
from hpjax.models import Model
from hpjax.models.precision import PRECISIONS

LR_SAMPLINGS = ("grid", "log_uniform", "quasi_random")
BATCH_AXES = ("auto", "split", "vmap")
LR_SCALINGS = ("fixed", "linear", "sqrt")


@dataclasses.dataclass(frozen=True)
class Trial:
    """One trial's hyperparameters; ``index`` is its row in the summary."""

    index: int
    learning_rate: float  # after the batch-size scaling rule
    batch_size: int
    seed: int
    weight_decay: float
    base_learning_rate: float  # the rate of the grid, before scaling
    architecture: tuple[tuple[str, Any], ...] = ()  # model keys that differ from config.model
    # Schedule parameters of this trial; None = the config's (a search space may set them).
    warmup_steps: int | None = None
    decay_rate: float | None = None
    end_factor: float | None = None
    momentum: float | None = None  # momentum, or Adam's b1

    @property
    def architecture_dict(self) -> dict:
        return dict(self.architecture)


@dataclasses.dataclass(frozen=True)
class PopulationPlan:
    """Trials that train together in one compiled program, and the plan of their loop."""

    index: int
    trials: tuple[Trial, ...]
    microbatch: int
    max_steps: tuple[int, ...]  # per trial: optimizer updates in its budget
    warmup_steps: tuple[int, ...]  # per trial
    total_ticks: int
    eval_ticks: int
    decay_rate: float = 0.1  # schedule parameters shared by the plan's trials
    end_factor: float = 0.0
    momentum: float = 0.9  # the config's momentum (or Adam's b1) for trials that set none
    batch_choices: tuple[int, ...] = ()  # sizes a trial may move to later (PBT's explore)

    @property
    def architecture(self) -> dict:
        return self.trials[0].architecture_dict

    def hparams(self) -> population.TrialHParams:
        """The per-trial hyperparameter arrays of this plan: the one way they are made."""
        return population.make_hparams(
            learning_rate=[t.learning_rate for t in self.trials],
            batch_size=[t.batch_size for t in self.trials],
            seed=[t.seed for t in self.trials],
            weight_decay=[t.weight_decay for t in self.trials],
            warmup_steps=list(self.warmup_steps),
            decay_rate=[_given(t.decay_rate, self.decay_rate) for t in self.trials],
            end_factor=[_given(t.end_factor, self.end_factor) for t in self.trials],
            momentum=[_given(t.momentum, self.momentum) for t in self.trials],
            max_steps=list(self.max_steps),
        )


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value


def _fail(key: str, value: Any, why: str) -> None:
    raise config_error(key, value, why)


def learning_rates(config) -> tuple[float, ...]:
    """The study's learning rates: the listed grid, or samples in ``lr_range`` (log scale)."""
    sampling = config.get("lr_sampling", "grid")
    if sampling not in LR_SAMPLINGS:
        _fail("lr_sampling", sampling, f"is unknown; allowed: {', '.join(LR_SAMPLINGS)}")
    if sampling == "grid":
        rates = as_tuple(config.learning_rates)
        if not rates:
            _fail("learning_rates", rates, "is empty; list at least one learning rate")
    else:
        count = int(config.get("num_lr_samples", 0))
        if count <= 0:
            _fail("num_lr_samples", count, f"must be positive with lr_sampling={sampling!r}")
        low, high = (float(v) for v in as_tuple(config.lr_range))
        if not (0 < low < high and math.isfinite(high)):
            _fail("lr_range", (low, high), "must be (low, high) with 0 < low < high")
        if sampling == "log_uniform":
            unit = np.random.default_rng(int(config.get("sampling_seed", 0))).random(count)
        else:
            unit = space_lib.van_der_corput(count)
        rates = tuple(float(low * (high / low) ** u) for u in unit)
    for rate in rates:
        if not (isinstance(rate, int | float) and math.isfinite(rate) and rate > 0):
            _fail("learning_rates", rates, "must hold positive finite numbers")
    return tuple(float(r) for r in rates)


def batch_sizes(config) -> tuple[int, ...]:
    """``config.batch_sizes`` when given, else ``(config.batch_size,)``."""
    sizes = as_tuple(config.get("batch_sizes", ()))
    key = "batch_sizes"
    if not sizes:
        sizes, key = (config.batch_size,), "batch_size"
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size <= 0:
            _fail(key, config[key], "must hold positive integers")
    return tuple(int(s) for s in sizes)


def scaled_learning_rate(config, learning_rate: float, batch_size: int) -> float:
    """The rate for ``batch_size`` under ``config.lr_scaling`` (Goyal et al. 2017 for linear).

    fixed: the same rate for every batch size; linear: ``lr * B / B0``; sqrt: ``lr * sqrt(B/B0)``,
    with ``B0 = config.base_batch_size``.
    """
    rule = config.get("lr_scaling", "fixed")
    if rule not in LR_SCALINGS:
        _fail("lr_scaling", rule, f"is unknown; allowed: {', '.join(LR_SCALINGS)}")
    if rule == "fixed":
        return learning_rate
    base = config.get("base_batch_size", 0)
    if isinstance(base, bool) or not isinstance(base, int) or base <= 0:
        _fail("base_batch_size", base, f"must be a positive integer with lr_scaling={rule!r}")
    ratio = batch_size / base
    return learning_rate * (ratio if rule == "linear" else math.sqrt(ratio))


def architectures(config) -> tuple[tuple[tuple[str, Any], ...], ...]:
    """The Cartesian product of ``config.model_grid`` (model key -> values), or the distinct
    architectures of ``config.trials``; ``((),)`` if none."""
    if config.get("trials", ""):
        return tuple(dict.fromkeys(t.architecture for t in explicit_trials(config)))
    grid = config.get("model_grid", None)
    if not grid:
        return ((),)
    grid = grid.to_dict() if hasattr(grid, "to_dict") else dict(grid)
    keys = sorted(grid)
    for key in keys:
        if key == "name" or not as_tuple(grid[key]):
            _fail(f"model_grid.{key}", grid[key], "must be a non-empty list of model values")
    return tuple(
        tuple(zip(keys, values, strict=True))
        for values in itertools.product(*(as_tuple(grid[k]) for k in keys))
    )


def model_config(config, architecture: tuple[tuple[str, Any], ...]):
    """``config.model`` with one architecture's values, and ``config.precision`` unless float32."""
    model = config.model.copy_and_resolve_references()
    with model.unlocked():
        model.update(dict(architecture))
        if config.get("precision", "float32") != "float32":
            model.precision = config.precision
    return model


TRIAL_KEYS = (
    "learning_rate",
    "batch_size",
    "seed",
    "weight_decay",
    "warmup_steps",
    "decay_rate",
    "end_factor",
    "momentum",
)


def explicit_trials(config) -> tuple[Trial, ...]:
    """``config.trials``: a JSON list of trials, each ``{"learning_rate": ..., "batch_size":
    ..., "seed": ..., "weight_decay": ..., "model.KEY": ...}`` (all but the rate optional:
    ``config.batch_size``, the first seed, the first weight decay, ``config.model``)."""
    try:
        listed = json.loads(config.trials)
    except json.JSONDecodeError as error:
        raise config_error("trials", config.trials[:80], f"is not JSON ({error})") from None
    if not isinstance(listed, list) or not listed or not all(isinstance(d, dict) for d in listed):
        _fail("trials", config.trials[:80], "must be a JSON list of trial objects")
    defaults = {
        "batch_size": int(config.batch_size),
        "seed": int(as_tuple(config.seeds)[0]) if as_tuple(config.seeds) else 0,
        "weight_decay": float((as_tuple(config.get("weight_decays", (0.0,))) or (0.0,))[0]),
    }
    out = []
    for i, given in enumerate(listed):
        unknown = [k for k in given if k not in TRIAL_KEYS and not k.startswith("model.")]
        if unknown or "learning_rate" not in given:
            _fail(
                f"trials[{i}]",
                given,
                f"needs learning_rate and may set {', '.join(TRIAL_KEYS[1:])} or model.KEY",
            )
        trial = defaults | given
        lr, b = float(trial["learning_rate"]), trial["batch_size"]
        if not (math.isfinite(lr) and lr > 0):
            _fail(f"trials[{i}].learning_rate", lr, "must be a positive finite number")
        if isinstance(b, bool) or not isinstance(b, int) or b <= 0:
            _fail(f"trials[{i}].batch_size", b, "must be a positive integer")
        arch = tuple(sorted((k[len("model.") :], v) for k, v in given.items() if "." in k))
        out.append(_trial(config, i, trial, lr, b, arch))
    return tuple(out)


def _trial(config, index: int, values: dict, lr: float, batch_size: int, arch=()) -> Trial:
    schedule = {}
    casts = {"warmup_steps": int, "decay_rate": float, "end_factor": float, "momentum": float}
    for key, cast in casts.items():
        if key in values:
            value = values[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                _fail(f"trials[{index}].{key}", value, "must be a number >= 0")
            if key == "momentum" and value >= 1:
                _fail(f"trials[{index}].{key}", value, "must be in [0, 1)")
            schedule[key] = cast(value)
    return Trial(
        index=index,
        learning_rate=scaled_learning_rate(config, lr, batch_size),
        batch_size=batch_size,
        seed=int(values["seed"]),
        weight_decay=float(values["weight_decay"]),
        base_learning_rate=lr,
        architecture=arch,
        **schedule,
    )


def sampled_trials(config) -> tuple[Trial, ...]:
    """Points of ``config.space`` drawn by ``config.space_sampler`` (x ``config.seeds`` unless
    the space holds the seed); keys the space lacks take the config's first value."""
    dimensions = space_lib.parse_space(config.space)
    points = space_lib.sample(
        dimensions,
        config.get("space_sampler", "quasi_random"),
        config.get("num_samples", 0),
        int(config.get("sampling_seed", 0)),
    )
    seeds = (None,) if "seed" in config.space else as_tuple(config.seeds) or (0,)
    defaults = {
        "learning_rate": learning_rates(config)[0],
        "batch_size": batch_sizes(config)[0],
        "weight_decay": float((as_tuple(config.get("weight_decays", (0.0,))) or (0.0,))[0]),
    }
    trials = []
    for point in points:
        for seed in seeds:
            values = defaults | ({"seed": seed} if seed is not None else {}) | point
            trials.append(
                _trial(config, len(trials), values, values["learning_rate"], values["batch_size"])
            )
    return tuple(trials)


def build_trials(config) -> tuple[Trial, ...]:
    """Architectures x learning rates x batch sizes x seeds x weight decays, or the explicit
    list of ``config.trials``."""
    if config.get("trials", ""):
        return explicit_trials(config)
    if config.get("space", None):
        return sampled_trials(config)
    seeds = as_tuple(config.seeds)
    if not seeds:
        _fail("seeds", seeds, "is empty; list at least one seed")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            _fail("seeds", seeds, "must hold non-negative integers")
    decays = as_tuple(config.get("weight_decays", (0.0,))) or (0.0,)
    grid = itertools.product(
        architectures(config), learning_rates(config), batch_sizes(config), seeds, decays
    )
    return tuple(
        Trial(
            index=i,
            learning_rate=scaled_learning_rate(config, lr, b),
            batch_size=b,
            seed=int(s),
            weight_decay=float(wd),
            base_learning_rate=lr,
            architecture=arch,
        )
        for i, (arch, lr, b, s, wd) in enumerate(grid)
    )


def _max_steps(config, batch_size: int, num_train: int) -> int:
    epochs = float(config.get("num_epochs", 0) or 0)
    if epochs > 0:
        return max(1, int(epochs * num_train // batch_size))
    return int(config.num_steps)


def batch_groups(sizes: Sequence[int], axis: str, max_accumulation: int) -> dict[int, int]:
    """Which population group each batch size joins.

    vmap: all in one (micro-batch = their gcd); split: one each; auto: consecutive sizes share a
    population while the largest is at most ``max_accumulation`` micro-batches of their gcd, so
    that no trial sums many tiny micro-batches (e.g. 1..2048 -> {1..8}, {16..128}, {256..2048}).
    """
    if axis == "vmap":
        return dict.fromkeys(sizes, 0)
    if axis == "split":
        return {size: i for i, size in enumerate(sizes)}
    group_of, group, members = {}, 0, []
    for size in sizes:
        if members and size > max_accumulation * math.gcd(*members, size):
            group, members = group + 1, []
        members.append(size)
        group_of[size] = group
    return group_of


def plan_populations(config, trials: Sequence[Trial], num_train: int) -> list[PopulationPlan]:
    """Groups trials into populations and plans each one's loop in ticks of its micro-batch.

    Each architecture is its own population; batch sizes are grouped by :func:`batch_groups`.
    """
    axis = config.get("batch_axis", "vmap")
    if axis not in BATCH_AXES:
        _fail("batch_axis", axis, f"is unknown; allowed: {', '.join(BATCH_AXES)}")
    group_of = batch_groups(
        sorted({t.batch_size for t in trials}), axis, int(config.get("max_accumulation", 8))
    )
    groups: dict[tuple, list[Trial]] = {}
    for trial in trials:
        groups.setdefault((trial.architecture, group_of[trial.batch_size]), []).append(trial)
    eval_every = int(config.eval_every)
    warmup_epochs = float(config.get("warmup_epochs", 0.0) or 0.0)
    plans = []
    choices = space_lib.pbt_batch_choices(config)
    for index, group in enumerate(groups.values()):
        microbatch = math.gcd(*(t.batch_size for t in group), *choices)
        max_steps = tuple(_max_steps(config, t.batch_size, num_train) for t in group)
        total_ticks = max(
            s * t.batch_size // microbatch for s, t in zip(max_steps, group, strict=True)
        )
        if warmup_epochs > 0:
            warmup = tuple(int(warmup_epochs * num_train // t.batch_size) for t in group)
        else:
            warmup = (int(config.get("warmup_steps", 0)),) * len(group)
        warmup = tuple(_given(t.warmup_steps, w) for t, w in zip(group, warmup, strict=True))
        largest = max((*(t.batch_size for t in group), *choices))
        plans.append(
            PopulationPlan(
                index=index,
                trials=tuple(group),
                microbatch=microbatch,
                max_steps=max_steps,
                warmup_steps=warmup,
                total_ticks=total_ticks,
                eval_ticks=max(1, eval_every * largest // microbatch),
                decay_rate=float(config.get("decay_rate", 0.1)),
                end_factor=float(config.get("end_factor", 0.0)),
                momentum=optim.static_first_moment(config),
                batch_choices=choices,
            )
        )
    return plans


def validate_config(config, num_train: int | None = None) -> None:
    """Every check that needs no compilation; ``num_train`` enables the data-dependent ones."""
    optim.validate_optim_config(config)
    steps = int(config.get("num_steps", 0) or 0)
    epochs = float(config.get("num_epochs", 0) or 0)
    if not math.isfinite(epochs) or epochs < 0:
        _fail("num_epochs", epochs, "must be a finite number >= 0")
    if steps <= 0 and epochs <= 0:
        _fail("num_steps", steps, "must be positive (or set config.num_epochs > 0)")
    if int(config.eval_every) <= 0:
        _fail("eval_every", config.eval_every, "must be a positive number of steps")
    patience = int(config.get("patience", 0))
    if patience < 0:
        _fail("patience", patience, "must be >= 0 evaluations (0 turns early stopping off)")
    min_delta = float(config.get("min_delta", 0.0))
    if not math.isfinite(min_delta) or min_delta < 0:
        _fail("min_delta", min_delta, "must be a finite number >= 0")
    axis = config.get("batch_axis", "vmap")
    if axis not in BATCH_AXES:
        _fail("batch_axis", axis, f"is unknown; allowed: {', '.join(BATCH_AXES)}")
    if config.get("precision", "float32") not in PRECISIONS:
        _fail("precision", config.precision, f"is unknown; allowed: {', '.join(PRECISIONS)}")
    if int(config.get("max_accumulation", 8)) < 1:
        _fail("max_accumulation", config.max_accumulation, "must be >= 1 micro-batch")
    trials = build_trials(config)
    if num_train is not None:
        for size in {t.batch_size for t in trials}:
            if size > num_train:
                _fail(
                    "batch_size" if not config.get("batch_sizes") else "batch_sizes",
                    size,
                    f"is larger than the training set ({num_train} examples)",
                )
        warmup = int(config.get("warmup_steps", 0) or 0)
        if warmup > 0 and not float(config.get("warmup_epochs", 0.0) or 0.0) > 0:
            for size in sorted({t.batch_size for t in trials}):
                budget = _max_steps(config, size, num_train)
                if warmup >= budget:
                    _fail(
                        "warmup_steps",
                        warmup,
                        f"is not below the budget of {budget} steps (batch size {size}): the "
                        "rate would never reach its peak",
                    )
    _check_run_keys(config)


INF = math.inf
# key -> (lowest, highest, lowest allowed, highest allowed, what the key means)
_RUN_KEY_RANGES = {
    "train_eval_examples": (1, INF, True, False, "training examples to measure the training loss"),
    "max_population": (0, INF, True, False, "trials per compiled program (0 = no limit)"),
    "memory_fraction": (0.0, 1.0, False, True, "share of device memory a population may use"),
    "checkpoint_every": (0, INF, True, False, "evaluations between state checkpoints (0 = end)"),
    "min_steps": (0, INF, True, False, "steps before early stopping may stop a trial"),
    "compact_fraction": (0.0, 1.0, True, False, "share of training rows that triggers compaction"),
    "log_every_s": (0.0, INF, True, False, "seconds between progress lines"),
    "divergence_factor": (0.0, INF, False, False, "x ln(classes): a batch loss above diverges"),
    "warmup_steps": (0, INF, True, False, "steps of linear warmup"),
}
REPORT_X = ("learning_rate", "batch_size", "seed", "weight_decay", "base_learning_rate")


def _check_run_keys(config) -> None:
    """The keys of how a study runs and reports: each in its range, named when not."""
    for key, (low, high, low_ok, high_ok, meaning) in _RUN_KEY_RANGES.items():
        value = config.get(key, None)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            _fail(key, value, f"must be a number ({meaning})")
        above = low < value or (low_ok and value == low)
        below = value < high or (high_ok and value == high)
        if not (above and below):
            interval = f"{'[' if low_ok else '('}{low:g}, {high:g}{']' if high_ok else ')'}"
            _fail(key, value, f"must be in {interval} ({meaning})")
    x = config.get("report_x", "learning_rate")
    model_keys = set(config.model.keys()) if "model" in config else set()
    model_keys |= set((config.get("model_grid", None) or {}).keys())
    allowed = (*REPORT_X, *sorted(model_keys - {"name"}))
    if x not in allowed:
        _fail("report_x", x, f"is not a hyperparameter of the study; allowed: {', '.join(allowed)}")


def take_trials(plan: PopulationPlan, positions) -> PopulationPlan:
    """The plan of a chunk of ``plan``'s trials (same micro-batch and evaluation interval)."""
    positions = list(positions)
    trials = tuple(plan.trials[i] for i in positions)
    max_steps = tuple(plan.max_steps[i] for i in positions)
    return dataclasses.replace(
        plan,
        trials=trials,
        max_steps=max_steps,
        warmup_steps=tuple(plan.warmup_steps[i] for i in positions),
        total_ticks=max(
            s * t.batch_size // plan.microbatch for s, t in zip(max_steps, trials, strict=True)
        ),
    )


def fit_plans(
    plans: list[PopulationPlan],
    specs: list[PopulationSpec],
    input_shape: tuple[int, ...],
    *,
    target_shape: tuple[int, ...] = (),
    target_dtype: str = "int32",
    num_devices: int,
    memory_fraction: float,
    max_population: int,
    slots: int = 0,
) -> tuple[list[PopulationPlan], list[float]]:
    """Splits plans that would not fit into chunks; returns them with their estimates (MiB).

    With ``slots`` (an adaptive study) a plan's program holds that many rows, whatever its
    number of trials; it is never split, and slots that do not fit are an error.
    """
    budget = memory_fraction * memory.device_memory_bytes() * num_devices
    fitted, estimates = [], []
    for plan, spec in zip(plans, specs, strict=True):
        per_trial = memory.estimate_trial(spec, input_shape, target_shape, target_dtype).total
        size = len(plan.trials)
        limit = max(1, int(budget // max(per_trial, 1)))
        if max_population > 0:
            limit = min(limit, max_population)
        if slots:
            rows = min(slots, size)
            if rows > limit:
                _fail(
                    "slots", slots, f"is more rows than fit in memory or max_population ({limit})"
                )
            fitted.append(plan)
            estimates.append(rows * per_trial / 2**20)
            continue
        if limit >= size:
            chunks = [plan]
        else:
            if limit >= num_devices:
                limit -= limit % num_devices
            chunks = [
                take_trials(plan, range(start, min(start + limit, size)))
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


def optimizer_options(config) -> tuple[tuple[str, Any], ...]:
    """The static options of ``config.optimizer`` that the config sets."""
    names = {
        "momentum": ("momentum", "nesterov"),
        "adam": ("b1", "b2", "eps"),
        "adagrad": ("initial_accumulator_value", "eps"),
        "rmsprop": ("rms_decay", "eps"),
    }
    return tuple((k, config[k]) for k in names.get(config.optimizer, ()) if k in config)


def population_spec(
    config,
    model: Model,
    plan: PopulationPlan,
    *,
    num_train: int,
    num_classes: int,
    task: tasks.Task,
) -> PopulationSpec:
    """The static part of ``plan``'s compiled program: the one place a spec is built.

    Divergence: a batch loss above ``divergence_factor`` x ln(classes) for a classification
    task; for other tasks only a non-finite loss (their scale is the user's).
    """
    factor = float(config.get("divergence_factor", 100.0))
    limit = factor * math.log(num_classes) if task.classification and num_classes > 1 else math.inf
    return PopulationSpec(
        model=model,
        optimizer=config.optimizer,
        schedule=config.schedule,
        microbatch=plan.microbatch,
        accumulates=any(
            b != plan.microbatch
            for b in (*(t.batch_size for t in plan.trials), *plan.batch_choices)
        ),
        num_train=num_train,
        optimizer_options=optimizer_options(config),
        patience=int(config.get("patience", 0)),
        min_delta=float(config.get("min_delta", 0.0)),
        min_steps=int(config.get("min_steps", 0)),
        eval_batch_size=int(config.get("eval_batch_size", 1024)),
        divergence_loss=limit,
        task=task,
        per_trial_momentum=any(t.momentum is not None for t in plan.trials),
    )
