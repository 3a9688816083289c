"""One way to name trials: every form a config takes ends as points of a space and a sampler.

- The product of ``learning_rates`` x ``batch_sizes`` x ``seeds`` x ``weight_decays`` (and the
  architectures of ``model_grid``) is the ``grid`` sampler over those choices; with
  ``lr_sampling`` the rates are first drawn from ``lr_range`` by the ``random`` or
  ``quasi_random`` sampler, a one-dimensional space.
- ``space`` with ``space_sampler`` draws points of a space, crossed with every grid axis
  (``model_grid``, ``learning_rates``, ``batch_sizes``, ``seeds``, ``weight_decays``, ...) that
  it does not hold; a list of several values for a key the space holds is refused.
- ``trials`` (JSON) and a search's proposals are points given as they are.

Every point then becomes a :class:`Trial` through :func:`make_trial`, the one place a trial is
made: the learning-rate scaling rule applied, each value checked.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from hpjax.engine import hparams
from hpjax.errors import config_error
from hpjax.study import space as space_lib

LR_SAMPLINGS = ("grid", "log_uniform", "quasi_random")
LR_SCALINGS = ("fixed", "linear", "sqrt")
_LR_SAMPLERS = {"log_uniform": "random", "quasi_random": "quasi_random"}


@dataclasses.dataclass(frozen=True)
class Trial:
    """One trial's hyperparameters; ``index`` is its row in the summary.

    Its fields are the searchable hyperparameters of :data:`hpjax.engine.hparams.HPARAMS`; the
    optional ones are None where the study's value applies.
    """

    index: int
    learning_rate: float  # after the batch-size scaling rule
    batch_size: int
    seed: int
    weight_decay: float
    base_learning_rate: float  # the rate given, before scaling
    architecture: tuple[tuple[str, Any], ...] = ()  # model keys that differ from config.model
    warmup_steps: int | None = None
    decay_rate: float | None = None
    end_factor: float | None = None
    momentum: float | None = None  # momentum, or Adam's b1
    dropout: float | None = None
    label_smoothing: float | None = None
    # an optax factory's keywords this trial sets (Lion's b1): sorted (name, value) pairs
    optimizer_values: tuple[tuple[str, float], ...] = ()
    optimizer: str = ""  # one of config.optimizers; "" = the study's optimizer

    @property
    def architecture_dict(self) -> dict:
        return dict(self.architecture)

    def value(self, key: str) -> Any:
        """A hyperparameter, an optimizer factory's keyword or an architecture key
        (``model.KEY`` or ``KEY``) of this trial."""
        if key in hparams.SEARCHABLE or key in ("base_learning_rate", "optimizer"):
            return getattr(self, key)
        optimizer_values = dict(self.optimizer_values)
        if key in optimizer_values:
            return optimizer_values[key]
        return self.architecture_dict.get(key.removeprefix("model."))


@dataclasses.dataclass(frozen=True)
class TrialSource:
    """How a config names its trials (read and checked by :mod:`hpjax.study.spec`)."""

    learning_rates: tuple[float, ...] = (0.01,)
    lr_sampling: str = "grid"
    lr_range: tuple[float, float] = (1e-4, 1e-1)
    num_lr_samples: int = 0
    sampling_seed: int = 0
    seeds: tuple[int, ...] = (0,)
    batch_sizes: tuple[int, ...] = (32,)
    batch_size_key: str = "batch_size"  # the key that set them, for error messages
    weight_decays: tuple[float, ...] = (0.0,)
    dropouts: tuple[float, ...] = (0.0,)
    label_smoothings: tuple[float, ...] = (0.0,)
    lr_scaling: str = "fixed"
    base_batch_size: int = 0
    explicit: tuple[Mapping[str, Any], ...] = ()  # config.trials, or a search's proposals
    dimensions: tuple[space_lib.Dimension, ...] = ()  # config.space
    space_sampler: str = "quasi_random"
    num_samples: Any = 0
    model_grid: tuple[tuple[str, tuple], ...] = ()  # model key -> values
    optimizer_keys: tuple[str, ...] = ()  # an optax factory's keywords a trial may set
    optimizers: tuple[str, ...] = ()  # config.optimizers: an axis of the optimizers compared


def scaled_learning_rate(source: TrialSource, learning_rate: float, batch_size: int) -> float:
    """The rate for ``batch_size`` under ``source.lr_scaling`` (Goyal et al. 2017 for linear).

    fixed: the same rate for every batch size; linear: ``lr * B / B0``; sqrt: ``lr * sqrt(B/B0)``,
    with ``B0 = base_batch_size``.
    """
    if source.lr_scaling == "fixed":
        return learning_rate
    ratio = batch_size / source.base_batch_size
    return learning_rate * (ratio if source.lr_scaling == "linear" else math.sqrt(ratio))


def learning_rates(source: TrialSource) -> tuple[float, ...]:
    """The product's rates: the listed ones, or ``num_lr_samples`` drawn in ``lr_range`` on a
    log scale (``log_uniform``: independent draws; ``quasi_random``: scrambled Sobol)."""
    if source.lr_sampling == "grid":
        return source.learning_rates
    low, high = source.lr_range
    dimension = space_lib.Dimension("learning_rate", low, high, "log")
    points = space_lib.sample(
        [dimension],
        _LR_SAMPLERS[source.lr_sampling],
        source.num_lr_samples,
        source.sampling_seed,
    )
    return tuple(float(p["learning_rate"]) for p in points)


def architectures(source: TrialSource) -> tuple[tuple[tuple[str, Any], ...], ...]:
    """The product of ``model_grid`` as sorted (key, value) tuples; ``((),)`` if none."""
    dimensions = [space_lib.Dimension(k, choices=v) for k, v in source.model_grid]
    return tuple(tuple(p.items()) for p in space_lib.sample(dimensions, "grid", 0, 0))


def _regularisation(source: TrialSource) -> dict[str, tuple[float, ...]]:
    """The dropout rates and label smoothings a config gives, where it gives more than none:
    trials of a study without them carry no such column."""
    given = {"dropout": source.dropouts, "label_smoothing": source.label_smoothings}
    return {key: values for key, values in given.items() if values != (0.0,)}


def _defaults(source: TrialSource) -> dict[str, Any]:
    """The value of each hyperparameter a point does not set: the config's first."""
    return {
        "learning_rate": learning_rates(source)[0],
        "batch_size": source.batch_sizes[0],
        "seed": source.seeds[0],
        "weight_decay": source.weight_decays[0],
    } | {key: values[0] for key, values in _regularisation(source).items()}


