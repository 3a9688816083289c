"""The RNN study: cell type (LSTM, GRU) x stacked layers on a subset, then the best on all data.

The guide: the two main questions for an RNN are its cell type and its number of stacked layers;
LSTM is the more common cell; try both, on a random subset of the data first. So
:func:`run_rnn_study` trains every architecture of ``config.model_grid`` (by default
``cell`` x ``num_layers``) on ``config.train_subset`` training examples into
``workdir/subset``, picks the architecture with the lowest seed-mean validation loss
(:func:`select_best`), retrains it on the full training set into ``workdir/full`` at the best
subset learning rate times each of ``config.full_lr_factors`` (more data can move the best rate),
and writes ``rnn_study.csv``, ``plots/`` and ``rnn_report.md`` in ``workdir``.

Every check that needs no compilation runs before the subset stage starts, for both stages.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from matplotlib import colormaps

from hpjax.report import figures, labels, markdown
from hpjax.report.diagnostics import KINDS, diagnose_workdir
from hpjax.report.labels import is_finite_number
from hpjax.report.setup import setup_sentence
from hpjax.results import files
from hpjax.studies import capacity, paired
from hpjax.studies.rnn.spec import DEFAULT_KEYS, arch_keys, full_config, validate_rnn_study
from hpjax.study.run import train_and_evaluate

STAGES = ("subset", "full")
CSV_COLUMNS = ("stage", "selected") + capacity.TABLE_COLUMNS


class NothingToRetrainError(RuntimeError):
    """Every subset trial diverged: there is no architecture to retrain on the full data."""


def compare(summary: Sequence[Mapping], keys: Sequence[str] = DEFAULT_KEYS) -> list[dict]:
    """One row per architecture: best trial and seed-mean at the best rate (see capacity)."""
    return capacity.architecture_table(summary, keys)


def select_best(table: Sequence[Mapping], keys: Sequence[str] = DEFAULT_KEYS) -> dict:
    """The architecture to retrain: lowest seed-mean validation loss at its best learning rate.

    Ties go to the one with fewer parameters, then to the first in table order. Raises
    :class:`NothingToRetrainError` when no architecture reached a finite validation loss.
    """
    ok = [
        (i, r)
        for i, r in enumerate(table)
        if is_finite_number(r.get("mean_val_loss")) and r.get("seeds")
    ]
    if not ok:
        raise NothingToRetrainError(
            "no architecture reached a finite validation loss on the subset (every trial "
            "diverged); lower config.learning_rates"
        )
    _, best = min(
        ok,
        key=lambda ir: (
            ir[1]["mean_val_loss"],
            ir[1]["num_params"] if is_finite_number(ir[1].get("num_params")) else math.inf,
            ir[0],
        ),
    )
    return {
        **{k: best[k] for k in keys},
        "learning_rate": best["mean_at_learning_rate"],
        "mean_val_loss": best["mean_val_loss"],
        "num_params": best.get("num_params"),
    }


# --------------------------------------------------------------------------------------- plots


def _arch_label(row: Mapping, keys: Sequence[str]) -> str:
    return " ".join(
        f"{row[k]}" if k == "cell" else f"{labels.SHORT_NAMES.get(k, k) or k}={row[k]}"
        for k in keys
    )


def plot_comparison(
    table: Sequence[Mapping], full: Mapping | None, keys: Sequence[str], path: str
) -> str:
    """Validation loss and accuracy at the early-stop point against depth, one line per cell.

    Loss: the seed mean at each architecture's best rate with the seeds' standard deviation
    (the selection criterion); accuracy: each architecture's best subset trial. The retrained
    architecture's full-data result is a star. With other grid keys than cell and depth, each
    combination is its own line.
    """
    fig = figures.new_figure((12.0, 4.8))
    loss_ax, acc_ax = fig.subplots(1, 2)
    depth = "num_layers" if "num_layers" in keys else keys[-1]
    line_keys = [k for k in keys if k != depth]
    lines: dict[tuple, list[Mapping]] = {}
    for row in table:
        lines.setdefault(tuple(row.get(k) for k in line_keys), []).append(row)
    cycle = colormaps["tab10"].colors
    for i, (values, rows) in enumerate(sorted(lines.items(), key=lambda kv: str(kv[0]))):
        colour = cycle[i % len(cycle)]
        label = " ".join(str(v) for v in values) or "subset"
        for ax, key in ((loss_ax, "mean_val_loss"), (acc_ax, "val_accuracy")):
            pts = sorted(
                (r[depth], r[key], r.get("std_val_loss") or 0.0)
                for r in rows
                if is_finite_number(r.get(key)) and is_finite_number(r.get(depth))
            )
            if pts:
                xs, ys, sds = zip(*pts, strict=True)
                ax.errorbar(
                    xs,
                    ys,
                    yerr=sds if key == "mean_val_loss" else None,
                    fmt="-o",
                    color=colour,
                    capsize=3,
                    label=f"{label} (subset)",
                )
    if full is not None:
        for ax, key in ((loss_ax, "mean_val_loss"), (acc_ax, "val_accuracy")):
            if is_finite_number(full.get(key)) and is_finite_number(full.get(depth)):
                ax.plot(
                    [full[depth]],
                    [full[key]],
                    "*",
                    color="gold",
                    mec="black",
                    ms=16,
                    zorder=5,
                    label=f"{_arch_label(full, keys)} (full data)",
                )
    titles = (
        (loss_ax, "validation loss", "seed mean ± sd at the best rate"),
        (acc_ax, "validation accuracy", "best trial"),
    )
    for ax, name, what in titles:
        ax.set_xlabel(depth.replace("_", " "))
        ax.set_ylabel(f"{name} at the early-stop point")
        ax.set_title(f"{name} ({what})")
        depths = sorted({r[depth] for r in table if is_finite_number(r.get(depth))})
        if depths:
            ax.set_xticks(depths)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    return figures.save_figure(fig, path)


def plot_stage_curves(
    curves: Sequence[tuple[str, Sequence[Mapping]]], path: str, x: str = "epoch"
) -> str:
    """Validation (solid) and training (dashed) loss curves, one colour per labelled curve."""
    fig = figures.new_figure((8.0, 5.0))
    ax = fig.add_subplot()
    cycle = colormaps["tab10"].colors
    for i, (label, curve) in enumerate(curves):
        colour = cycle[i % len(cycle)]
        for key, style in (("val_loss", "-"), ("train_loss", "--")):
            pts = [
                (p[x], p[key])
                for p in curve
                if is_finite_number(p.get(x)) and is_finite_number(p.get(key))
            ]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, style, color=colour, label=label if key == "val_loss" else None)
    ax.plot([], [], "-", color="grey", label="validation")
    ax.plot([], [], "--", color="grey", label="training")
    ax.set_xlabel(x)
    ax.set_ylabel("loss")
    ax.set_title("best trial of the selected architecture: subset against full data")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return figures.save_figure(fig, path)


# -------------------------------------------------------------------------------------- report


def _g(v: Any, fmt: str = ".4g") -> str:
    return format(v, fmt) if is_finite_number(v) else "n/a"


def _pct(v: Any) -> str:
    return f"{100 * v:.1f}%" if is_finite_number(v) else "n/a"


def findings(table: Sequence[Mapping], keys: Sequence[str]) -> list[str]:
    """Sentences on what the subset stage shows: the best cell, and the best depth per cell,
    each against the runner-up paired over seeds (:mod:`hpjax.studies.paired`)."""
    rows = [r for r in table if is_finite_number(r.get("mean_val_loss"))]
    out = [_cell_finding(rows, keys)] if "cell" in keys else []
    if "num_layers" in keys:
        groups: dict[tuple, list[Mapping]] = {}
        for r in rows:
            groups.setdefault(tuple(r.get(k) for k in keys if k != "num_layers"), []).append(r)
        for values, group in sorted(groups.items(), key=lambda kv: str(kv[0])):
            if len(group) < 2:
                continue
            group = sorted(group, key=lambda r: r["num_layers"])
            best = min(group, key=lambda r: r["mean_val_loss"])
            losses = ", ".join(f"{r['num_layers']}: {_g(r['mean_val_loss'])}" for r in group)
            name = " ".join(str(v).upper() if isinstance(v, str) else str(v) for v in values)
            against = [
                paired.describe(
                    paired.compare(r.get("seed_values") or {}, best.get("seed_values") or {}),
                    capacity.depth_name(r["num_layers"]),
                    capacity.depth_name(best["num_layers"]),
                )
                for r in group
                if r is not best
            ]
            out.append(
                f"Depth ({name or 'all'}): seed-mean validation loss by layers {losses}; lowest "
                f"at {capacity.depth_name(best['num_layers'])}. Paired over seeds: "
                + "; ".join(against)
                + "."
            )
    return [s for s in out if s]


def _cell_finding(rows: Sequence[Mapping], keys: Sequence[str]) -> str:
    """The best architecture of each cell against the other's, paired over seeds."""
    best_of: dict[str, Mapping] = {}
    for r in rows:
        if r["cell"] not in best_of or r["mean_val_loss"] < best_of[r["cell"]]["mean_val_loss"]:
            best_of[r["cell"]] = r
    if len(best_of) < 2:
        return ""
    a, b = sorted(best_of.values(), key=lambda r: r["mean_val_loss"])[:2]
    p = paired.compare(b.get("seed_values") or {}, a.get("seed_values") or {})
    if p.winner == "a":  # the lower mean loses on the seeds both have
        verdict = (
            f"on the seeds both cells have, the {b['cell'].upper()} is lower, against the seed "
            "means: the two rankings disagree, so neither cell is the clear choice."
        )
    elif p.winner == "undecided":
        verdict = (
            "the seeds do not separate the two cells (undecided), so on this data the guide's "
            "advice to try both stands without a winner."
        )
    elif a["cell"] == "lstm":
        verdict = "here the common choice is also the better one."
    else:
        verdict = "here trying the GRU paid off."
    return (
        f"Cell: the best {a['cell'].upper()} ({_arch_label(a, keys)}: seed-mean validation loss "
        f"{_g(a['mean_val_loss'])}, best-trial validation accuracy {_pct(a.get('val_accuracy'))}) "
        f"against the best {b['cell'].upper()} ({_arch_label(b, keys)}: "
        f"{_g(b['mean_val_loss'])}, {_pct(b.get('val_accuracy'))}) on the subset, paired over "
        f"seeds: {paired.describe(p, _arch_label(b, keys), _arch_label(a, keys))}. The guide "
        f"calls LSTM the more common cell and says to try both: {verdict}"
    )


