"""The width-transfer study's analysis: how far the best learning rate moves as a model widens,
under the standard parametrisation and under μP, from a study's summary rows.

A width-transfer study trains one population per width x parametrisation (``config.model_grid``),
each over a grid of learning rates x seeds. Each trial's loss is its lowest validation loss; a
diverged trial counts as infinitely bad. Per width and seed, the best rate is the grid's argmin
refined by a parabola in log2(rate) through the argmin and its two neighbours
(:func:`best_rate`); :func:`rate_shift` gives each seed's move of its best rate from the
narrowest width to the widest, and their mean with a Student-t interval over seeds. Nothing
here trains: :mod:`hpjax.studies.width_transfer_study` trains the study and writes its outputs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hpjax.report.labels import is_finite_number
from hpjax.studies import capacity

# A move of less than this many octaves (a factor of 2: one step of the default grid) counts as
# the best rate staying put.
STABLE_LOG2 = 1.0
INTERVAL = 0.95


def loss_of(row: Mapping) -> float:
    """The trial's lowest validation loss; infinite when it diverged or has none."""
    loss = row.get("best_val_loss")
    if row.get("status") == "diverged" or not is_finite_number(loss):
        return math.inf
    return float(loss)


@dataclasses.dataclass(frozen=True)
class Best:
    """The best rate of one loss-against-rate curve."""

    learning_rate: float  # refined where possible, else the grid's argmin
    grid_learning_rate: float  # the grid's argmin
    loss: float  # the loss at the grid's argmin
    refined: bool  # a parabola through the argmin and both neighbours placed it
    at_edge: bool  # the argmin is the grid's smallest or largest rate


def best_rate(rates: Sequence[float], losses: Sequence[float]) -> Best | None:
    """The argmin of ``losses`` over ``rates`` (sorted by rate), refined by the vertex of the
    parabola in log2(rate) through the argmin and its two neighbours when both are finite.

    None when no loss is finite. A best rate at the first or last rate is ``at_edge`` (the true
    best may lie beyond the grid) and is not refined.
    """
    order = np.argsort(rates)
    x = np.log2(np.asarray(rates, float)[order])
    y = np.asarray(losses, float)[order]
    if not np.isfinite(y).any():
        return None
    i = int(np.argmin(np.where(np.isfinite(y), y, np.inf)))
    grid = float(2.0 ** x[i])
    at_edge = i in (0, len(x) - 1)
    if at_edge or not np.isfinite(y[i - 1 : i + 2]).all():
        return Best(grid, grid, float(y[i]), False, at_edge)
    (x0, x1, x2), (y0, y1, y2) = x[i - 1 : i + 2], y[i - 1 : i + 2]
    # The vertex of the parabola through three points (numerator and denominator of its x).
    num = (x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)
    den = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
    if den == 0:  # three equal losses: no curvature to place a vertex
        return Best(grid, grid, float(y[i]), False, False)
    vertex = float(np.clip(x1 - 0.5 * num / den, x0, x2))
    return Best(float(2.0**vertex), grid, float(y[i]), True, False)


def _groups(summary: Sequence[Mapping], keys: Sequence[str]) -> dict[tuple, list[Mapping]]:
    groups: dict[tuple, list[Mapping]] = {}
    for row in summary:
        groups.setdefault(tuple(row.get(k) for k in keys), []).append(row)
    return groups


def curves(summary: Sequence[Mapping], width: str) -> list[dict]:
    """Per parametrisation, width and rate: the seed median of the lowest validation loss, its
    smallest and largest value over seeds (finite ones), and how many seeds diverged."""
    out = []
    for (param, w, rate), rows in sorted(
        _groups(summary, ("parametrization", width, "rate")).items()
    ):
        losses = [loss_of(r) for r in rows]
        finite = [v for v in losses if math.isfinite(v)]
        out.append(
            dict(
                kind="curve",
                parametrization=param,
                width=w,
                learning_rate=rate,
                log2_learning_rate=math.log2(rate),
                val_loss=float(np.median(losses)),
                val_loss_min=min(finite) if finite else None,
                val_loss_max=max(finite) if finite else None,
                seeds=len(rows),
                diverged=len(losses) - len(finite),
            )
        )
    return out


def best_rates(summary: Sequence[Mapping], width: str) -> list[dict]:
    """Per parametrisation, width and seed: the best rate (:func:`best_rate`) of the seed's
    curve, with its grid argmin, the loss there, and whether it was refined or is at an edge."""
    out = []
    for (param, w, seed), rows in sorted(
        _groups(summary, ("parametrization", width, "seed")).items()
    ):
        best = best_rate([r["rate"] for r in rows], [loss_of(r) for r in rows])
        out.append(
            dict(
                kind="best",
                parametrization=param,
                width=w,
                seed=seed,
                num_params=rows[0].get("num_params"),
                learning_rate=best.learning_rate if best else None,
                log2_learning_rate=math.log2(best.learning_rate) if best else None,
                grid_learning_rate=best.grid_learning_rate if best else None,
                val_loss=best.loss if best else None,
                refined=best.refined if best else False,
                at_edge=best.at_edge if best else False,
            )
        )
    return out


