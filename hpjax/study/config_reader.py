"""Typed reads of a study's ``ConfigDict``: each names its key in one line when a value is
wrong (the parsers of :mod:`hpjax.study.spec` and :mod:`hpjax.study.optimizer_section`)."""

from __future__ import annotations

import math
import numbers
from typing import Any

import ml_collections

from hpjax.config import default_config
from hpjax.errors import config_error


def fail(key: str, value: Any, why: str) -> None:
    raise config_error(key, value, why)


def is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


class Reader:
    """Typed reads of a ConfigDict, each naming its key when the value has the wrong type."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.defaults = default_config()

    def raw(self, key: str) -> Any:
        """The config's value of ``key`` (``a.b`` for a section's key), else the table's."""
        node = self.config
        for part in key.split("."):
            if node is None or part not in node:
                return self._default(key)
            node = node[part]
        return node

    def _default(self, key: str) -> Any:
        node = self.defaults
        for part in key.split("."):
            if node is None or part not in node:
                return None
            node = node[part]
        return node

    def integer(self, key: str, low: int | None = None, meaning: str = "") -> int:
        value = self.raw(key)
        note = f" ({meaning})" if meaning else ""
        if not is_int(value) or (low is not None and value < low):
            bound = "" if low is None else f" >= {low}"
            fail(key, value, f"must be an integer{bound}" + note)
        return int(value)

    def number(
        self,
        key: str,
        low: float = -math.inf,
        high: float = math.inf,
        *,
        open_low: bool = False,
        open_high: bool = False,
        meaning: str = "",
    ) -> float:
        value = self.raw(key)
        note = f" ({meaning})" if meaning else ""
        if not is_real(value) or math.isnan(value):
            fail(key, value, "must be a number" + note)
        above = value > low if open_low else value >= low
        below = value < high if open_high else value <= high
        if not (above and below):
            interval = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
            fail(key, value, f"must be in {interval}" + note)
        return float(value)

    def choice(self, key: str, allowed: tuple[str, ...]) -> str:
        value = self.raw(key)
        if value not in allowed:
            fail(key, value, f"is unknown; allowed: {', '.join(allowed)}")
        return str(value)

    def flag(self, key: str) -> bool:
        value = self.raw(key)
        if not isinstance(value, bool):
            fail(key, value, "must be True or False")
        return value

    def section(self, key: str) -> dict:
        value = self.raw(key)
        if value is None:
            return {}
        return value.to_dict() if hasattr(value, "to_dict") else dict(value)