def write_rnn_outputs(workdir: str, config: Any, keys: Sequence[str]) -> dict[str, str]:
    """rnn_study.csv, plots/rnn_comparison.png, plots/rnn_curves.png and rnn_report.md."""
    sub_dir, full_dir = (os.path.join(workdir, s) for s in STAGES)
    sub_summary = files.read_summary(sub_dir)
    table = compare(sub_summary, keys)
    best = select_best(table, keys)
    full_summary = (
        files.read_summary(full_dir)
        if os.path.exists(os.path.join(full_dir, "summary.csv"))
        else []
    )
    full_rows = compare(full_summary, keys) if full_summary else []
    full = full_rows[0] if full_rows else None

    rows = []
    for r in table:
        selected = all(r.get(k) == best[k] for k in keys)
        rows.append({"stage": "subset", "selected": selected, **r})
    if full is not None:
        rows.append({"stage": "full", "selected": True, **full})
    paths = {"csv": os.path.join(workdir, "rnn_study.csv")}
    files.write_csv(paths["csv"], rows, CSV_COLUMNS[:2] + tuple(keys) + CSV_COLUMNS[2:])

    paths["plot"] = plot_comparison(
        table, full, keys, os.path.join(workdir, "plots", "rnn_comparison.png")
    )
    sub_best = next(r for r in table if all(r.get(k) == best[k] for k in keys))
    paths["curves"] = plot_stage_curves(
        _stage_curves((("subset", sub_best, sub_dir), ("full", full, full_dir))),
        os.path.join(workdir, "plots", "rnn_curves.png"),
        x="step",
    )
    lines = _report_lines(
        workdir, config, keys, table, rows, best, sub_best, full, (sub_summary, full_summary)
    )
    paths["report"] = os.path.join(workdir, "rnn_report.md")
    files.write_markdown(paths["report"], lines)
    return paths


