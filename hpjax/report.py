"""Read a study's workdir and write what a person reads: tables, PNG plots and ``report.md``.

The workdir holds ``metrics.jsonl`` (one record per trial per evaluation), ``summary.csv`` (one
row per trial) and ``config.json``. Nothing here trains. Plots are drawn on
``matplotlib.figure.Figure`` objects rendered by the Agg canvas: no pyplot, no display and no
global backend switch, so importing this module in a notebook leaves its plots alone.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

if TYPE_CHECKING:
    from hpjax.diagnostics import Diagnostic

PathLike = str | os.PathLike

# Summary columns that are results or bookkeeping; every other column is a hyperparameter.
RESULT_COLUMNS = (
    "trial",
    "population",
    "num_params",
    "status",
    "best_val_loss",
    "best_val_accuracy",
    "best_step",
    "best_epoch",
    "test_loss",
    "test_accuracy",
    "train_loss_at_best",
    "final_train_loss",
    "final_val_loss",
    "steps",
    "epochs",
    "input_dim",
    "num_classes",
    "memory_estimate_mb",
    "peak_memory_mb",
)
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
_PNG_DPI = 120
_INT_RE = re.compile(r"[+-]?\d+")


# ----------------------------------------------------------------------------------- reading


def _clean(v: Any) -> Any:
    """Non-finite floats (NaN, inf) become None, as the engine writes them."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def read_metrics(workdir: PathLike) -> list[dict]:
    """The records of ``metrics.jsonl``, in file order; a truncated last line is skipped."""
    path = os.path.join(workdir, "metrics.jsonl")
    with open(path) as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # the engine may be writing the last line right now
                break
            raise ValueError(f"{path}:{i + 1}: not a JSON object: {line[:80]!r}") from None
        out.append({k: _clean(v) for k, v in record.items()})
    return out


def _parse_cell(cell: str) -> Any:
    cell = cell.strip()
    if cell == "":
        return None
    if _INT_RE.fullmatch(cell):
        return int(cell)
    try:
        return _clean(float(cell))
    except ValueError:
        return cell


def read_summary(workdir: PathLike) -> list[dict]:
    """The rows of ``summary.csv``: ints and floats parsed, empty (or non-finite) cells None."""
    with open(os.path.join(workdir, "summary.csv"), newline="") as f:
        return [{k: _parse_cell(v or "") for k, v in row.items()} for row in csv.DictReader(f)]


def read_config(workdir: PathLike) -> dict:
    """``config.json`` as a dict ({} when absent)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def curves_by_trial(metrics: Iterable[Mapping]) -> dict[int, list[dict]]:
    """Metrics records grouped by trial (ascending), each trial's records sorted by step."""
    curves: dict[int, list[dict]] = {}
    for record in metrics:
        curves.setdefault(int(record["trial"]), []).append(dict(record))
    return {t: sorted(curves[t], key=lambda r: r.get("step") or 0) for t in sorted(curves)}


# ------------------------------------------------------------------------------------ labels


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _fmt(v: Any, floatfmt: str = ".4g") -> str:
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
    return known + [k for k in seen if k not in known and k not in RESULT_COLUMNS]


def varying_hparams(summary: Sequence[Mapping]) -> list[str]:
    """The hyperparameter columns whose value differs between trials.

    ``base_learning_rate`` counts only where a scaling rule made it differ from the rate.
    """
    varying = [k for k in hparam_columns(summary) if len({repr(r.get(k)) for r in summary}) > 1]
    if all(r.get("base_learning_rate") == r.get("learning_rate") for r in summary):
        varying = [k for k in varying if k != "base_learning_rate"]
    return varying


def trial_label(row: Mapping, keys: Sequence[str]) -> str:
    """A legend label like ``3: lr=0.01 bs=32`` from a summary row."""
    parts = []
    for k in keys:
        if row.get(k) is None:
            continue
        short = SHORT_NAMES.get(k, k)
        value = _fmt(row[k], ".3g")
        parts.append(f"{short}={value}" if short else value)
    label = f"{row.get('trial')}: " + " ".join(parts) if parts else f"trial {row.get('trial')}"
    return label + (" (diverged)" if row.get("status") == "diverged" else "")


# ------------------------------------------------------------------------------------- plots


