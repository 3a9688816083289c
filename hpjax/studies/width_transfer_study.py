"""The width-transfer study: train learning rates x widths x seeds under the standard
parametrisation and μP, then write ``width_transfer.csv``, ``plots/width_transfer.png`` and
``width_transfer_report.md`` from its workdir.

The training is the capacity sweep's: ``config.model_grid`` over the width (``hidden_units``, or
``channels`` for the CNN) x ``parametrization``, one population each, rates and seeds vmapped
inside. The analysis is :mod:`hpjax.studies.width_transfer`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from matplotlib import colormaps
from matplotlib.colors import LogNorm, Normalize

from hpjax.errors import ConfigError
from hpjax.models import mup
from hpjax.report import figures, markdown, setup
from hpjax.results import files
from hpjax.studies import width_transfer as wt
from hpjax.study import spec as spec_lib
from hpjax.study.run import train_and_evaluate

CSV_COLUMNS = (
    "kind",  # best: one seed's best rate; median_best: the seeds' median; curve: one rate
    "parametrization",
    "width",
    "seed",
    "num_params",
    "learning_rate",
    "log2_learning_rate",
    "val_loss",  # best: the loss at the grid's argmin; curve: the seed median
    "val_loss_min",
    "val_loss_max",
    "seeds",
    "diverged",
    "grid_learning_rate",
    "refined",
    "at_edge",
    "shift",
    "log2_shift",
)
NAMES = {"standard": "the standard parametrisation", "mup": "μP"}
PAPER = 'Yang et al. 2022 ("Tensor Programs V")'


def _name(param: Any) -> str:
    return NAMES.get(str(param), str(param))


def _width_key(saved: Mapping) -> str:
    model = saved.get("model") or {}
    return mup.WIDTH_KEYS.get(str(model.get("name", "mlp")), "hidden_units")


def validate_width_transfer_config(config: Any) -> None:
    """A width-transfer study needs the MLP or the CNN and a grid over at least two widths."""
    study = spec_lib.parse(config)
    model = study.model.get("name")
    if model not in mup.WIDTH_KEYS:
        raise ConfigError(
            f"config.model.name={model!r} has no μP width; allowed: "
            + ", ".join(sorted(mup.WIDTH_KEYS))
        )
    width = mup.WIDTH_KEYS[model]
    widths = dict(study.source.model_grid).get(width, ())
    if len(widths) < 2:
        raise ConfigError(
            f"config.model_grid.{width}={tuple(widths)!r} must list at least two widths to "
            f"compare, e.g. model_grid.{width}=(64, 256, 1024)"
        )
    others = sorted(k for k, _ in study.source.model_grid if k not in (width, "parametrization"))
    if others:
        raise ConfigError(
            f"config.model_grid.{others[0]} varies besides the width and parametrization; a "
            "width-transfer study compares only those two: set it in config.model instead"
        )
    for key, values in (
        ("weight_decays", study.source.weight_decays),
        ("batch_sizes", study.source.batch_sizes),
    ):
        if len(values) > 1:
            raise ConfigError(
                f"config.{key}={tuple(values)!r} must hold one value: the study finds one best "
                "learning rate per width, parametrization and seed"
            )
    if len(study.source.learning_rates) < 3:
        raise ConfigError(
            f"config.learning_rates={study.source.learning_rates!r} must list at least 3 rates "
            "to place a best rate between its neighbours"
        )


def run_width_transfer(config: Any, workdir: str) -> dict[str, str]:
    """Trains the study (``train_and_evaluate``) and writes its outputs; returns their paths
    ({} on processes other than 0 of a multi-host run)."""
    validate_width_transfer_config(config)
    train_and_evaluate(config, workdir)
    if jax.process_index() != 0:  # only process 0 writes the workdir
        return {}
    return write_width_transfer_outputs(workdir)  # its config.json also holds the data's sizes


def write_width_transfer_outputs(workdir: str, saved: Mapping | None = None) -> dict[str, str]:
    """Writes width_transfer.csv, plots/width_transfer.png and width_transfer_report.md from a
    finished workdir (``saved`` defaults to its config.json); returns the paths by name."""
    workdir = os.fspath(workdir)
    saved = dict(saved) if saved is not None else files.read_config(workdir)
    summary = files.read_summary(workdir)
    width = _width_key(saved)
    rows = wt.with_rates(summary)
    curves, best = wt.curves(rows, width), wt.best_rates(rows, width)
    table = wt.width_table(best)
    paths = {"csv": os.path.join(workdir, "width_transfer.csv")}
    files.write_csv(paths["csv"], [*best, *table, *curves], CSV_COLUMNS)
    paths["plot"] = plot_width_transfer(
        curves, table, os.path.join(workdir, "plots", "width_transfer.png"), width
    )
    lines = report_lines(saved, summary, curves, best, table, width)
    paths["report"] = files.write_markdown(os.path.join(workdir, "width_transfer_report.md"), lines)
    return paths


def _interval(shift: wt.Shift) -> str:
    own = f"the seeds' own shifts range from {shift.per_seed_low:.3g} to {shift.per_seed_high:.3g}"
    if shift.low is None:
        return f"one seed, no interval; {own}"
    return (
        f"{wt.INTERVAL:.0%} t-interval over {shift.seeds} seeds {shift.low:.3g} to "
        f"{shift.high:.3g} (log2 {math.log2(shift.low):+.2f} to {math.log2(shift.high):+.2f}); "
        + own
    )


def verdict(param: Any, shift: wt.Shift) -> str:
    """The paper's claim for ``param`` (μP: the best rate stays; standard: it drifts, with Adam
    to smaller rates as width grows) against ``shift``'s interval: agrees, disagrees, or
    undecided where the interval reaches both sides."""
    put = f"a factor of {2**wt.STABLE_LOG2:g}"
    if shift.low is None:
        return "Undecided: one seed cannot separate a move from the noise between seeds."
    if param == "mup":
        if shift.interval_stable:
            return (
                "This agrees with the paper's claim that under μP the best rate stays put as the "
                f"model widens: the whole interval lies within {put}."
            )
        if shift.interval_moves:
            return (
                "**This disagrees with the paper**, which claims that under μP the best rate "
                f"stays put as the model widens: the whole interval lies beyond {put}."
            )
        return (
            "**Undecided**: the interval reaches both within and beyond the factor of "
            f"{2**wt.STABLE_LOG2:g} this report counts as staying put, so these seeds cannot say "
            "whether μP's best rate stays put (more seeds would)."
        )
    if shift.high < 1.0:
        return (
            "This agrees with the paper: under the standard parametrisation the best rate drifts "
            "to smaller rates as the model widens (the whole interval lies below 1), as in its "
            "Adam experiments."
        )
    if shift.low > 1.0:
        return (
            "**This disagrees with the paper in direction**: the best rate drifts, as the paper "
            "says it does under the standard parametrisation, but to larger rates as the model "
            "widens, where the paper's Adam experiments show it falling."
        )
    if shift.interval_stable:
        return (
            "**This disagrees with the paper**, which shows the best rate drifting under the "
            f"standard parametrisation: here the whole interval lies within {put} of no move."
        )
    return (
        "**Undecided**: the interval holds no move at all, so these seeds cannot say whether "
        "the standard parametrisation's best rate drifts."
    )


def findings_lines(best: Sequence[Mapping], rates: Sequence[float]) -> list[str]:
    """Per parametrisation: the shift from the narrowest to the widest width with its interval
    and the paper's verdict; then whether any best rate sits at the grid's edge."""
    widths = sorted({r["width"] for r in best})
    lines = []
    found = wt.shifts(best)
    for param, shift in found.items():
        if shift is None:
            lines.append(f"- Under {_name(param)} no seed has a best rate at both widths.")
            continue
        bound = any(
            r["at_edge"]
            for r in best
            if r["parametrization"] == param and r["width"] in (widths[0], widths[-1])
        )
        said = (
            "**Undecided**: a best rate at an end width lies at the edge of the learning-rate "
            "grid, so this shift is a bound, not a measurement (widen config.learning_rates)."
            if bound
            else verdict(param, shift)
        )
        lines.append(
            f"- Under {_name(param)} the best learning rate moves by a factor of "
            f"{shift.factor:.3g} (log2 {shift.log2:+.2f}) from width {widths[0]} to width "
            f"{widths[-1]}: {_interval(shift)}. {said}"
        )
    lines += _span_lines(best)
    if all(found.get(p) for p in ("standard", "mup")):
        lines.append(
            f"- μP's best rate moves {abs(found['mup'].log2):.2f} octaves over the "
            f"{widths[-1] / widths[0]:g}x widening, the standard parametrisation's "
            f"{abs(found['standard'].log2):.2f}."
        )
    return lines + [_edge_line(best, rates), ""]


def _span_lines(best: Sequence[Mapping]) -> list[str]:
    """Per parametrisation: how far apart the seed-median best rates of all widths lie, and
    whether they move one way as the width grows (the shift compares only the end widths)."""
    lines = []
    for param in sorted({r["parametrization"] for r in best}, key=lambda p: p != "standard"):
        rows = [r for r in wt.width_table(best) if r["parametrization"] == param]
        rows = [r for r in rows if r["learning_rate"]]
        if len(rows) < 3:
            continue
        low = min(rows, key=lambda r: r["learning_rate"])
        high = max(rows, key=lambda r: r["learning_rate"])
        steps = np.diff([math.log2(r["learning_rate"]) for r in rows])
        span = math.log2(high["learning_rate"] / low["learning_rate"])
        trend = (
            "the same at every width"
            if span == 0
            else "falling as the width grows"
            if (steps <= 0).all()
            else "rising as the width grows"
            if (steps >= 0).all()
            else "not moving one way as the width grows"
        )
        lines.append(
            f"- Over all widths the seed-median best rate under {_name(param)} spans "
            f"{span:.2f} octaves ({low['learning_rate']:.3g} at width {low['width']} to "
            f"{high['learning_rate']:.3g} at width {high['width']}), {trend}"
            + _span_verdict(param, span, trend)
        )
    return lines


def _span_verdict(param: Any, span: float, trend: str) -> str:
    if param == "mup" and span < wt.STABLE_LOG2:
        return ": within a factor of 2 at every width, as the paper claims."
    if param == "mup":
        return (
            ". **This disagrees with the paper's claim** that μP's best rate stays put at every "
            "width" + (", though it has no trend." if trend.startswith("not") else ".")
        )
    falls = trend.startswith("falling") and span >= wt.STABLE_LOG2
    return ", as the paper shows." if falls else "."


def _edge_line(best: Sequence[Mapping], rates: Sequence[float]) -> str:
    edges = [r for r in best if r["at_edge"]]
    grid = f"{min(rates):.3g} to {max(rates):.3g}" if rates else "the grid"
    if not edges:
        return (
            f"- No seed's best rate sits at an edge of the learning-rate grid ({grid}): every "
            "best rate is interior."
        )
    where = "; ".join(
        f"{_name(r['parametrization'])}, width {r['width']}, seed {r['seed']}: "
        f"{r['grid_learning_rate']:.3g}"
        for r in edges
    )
    return (
        f"- **At the edge of the learning-rate grid ({grid})**: {where}. The true best rate may "
        "lie beyond the grid, so a shift involving it is a bound, not a measurement: widen "
        "config.learning_rates."
    )


def _base_check(curves: Sequence[Mapping], base: Any) -> str:
    """Whether the two parametrisations gave the same losses at the base width, as they must."""
    at_base = {
        (r["parametrization"], r["learning_rate"]): r["val_loss"]
        for r in curves
        if r["width"] == base
    }
    pairs = [(v, at_base[("mup", rate)]) for (p, rate), v in at_base.items() if p == "standard"]
    pairs = [(a, b) for a, b in pairs if b is not None]
    if not pairs:
        return ""
    if all(a == b for a, b in pairs):
        return (
            f" At width {base} the two parametrisations trained the same model: their losses "
            "agree to the bit."
        )
    finite = [abs(a - b) for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
    diverged = sum(math.isfinite(a) != math.isfinite(b) for a, b in pairs)
    return (
        f" At width {base} their losses differ"
        + (f" by up to {max(finite):.3g}" if finite else "")
        + (f", and {diverged} rate(s) diverged under one only" if diverged else "")
        + ", which they should not."
    )


def _method_lines(
    saved: Mapping, summary: Sequence[Mapping], curves: Sequence[Mapping], width: str
) -> list[str]:
    model = saved.get("model") or {}
    base = model.get("base_width", mup.DEFAULTS["base_width"])
    rates = sorted({r["learning_rate"] for r in curves})
    widths = sorted({r["width"] for r in curves})
    params = sorted({str(r["parametrization"]) for r in curves}, key=lambda p: p != "standard")
    seeds = {r.get("seed") for r in summary}
    apart = f", {(rates[-1] / rates[0]) ** (1 / (len(rates) - 1)):.3g}x apart" if rates else ""
    return [
        setup.setup_sentence(saved, summary),
        "",
        f"**Grid.** {width} {', '.join(str(w) for w in widths)} x parametrization "
        f"{', '.join(params)}: {len(widths) * len(params)} populations, each training "
        f"{len(rates)} learning rates x {len(seeds)} seeds at once. The rates run from "
        f"{rates[0]:.3g} to {rates[-1]:.3g}, log-spaced{apart}. μP follows Yang et al. 2022, "
        f"Table 3, relative to base_width {base}: at width {base} it is the standard "
        "parametrisation." + _base_check(curves, base),
        "",
        "**Method.** A trial's loss is its lowest validation loss; a diverged trial counts as "
        "infinitely bad. A seed's best rate is the grid argmin refined by the vertex of a "
        "parabola in log2(rate) through the argmin and its two neighbours (the grid argmin "
        "itself at the grid's edge or next to a diverged rate). Each seed's shift is the ratio "
        "of its best rates at the widest and the narrowest width (the same seed, so the two are "
        "paired); the report gives their geometric mean with a 95% Student-t interval over the "
        "seeds (none with one seed). A verdict is taken only where that interval decides it, "
        "else it says undecided. A move of less than a factor of "
        f"{2**wt.STABLE_LOG2:g} counts as the "
        "best rate staying put.",
        "",
    ]


def report_lines(
    saved: Mapping,
    summary: Sequence[Mapping],
    curves: Sequence[Mapping],
    best: Sequence[Mapping],
    table: Sequence[Mapping],
    width: str = "hidden_units",
) -> list[str]:
    """The lines of ``width_transfer_report.md``: setup, findings, the table, the plot."""
    rates = sorted({r["learning_rate"] for r in curves})
    return [
        "# Learning-rate transfer across widths: standard parametrisation vs μP",
        "",
        *_method_lines(saved, summary, curves, width),
        f"## What {PAPER} claims and what the numbers show",
        "",
        "The paper: under μP the best learning rate of a narrow model stays best as it widens; "
        "under the standard parametrisation it drifts (with Adam, to smaller rates).",
        "",
        *findings_lines(best, rates),
        "## Best learning rate per width (seed median)",
        "",
        markdown.markdown_table(
            table,
            [
                "parametrization",
                "width",
                "num_params",
                "learning_rate",
                "shift",
                "log2_shift",
                "seed_rates",
                "at_edge",
            ],
        ),
        "`shift` is the move from the narrowest width; `seed_rates` the seeds' best rates.",
        "",
        "## Plot",
        "",
        "![width transfer](plots/width_transfer.png)",
        "",
        "Per-seed best rates and per-rate seed medians: `width_transfer.csv`; every trial: "
        "`summary.csv`, [report.md](report.md).",
    ]


def _width_colours(widths: Sequence[Any]) -> tuple[Any, Normalize]:
    lo, hi = min(widths), max(widths)
    norm = LogNorm(lo, hi) if lo > 0 and hi > lo else Normalize(lo, hi + 1)
    return colormaps["viridis"], norm


TITLES = {"standard": "standard parametrisation", "mup": "μP"}


def _draw_width(ax, rows: Sequence[Mapping], best: Mapping | None, colour: Any, label: str):
    """One width's curve, its seeds' range and a star at its median best rate."""
    xs = [r["learning_rate"] for r in rows]
    ys = [r["val_loss"] for r in rows]
    ax.plot(xs, ys, "-o", ms=3, color=colour, label=label)
    low = [r["val_loss_min"] for r in rows]
    ax.fill_between(xs, low, [r["val_loss_max"] for r in rows], color=colour, alpha=0.15, lw=0)
    if best and best["learning_rate"]:
        y = np.interp(np.log2(best["learning_rate"]), np.log2(xs), ys)
        ax.plot([best["learning_rate"]], [y], "*", ms=13, color=colour, mec="black", mew=0.6)


def plot_width_transfer(
    curves: Sequence[Mapping], table: Sequence[Mapping], path: str, width: str
) -> str:
    """One panel per parametrisation: seed-median validation loss against the learning rate
    (log x), one line per width coloured by width, the seeds' range shaded and a star at each
    width's median best rate."""
    params = sorted({r["parametrization"] for r in curves}, key=lambda p: p != "standard")
    widths = sorted({r["width"] for r in curves})
    fig = figures.new_figure((6.0 * max(len(params), 1), 4.8))
    axes = fig.subplots(1, max(len(params), 1), sharey=True, squeeze=False)[0]
    cmap, norm = _width_colours(widths or [1])
    medians = {(t["parametrization"], t["width"]): t for t in table}
    for ax, param in zip(axes, params, strict=False):
        for w in widths:
            rows = [
                r
                for r in curves
                if (r["parametrization"], r["width"]) == (param, w) and math.isfinite(r["val_loss"])
            ]
            if rows:
                _draw_width(ax, rows, medians.get((param, w)), cmap(norm(w)), str(w))
        ax.set_xscale("log", base=2)
        ax.set_xlabel("learning rate")
        ax.set_title(TITLES.get(str(param), str(param)))
        ax.grid(True, alpha=0.3)
    finite = [r["val_loss"] for r in curves if math.isfinite(r["val_loss"])]
    if finite:  # diverging rates would stretch the axis beyond what tells the widths apart
        axes[0].set_ylim(min(finite) - 0.05, min(max(finite), min(finite) + 1.2) + 0.05)
    axes[0].set_ylabel("validation loss (seed median; seeds' range shaded)")
    if axes[-1].get_legend_handles_labels()[0]:
        axes[-1].legend(title=width.replace("_", " "), fontsize="small", loc="upper center")
    fig.suptitle("Validation loss against learning rate per width (star: median best rate)")
    return figures.save_figure(fig, path)
