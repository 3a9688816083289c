"""PNG plots through one figure helper: learning curves and a hyperparameter against a result.

Plots are drawn on ``matplotlib.figure.Figure`` objects rendered by the Agg canvas: no pyplot, no
display and no global backend switch, so importing this module in a notebook leaves its plots
alone.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter

from hpjax.report.labels import format_value, is_number, trial_label, varying_hparams
from hpjax.results.files import PathLike, curves_by_trial, record_written

_PNG_DPI = 120


def new_figure(size: tuple[float, float] = (8.0, 5.0)) -> Figure:
    fig = Figure(figsize=size, dpi=_PNG_DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: PathLike) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    record_written(path)
    return path


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


class PowerOfTen(LogFormatter):
    """Log-axis tick labels as plain text, 10⁻³ and 2×10⁻³. Matplotlib's own are mathtext,
    whose parser takes a study's report half a second to build."""

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        exponent = math.floor(math.log10(x) + 1e-9)
        coefficient = x / 10.0**exponent
        power = "10" + str(exponent).translate(_SUPERSCRIPT)
        return power if abs(coefficient - 1) < 1e-6 else f"{coefficient:.0f}×{power}"


def _label_powers(axis: Any) -> None:
    axis.set_major_formatter(PowerOfTen())
    axis.set_minor_formatter(PowerOfTen(labelOnlyBase=False))


def log_scale(ax: Any, which: str) -> None:
    """``ax``'s ``which`` axis ("x" or "y") in base-10 logarithms, labelled by
    :class:`PowerOfTen`."""
    getattr(ax, f"set_{which}scale")("log")
    _label_powers(getattr(ax, f"{which}axis"))


def colorbar(fig: Figure, mappable: ScalarMappable, **kwargs: Any) -> Any:
    """``fig.colorbar``, its logarithmic scale (a ``LogNorm``) labelled by :class:`PowerOfTen`."""
    bar = fig.colorbar(mappable, **kwargs)
    if isinstance(mappable.norm, LogNorm):
        _label_powers(bar.ax.yaxis if bar.orientation == "vertical" else bar.ax.xaxis)
    return bar


def _norm(values: Sequence[float]) -> Normalize:
    lo, hi = min(values), max(values)
    if lo > 0 and hi / lo >= 8:
        return LogNorm(lo, hi)
    return Normalize(lo, hi if hi > lo else lo + 1)


def _x_of_step(curve: Sequence[Mapping], x: str, step: float) -> float | None:
    """The ``x`` coordinate of a step, from the curve's own (step, x) pairs."""
    pairs = [(p["step"], p[x]) for p in curve if is_number(p.get("step")) and is_number(p.get(x))]
    if not pairs:
        return None
    steps, xs = zip(*pairs, strict=True)
    return float(np.interp(step, steps, xs))


def _trial_colours(trials, rows, varying, max_legend):
    """A colour per trial: a palette for a few; for many, a colormap over the first numeric
    hyperparameter that varies, the seed last (or the trial number). Returns colours, key,
    norm, colormap."""
    colour_key = None
    if len(trials) > max_legend:
        numeric = [
            k
            for k in varying
            if all(is_number(rows.get(t, {}).get(k)) for t in trials if t in rows)
        ]
        prefer = ["learning_rate", "batch_size", "hidden_units", "num_layers", "weight_decay"]
        others = [k for k in numeric if k != "seed"] + ["seed"]  # seeds only repeat a point
        colour_key = next((k for k in prefer + others if k in numeric), None)
    if colour_key is not None:
        cvalues = {t: rows[t][colour_key] for t in trials if t in rows}
        norm, cmap = _norm(list(cvalues.values())), colormaps["viridis"]
        return (
            {t: cmap(norm(cvalues[t])) if t in cvalues else "grey" for t in trials},
            colour_key,
            norm,
            cmap,
        )
    if len(trials) > max_legend:
        norm, cmap = Normalize(min(trials), max(trials) + 1e-9), colormaps["viridis"]
        return {t: cmap(norm(t)) for t in trials}, None, norm, cmap
    cycle = colormaps["tab10" if len(trials) <= 10 else "tab20"].colors
    return {t: cycle[i % len(cycle)] for i, t in enumerate(trials)}, None, None, None


def _loss_axis(ax, all_y: list[float], starts: list[float]) -> bool:
    """A log y axis when the losses span more than 10x, cut at 5x the largest starting loss so
    a diverging trial does not flatten the others; returns whether it was cut."""
    if not all_y:
        ax.text(
            0.5, 0.5, "no finite losses recorded", ha="center", va="center", transform=ax.transAxes
        )
        return False
    top, bottom = max(all_y), min(all_y)
    clipped = bool(starts) and top > 5 * max(starts) > 0
    if clipped:
        top = 5 * max(starts)
    if bottom > 0 and top / bottom > 10:
        log_scale(ax, "y")
    if clipped:
        ax.set_ylim(top=top)
    return clipped