def _new_figure(size: tuple[float, float] = (8.0, 5.0)) -> Figure:
    fig = Figure(figsize=size, dpi=_PNG_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: PathLike) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def _norm(values: Sequence[float]) -> Normalize:
    lo, hi = min(values), max(values)
    if lo > 0 and hi / lo >= 8:
        return LogNorm(lo, hi)
    return Normalize(lo, hi if hi > lo else lo + 1)


def _x_of_step(curve: Sequence[Mapping], x: str, step: float) -> float | None:
    """The ``x`` coordinate of a step, from the curve's own (step, x) pairs."""
    pairs = [(p["step"], p[x]) for p in curve if _is_num(p.get("step")) and _is_num(p.get(x))]
    if not pairs:
        return None
    steps, xs = zip(*pairs, strict=True)
    return float(np.interp(step, steps, xs))


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
    fig = _new_figure()
    ax = fig.add_subplot()

    colour_key = None
    if len(trials) > max_legend:
        numeric = [
            k for k in varying if all(_is_num(rows.get(t, {}).get(k)) for t in trials if t in rows)
        ]
        prefer = ["learning_rate", "batch_size", "hidden_units", "num_layers", "weight_decay"]
        colour_key = next((k for k in prefer + numeric if k in numeric), None)
    if colour_key is not None:
        cvalues = {t: rows[t][colour_key] for t in trials if t in rows}
        norm, cmap = _norm(list(cvalues.values())), colormaps["viridis"]
        colour = {t: cmap(norm(cvalues[t])) if t in cvalues else "grey" for t in trials}
    elif len(trials) > max_legend:
        norm, cmap = Normalize(min(trials), max(trials) + 1e-9), colormaps["viridis"]
        colour = {t: cmap(norm(t)) for t in trials}
    else:
        cycle = colormaps["tab10" if len(trials) <= 10 else "tab20"].colors
        colour = {t: cycle[i % len(cycle)] for i, t in enumerate(trials)}

    all_y: list[float] = []
    starts: list[float] = []
    for t in trials:
        curve = curves.get(t, [])
        for key, style in (("train_loss", "--"), ("val_loss", "-")):
            pts = [(p[x], p[key]) for p in curve if _is_num(p.get(x)) and _is_num(p.get(key))]
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            label = None
            if key == "val_loss" and few:
                label = trial_label(rows.get(t, {"trial": t}), varying)
            lw = (1.4 if key == "val_loss" else 1.0) * (1.0 if few else 0.6)
            alpha = (0.9 if key == "val_loss" else 0.6) * (1.0 if few else 0.7)
            ax.plot(xs, ys, style, color=colour[t], lw=lw, alpha=alpha, label=label)
            all_y += ys
            starts.append(ys[0])
        row = rows.get(t, {})
        if _is_num(row.get("best_step")) and _is_num(row.get("best_val_loss")):
            if x == "step":
                bx = float(row["best_step"])
            elif x == "epoch" and _is_num(row.get("best_epoch")):
                bx = float(row["best_epoch"])
            else:
                bx = _x_of_step(curve, x, row["best_step"])
            if bx is not None:
                ax.plot(
                    [bx],
                    [row["best_val_loss"]],
                    "*",
                    color=colour[t],
                    ms=11 if few else 7,
                    mec="black",
                    mew=0.6,
                    zorder=5,
                )
                all_y.append(row["best_val_loss"])

    clipped = False
    if all_y:
        top, bottom = max(all_y), min(all_y)
        if starts and top > 5 * max(starts) > 0:
            top, clipped = 5 * max(starts), True
        if bottom > 0 and top / bottom > 10:
            ax.set_yscale("log")
        if clipped:
            ax.set_ylim(top=top)
    else:
        ax.text(
            0.5, 0.5, "no finite losses recorded", ha="center", va="center", transform=ax.transAxes
        )

    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel("loss" + (" (cut at 5x the starting loss)" if clipped else ""))
    ax.set_title(title or f"Learning curves ({len(trials)} trials)")
    ax.grid(True, which="major", alpha=0.3)
    style_handles = [
        Line2D([], [], color="grey", ls="-", label="validation"),
        Line2D([], [], color="grey", ls="--", label="train"),
        Line2D(
            [],
            [],
            color="grey",
            ls="",
            marker="*",
            ms=10,
            mec="black",
            label="early stop (best val)",
        ),
    ]
    if len(trials) <= max_legend:
        handles, _ = ax.get_legend_handles_labels()
        ax.legend(
            handles=handles + style_handles,
            fontsize="small",
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            borderaxespad=0.0,
        )
    else:
        ax.legend(handles=style_handles, fontsize="small", loc="upper right")
        mappable = ScalarMappable(norm=norm, cmap=cmap)
        fig.colorbar(mappable, ax=ax, label=colour_key or "trial")
    return _save(fig, path)


