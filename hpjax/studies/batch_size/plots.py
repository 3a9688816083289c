"""The batch-size studies' PNG plots, drawn through :mod:`hpjax.report.figures`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps

from hpjax.report import figures
from hpjax.studies.batch_size.analysis import is_finite_number


def _mark_failed(ax, xs: Sequence[float], colour, label: str | None) -> None:
    if xs:
        ax.plot(
            xs,
            [0.97] * len(xs),
            "x",
            color=colour,
            ms=9,
            mew=2,
            transform=ax.get_xaxis_transform(),
            clip_on=False,
            label=label,
        )


def plot_fixed_epochs(rows: Sequence[Mapping], y: str, test_y: str, path: str, title: str) -> str:
    """``y`` (solid) and ``test_y`` (dotted) against the batch size, one colour per rule."""
    fig = figures.new_figure()
    ax = fig.add_subplot()
    cycle = colormaps["tab10"].colors
    rules = list(dict.fromkeys(r["rule"] for r in rows))
    for i, rule in enumerate(rules):
        colour = cycle[i % len(cycle)]
        group = sorted((r for r in rows if r["rule"] == rule), key=lambda r: r["batch_size"])
        ok = [r for r in group if r.get("status") != "diverged" and is_finite_number(r.get(y))]
        if ok:
            ax.plot(
                [r["batch_size"] for r in ok],
                [r[y] for r in ok],
                "-o",
                color=colour,
                ms=4,
                label=rule,
            )
            tests = [r for r in ok if is_finite_number(r.get(test_y))]
            ax.plot(
                [r["batch_size"] for r in tests],
                [r[test_y] for r in tests],
                ":",
                color=colour,
                alpha=0.8,
            )
        failed = [r["batch_size"] for r in group if r not in ok]
        _mark_failed(ax, failed, colour, f"{rule}: diverged" if failed else None)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel(f"{y.replace('_', ' ')} (solid), {test_y.replace('_', ' ')} (dotted)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return figures.save_figure(fig, path)


def plot_grid_heatmap(grid_rows: Sequence[Mapping], value: str, path: str, title: str) -> str:
    """``value`` of every (learning rate, batch size) of the grid as a coloured table."""
    sizes = sorted({r["batch_size"] for r in grid_rows})
    rates = sorted({r["learning_rate"] for r in grid_rows})
    table = np.full((len(rates), len(sizes)), np.nan)
    for r in grid_rows:
        if r.get("status") != "diverged" and is_finite_number(r.get(value)):
            table[rates.index(r["learning_rate"]), sizes.index(r["batch_size"])] = r[value]
    fig = figures.new_figure((max(6.0, 0.7 * len(sizes) + 2), max(4.0, 0.5 * len(rates) + 2)))
    ax = fig.add_subplot()
    cmap = colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(table), origin="lower", aspect="auto", cmap=cmap)
    for i in range(len(rates)):
        for j in range(len(sizes)):
            nan = np.isnan(table[i, j])
            text = "diverged" if nan else f"{table[i, j]:.2f}"
            colour = "black" if nan else "white"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(len(sizes)), [str(b) for b in sizes])
    ax.set_yticks(range(len(rates)), [f"{r:.3g}" for r in rates])
    ax.set_xlabel("batch size")
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=value.replace("_", " "))
    return figures.save_figure(fig, path)


def plot_compute(rows: Sequence[Mapping], path: str) -> str:
    """Examples per second and compiled memory against the batch size."""
    fig = figures.new_figure((10.0, 4.5))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    sizes = [r["batch_size"] for r in rows]
    left.plot(sizes, [r["examples_per_s"] for r in rows], "-o", ms=4, label="examples/s")
    left.plot(sizes, [r["steps_per_s"] for r in rows], "-s", ms=4, label="steps/s")
    left.set_yscale("log")
    left.set_title("speed of one trial")
    mem = [r for r in rows if r.get("temp_bytes") is not None]
    right.plot(
        [r["batch_size"] for r in mem],
        [r["temp_bytes"] / 2**20 for r in mem],
        "-o",
        ms=4,
        label="temporaries",
    )
    right.plot(
        [r["batch_size"] for r in mem],
        [r["peak_bytes"] / 2**20 for r in mem],
        "-s",
        ms=4,
        label="peak (args + out + temp)",
    )
    right.set_yscale("log")
    right.set_ylabel("MiB (XLA memory analysis)")
    right.set_title("compiled memory of the training step")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    return figures.save_figure(fig, path)


def _seed_range(ax, reached: Sequence[Mapping]) -> None:
    """Error bars: the seeds' range of steps (up to the budget where a seed never got there)."""
    spread = [r for r in reached if r.get("steps_low") is not None]
    ax.errorbar(
        [r["batch_size"] for r in spread],
        [r["steps"] for r in spread],
        yerr=[
            [r["steps"] - r["steps_low"] for r in spread],
            [(r["steps_high"] or r["budget_steps"]) - r["steps"] for r in spread],
        ],
        fmt="none",
        ecolor="C0",
        alpha=0.6,
        capsize=3,
        label="range over seeds",
    )