def plot_learning_curves(
    metrics: Sequence[Mapping],
    summary: Sequence[Mapping],
    path: PathLike,
    x: str = "step",
    title: str | None = None,
    max_legend: int = 12,
) -> str:
    """Train (dashed) and validation (solid) loss of every trial against ``x``, PNG at ``path``.

    Each trial's early-stop point (``best_step``, ``best_val_loss`` of its summary row) is
    marked with a star. Up to ``max_legend`` trials get a legend label built from the
    hyperparameters that vary; more trials are coloured by one varying hyperparameter with a
    colorbar. Null (non-finite) values are skipped; the y axis is logarithmic when the losses
    span more than a factor 10 and is cut at 5x the largest starting loss, so a diverging trial
    does not flatten the others.
    """
    curves = curves_by_trial(metrics)
    rows = {int(r["trial"]): r for r in summary if r.get("trial") is not None}
    trials = sorted(set(curves) | set(rows))
    varying = varying_hparams(summary)
    few = len(trials) <= max_legend
    fig = new_figure()
    ax = fig.add_subplot()
    colour, colour_key, norm, cmap = _trial_colours(trials, rows, varying, max_legend)

    # Many trials: the best few drawn in full and labelled, the rest faint (validation only).
    best = set(trials) if few else _best_trials(rows, HIGHLIGHTED)
    all_y, starts = _draw_curves(ax, curves, rows, trials, best, colour, varying, x, few)
    clipped = _loss_axis(ax, all_y, starts)
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel("loss" + (" (cut at 5x the starting loss)" if clipped else ""))
    title = title or f"Learning curves ({len(trials)} trials)"
    ax.set_title(title if few else f"{title}; the {HIGHLIGHTED} best in full")
    ax.grid(True, which="major", alpha=0.3)
    any_pruned = any(r.get("status") == "pruned" for r in rows.values())
    _curves_legend(fig, ax, few, colour_key, norm, cmap, any_pruned)
    return save_figure(fig, path)


def _draw_curves(ax, curves, rows, trials, best, colour, varying, x: str, few: bool):
    """Draws each trial's curves and early-stop point; returns every y drawn and each curve's
    first. The faint curves are one collection and the markers one scatter per kind (512
    trials drew in 2.5 s as separate lines)."""
    all_y: list[float] = []
    starts: list[float] = []
    faint_curves: list[list[tuple[float, float]]] = []
    faint_colours: list[Any] = []
    markers: dict[str, list[tuple[float, float, Any]]] = {"*": [], "v": []}
    for t in trials:
        curve = curves.get(t, [])
        faint = t not in best
        for key, style in (("train_loss", "--"), ("val_loss", "-")):
            pts = [(p[x], p[key]) for p in curve if is_number(p.get(x)) and is_number(p.get(key))]
            if not pts or (faint and key == "train_loss"):
                continue
            xs, ys = zip(*pts, strict=True)
            all_y += ys
            starts.append(ys[0])
            if faint:
                faint_curves.append(pts)
                faint_colours.append(colour[t])
                continue
            label = trial_label(rows.get(t, {"trial": t}), varying) if key == "val_loss" else None
            lw = 1.4 if key == "val_loss" else 1.0
            alpha = 0.9 if key == "val_loss" else 0.6
            ax.plot(xs, ys, style, color=colour[t], lw=lw, alpha=alpha, label=label)
        best_point = _best_point(rows.get(t, {}), curve, x)
        if best_point is not None:
            pruned = rows[t].get("status") == "pruned"
            markers["v" if pruned else "*"].append((*best_point, colour[t]))
            all_y.append(best_point[1])
    if faint_curves:
        lines = LineCollection(
            faint_curves, colors=faint_colours, linewidths=0.84, alpha=0.25, zorder=1
        )
        ax.add_collection(lines)
        ax.autoscale_view()
    for marker, points in markers.items():
        if points:
            size = {"*": 11 if few else 7, "v": 7 if few else 5}[marker]
            bx, by, colours = zip(*points, strict=True)
            ax.scatter(
                bx,
                by,
                s=size**2,
                c=list(colours),
                marker=marker,
                edgecolors="black",
                linewidths=0.6,
                zorder=5,
            )

    return all_y, starts


def _best_point(row: Mapping, curve: Sequence[Mapping], x: str) -> tuple[float, float] | None:
    """Where a trial's early-stop point (``best_step``, ``best_val_loss``) lies against ``x``."""
    if not (is_number(row.get("best_step")) and is_number(row.get("best_val_loss"))):
        return None
    if x == "step":
        bx = float(row["best_step"])
    elif x == "epoch" and is_number(row.get("best_epoch")):
        bx = float(row["best_epoch"])
    else:
        bx = _x_of_step(curve, x, row["best_step"])
    return None if bx is None else (bx, float(row["best_val_loss"]))


