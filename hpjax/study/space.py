"""Search spaces of several hyperparameters, and the trials a sampler draws from them.

A space maps a hyperparameter to a range ``(low, high, "log" | "linear")`` or to a tuple of
choices. Samplers: ``grid`` (the product of choice tuples), ``random`` (independent uniform draws
on each dimension's scale) and ``quasi_random`` (a scrambled Sobol sequence through
``scipy.stats.qmc``, the Deep Learning Tuning Playbook's default: it covers the space evenly
with few points and any prefix of it is still a good design). Integer hyperparameters are
rounded after the draw.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import numpy as np

from hpjax.config import as_tuple
from hpjax.engine import hparams
from hpjax.errors import config_error

SAMPLERS = ("grid", "random", "quasi_random")
SCALES = ("log", "linear")


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One axis of a space: a range on a scale, or a tuple of choices."""

    key: str
    low: float = 0.0
    high: float = 0.0
    scale: str = ""  # "log" | "linear" for a range; "" for choices
    choices: tuple = ()

    @property
    def is_range(self) -> bool:
        return bool(self.scale)

    @property
    def integer(self) -> bool:
        return self.key in hparams.INTEGER or self.key.startswith("model.")

    def at(self, unit: float) -> Any:
        """The value at ``unit`` in [0, 1) along this dimension."""
        if not self.is_range:
            return self.choices[min(int(unit * len(self.choices)), len(self.choices) - 1)]
        if self.scale == "log":
            value = self.low * (self.high / self.low) ** unit
        else:
            value = self.low + (self.high - self.low) * unit
        return int(round(value)) if self.integer else float(value)


def parse_dimension(key: str, value: Any, *, where: str, allowed: tuple[str, ...]) -> Dimension:
    """``value`` (a range or choices) as a :class:`Dimension`; one line naming ``where.key``
    when it is not one."""
    name = f"{where}.{key}"
    if key not in allowed and not ("model.KEY" in allowed and key.startswith("model.")):
        raise config_error(name, value, f"is not searchable; allowed: {', '.join(allowed)}")
    value = as_tuple(value)
    if len(value) == 3 and value[2] in SCALES:
        low, high, scale = value
        if not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in (low, high)
        ):
            raise config_error(name, value, "needs finite numeric bounds")
        if not low < high:
            raise config_error(name, value, "is a reversed or empty range: need low < high")
        if scale == "log" and low <= 0:
            raise config_error(name, value, "has a non-positive bound on a log scale")
        return Dimension(key, float(low), float(high), scale)
    if not value:
        raise config_error(name, value, "needs (low, high, 'log'|'linear') or a tuple of choices")
    return Dimension(key, choices=tuple(value))


def parse_space(
    space, *, where: str = "space", extra_keys: tuple[str, ...] = ()
) -> list[Dimension]:
    """Every dimension of a config section ``key -> range | choices``, in key order;
    ``extra_keys`` (an optax factory's keywords) are searchable beside hpjax's own."""
    space = space.to_dict() if hasattr(space, "to_dict") else dict(space or {})
    allowed = (*hparams.SEARCHABLE, *extra_keys)
    return [parse_dimension(key, space[key], where=where, allowed=allowed) for key in sorted(space)]


def sample(dimensions: list[Dimension], sampler: str, count: int, seed: int) -> list[dict]:
    """``count`` points of the space (``grid``: all of its product, ``count`` ignored)."""
    if sampler not in SAMPLERS:
        raise config_error("space_sampler", sampler, f"is unknown; allowed: {', '.join(SAMPLERS)}")
    if sampler == "grid":
        ranges = [d.key for d in dimensions if d.is_range]
        if ranges:
            raise config_error(
                f"space.{ranges[0]}", "a range", "cannot be gridded: give a tuple of values"
            )
        return [
            {d.key: v for d, v in zip(dimensions, values, strict=True)}
            for values in itertools.product(*(d.choices for d in dimensions))
        ]
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise config_error("num_samples", count, f"must be a positive integer with {sampler}")
    if sampler == "random":
        units = np.random.default_rng(seed).random((count, len(dimensions)))
    else:
        from scipy.stats import qmc  # here: importing scipy.stats takes 0.4 s of every start

        # Sobol points are balanced in powers of two: draw the next one up, keep the prefix.
        sobol = qmc.Sobol(d=len(dimensions), scramble=True, seed=seed)
        units = sobol.random(2 ** math.ceil(math.log2(count)))[:count]
    return [{d.key: d.at(u) for d, u in zip(dimensions, row, strict=True)} for row in units]


@dataclasses.dataclass(frozen=True)
class Range:
    """A range of a search space, as the Python API writes it: ``hpjax.loguniform(1e-4, 1e-1)``."""

    low: float
    high: float
    scale: str  # "log" | "linear"

    def as_config(self) -> tuple:
        return (self.low, self.high, self.scale)


@dataclasses.dataclass(frozen=True)
class Choice:
    """Choices of a search space (a grid sampler takes each): ``hpjax.choice(32, 64, 128)``."""

    values: tuple

    def as_config(self) -> tuple:
        return tuple(self.values)


def uniform(low: float, high: float) -> Range:
    """Values drawn evenly between ``low`` and ``high`` (integers for integer keys)."""
    return Range(low, high, "linear")


def loguniform(low: float, high: float) -> Range:
    """Values drawn evenly on a log scale between ``low`` and ``high`` (both > 0)."""
    return Range(low, high, "log")


def choice(*values: Any) -> Choice:
    """One of ``values``."""
    return Choice(tuple(values))