def plot_steps_to_target(
    per_size: Sequence[Mapping],
    per_trial: Sequence[Mapping],
    fit: Mapping | None,
    path: str,
    title: str,
    noise: Mapping | None = None,
) -> str:
    """Steps to target against the batch size on log-log axes, with the perfect-scaling line.

    Light dots: each rate that reached the target; the line: the fastest rate per batch size;
    red x: no rate reached it. With ``noise`` (``b_simple``, ``b_simple_exact``), vertical lines
    mark the noise scale.
    """
    fig = figures.new_figure()
    ax = fig.add_subplot()
    hits = [r for r in per_trial if r["reached"] and r["steps"]]
    ax.plot(
        [r["batch_size"] for r in hits],
        [r["steps"] for r in hits],
        ".",
        color="grey",
        alpha=0.5,
        label="each learning rate (and seed)",
    )
    reached = [r for r in per_size if r["reached"] and r["steps"]]
    sizes = [r["batch_size"] for r in reached]
    if reached:
        seeds = max(r.get("seeds", 1) for r in reached)
        label = "fastest rate" if seeds <= 1 else f"fastest rate, median of {seeds} seeds"
        ax.plot(sizes, [r["steps"] for r in reached], "-o", color="C0", label=label)
        if seeds > 1:
            _seed_range(ax, reached)
        all_sizes = np.array([r["batch_size"] for r in per_size], float)
        b0, s0 = reached[0]["batch_size"], reached[0]["steps"]
        ax.plot(
            all_sizes,
            s0 * b0 / all_sizes,
            "--",
            color="black",
            alpha=0.6,
            label="perfect scaling (steps x B = const)",
        )
    if fit is not None:
        grid = np.logspace(np.log10(min(sizes)), np.log10(max(sizes)), 100)
        ax.plot(
            grid,
            fit["s_min"] * (1 + fit["b_crit"] / grid),
            "-",
            color="C2",
            alpha=0.7,
            label=f"fit S_min(1 + B_crit/B), B_crit={fit['b_crit']:.3g}",
        )
    failed = [r["batch_size"] for r in per_size if not r["reached"]]
    _mark_failed(ax, failed, "red", "target not reached" if failed else None)
    if noise:
        for key, style, name in (
            ("b_simple", "-.", "B_simple at the target (estimate, moving average)"),
            ("b_simple_exact", ":", "B_simple at the target (exact, moving average)"),
        ):
            if is_finite_number(noise.get(key)):
                ax.axvline(noise[key], color="C3", ls=style, label=f"{name} = {noise[key]:.3g}")
    ax.set_xscale("log", base=2)
    if reached:
        ax.set_yscale("log")
    else:
        ax.text(
            0.5,
            0.5,
            "no batch size reached the target",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.set_xlabel("batch size")
    ax.set_ylabel("optimizer steps to target")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return figures.save_figure(fig, path)


def plot_noise_along_training(
    rows: Sequence[Mapping], metric: str, target: float, path: str, at_target: Mapping | None
) -> str:
    """B_simple (per measurement, moving average, exact) and the target metric along training."""
    fig = figures.new_figure()
    ax = fig.add_subplot()
    steps = [r["step"] for r in rows]
    for key, style, label in (
        ("b_simple", "o", "estimate (each measurement)"),
        ("b_simple_ema", "-", "estimate (moving average)"),
        ("b_simple_exact", "--", "exact (all per-example gradients)"),
    ):
        pts = [(r["step"], r[key]) for r in rows if is_finite_number(r.get(key)) and r[key] > 0]
        if pts:
            ax.plot(*zip(*pts, strict=True), style, ms=3, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("B_simple = tr(Sigma) / |G|^2")
    if at_target is not None:
        ax.axvline(at_target["step"], color="grey", ls=":", label=f"{metric} reaches {target:g}")
    twin = ax.twinx()
    twin.plot(steps, [r.get(metric) for r in rows], color="C4", alpha=0.5, lw=1)
    twin.set_ylabel(metric.replace("_", " "), color="C4")
    ax.set_title("simple noise scale along training")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    return figures.save_figure(fig, path)