def make_trial(source: TrialSource, index: int, point: Mapping[str, Any], where: str) -> Trial:
    """The trial of ``point`` (hyperparameter -> value, ``model.KEY`` -> value, or an
    ``architecture`` tuple), its rate scaled; ``where`` names it in errors."""
    allowed = (*hparams.SEARCHABLE, *source.optimizer_keys)
    if source.optimizers:
        allowed += ("optimizer",)
    unknown = [
        k for k in point if k not in (*allowed, "architecture") and not k.startswith("model.")
    ]
    if unknown or "learning_rate" not in point:
        raise config_error(
            where,
            dict(point),
            f"needs learning_rate and may set {', '.join(allowed[1:])} or model.KEY",
        )
    optimizer = point.get("optimizer", "")
    if source.optimizers and optimizer not in source.optimizers:
        raise config_error(
            f"{where}.optimizer",
            optimizer or None,
            f"must name one of config.optimizers: {', '.join(source.optimizers)}",
        )
    optimizer_values = {}
    for key in source.optimizer_keys:
        if key not in point:
            continue
        value = point[key]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value):
            raise config_error(
                f"{where}.{key}", value, "must be a finite number (a per-trial optimizer keyword)"
            )
        optimizer_values[key] = float(value)
    lr, size = point["learning_rate"], point["batch_size"]
    if (
        isinstance(lr, bool)
        or not isinstance(lr, int | float)
        or not (math.isfinite(lr) and lr > 0)
    ):
        raise config_error(f"{where}.learning_rate", lr, "must be a positive finite number")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise config_error(f"{where}.batch_size", size, "must be a positive integer")
    optional = {}
    for key in hparams.OPTIONAL:
        if key not in point:
            continue
        value = point[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise config_error(f"{where}.{key}", value, "must be a number >= 0")
        if key in ("momentum", "dropout", "label_smoothing") and value >= 1:
            raise config_error(f"{where}.{key}", value, "must be in [0, 1)")
        optional[key] = int(value) if hparams.BY_NAME[key].integer else float(value)
    architecture = dict(point.get("architecture", ()))
    architecture.update(
        {k.removeprefix("model."): v for k, v in point.items() if k.startswith("model.")}
    )
    return Trial(
        index=index,
        learning_rate=scaled_learning_rate(source, float(lr), int(size)),
        batch_size=int(size),
        seed=int(point["seed"]),
        weight_decay=float(point["weight_decay"]),
        base_learning_rate=float(lr),
        architecture=tuple(sorted(architecture.items())),
        optimizer_values=tuple(sorted(optimizer_values.items())),
        optimizer=optimizer,
        **optional,
    )


def _grid_axes(source: TrialSource) -> list[space_lib.Dimension]:
    """The product's axes, each a dimension of its choices: architectures first."""
    optimizers = [space_lib.Dimension("optimizer", choices=source.optimizers)]
    return [
        space_lib.Dimension("architecture", choices=architectures(source)),
        *(optimizers if source.optimizers else []),
        space_lib.Dimension("learning_rate", choices=learning_rates(source)),
        space_lib.Dimension("batch_size", choices=source.batch_sizes),
        space_lib.Dimension("seed", choices=source.seeds),
        space_lib.Dimension("weight_decay", choices=source.weight_decays),
    ] + [space_lib.Dimension(k, choices=v) for k, v in _regularisation(source).items()]


# The config key of each grid axis, for the one line that refuses two sources of one value.
_AXIS_KEYS = {
    "seed": "seeds",
    "weight_decay": "weight_decays",
    "dropout": "dropouts",
    "label_smoothing": "label_smoothings",
}


def axis_key(source: TrialSource, axis: str) -> str:
    """The config key that lists the values of the grid axis ``axis``."""
    if axis == "batch_size":
        return source.batch_size_key
    return {"architecture": "model_grid", **_AXIS_KEYS}.get(axis, f"{axis}s")


def crossed_axes(source: TrialSource) -> list[space_lib.Dimension]:
    """The grid axes a space is crossed with: every axis the space does not hold (a single
    value is then every trial's). An axis of several values that the space also holds gives a
    key two sources: refused in one line (the learning rate excepted, whose list has a default
    of several rates: the space's rates replace it)."""
    held = {d.key for d in source.dimensions}
    axes = []
    for axis in _grid_axes(source):
        if axis.key not in held:
            axes.append(axis)
        elif axis.key != "learning_rate" and len(axis.choices) > 1:
            raise config_error(
                axis_key(source, axis.key),
                tuple(axis.choices),
                f"sets {axis.key}, which space.{axis.key} also sets: give it in one place "
                "(in the space, or as a list crossed with the space's points)",
            )
    return axes


def points(source: TrialSource) -> tuple[list[dict], str]:
    """Every point the source names, and what to call one in an error message.

    A space's points are crossed with the grid axes it does not hold (``model_grid``'s
    architectures outermost, then the points, then seeds and the other lists)."""
    defaults = _defaults(source)
    if source.explicit:  # each must give its rate; model_grid's architecture unless its own
        del defaults["learning_rate"]
        return [
            defaults | {"architecture": a} | dict(p)
            for a in architectures(source)
            for p in source.explicit
        ], "trials"
    if source.dimensions:
        axes = crossed_axes(source)
        drawn = space_lib.sample(
            list(source.dimensions), source.space_sampler, source.num_samples, source.sampling_seed
        )
        outer = [a for a in axes if a.key == "architecture"]
        inner = [a for a in axes if a.key != "architecture"]
        return [
            defaults | p | a | c
            for a in space_lib.sample(outer, "grid", 0, 0)
            for p in drawn
            for c in space_lib.sample(inner, "grid", 0, 0)
        ], "space"
    return space_lib.sample(_grid_axes(source), "grid", 0, 0), "trials"


def build_trials(source: TrialSource) -> tuple[Trial, ...]:
    """The study's trials, numbered in the order their source names them."""
    named, where = points(source)
    return tuple(make_trial(source, i, p, f"{where}[{i}]") for i, p in enumerate(named))


def varying_keys(trials: Sequence[Trial]) -> list[str]:
    """The hyperparameters and architecture keys that differ between ``trials``."""
    keys = [k for k in (*hparams.SEARCHABLE, "optimizer") if len({t.value(k) for t in trials}) > 1]
    optimizer_keys = sorted({k for t in trials for k, _ in t.optimizer_values})
    keys += [k for k in optimizer_keys if len({t.value(k) for t in trials}) > 1]
    arch = sorted({k for t in trials for k, _ in t.architecture})
    return keys + [k for k in arch if len({t.architecture_dict.get(k) for t in trials}) > 1]
