"""How results are named in tables, legends and sentences: which columns are hyperparameters,
short labels for a trial, number formatting."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from hpjax.results.files import is_result_column

# Short names for legend labels, in the order labels list them.
SHORT_NAMES = {
    "model": "",
    "optimizer": "",
    "schedule": "",
    "cell": "",
    "num_layers": "layers",
    "hidden_units": "units",
    "channels": "ch",
    "learning_rate": "lr",
    "batch_size": "bs",
    "weight_decay": "wd",
    "seed": "seed",
}


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def is_finite_number(v: Any) -> bool:
    """A real number (not a bool, not None) that is finite: what a result cell may be used as."""
    return is_number(v) and math.isfinite(v)


def format_value(v: Any, floatfmt: str = ".4g") -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return format(v, floatfmt)
    return str(v)


def hparam_columns(summary: Sequence[Mapping]) -> list[str]:
    """The hyperparameter columns of a summary, known ones first, then extra ones."""
    seen: list[str] = []
    for row in summary:
        seen += [k for k in row if k not in seen]
    known = [k for k in SHORT_NAMES if k in seen]
    return known + [k for k in seen if k not in known and not is_result_column(k)]


def varying_hparams(summary: Sequence[Mapping]) -> list[str]:
    """The hyperparameter columns whose value differs between trials.

    ``base_learning_rate`` counts only where a scaling rule made it differ from the rate.
    """
    varying = [k for k in hparam_columns(summary) if len({repr(r.get(k)) for r in summary}) > 1]
    pbt = any("exploits" in r for r in summary)  # PBT moved the rate; the base is the first
    if pbt or all(r.get("base_learning_rate") == r.get("learning_rate") for r in summary):
        varying = [k for k in varying if k != "base_learning_rate"]
    return varying


def trial_label(row: Mapping, keys: Sequence[str]) -> str:
    """A legend label like ``3: lr=0.01 bs=32`` from a summary row."""
    parts = []
    for k in keys:
        if row.get(k) is None:
            continue
        short = SHORT_NAMES.get(k, k)
        value = format_value(row[k], ".3g")
        parts.append(f"{short}={value}" if short else value)
    label = f"{row.get('trial')}: " + " ".join(parts) if parts else f"trial {row.get('trial')}"
    return label + (" (diverged)" if row.get("status") == "diverged" else "")
