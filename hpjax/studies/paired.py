"""Paired comparisons over seeds: does one side beat the other by more than the seeds' noise?

Two architectures trained with the same seed share their data order and initial key, so the
difference of their losses seed by seed removes the noise the two share. :func:`compare` takes
each side's value per seed and gives the mean difference (``b`` minus ``a``) with its Student-t
interval over the shared seeds; a side wins only when that interval excludes zero, otherwise the
comparison is ``undecided``. With one shared seed it is always undecided: one seed cannot tell a
difference from noise.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hpjax.report.labels import is_finite_number

CONFIDENCE = 0.95

VERDICT_NOTE = (
    "Comparisons of two architectures are paired by seed (the same seed gives both the same data "
    "order and initial key): the mean difference of their validation losses with its 95% "
    "Student-t interval over the seeds. One side wins only when that interval excludes 0; "
    "**undecided** means the seeds do not separate the two sides, and more seeds would be needed."
)


@dataclasses.dataclass(frozen=True)
class Paired:
    """``b`` against ``a`` over the seeds both have (lower is better).

    ``difference`` is the mean of ``b - a`` over those seeds, ``low``/``high`` its interval,
    ``b_lower`` the number of seeds where ``b`` is lower, and ``winner`` ``"a"``, ``"b"`` or
    ``"undecided"``.
    """

    seeds: int
    difference: float | None
    low: float | None
    high: float | None
    b_lower: int
    winner: str


def compare(
    a: Mapping[Any, float], b: Mapping[Any, float], confidence: float = CONFIDENCE
) -> Paired:
    """``b`` against ``a``, paired by seed; seeds without a finite value on both sides are left
    out."""
    from scipy import stats  # here: importing scipy.stats takes 0.7 s of every binary's start

    shared = sorted(
        (s for s in a if s in b and is_finite_number(a[s]) and is_finite_number(b[s])), key=str
    )
    diffs = np.array([float(b[s]) - float(a[s]) for s in shared])
    if len(diffs) == 0:
        return Paired(0, None, None, None, 0, "undecided")
    mean = float(diffs.mean())
    lower = int((diffs < 0).sum())
    if len(diffs) < 2:
        return Paired(1, mean, None, None, lower, "undecided")
    half = float(
        stats.t.ppf(0.5 + confidence / 2, len(diffs) - 1)
        * diffs.std(ddof=1)
        / math.sqrt(len(diffs))
    )
    low, high = mean - half, mean + half
    winner = "b" if high < 0 else "a" if low > 0 else "undecided"
    return Paired(len(diffs), mean, low, high, lower, winner)


def describe(p: Paired, name_a: str, name_b: str) -> str:
    """One clause: ``name_b`` minus ``name_a`` with its interval, and who wins, if anyone."""
    if p.seeds == 0:
        return f"{name_b} vs {name_a}: no seed has both"
    if p.low is None:
        return (
            f"{name_b} minus {name_a} {p.difference:+.3g} on one seed: undecided (one seed "
            "cannot separate them)"
        )
    outcome = {
        "b": f"{name_b} lower",
        "a": f"{name_a} lower",
        "undecided": "undecided (the interval holds 0)",
    }[p.winner]
    return (
        f"{name_b} minus {name_a} {p.difference:+.3g} [{p.low:+.3g}, {p.high:+.3g}] over "
        f"{p.seeds} seeds, {name_b} lower in {p.b_lower} of {p.seeds}: {outcome}"
    )


def claim_verdict(comparisons: Sequence[Paired]) -> str:
    """The verdict on a claim that ``b`` beats ``a`` in each of ``comparisons``.

    ``supported`` when ``b`` wins more than half of them, ``not supported`` when ``a`` does,
    ``mixed`` when each side wins some, ``undecided`` otherwise (the seeds decide too few of
    them to say "usually" either way); ``not tested`` when there is none.
    """
    n = len(comparisons)
    if n == 0:
        return "not tested"
    wins = sum(p.winner == "b" for p in comparisons)
    losses = sum(p.winner == "a" for p in comparisons)
    if wins > n / 2:
        return "supported"
    if losses > n / 2:
        return "not supported"
    return "mixed" if wins and losses else "undecided"


def seed_values(rows: Sequence[Mapping], value: str = "best_val_loss") -> dict[Any, float]:
    """seed -> ``value`` of each row (rows of one architecture at one learning rate)."""
    return {r.get("seed"): r.get(value) for r in rows if is_finite_number(r.get(value))}