HIGHLIGHTED = 5  # past max_legend trials, the best this many are drawn in full


def _best_trials(rows: Mapping[int, Mapping], count: int) -> set[int]:
    """The ``count`` trials of lowest finite best validation loss (not diverged)."""
    ok = [
        (r["best_val_loss"], t)
        for t, r in rows.items()
        if r.get("status") != "diverged" and is_number(r.get("best_val_loss"))
    ]
    return {t for _, t in sorted(ok)[:count]}


def _curves_legend(fig, ax, few: bool, colour_key, norm, cmap, pruned: bool = False) -> None:
    """The learning-curves legend: per-trial labels plus line styles when there are ``few``
    trials; otherwise only the line styles, with a colorbar for the colour scale."""
    style_handles = [
        Line2D([], [], color="grey", ls="-", label="validation"),
        Line2D([], [], color="grey", ls="--", label="train"),
        Line2D([], [], color="grey", ls="", marker="*", ms=10, mec="black", label="best point"),
    ]
    if pruned:
        style_handles.append(
            Line2D([], [], color="grey", ls="", marker="v", ms=7, mec="black", label="pruned")
        )
    if few:
        handles, _ = ax.get_legend_handles_labels()
        ax.legend(
            handles=handles + style_handles,
            fontsize="small",
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            borderaxespad=0.0,
        )
    else:  # the highlighted best trials, then the styles; a colorbar for the colour scale
        handles, _ = ax.get_legend_handles_labels()
        ax.legend(
            handles=handles + style_handles,
            fontsize="small",
            loc="upper center",
            bbox_to_anchor=(0.5, -0.12),
            ncol=2,
        )
        mappable = ScalarMappable(norm=norm, cmap=cmap)
        colorbar(fig, mappable, ax=ax, label=colour_key or "trial")


def _x_positions(values: Sequence[Any]) -> tuple[dict[Any, float], list[Any] | None]:
    """Numeric x values map to themselves; strings to 0, 1, ... (returned as tick labels)."""
    if all(is_number(v) for v in values):
        return {v: float(v) for v in values}, None
    cats = sorted({str(v) for v in values})
    return {v: float(cats.index(str(v))) for v in values}, cats


def plot_hparam(
    summary: Sequence[Mapping],
    x: str,
    y: str,
    path: PathLike,
    group_by: str | None = None,
    logx: bool = True,
    logy: bool = False,
    title: str | None = None,
) -> str:
    """``y`` (e.g. best_val_loss) against hyperparameter ``x``, one line per ``group_by`` value.

    Repeated x within a group (seeds) are drawn as points joined through their mean. Diverged
    trials, and trials without a ``y``, are marked with an x at the top of the axis. The best
    finite ``y`` (highest for an accuracy, else lowest) is starred. A log x axis is used only
    where every x is a positive number.
    """
    rows = [r for r in summary if r.get(x) is not None]
    fig = new_figure()
    ax = fig.add_subplot()
    pos, cats = _x_positions([r[x] for r in rows])
    shades = [r.get(group_by) for r in rows] if group_by else []
    if len(set(shades)) > MAX_LINES and all(is_number(v) for v in shades):
        # a sampled dimension: one colour scale, not a legend entry per value
        best = _scatter_coloured(fig, ax, rows, x, y, pos, group_by)
        _mark_best_and_failed(ax, best, [pos[r[x]] for r in rows if not _finite_result(r, y)])
        title = title or f"{y} against {x}, coloured by {group_by}"
        return _finish_hparam_axes(fig, ax, rows, x, y, pos, cats, logx, logy, best, title, path)
    groups: dict[Any, list[Mapping]] = {}
    for r in rows:
        groups.setdefault(r.get(group_by) if group_by else None, []).append(r)
    order = sorted(groups, key=lambda g: (not is_number(g), g if is_number(g) else str(g)))
    cycle = colormaps["tab10"].colors
    higher_better = "acc" in y  # accuracies are maximised, losses minimised
    best: tuple[float, float] | None = None
    failed_x: list[float] = []
    for i, g in enumerate(order):
        colour = cycle[i % len(cycle)]
        ok = [r for r in groups[g] if r.get("status") != "diverged" and is_number(r.get(y))]
        ok_ids = {id(r) for r in ok}
        failed_x += [pos[r[x]] for r in groups[g] if id(r) not in ok_ids]
        if not ok:
            continue
        xs = sorted({pos[r[x]] for r in ok})
        means = [float(np.mean([r[y] for r in ok if pos[r[x]] == xv])) for xv in xs]
        label = f"{group_by}={format_value(g, '.3g')}" if group_by else None
        ax.plot(xs, means, "-o", color=colour, ms=4, label=label)
        if len(ok) > len(xs):
            ax.plot([pos[r[x]] for r in ok], [r[y] for r in ok], ".", color=colour, alpha=0.5)
        for r in ok:
            if best is None or (r[y] > best[1] if higher_better else r[y] < best[1]):
                best = (pos[r[x]], r[y])
    _mark_best_and_failed(ax, best, failed_x)
    title = title or f"{y} against {x}" + (f" by {group_by}" if group_by else "")
    return _finish_hparam_axes(fig, ax, rows, x, y, pos, cats, logx, logy, best, title, path)


