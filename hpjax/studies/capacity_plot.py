"""The capacity sweep's plot: validation loss against units per depth, and the gap."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib import colormaps

from hpjax.report import figures
from hpjax.report.labels import is_finite_number
from hpjax.studies.capacity import DEPTH_KEY, PULL_AWAY_GAP, by_depth, depth_name


def plot_capacity(
    table: Sequence[Mapping],
    width: str,
    path: str,
    title: str = "",
    input_dim: int | None = None,
) -> str:
    """Loss at the early-stop point against ``width``, one colour per depth, PNG at ``path``
    (against depth, one colour per width, when the grid has one width and several depths).

    Left: validation loss (solid) and training loss (dashed) of each architecture's best trial,
    with the seed-mean validation loss +- one standard deviation where there are several seeds.
    Right: the generalisation gap (validation minus training loss). ``input_dim``, when given,
    is marked (the guide: use more hidden units than inputs).
    """
    fig = figures.new_figure((12.0, 4.8))
    ax, gap_ax = fig.subplots(1, 2)
    cycle = colormaps["tab10"].colors
    widths = sorted({r[width] for r in table if is_finite_number(r.get(width))})
    depths = {r.get(DEPTH_KEY) for r in table}
    x, group, name = width, DEPTH_KEY, depth_name
    if len(widths) == 1 and len(depths) > 1 and all(is_finite_number(d) for d in depths):
        x, group, name = DEPTH_KEY, width, lambda w: f"{w} {width.replace('_', ' ')}"
        widths, input_dim = sorted(depths), None
    vals = by_depth(table, x, "val_loss", group)
    trains = by_depth(table, x, "train_loss", group)
    gaps = by_depth(table, x, "gap", group)
    means = {(r.get(group), r.get(x)): r for r in table}
    labelled = False
    for i, depth in enumerate(vals):
        colour = cycle[i % len(cycle)]
        xs, ys = zip(*vals[depth], strict=True)
        ax.plot(xs, ys, "-o", color=colour, label=name(depth))
        if depth in trains:
            txs, tys = zip(*trains[depth], strict=True)
            ax.plot(txs, tys, "--s", color=colour, ms=4, alpha=0.8)
        spread = [(w, means[(depth, w)]) for w in xs if (means[(depth, w)].get("seeds") or 0) > 1]
        if spread:
            ax.errorbar(
                [w for w, _ in spread],
                [m["mean_val_loss"] for _, m in spread],
                yerr=[m["std_val_loss"] or 0.0 for _, m in spread],
                fmt="none",
                ecolor=colour,
                alpha=0.5,
                capsize=3,
                label=None if labelled else "seed mean ± sd",
            )
            labelled = True
        if depth in gaps:
            gxs, gys = zip(*gaps[depth], strict=True)
            gap_ax.plot(gxs, gys, "-o", color=colour, label=name(depth))
    gap_ax.axhline(PULL_AWAY_GAP, color="grey", ls=":", lw=1, label=f"gap {PULL_AWAY_GAP}")
    if vals:
        ax.plot([], [], "-", color="grey", label="validation")
        ax.plot([], [], "--", color="grey", label="training")
    for a in (ax, gap_ax):
        if input_dim and widths and min(widths) <= input_dim <= max(widths):
            a.axvline(input_dim, color="grey", ls="-.", lw=1, label=f"inputs ({input_dim})")
        if widths and min(widths) > 0 and max(widths) / min(widths) >= 4:
            a.set_xscale("log", base=2)
            a.set_xticks(widths, [str(w) for w in widths])
            a.minorticks_off()
        a.set_xlabel(x.replace("_", " "))
        a.grid(True, alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize="small")
    if not vals:
        ax.text(0.5, 0.5, "no finite losses", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("loss at the early-stop point")
    ax.set_title("validation (solid) and training (dashed) loss")
    gap_ax.set_ylabel("validation - training loss")
    gap_ax.set_title("generalisation gap")
    if title:
        fig.suptitle(title)
    return figures.save_figure(fig, path)
