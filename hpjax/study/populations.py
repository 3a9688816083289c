"""From a study's trials to populations: which trials share a compiled program, and its loop.

Trials that share static structure (the architecture, and batch sizes that can share a
micro-batch) form one population, compiled once. Each population is planned in ticks of its
micro-batch; a population too large for the device memory is split into chunks run in turn.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from absl import logging

from hpjax.engine import memory, population, tasks
from hpjax.engine.population import PopulationSpec
from hpjax.errors import config_error
from hpjax.models import Model
from hpjax.study.sections import StudySpec
from hpjax.study.trials import Trial


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
    momentum: float = 0.9  # the study's momentum (or Adam's b1) for trials that set none
    batch_choices: tuple[int, ...] = ()  # sizes a trial may move to later (PBT's explore)
    ticks_per_step: int = 1  # of the largest batch size
    eval_growth: float = 0.0  # > 0: evaluation windows grow with the steps taken
    # an optax factory's keywords: the value of each for trials that do not set it
    optimizer_defaults: tuple[tuple[str, Any], ...] = ()

    @property
    def optimizer_keys(self) -> tuple[str, ...]:
        """The factory's keywords some trial of the plan sets: per-trial values, traced."""
        return tuple(sorted({k for t in self.trials for k, _ in t.optimizer_values}))

    def optimizer_value(self, trial: Trial, key: str) -> float:
        """``trial``'s value of the factory keyword ``key``: its own, else the study's."""
        return dict(trial.optimizer_values).get(key, dict(self.optimizer_defaults).get(key))

    def window_ticks(self, tick: int) -> int:
        """Ticks from ``tick`` to the next evaluation: ``eval_ticks``; with ``eval_growth``, the
        steps taken (of the largest batch size) times that fraction, at least one step and at
        most ``eval_ticks``, so that an evaluation is never further than that from the last."""
        if self.eval_growth <= 0:
            return self.eval_ticks
        steps = max(1, math.floor(self.eval_growth * (tick // self.ticks_per_step)))
        return min(self.eval_ticks, steps * self.ticks_per_step)

    @property
    def evaluates_by_row(self) -> bool:
        """Whether a window's end is not every trial's evaluation: several batch sizes (and no
        PBT choices or growing windows), the windows ``eval_every`` steps of their gcd."""
        several = len({t.batch_size for t in self.trials}) > 1
        return several and self.eval_growth <= 0 and not self.batch_choices

    def due(self, before: tuple, after: tuple, max_steps: np.ndarray, eval_every: int):
        """The rows evaluated at a window's end, as each would be alone: (steps, diverged)
        ``before`` and ``after`` the window; a row whose own step reached a multiple of
        ``eval_every`` or its budget in the window, or that diverged in it."""
        steps, diverged = after
        at_mark = (steps % eval_every == 0) | (steps >= max_steps)
        return ((steps != before[0]) & at_mark) | (diverged & ~before[1])

    @property
    def architecture(self) -> dict[str, Any]:
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
            dropout=[_given(t.dropout, 0.0) for t in self.trials],
            label_smoothing=[_given(t.label_smoothing, 0.0) for t in self.trials],
            max_steps=list(self.max_steps),
            optimizer_values={
                k: [self.optimizer_value(t, k) for t in self.trials] for k in self.optimizer_keys
            },
        )


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value


def _fail(key: str, value: Any, why: str) -> None:
    raise config_error(key, value, why)


def plan_populations(
    spec: StudySpec, trials: Sequence[Trial], num_train: int
) -> list[PopulationPlan]:
    """Groups ``trials`` into populations and plans each one's loop in ticks of its micro-batch.

    Each architecture (and each optimizer of config.optimizers) is its own population; batch
    sizes are grouped by :func:`batch_groups`.
    """
    placement, budget, opt = spec.placement, spec.budget, spec.optimizer
    group_of = batch_groups(
        sorted({t.batch_size for t in trials}), placement.batch_axis, placement.max_accumulation
    )
    groups: dict[tuple, list[Trial]] = {}
    for trial in trials:
        key = (trial.architecture, trial.optimizer, group_of[trial.batch_size])
        groups.setdefault(key, []).append(trial)
    choices = spec.adaptive.batch_choices
    plans = []
    for index, group in enumerate(groups.values()):
        own = spec.optimizer_of(group[0])  # the population's optimizer (config.optimizers)
        microbatch = math.gcd(*(t.batch_size for t in group), *choices)
        max_steps = tuple(budget.max_steps(t.batch_size, num_train) for t in group)
        total_ticks = max(
            s * t.batch_size // microbatch for s, t in zip(max_steps, group, strict=True)
        )
        if opt.warmup_epochs > 0:
            warmup = tuple(int(opt.warmup_epochs * num_train // t.batch_size) for t in group)
        else:
            warmup = (opt.warmup_steps,) * len(group)
        warmup = tuple(_given(t.warmup_steps, w) for t, w in zip(group, warmup, strict=True))
        largest = max((*(t.batch_size for t in group), *choices))
        # A window is eval_every steps of a batch of the sizes' gcd (of the largest under PBT,
        # whose members move between sizes): each trial's every eval_every-th step of its own
        # then ends a window, where it alone is evaluated (PopulationRun._due).
        unit = largest if choices else math.gcd(*(t.batch_size for t in group))
        plans.append(
            PopulationPlan(
                index=index,
                trials=tuple(group),
                microbatch=microbatch,
                max_steps=max_steps,
                warmup_steps=warmup,
                total_ticks=total_ticks,
                eval_ticks=max(1, budget.eval_every * unit // microbatch),
                decay_rate=opt.decay_rate,
                end_factor=opt.end_factor,
                momentum=own.first_moment,
                batch_choices=choices,
                ticks_per_step=largest // microbatch,
                eval_growth=budget.eval_growth,
                optimizer_defaults=own.factory_defaults,
            )
        )
    return plans


def plan_waves(spec: StudySpec, waves: Sequence[Sequence[Trial]], num_train: int):
    """Each wave of trials planned on its own (the earlier ones exactly as when they ran),
    numbered in turn."""
    plans = []
    for wave in waves:
        plans += plan_populations(spec, wave, num_train)
    return [dataclasses.replace(p, index=i) for i, p in enumerate(plans)]


def population_spec(
    spec: StudySpec,
    model: Model,
    plan: PopulationPlan,
    *,
    num_train: int,
    num_classes: int,
    task: tasks.Task,
    augment: Callable | None = None,
    num_devices: int = 1,
) -> PopulationSpec:
    """The static part of ``plan``'s compiled program: the one place a spec is built.

    Divergence: a batch loss above ``divergence_factor`` x ln(classes) for a classification
    task; for other tasks only a non-finite loss (their scale is the user's). The rows train
    in groups as :func:`hpjax.engine.population.rows_per_group` says for ``num_devices``.
    """
    budget, optimizer = spec.budget, spec.optimizer_of(plan.trials[0])
    classes = task.classification and num_classes > 1
    limit = budget.divergence_factor * math.log(num_classes) if classes else math.inf
    return PopulationSpec(
        model=model,
        optimizer=optimizer.name,
        schedule=optimizer.schedule,
        microbatch=plan.microbatch,
        accumulates=any(
            b != plan.microbatch
            for b in (*(t.batch_size for t in plan.trials), *plan.batch_choices)
        ),
        num_train=num_train,
        optimizer_options=optimizer.options,
        patience=budget.patience,
        min_delta=budget.min_delta,
        min_steps=budget.min_steps,
        eval_batch_size=budget.eval_batch_size,
        divergence_loss=limit,
        task=task,
        per_trial_momentum=any(t.momentum is not None for t in plan.trials),
        traced_options=plan.optimizer_keys,
        label_smoothing=any(t.label_smoothing is not None for t in plan.trials),
        augment=augment,
        rows_per_group=population.rows_per_group(
            min(len(plan.trials), spec.adaptive.slots or len(plan.trials)),
            num_devices,
            model.batch_statistics,
        ),
    )


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
    eval_examples: int | None = None,
) -> tuple[list[PopulationPlan], list[float]]:
    """Splits plans that would not fit into chunks; returns them with their estimates (MiB).

    With ``slots`` (an adaptive study) a plan's program holds that many rows, whatever its
    number of trials; it is never split, and slots that do not fit are an error.
    ``eval_examples``: the largest set the trials are evaluated on (validation or test).
    """
    budget = memory_fraction * memory.device_memory_bytes() * num_devices
    fitted, estimates = [], []
    for plan, spec in zip(plans, specs, strict=True):
        per_trial = memory.estimate_trial(
            spec, input_shape, target_shape, target_dtype, eval_examples
        ).total
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