MAX_LINES = 8  # more distinct values of a grouping key than this: a colour scale instead


def _finite_result(row: Mapping, y: str) -> bool:
    return row.get("status") != "diverged" and is_number(row.get(y))


def _scatter_coloured(fig, ax, rows, x, y, pos, key) -> tuple[float, float] | None:
    """Each trial a point coloured by ``key`` (a colorbar), pruned trials as triangles; returns
    the best point."""
    ok = [r for r in rows if _finite_result(r, y)]
    if not ok:
        return None
    norm, cmap = _norm([r[key] for r in ok]), colormaps["viridis"]
    for pruned, marker, label in ((False, "o", "trial"), (True, "v", "pruned")):
        pts = [r for r in ok if (r.get("status") == "pruned") == pruned]
        if pts:
            ax.scatter(
                [pos[r[x]] for r in pts],
                [r[y] for r in pts],
                c=[cmap(norm(r[key])) for r in pts],
                marker=marker,
                s=22,
                edgecolors="none",
                alpha=0.85,
                label=label,
            )
    colorbar(fig, ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=key.replace("_", " "))
    higher_better = "acc" in y
    top = (max if higher_better else min)(ok, key=lambda r: r[y])
    return pos[top[x]], top[y]


def _finish_hparam_axes(fig, ax, rows, x, y, pos, cats, logx, logy, best, title, path=None):
    if cats is not None:
        ax.set_xticks(range(len(cats)), cats)
    elif logx and rows and all(v > 0 for v in pos.values()):
        log_scale(ax, "x")
    if logy and best is not None and all(r[y] > 0 for r in rows if is_number(r.get(y))):
        log_scale(ax, "y")
    if not rows:
        ax.text(0.5, 0.5, f"no trial has {x}", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(y.replace("_", " "))
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="best")
    return save_figure(fig, path)


def plot_hparam_panels(
    summary: Sequence[Mapping], keys: Sequence[str], y: str, path: PathLike, title: str = ""
) -> str:
    """``y`` against each of ``keys``, one panel per hyperparameter (a log axis where it spans
    8x or more), every trial a point: pruned ones as triangles, the best starred."""
    cols = min(3, len(keys))
    rows_n = -(-len(keys) // cols)
    fig = new_figure((4.2 * cols, 3.4 * rows_n))
    axes = np.atleast_1d(fig.subplots(rows_n, cols, squeeze=False)).ravel()
    ok = [r for r in summary if _finite_result(r, y)]
    best = (max if "acc" in y else min)(ok, key=lambda r: r[y]) if ok else None
    for ax, key in zip(axes, keys, strict=False):
        pts = [r for r in ok if is_number(r.get(key))]
        for pruned, marker in ((False, "o"), (True, "v")):
            mine = [r for r in pts if (r.get("status") == "pruned") == pruned]
            ax.scatter(
                [r[key] for r in mine],
                [r[y] for r in mine],
                marker=marker,
                s=16,
                color="grey" if pruned else "C0",
                alpha=0.7,
                label="pruned" if pruned else "trial",
            )
        if best is not None and is_number(best.get(key)):
            ax.plot([best[key]], [best[y]], "*", color="gold", mec="black", ms=13, label="best")
        values = [r[key] for r in pts]
        if values and min(values) > 0 and max(values) / min(values) >= 8:
            log_scale(ax, "x")
        ax.set_xlabel(key.replace("_", " "))
        ax.set_ylabel(y.replace("_", " "))
        ax.grid(True, alpha=0.3)
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize="small", loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def _mark_best_and_failed(ax, best: tuple[float, float] | None, failed_x: Sequence[float]) -> None:
    """Star the best (x, y) point, and put a red x at the top of the axis for each failed trial's
    x (diverged or without a value), so failures show without a y to plot them at."""
    if best is not None:
        ax.plot(
            [best[0]],
            [best[1]],
            "*",
            color="gold",
            mec="black",
            ms=14,
            zorder=5,
            label=f"best ({best[1]:.4g})",
        )
    if failed_x:
        ax.plot(
            failed_x,
            [0.97] * len(failed_x),
            "x",
            color="red",
            ms=9,
            mew=2,
            transform=ax.get_xaxis_transform(),
            clip_on=False,
            label="diverged / no value",
        )