def _x_positions(values: Sequence[Any]) -> tuple[dict[Any, float], list[Any] | None]:
    """Numeric x values map to themselves; strings to 0, 1, ... (returned as tick labels)."""
    if all(_is_num(v) for v in values):
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
    fig = _new_figure()
    ax = fig.add_subplot()
    pos, cats = _x_positions([r[x] for r in rows])
    groups: dict[Any, list[Mapping]] = {}
    for r in rows:
        groups.setdefault(r.get(group_by) if group_by else None, []).append(r)
    order = sorted(groups, key=lambda g: (not _is_num(g), g if _is_num(g) else str(g)))
    cycle = colormaps["tab10"].colors
    higher_better = "acc" in y  # accuracies are maximised, losses minimised
    best: tuple[float, float] | None = None
    failed_x: list[float] = []
    for i, g in enumerate(order):
        colour = cycle[i % len(cycle)]
        ok = [r for r in groups[g] if r.get("status") != "diverged" and _is_num(r.get(y))]
        ok_ids = {id(r) for r in ok}
        failed_x += [pos[r[x]] for r in groups[g] if id(r) not in ok_ids]
        if not ok:
            continue
        xs = sorted({pos[r[x]] for r in ok})
        means = [float(np.mean([r[y] for r in ok if pos[r[x]] == xv])) for xv in xs]
        label = f"{group_by}={_fmt(g, '.3g')}" if group_by else None
        ax.plot(xs, means, "-o", color=colour, ms=4, label=label)
        if len(ok) > len(xs):
            ax.plot([pos[r[x]] for r in ok], [r[y] for r in ok], ".", color=colour, alpha=0.5)
        for r in ok:
            if best is None or (r[y] > best[1] if higher_better else r[y] < best[1]):
                best = (pos[r[x]], r[y])
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
    if cats is not None:
        ax.set_xticks(range(len(cats)), cats)
    elif logx and rows and all(v > 0 for v in pos.values()):
        ax.set_xscale("log")
    if logy and best is not None and all(r[y] > 0 for r in rows if _is_num(r.get(y))):
        ax.set_yscale("log")
    if not rows:
        ax.text(0.5, 0.5, f"no trial has {x}", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(y.replace("_", " "))
    ax.set_title(title or f"{y} against {x}" + (f" by {group_by}" if group_by else ""))
    ax.grid(True, which="major", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="best")
    return _save(fig, path)


# ----------------------------------------------------------------------------------- report


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str], floatfmt: str = ".4g") -> str:
    """A GitHub markdown table; numeric columns right-aligned, None as an empty cell."""

    def cell(v: Any) -> str:
        return _fmt(v, floatfmt).replace("|", "\\|").replace("\n", " ")

    numeric = [
        all(_is_num(r.get(c)) for r in rows if r.get(c) is not None)
        and any(r.get(c) is not None for r in rows)
        for c in columns
    ]
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
    ]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def best_trial(summary: Sequence[Mapping]) -> Mapping | None:
    """The non-diverged trial with the lowest finite best_val_loss, or None."""
    ok = [r for r in summary if r.get("status") != "diverged" and _is_num(r.get("best_val_loss"))]
    return min(ok, key=lambda r: r["best_val_loss"]) if ok else None


