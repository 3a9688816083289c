"""What regularisation did: the gap between validation and training loss per regulariser value.

A study that varies dropout, weight decay or label smoothing asks whether the regulariser closes
the gap between the validation loss and the training loss (overfitting). For each value of the
varied regulariser this gives the mean training loss and validation loss at the trials' best
steps (both measured in evaluation mode, without dropout) and their difference, and says
whether the gap shrinks as the value grows.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from hpjax.report.figures import plot_hparam
from hpjax.report.labels import is_number, varying_hparams

REGULARISERS = ("dropout", "weight_decay", "label_smoothing")
GAP = "generalisation_gap"


def _gap(row: Mapping) -> float | None:
    val, train = row.get("best_val_loss"), row.get("train_loss_at_best")
    if row.get("status") == "diverged" or not (is_number(val) and is_number(train)):
        return None
    return float(val) - float(train)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def gap_rows(summary: Sequence[Mapping], key: str) -> list[dict]:
    """One row per value of ``key``: trials, mean train and validation loss at the best step,
    and the mean gap between them."""
    by_value: dict[float, list[Mapping]] = {}
    for row in summary:
        if _gap(row) is not None and is_number(row.get(key)):
            by_value.setdefault(float(row[key]), []).append(row)
    return [
        {
            key: value,
            "trials": len(rows),
            "train_loss_at_best": _mean([float(r["train_loss_at_best"]) for r in rows]),
            "best_val_loss": _mean([float(r["best_val_loss"]) for r in rows]),
            GAP: _mean([_gap(r) for r in rows]),
        }
        for value, rows in sorted(by_value.items())
    ]


def _trend(rows: list[dict], key: str) -> str:
    gaps = [r[GAP] for r in rows]
    first, last = rows[0], rows[-1]
    span = f"{first[GAP]:.3f} at {key}={first[key]:g} to {last[GAP]:.3f} at {key}={last[key]:g}"
    if all(b <= a for a, b in zip(gaps, gaps[1:], strict=False)):
        return f"the gap shrinks as `{key}` grows, from {span}"
    if last[GAP] < first[GAP]:
        return f"the gap is smaller at the largest `{key}` but not at every step ({span})"
    return f"the gap does not shrink as `{key}` grows ({span})"


def regularisation_section(
    workdir: str, summary: Sequence[Mapping]
) -> tuple[list[str], list[tuple], list[str]]:
    """The report's lines, tables and plots on each varied regulariser (empty if none)."""
    lines, tables, plots = [], [], []
    for key in (k for k in REGULARISERS if k in varying_hparams(summary)):
        rows = gap_rows(summary, key)
        if len(rows) < 2:
            continue
        lines.append(
            f"Regularisation: validation minus training loss at each trial's best step "
            f"(both without dropout), averaged per `{key}`: {_trend(rows, key)}."
        )
        columns = [key, "trials", "train_loss_at_best", "best_val_loss", GAP]
        tables.append((f"Generalisation gap against {key}", rows, columns))
        rel = os.path.join("plots", f"{key}_vs_{GAP}.png")
        with_gap = [dict(r, **{GAP: _gap(r)}) for r in summary if _gap(r) is not None]
        plot_hparam(
            with_gap,
            key,
            GAP,
            os.path.join(workdir, rel),
            logx=False,
            title=f"validation minus training loss at the best step against {key}",
        )
        plots.append(rel)
    return lines, tables, plots
