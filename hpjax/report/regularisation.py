"""What regularisation did: the gap between validation and training loss per regulariser value.

A study that varies dropout, weight decay or label smoothing asks whether the regulariser closes
the gap between the validation loss and the training loss (overfitting). For each value of the
varied regulariser this gives the mean training and validation loss at the end of training
(both measured in evaluation mode, without dropout), their difference there and at each
trial's best step, and says whether the gap shrinks as the value grows: at the end where every
trial trained the same steps, else at the best step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from hpjax.report.figures import plot_hparam
from hpjax.report.labels import is_number, varying_hparams

REGULARISERS = ("dropout", "weight_decay", "label_smoothing")
# (train column, validation column, gap column, where): the two points a gap is read at
AT_END = ("final_train_loss", "final_val_loss", "gap_at_end", "at the end of training")
AT_BEST = ("train_loss_at_best", "best_val_loss", "gap_at_best", "at each trial's best step")


def _gap(row: Mapping, point: tuple = AT_BEST) -> float | None:
    val, train = row.get(point[1]), row.get(point[0])
    if row.get("status") == "diverged" or not (is_number(val) and is_number(train)):
        return None
    return float(val) - float(train)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def gap_rows(summary: Sequence[Mapping], key: str) -> list[dict]:
    """One row per value of ``key``: trials, the mean training and validation loss at the end
    and the mean gaps between them there and at the best step."""
    by_value: dict[float, list[Mapping]] = {}
    for row in summary:
        if _gap(row, AT_END) is not None and _gap(row) is not None and is_number(row.get(key)):
            by_value.setdefault(float(row[key]), []).append(row)
    return [
        {
            key: value,
            "trials": len(rows),
            AT_END[0]: _mean([float(r[AT_END[0]]) for r in rows]),
            AT_END[1]: _mean([float(r[AT_END[1]]) for r in rows]),
            AT_END[2]: _mean([_gap(r, AT_END) for r in rows]),
            AT_BEST[2]: _mean([_gap(r) for r in rows]),
        }
        for value, rows in sorted(by_value.items())
    ]


def _trend(rows: list[dict], key: str, gap: str) -> str:
    gaps = [r[gap] for r in rows]
    first, last = rows[0], rows[-1]
    span = f"{first[gap]:.3f} at {key}={first[key]:g} to {last[gap]:.3f} at {key}={last[key]:g}"
    if all(b <= a for a, b in zip(gaps, gaps[1:], strict=False)):
        return f"the gap shrinks as `{key}` grows, from {span}"
    if last[gap] < first[gap]:
        down = sum(b < a for a, b in zip(gaps, gaps[1:], strict=False))
        return f"the gap shrinks as `{key}` grows in {down} of {len(gaps) - 1} steps, from {span}"
    return f"the gap does not shrink as `{key}` grows ({span})"


def _point(summary: Sequence[Mapping]) -> tuple:
    """The end of training where every trial trained the same steps (an equal budget), else
    each trial's best step (early stopping ended them at different points)."""
    steps = {r.get("steps") for r in summary if r.get("status") != "diverged"}
    return AT_END if len(steps) == 1 else AT_BEST


def regularisation_section(
    workdir: str, summary: Sequence[Mapping]
) -> tuple[list[str], list[tuple], list[str]]:
    """The report's lines, tables and plots on each varied regulariser (empty if none)."""
    lines, tables, plots = [], [], []
    point = _point(summary)
    for key in (k for k in REGULARISERS if k in varying_hparams(summary)):
        rows = gap_rows(summary, key)
        if len(rows) < 2:
            continue
        lines.append(
            f"Regularisation: validation minus training loss {point[3]} (both measured "
            f"without dropout), averaged per `{key}`: {_trend(rows, key, point[2])}."
        )
        columns = [key, "trials", AT_END[0], AT_END[1], AT_END[2], AT_BEST[2]]
        tables.append((f"Generalisation gap against {key}", rows, columns))
        rel = os.path.join("plots", f"{key}_vs_{point[2]}.png")
        with_gap = [
            dict(r, **{point[2]: _gap(r, point)}) for r in summary if _gap(r, point) is not None
        ]
        plot_hparam(
            with_gap,
            key,
            point[2],
            os.path.join(workdir, rel),
            logx=False,
            title=f"validation minus training loss {point[3]} against {key}",
        )
        plots.append(rel)
    return lines, tables, plots