def with_rates(summary: Sequence[Mapping]) -> list[dict]:
    """The summary rows with each one's grid rate as ``rate``."""
    return [dict(r, rate=float(capacity.rate_of(r))) for r in summary]


@dataclasses.dataclass(frozen=True)
class Shift:
    """How far the seed-median best rate moves from one width to another."""

    factor: float  # 2 ** (mean over seeds of log2(best rate wide / best rate narrow))
    low: float | None  # its Student-t interval over seeds (None with one seed)
    high: float | None
    per_seed_low: float  # the smallest and largest of the seeds' own factors
    per_seed_high: float
    seeds: int  # seeds with a best rate at both widths

    @property
    def log2(self) -> float:
        return math.log2(self.factor)

    @property
    def stable(self) -> bool:
        """The best rate moved less than :data:`STABLE_LOG2` octaves (the point estimate)."""
        return abs(self.log2) < STABLE_LOG2

    @property
    def interval_stable(self) -> bool:
        """The whole interval lies within :data:`STABLE_LOG2` octaves of no move."""
        if self.low is None or self.high is None:
            return False
        return max(abs(math.log2(self.low)), abs(math.log2(self.high))) < STABLE_LOG2

    @property
    def interval_moves(self) -> bool:
        """The whole interval lies beyond :data:`STABLE_LOG2` octaves, on one side."""
        if self.low is None or self.high is None:
            return False
        return math.log2(self.low) >= STABLE_LOG2 or math.log2(self.high) <= -STABLE_LOG2

    @property
    def interval_excludes_none(self) -> bool:
        """The interval excludes a factor of 1 (no move)."""
        return self.low is not None and (self.low > 1.0 or self.high < 1.0)


def rate_shift(
    narrow: Mapping[Any, float], wide: Mapping[Any, float], confidence: float = INTERVAL
) -> Shift | None:
    """The move of the best rate from ``narrow`` to ``wide`` (seed -> best rate at each width).

    Each seed gives its own move, log2(wide / narrow): the seed's data order and initial key
    are shared by both widths, so the moves are paired. The factor is 2 to their mean; its
    interval the ``confidence`` Student-t interval of that mean (None with one seed, which
    cannot separate a move from noise). None without a seed present at both widths.
    """
    from scipy import stats  # here: importing scipy.stats takes 0.7 s of every binary's start

    seeds = sorted(s for s in narrow if s in wide and narrow[s] and wide[s])
    if not seeds:
        return None
    moves = np.log2([wide[s] for s in seeds]) - np.log2([narrow[s] for s in seeds])
    mean = float(moves.mean())
    low = high = None
    if len(seeds) > 1:
        half = float(
            stats.t.ppf(0.5 + confidence / 2, len(seeds) - 1)
            * moves.std(ddof=1)
            / math.sqrt(len(seeds))
        )
        low, high = float(2.0 ** (mean - half)), float(2.0 ** (mean + half))
    return Shift(
        factor=float(2.0**mean),
        low=low,
        high=high,
        per_seed_low=float(2.0 ** moves.min()),
        per_seed_high=float(2.0 ** moves.max()),
        seeds=len(seeds),
    )


def width_table(best: Sequence[Mapping]) -> list[dict]:
    """Per parametrisation and width: the seed-median best rate, its move from the narrowest
    width (as a factor and in octaves), each seed's best rate, and whether any is at an edge."""
    out = []
    for (param, w), rows in sorted(_groups(best, ("parametrization", "width")).items()):
        rates = [r["learning_rate"] for r in rows if r["learning_rate"]]
        out.append(
            dict(
                kind="median_best",
                parametrization=param,
                width=w,
                num_params=rows[0].get("num_params"),
                learning_rate=float(2.0 ** np.median(np.log2(rates))) if rates else None,
                seed_rates=", ".join(f"{r:.3g}" for r in rates),
                at_edge=any(r["at_edge"] for r in rows),
            )
        )
    for row in out:
        first = next(r for r in out if r["parametrization"] == row["parametrization"])
        if row["learning_rate"] and first["learning_rate"]:
            row["shift"] = row["learning_rate"] / first["learning_rate"]
            row["log2_shift"] = math.log2(row["shift"])
    return out


def shifts(best: Sequence[Mapping]) -> dict[Any, Shift | None]:
    """Per parametrisation: the shift of the best rate from the narrowest to the widest width."""
    out = {}
    for param in sorted({r["parametrization"] for r in best}, key=str):
        rows = [r for r in best if r["parametrization"] == param]
        widths = sorted({r["width"] for r in rows})
        by_width = {
            w: {r["seed"]: r["learning_rate"] for r in rows if r["width"] == w} for w in widths
        }
        out[param] = rate_shift(by_width[widths[0]], by_width[widths[-1]]) if widths else None
    return out