def _stage_curves(stages) -> list[tuple[str, list[dict]]]:
    """The best trial's curve of each stage (label, records) that has one."""
    curves = []
    for stage, row, directory in stages:
        if row is None or row.get("best_trial") is None:
            continue
        trial = int(row["best_trial"])
        curve = files.curves_by_trial(files.read_metrics(directory)).get(trial, [])
        curves.append((f"{stage}: trial {trial}, lr {_g(row.get('learning_rate'), '.3g')}", curve))
    return curves


def _report_lines(workdir, config, keys, table, rows, best, sub_best, full, summaries):
    """The lines of ``rnn_report.md``: setup, comparison, findings, plots, diagnostics."""
    sub_dir, full_dir = (os.path.join(workdir, s) for s in STAGES)
    sub_summary, full_summary = summaries
    n_sub = config.train_subset
    sub_diag = diagnose_workdir(sub_dir)
    full_diag = diagnose_workdir(full_dir) if full_summary else []
    columns = [
        *keys,
        "num_params",
        "learning_rate",
        "best_step",
        "val_loss",
        "val_accuracy",
        "train_loss",
        "gap",
        "test_accuracy",
        "seeds",
        "mean_val_loss",
        "std_val_loss",
        "diverged",
    ]
    lines = [
        "# RNN study: cell type x stacked layers",
        "",
        "The guide: the two main questions for an RNN are the cell type (LSTM or GRU) and the "
        "number of stacked layers; LSTM is the more common cell; try both, on a random subset of "
        f"the data first. Stage 1 trained {len(table)} architectures ({', '.join(keys)}) on a "
        f"random subset of {n_sub} training examples ({len(sub_summary)} trials, learning rates "
        "and seeds vmapped inside each architecture); stage 2 retrained the one with the lowest "
        "seed-mean validation loss on the full training set"
        + (f" ({len(full_summary)} trials)." if full_summary else " (not run)."),
        "",
        setup_sentence(files.read_config(sub_dir), sub_summary, "Setup of stage 1 (subset)"),
        "",
        *(
            [setup_sentence(files.read_config(full_dir), full_summary, "Setup of stage 2"), ""]
            if full_summary
            else []
        ),
        "## Comparison (stage 1: subset; last row: stage 2, full data)",
        "",
        markdown.markdown_table(
            [{**r, **{"stage": r["stage"] + (" *" if r["selected"] else "")}} for r in rows],
            ["stage", *columns],
        ),
        "`*` marks the selected architecture. Losses and accuracies are at each trial's "
        "early-stop point; the row shows the architecture's best trial, and `mean_val_loss` the "
        "mean over seeds at its best learning rate (the selection criterion).",
        "",
        "## What the numbers show",
        "",
        *[f"- {s}" for s in findings(table, keys)],
        f"- Selected: {_arch_label(best, keys)} (seed-mean validation loss "
        f"{_g(best['mean_val_loss'])} at learning rate {_g(best['learning_rate'], '.3g')}).",
    ]
    if full is not None:
        lines.append(
            f"- Full data: validation loss {_g(sub_best['val_loss'])} -> {_g(full['val_loss'])}, "
            f"validation accuracy {_pct(sub_best.get('val_accuracy'))} -> "
            f"{_pct(full.get('val_accuracy'))}, test accuracy "
            f"{_pct(sub_best.get('test_accuracy'))} -> {_pct(full.get('test_accuracy'))} "
            f"(best full-data learning rate {_g(full.get('learning_rate'), '.3g')})."
        )
    lines += [
        "",
        "## Plots",
        "",
        "![comparison](plots/rnn_comparison.png)",
        "",
        "![curves](plots/rnn_curves.png)",
        "",
        *_diagnostics_section(sub_diag, full_diag, sub_summary, keys, bool(full_summary)),
    ]
    return lines