def _best_line(summary: Sequence[Mapping]) -> str:
    row = best_trial(summary)
    if row is None:
        return "**Best trial:** none reached a finite validation loss."
    parts = [f"best validation loss {row['best_val_loss']:.4g}"]
    if row.get("best_step") is not None:
        at = f"at step {row['best_step']}"
        if _is_num(row.get("best_epoch")):
            at += f" (epoch {row['best_epoch']:.3g})"
        parts[0] += " " + at
    for key, name in (
        ("best_val_accuracy", "validation accuracy"),
        ("test_loss", "test loss"),
        ("test_accuracy", "test accuracy"),
    ):
        if _is_num(row.get(key)):
            parts.append(f"{name} {row[key]:.4g}")
    label = trial_label(row, varying_hparams(summary) or ["learning_rate", "batch_size"])
    return f"**Best trial:** {label}: " + ", ".join(parts) + "."


_KIND_TITLES = {
    "diverged": "Diverged",
    "not_learning": "Not learning",
    "oscillating": "Oscillating",
    "overfitting": "Overfitting",
    "too_few_units": "Too few hidden units",
}


def _diagnostics_md(diagnostics: Sequence[Diagnostic], max_per_kind: int = 10) -> list[str]:
    lines = ["## Diagnostics", ""]
    if not diagnostics:
        return lines + [
            "None fired: no trial diverged, stalled near chance, oscillated, "
            "overfitted or had fewer hidden units than inputs.",
            "",
        ]
    kinds = list(_KIND_TITLES) + sorted({d.kind for d in diagnostics} - set(_KIND_TITLES))
    for kind in kinds:
        group = [d for d in diagnostics if d.kind == kind]
        if not group:
            continue
        trials = ", ".join(str(d.trial) for d in group)
        lines += [
            f"### {_KIND_TITLES.get(kind, kind)} (`{kind}`): "
            f"{len(group)} trial{'s' if len(group) > 1 else ''} ({trials})",
            "",
        ]
        lines += [f"- {d.message}" for d in group[:max_per_kind]]
        if len(group) > max_per_kind:
            rest = ", ".join(str(d.trial) for d in group[max_per_kind:])
            lines.append(f"- ... and {len(group) - max_per_kind} more (trials {rest}).")
        lines.append("")
    return lines


def write_report(
    workdir: PathLike,
    title: str,
    intro_lines: Sequence[str],
    tables: Sequence[tuple[str, Sequence[Mapping], Sequence[str]]],
    plots: Sequence[str],
    diagnostics: Sequence[Diagnostic],
    *,
    summary: Sequence[Mapping] | None = None,
) -> str:
    """Write ``workdir/report.md`` and return its path.

    The report has the title, the intro as one paragraph, the best trial (from ``summary``, read
    from the workdir when not given), the tables, the plots (paths relative to the workdir) and
    the diagnostics grouped by kind.
    """
    workdir = os.fspath(workdir)
    if summary is None:
        has_summary = os.path.exists(os.path.join(workdir, "summary.csv"))
        summary = read_summary(workdir) if has_summary else []
    lines = [f"# {title}", ""]
    if intro_lines:
        lines += [" ".join(line.strip() for line in intro_lines), ""]
    if summary:
        lines += [_best_line(summary), ""]
    for heading, rows, columns in tables:
        lines += [f"## {heading}", "", markdown_table(rows, columns)]
    if plots:
        lines += ["## Plots", ""]
        for plot in plots:
            name = os.path.splitext(os.path.basename(plot))[0].replace("_", " ")
            lines += [f"![{name}]({plot})", ""]
    lines += _diagnostics_md(diagnostics)
    path = os.path.join(workdir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines).rstrip("\n") + "\n")
    return path


def _name(v: Any) -> str | None:
    if isinstance(v, Mapping):
        v = v.get("name")
    return None if v is None else str(v)


def _distinct(summary: Sequence[Mapping], key: str) -> str | None:
    values = sorted({str(r[key]) for r in summary if r.get(key) is not None})
    return "/".join(values) if values else None


