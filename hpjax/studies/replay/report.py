"""The replay's Pareto plot and its section of ``report.md``, from ``replay.csv``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from hpjax.report.figures import new_figure, save_figure
from hpjax.report.labels import is_finite_number
from hpjax.results import files
from hpjax.studies.replay.settings import SCHEDULERS

CSV = "replay.csv"
META = "replay.json"
PLOT = os.path.join("plots", "replay_pareto.png")
COLOURS = dict(zip(SCHEDULERS, ("C0", "C1", "C2", "C3", "C4", "C5", "C6", "0.45"), strict=True))


def _finite(*values) -> bool:
    return all(is_finite_number(v) for v in values)


def pareto_front(rows: Sequence[Mapping]) -> list[Mapping]:
    """The settings no other beats on both mean budget and mean regret, cheapest first."""
    ok = [r for r in rows if _finite(r.get("budget_share"), r.get("regret_pct"))]
    front = [
        r
        for r in ok
        if not any(
            o["budget_share"] <= r["budget_share"]
            and o["regret_pct"] <= r["regret_pct"]
            and (o["budget_share"], o["regret_pct"]) != (r["budget_share"], r["regret_pct"])
            for o in ok
        )
    ]
    return sorted(front, key=lambda r: r["budget_share"])


def _name(row: Mapping) -> str:
    return str(row["setting"]).split(":", 1)[0]


def plot_pareto(rows: Sequence[Mapping], path: str) -> str:
    """Mean regret against mean budget share, one point per setting with the middle 95% of its
    replays as bars; the Pareto front joined; random search as the dashed baseline."""
    fig = new_figure((9.0, 6.0))
    ax = fig.add_subplot(1, 1, 1)
    front = {r["setting"] for r in pareto_front(rows)}
    seen = set()
    for r in rows:
        if not _finite(r.get("budget_share"), r.get("regret_pct")):
            continue
        x, y = 100 * r["budget_share"], r["regret_pct"]
        # a mean may fall outside the middle 95% of a few skewed replays: bars from the mean
        xerr = [
            [max(0, x - 100 * r["budget_share_low"])],
            [max(0, 100 * r["budget_share_high"] - x)],
        ]
        yerr = [[max(0, y - r["regret_pct_low"])], [max(0, r["regret_pct_high"] - y)]]
        name = _name(r)
        label = SCHEDULERS[name].title if name not in seen else None
        seen.add(name)
        ax.errorbar(
            x, y, xerr=xerr, yerr=yerr, fmt="o", color=COLOURS[name], label=label, capsize=2,
            markersize=8 if r["setting"] in front else 5, alpha=0.85, elinewidth=0.6,
        )  # fmt: skip
        if r["setting"] in front:  # the others are told apart by colour and the table
            short = str(r["setting"]).split(":", 1)[1].replace(",", " ")
            ax.annotate(short, (x, y), textcoords="offset points", xytext=(6, 5), fontsize=7)
    randoms = sorted((r for r in rows if _name(r) == "random"), key=lambda r: r["budget_share"])
    if len(randoms) > 1:
        ax.plot(
            [100 * r["budget_share"] for r in randoms],
            [r["regret_pct"] for r in randoms],
            "--",
            color=COLOURS["random"],
            linewidth=1,
        )
    line = pareto_front(rows)
    ax.step(
        [100 * r["budget_share"] for r in line],
        [r["regret_pct"] for r in line],
        where="post",
        color="k",
        linewidth=0.8,
        alpha=0.6,
        label="Pareto front",
    )
    ax.axhline(0, color="0.7", linewidth=0.8)
    ax.set_xlabel("trial-steps spent (% of the dense study's)")
    ax.set_ylabel("regret: best validation value found above the dense best (%)")
    ax.set_title("Schedulers replayed on this study's curves (bars: middle 95% of replays)")
    ax.set_xlim(0, 105)
    ax.set_yscale("symlog", linthresh=0.1)  # linear below 0.1%, so zero regret has a place
    ax.set_ylim(bottom=-0.02)  # zero-regret points whole, not cut by the axis
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, path)


def _with_interval(
    row: Mapping, key: str, scale: float = 1.0, fmt: str = ".2g", unit: str = ""
) -> str:
    """``0.4% [0.1, 0.9]``: the mean with the middle 95% of the replays."""
    mean, low, high = (row.get(k) for k in (key, f"{key}_low", f"{key}_high"))
    if not _finite(mean, low, high):
        return ""

    def number(x: float) -> str:  # 160, not 1.6e+02
        return f"{x:.0f}" if abs(x) >= 100 else f"{x:{fmt}}"

    return f"{number(scale * mean)}{unit} [{number(scale * low)}, {number(scale * high)}]"


def headline(row: Mapping) -> str:
    """``ASHA (eta 3, grace 300) reaches within 0.4% [0.1, 0.9] of the dense best at 31%
    [28, 35] of the budget``."""
    random = row.get("random_regret_pct")
    tail = ""
    if _finite(random) and _name(row) != "random":
        tail = f" (random search at that budget: {random:.2g}%)"
    return (
        f"{row['scheduler']} reaches within {_with_interval(row, 'regret_pct', unit='%')} of "
        f"the dense best at {_with_interval(row, 'budget_share', 100, '.0f', '%')} of the "
        f"budget{tail}"
    )


def _patience_sentence(rows: Sequence[Mapping]) -> str:
    patient = [r for r in rows if _name(r) == "patience" and _finite(r.get("regret_pct"))]
    if not patient:
        return ""
    parts = [
        f"{r['scheduler'].split('(')[1].rstrip(')')}: {100 * r['budget_share']:.0f}% of the "
        f"budget, {r['regret_pct']:.2g}% regret"
        for r in sorted(patient, key=lambda r: r["budget_share"])
    ]
    return (
        "The guide's patient early stopping, shortened on these curves (the dense study's own "
        "patience spends 100%): " + "; ".join(parts) + "."
    )


TABLE_COLUMNS = [
    "scheduler",
    "budget %",
    "regret %",
    "random search at that budget: regret %",
    "regret minus random's",
    "found the dense best",
    "median rank of its pick",
    "test value of its pick",
    "replays",
]


def _table_row(row: Mapping) -> dict:
    return {
        "scheduler": row["scheduler"],
        "budget %": _with_interval(row, "budget_share", 100, ".0f"),
        "regret %": _with_interval(row, "regret_pct"),
        "random search at that budget: regret %": _with_interval(row, "random_regret_pct"),
        "regret minus random's": _with_interval(row, "minus_random_pct"),
        "found the dense best": f"{row['found_best']:.0%}" if _finite(row["found_best"]) else "",
        "median rank of its pick": row.get("median_rank"),
        "test value of its pick": _with_interval(row, "test", 1, ".4g"),
        "replays": row.get("replays"),
    }


def replay_section(workdir: str) -> tuple[list[str], list, list[str]]:
    """The report's lines, table and plot of the replay in ``workdir`` (empty when none)."""
    path = os.path.join(workdir, CSV)
    if not os.path.exists(path):
        return [], [], []
    rows = files.read_csv(path, key="setting")
    meta_path = os.path.join(workdir, META)
    meta = (
        files.read_json_file(meta_path, "the replay's settings")
        if os.path.exists(meta_path)
        else {}
    )
    front = [f"- {headline(r)}." for r in pareto_front(rows)]
    lines = [
        f"Schedulers replayed on this study's own curves ({meta.get('trials', '?')} trials, "
        f"{meta.get('seeds', '?')} seeds x {meta.get('orders', '?')} arrival orders, "
        f"{meta.get('slots', '?')} trials training at once, {meta.get('seconds', '?')} s): a "
        "stopped trial's curve is cut where the scheduler stopped it. Figures are means with "
        "the middle 95% of the replays; regret is in percent of the dense best validation "
        f"{meta.get('monitor', 'loss')}. The Pareto front (no other setting is both cheaper "
        "and closer):",
        "\n".join(front),
    ]
    lines += [s for s in [_patience_sentence(rows)] if s]
    if meta.get("sources"):
        lines.append(f"Whose decisions: {meta['sources']}.")
    table = (
        "Which scheduler? Replayed on these curves (replay.csv)",
        [_table_row(r) for r in rows],
        TABLE_COLUMNS,
    )
    plots = [PLOT] if os.path.exists(os.path.join(workdir, PLOT)) else []
    return lines, [table], plots