def _diagnostics_section(sub_diag, full_diag, sub_summary, keys, full_ran: bool) -> list[str]:
    """The report's diagnostics: counts for both stages (stage 2 only if it ran), then a table
    of the subset stage's diagnostics per architecture when any fired."""
    lines = [
        "## Diagnostics",
        "",
        f"Stage 1: {_diag_counts(sub_diag)} (details in [subset/report.md](subset/report.md)). "
        f"Stage 2: {_diag_counts(full_diag) if full_ran else 'not run'}"
        + (" (details in [full/report.md](full/report.md))." if full_ran else "."),
        "",
    ]
    if sub_diag:
        lines += [
            markdown.markdown_table(
                [
                    {**r, **{k: r.get(k, 0) for k in _kinds(sub_diag)}}
                    for r in capacity.diagnostics_by(sub_diag, sub_summary, keys)
                ],
                [*keys, *_kinds(sub_diag)],
            )
        ]
    return lines


def _kinds(diagnostics: Sequence[Any]) -> list[str]:
    present = {d.kind for d in diagnostics}
    return [k for k in KINDS if k in present] + sorted(present - set(KINDS))


def _diag_counts(diagnostics: Sequence[Any]) -> str:
    if not diagnostics:
        return "no diagnostic fired"
    counts: dict[str, set] = {}
    for d in diagnostics:
        counts.setdefault(d.kind, set()).add(d.trial)
    return ", ".join(
        f"{k.replace('_', ' ')} in {len(counts[k])} trial(s)" for k in _kinds(diagnostics)
    )


def run_rnn_study(config: Any, workdir: str) -> dict[str, Any]:
    """Both stages and the outputs; returns the selected architecture and the paths written.

    Every process of a multi-host run trains and selects alike; only process 0 writes.
    """
    validate_rnn_study(config)
    keys = arch_keys(config)
    sub_rows = train_and_evaluate(config, os.path.join(workdir, "subset"))
    best = select_best(compare(sub_rows, keys), keys)
    train_and_evaluate(full_config(config, best, keys), os.path.join(workdir, "full"))
    if jax.process_index() != 0:  # only process 0 writes the workdir
        return {"selected": best}
    return {"selected": best, **write_rnn_outputs(workdir, config, keys)}