def _intro(
    config: Mapping, summary: Sequence[Mapping], fallback_name: str
) -> tuple[str, list[str]]:
    study = config.get("study")
    name = _name(study) or fallback_name
    lines = []
    if isinstance(study, Mapping) and study.get("description"):
        lines.append(str(study["description"]).rstrip(".") + ".")
    elif config.get("description"):
        lines.append(str(config["description"]).rstrip(".") + ".")
    n = len(summary)
    pops = {r.get("population") for r in summary if r.get("population") is not None}
    what = f"{n} trial{'s' if n != 1 else ''}"
    if pops:
        what += f" in {len(pops)} population{'s' if len(pops) != 1 else ''}"
    model = _distinct(summary, "model") or _name(config.get("model"))
    dataset = _name(config.get("dataset"))
    sentence = f"Study `{name}` trained {what}"
    if model:
        sentence += f" of `{model}`"
    if dataset:
        sentence += f" on `{dataset}`"
    opt = _distinct(summary, "optimizer") or _name(config.get("optimizer"))
    sched = _distinct(summary, "schedule") or _name(config.get("schedule"))
    if opt:
        sentence += f" with `{opt}`" + (f" and a `{sched}` schedule" if sched else "")
    if config.get("patience") is not None:
        sentence += f", stopping each after {config['patience']} evaluations without improvement"
    lines.append(sentence + ".")
    varying = varying_hparams(summary)
    if varying:
        lines.append("Varied: " + ", ".join(f"`{k}`" for k in varying) + ".")
    counts: dict[str, int] = {}
    for r in summary:
        counts[str(r.get("status"))] = counts.get(str(r.get("status")), 0) + 1
    if counts:
        lines.append(
            "Outcome: "
            + ", ".join(f"{c} {s.replace('_', ' ')}" for s, c in sorted(counts.items()))
            + "."
        )
    return name, lines


def _group_key(summary: Sequence[Mapping], x: str) -> str | None:
    varying = [k for k in varying_hparams(summary) if k not in (x, "seed")]
    prefer = [
        "batch_size",
        "num_layers",
        "hidden_units",
        "cell",
        "optimizer",
        "schedule",
        "model",
        "channels",
        "weight_decay",
        "learning_rate",
    ]
    return next((k for k in prefer + varying if k in varying), None)


def default_report(workdir: PathLike, x_hparam: str = "learning_rate") -> str:
    """Plots and ``report.md`` for a finished study's workdir; returns the report's path.

    Writes ``plots/learning_curves.png`` and ``plots/<x_hparam>_vs_best_val_loss.png`` (lines
    grouped by the first other hyperparameter that varies), runs the diagnostics and writes the
    report with the summary table sorted by best validation loss.
    """
    from hpjax.diagnostics import diagnose_workdir

    workdir = os.fspath(workdir)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    summary_path = os.path.join(workdir, "summary.csv")
    metrics = read_metrics(workdir) if os.path.exists(metrics_path) else []
    summary = read_summary(workdir) if os.path.exists(summary_path) else []
    config = read_config(workdir)
    name, intro = _intro(config, summary, os.path.basename(os.path.abspath(workdir)))

    plots = [os.path.join("plots", "learning_curves.png")]
    plot_learning_curves(
        metrics, summary, os.path.join(workdir, plots[0]), title=f"{name}: learning curves"
    )
    xs = [r[x_hparam] for r in summary if r.get(x_hparam) is not None]
    if xs:
        rel = os.path.join("plots", f"{x_hparam}_vs_best_val_loss.png")
        numeric = all(_is_num(v) for v in xs)
        logx = numeric and min(xs) > 0 and max(xs) / min(xs) >= 8
        plot_hparam(
            summary,
            x_hparam,
            "best_val_loss",
            os.path.join(workdir, rel),
            group_by=_group_key(summary, x_hparam),
            logx=logx,
            title=f"{name}: best validation loss against {x_hparam}",
        )
        plots.append(rel)

    def sort_key(r: Mapping) -> tuple[bool, float]:
        v = r.get("best_val_loss")
        return (not _is_num(v) or r.get("status") == "diverged", v if _is_num(v) else 0.0)

    present = {k for r in summary for k in r}
    hparams = varying_hparams(summary) or [
        k for k in ("learning_rate", "batch_size") if k in present
    ]
    results = [
        "status",
        "best_val_loss",
        "best_val_accuracy",
        "best_step",
        "best_epoch",
        "test_loss",
        "test_accuracy",
    ]
    columns = ["trial"] + hparams + [k for k in results if k in present]
    tables = [("Trials, best validation loss first", sorted(summary, key=sort_key), columns)]
    return write_report(
        workdir,
        f"hpjax study `{name}`",
        intro,
        tables if summary else [],
        plots,
        diagnose_workdir(workdir),
        summary=summary,
    )
