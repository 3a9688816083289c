"""Markdown through one writer: tables, the best trial in a line, diagnostics, a report page."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from hpjax.report.diagnostics import Diagnostic
from hpjax.report.labels import format_value, is_number, trial_label, varying_hparams
from hpjax.results.files import PathLike, read_summary, write_markdown


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str], floatfmt: str = ".4g") -> str:
    """A GitHub markdown table; numeric columns right-aligned, None as an empty cell."""

    def cell(v: Any) -> str:
        return format_value(v, floatfmt).replace("|", "\\|").replace("\n", " ")

    numeric = [
        all(is_number(r.get(c)) for r in rows if r.get(c) is not None)
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
    ok = [r for r in summary if r.get("status") != "diverged" and is_number(r.get("best_val_loss"))]
    return min(ok, key=lambda r: r["best_val_loss"]) if ok else None


def _best_line(summary: Sequence[Mapping]) -> str:
    row = best_trial(summary)
    if row is None:
        return "**Best trial:** none reached a finite validation loss."
    parts = [f"best validation loss {row['best_val_loss']:.4g}"]
    if row.get("best_step") is not None:
        at = f"at step {row['best_step']}"
        if is_number(row.get("best_epoch")):
            at += f" (epoch {row['best_epoch']:.3g})"
        parts[0] += " " + at
    for key, name in (
        ("best_val_accuracy", "validation accuracy"),
        ("test_loss", "test loss"),
        ("test_accuracy", "test accuracy"),
    ):
        if is_number(row.get(key)):
            parts.append(f"{name} {row[key]:.4g}")
    at_best = pbt_values_at_best(row)
    if at_best:  # PBT: the values that trained the member up to its best, not its final ones
        label = (
            f"member {row['trial']} ("
            + ", ".join(f"{k}={v:.3g}" if is_number(v) else f"{k}={v}" for k, v in at_best.items())
            + " in force up to that step)"
        )
    else:
        label = trial_label(row, varying_hparams(summary) or ["learning_rate", "batch_size"])
    return f"**Best trial:** {label}: " + ", ".join(parts) + "."


def pbt_values_at_best(row: Mapping) -> dict:
    """A PBT member's searched values while it trained up to its best step (``KEY_at_best``);
    empty for other studies."""
    return {
        k.removesuffix("_at_best"): v
        for k, v in row.items()
        if k.endswith("_at_best") and k != "train_loss_at_best"
    }


_KIND_TITLES = {
    "diverged": "Diverged",
    "not_learning": "Not learning",
    "oscillating": "Oscillating",
    "overfitting": "Overfitting",
    "too_few_units": "Too few hidden units",
}


def _diagnostics_md(
    diagnostics: Sequence[Diagnostic], max_per_kind: int = 10, note: str = ""
) -> list[str]:
    lines = ["## Diagnostics", ""] + ([note, ""] if note else [])
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
    tables: Sequence[tuple],
    plots: Sequence[str],
    diagnostics: Sequence[Diagnostic],
    *,
    summary: Sequence[Mapping] | None = None,
    diagnostics_note: str = "",
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
    for heading, rows, columns, *before in tables:  # before: paragraphs ahead of the table
        lines += [f"## {heading}", ""]
        for paragraph in before[0] if before else ():
            lines += [paragraph, ""]
        lines += [markdown_table(rows, columns)]
    if plots:
        lines += ["## Plots", ""]
        for plot in plots:
            name = os.path.splitext(os.path.basename(plot))[0].replace("_", " ")
            lines += [f"![{name}]({plot})", ""]
    lines += _diagnostics_md(diagnostics, note=diagnostics_note)
    return write_markdown(os.path.join(workdir, "report.md"), lines)
