"""The typed sections of a study, as :mod:`hpjax.study.spec` parses them from a config.

Frozen dataclasses of plain values: what every part below the binaries reads instead of the
``ConfigDict`` (the populations, the host loop, the schedulers, the outputs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from hpjax.study import space as space_lib
from hpjax.study import trials as trials_lib


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """The optimizer family, its static options, and the schedule shared by the trials."""

    name: str
    schedule: str
    options: tuple[tuple[str, Any], ...]  # static options passed to optim.direction
    first_moment: float  # momentum (optimizer 'momentum') or Adam's b1, for trials setting none
    warmup_steps: int
    warmup_epochs: float  # > 0: warmup in epochs (per batch size) instead of steps
    decay_rate: float
    end_factor: float
    # an optax factory's keywords a trial may set, each with its value for trials that do not
    # (config.optimizer_kwargs, else the factory's default; None when it has no number)
    factory_defaults: tuple[tuple[str, Any], ...] = ()

    @property
    def factory_keys(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.factory_defaults)


@dataclasses.dataclass(frozen=True)
class BudgetSpec:
    """How long each trial trains, how often it is evaluated, and when it stops early."""

    num_steps: int
    num_epochs: float  # > 0: the budget in epochs instead of num_steps
    eval_every: int
    patience: int
    min_delta: float
    min_steps: int
    checkpoint_every: int  # evaluations between state checkpoints (0 = at the end only)
    divergence_factor: float
    eval_batch_size: int
    eval_growth: float = 0.0  # > 0: evaluations at most this fraction of the steps apart

    def max_steps(self, batch_size: int, num_train: int) -> int:
        """Optimizer updates in the budget of a trial with ``batch_size``."""
        if self.num_epochs > 0:
            return max(1, int(self.num_epochs * num_train // batch_size))
        return self.num_steps


@dataclasses.dataclass(frozen=True)
class PlacementSpec:
    """Where and in which programs the trials run."""

    num_devices: int
    batch_axis: str
    max_accumulation: int
    compact_fraction: float
    max_population: int
    memory_fraction: float
    train_eval_examples: int
    precision: str
    train_data: str = "auto"  # auto | device | host: where the training set lives


@dataclasses.dataclass(frozen=True)
class AdaptiveSpec:
    """Slots, the study's budget of trial-steps, and the scheduler (ASHA or PBT)."""

    scheduler: str  # none | asha | pbt
    slots: int  # rows of the program (0 = a row per trial)
    budget_trial_steps: int
    asha_min_steps: int
    asha_eta: float
    pbt_interval: int
    pbt_fraction: float
    pbt_resample_probability: float
    pbt_seed: int
    pbt_keys: tuple[str, ...]  # the hyperparameters PBT explores
    dimensions: tuple[space_lib.Dimension, ...]  # the study's space (PBT resamples from it)

    @property
    def is_adaptive(self) -> bool:
        """Whether trials share rows (a queue, ASHA or PBT) rather than one row each."""
        return self.slots > 0 or self.scheduler != "none"

    @property
    def batch_choices(self) -> tuple[int, ...]:
        """The batch sizes PBT may move a member between (its space's choices), else ()."""
        if self.scheduler != "pbt":
            return ()
        dim = next((d for d in self.dimensions if d.key == "batch_size"), None)
        return tuple(sorted(int(b) for b in dim.choices)) if dim else ()


@dataclasses.dataclass(frozen=True)
class OutputSpec:
    """What the study writes besides its results, how it shows progress, and what it does with
    a workdir that holds results already."""

    restart: bool  # discard this study's saved state and results; train it afresh
    overwrite: bool  # replace a workdir that holds a different study
    log_every_s: float
    make_report: bool
    tensorboard: str  # auto | on | off
    optuna_storage: str  # auto | off | sqlite | a database URL
    report_x: str


@dataclasses.dataclass(frozen=True)
class StudySpec:
    """A study, parsed and checked: what every part below the binaries reads."""

    trials: tuple[trials_lib.Trial, ...]
    model: Mapping[str, Any]  # config.model as a plain dict (name and keys)
    optimizer: OptimizerSpec
    budget: BudgetSpec
    placement: PlacementSpec
    adaptive: AdaptiveSpec
    outputs: OutputSpec
    source: trials_lib.TrialSource  # how the config names its trials
    config: Mapping[str, Any]  # the whole config as JSON: config.json and the study's identity
    # config.optimizers: every optimizer of the study's optimizer axis (empty: just optimizer)
    optimizer_choices: tuple[OptimizerSpec, ...] = ()

    @property
    def optimizers(self) -> tuple[OptimizerSpec, ...]:
        """Every optimizer the study trains with."""
        return self.optimizer_choices or (self.optimizer,)

    def optimizer_of(self, trial: trials_lib.Trial) -> OptimizerSpec:
        """The optimizer ``trial`` trains with: the one it names, else the study's."""
        return next((o for o in self.optimizers if o.name == trial.optimizer), self.optimizer)

    def model_config(self, architecture: tuple[tuple[str, Any], ...] = ()) -> dict[str, Any]:
        """The model's keys with one architecture's values (and the precision unless float32)."""
        model = dict(self.model) | dict(architecture)
        if self.placement.precision != "float32":
            model["precision"] = self.placement.precision
        return model

    @property
    def architectures(self) -> tuple[tuple[tuple[str, Any], ...], ...]:
        return tuple(dict.fromkeys(t.architecture for t in self.trials))

    def with_trials(self, trials: tuple[trials_lib.Trial, ...]) -> StudySpec:
        """The same study over other trials (a search's round, an extension's waves)."""
        return dataclasses.replace(self, trials=tuple(trials))


@dataclasses.dataclass(frozen=True)
class ProcessSpec:
    """What a binary sets up before JAX starts: CPU devices, compilation cache, other hosts."""

    cpu_devices: int  # the host CPU as this many devices (0 = one per core)
    compilation_cache: str  # "" = off
    distributed: bool
    coordinator_address: str  # "" = found by JAX
    num_processes: int  # 0 = found by JAX
    process_id: int  # -1 = found by JAX


@dataclasses.dataclass(frozen=True)
class ReplaySpec:
    """Schedulers replayed on a finished dense study's curves (``config.replay``)."""

    run: bool
    schedulers: str  # "" = the default grid
    orders: int
    slots: int
    seed: int
