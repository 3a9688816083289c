"""The capacity sweep's analysis: hidden units x layers (channels x depth), from a summary.

A capacity sweep trains one population per architecture of ``config.model_grid`` (learning rates
and seeds vmapped inside each). This module turns its ``summary.csv`` into one row per
architecture (:func:`architecture_table`), checks the guide's claims about capacity against those
rows (:func:`capacity_findings`). :mod:`hpjax.studies.capacity_study` trains the sweep and writes
its outputs; :mod:`hpjax.studies.capacity_plot` draws its plot. Nothing here trains.

All numbers are taken at each trial's early-stop point (its best validation loss): the training
loss there is ``train_loss_at_best`` and the generalisation gap is validation minus training loss.
Two views of each architecture are given: its best trial over learning rates and seeds, and the
mean over seeds at the learning rate whose seed-mean validation loss is lowest (with one seed the
two agree).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hpjax.models import mup
from hpjax.report import markdown
from hpjax.report.diagnostics import KINDS
from hpjax.report.labels import is_finite_number
from hpjax.studies import paired

# The width axis of each model family: what "more units" means for it.
WIDTH_KEYS = {**mup.WIDTH_KEYS, "rnn": "hidden_size"}
DEPTH_KEY = "num_layers"
# A gap (validation minus training loss at the early-stop point, in nats) above this is where the
# validation loss has "pulled away" from the training loss.
PULL_AWAY_GAP = 0.1

TABLE_COLUMNS = (
    "num_params",
    "trials",
    "diverged",
    "best_trial",
    "learning_rate",
    "seed",
    "best_step",
    "val_loss",
    "train_loss",
    "gap",
    "val_accuracy",
    "test_accuracy",
    "final_train_loss",
    "seeds",
    "mean_at_learning_rate",
    "mean_val_loss",
    "std_val_loss",
    "mean_train_loss",
    "mean_gap",
    "mean_test_accuracy",
)


def _mean(values: Sequence[Any]) -> float | None:
    values = [float(v) for v in values if is_finite_number(v)]
    return float(np.mean(values)) if values else None


def _std(values: Sequence[Any]) -> float | None:
    values = [float(v) for v in values if is_finite_number(v)]
    return float(np.std(values)) if values else None


def _sub(a: Any, b: Any) -> float | None:
    return float(a) - float(b) if is_finite_number(a) and is_finite_number(b) else None


def rate_of(row: Mapping) -> Any:
    """The trial's learning rate as listed in the grid (before any batch-size scaling)."""
    base = row.get("base_learning_rate")
    return base if is_finite_number(base) else row.get("learning_rate")


def _sort_key(values: tuple) -> tuple:
    """Numbers in numeric order before anything else, which sorts as text."""
    return tuple((not is_finite_number(v), v if is_finite_number(v) else str(v)) for v in values)


def architecture_table(summary: Sequence[Mapping], keys: Sequence[str]) -> list[dict]:
    """One row per architecture (distinct values of ``keys``) of a study's summary rows.

    Each row holds the architecture's values of ``keys``, its parameter count, how many trials it
    had and how many diverged, its best trial (lowest best validation loss) with that trial's
    learning rate, seed, early-stop step, validation and training loss there, their gap,
    validation and test accuracy and final training loss, and the mean (and standard deviation)
    over seeds at the learning rate whose seed-mean best validation loss is lowest, with each
    seed's value there (``seed_values``, seed -> best validation loss: what paired comparisons
    read). Values an architecture cannot provide (every trial diverged) are None. Rows are
    sorted by ``keys``.
    """
    groups: dict[tuple, list[Mapping]] = {}
    for row in summary:
        groups.setdefault(tuple(row.get(k) for k in keys), []).append(row)
    out = []
    for values, rows in groups.items():
        ok = [
            r
            for r in rows
            if r.get("status") != "diverged" and is_finite_number(r.get("best_val_loss"))
        ]
        entry: dict[str, Any] = dict(zip(keys, values, strict=True))
        entry.update(
            num_params=rows[0].get("num_params"),
            trials=len(rows),
            diverged=sum(r.get("status") == "diverged" for r in rows),
        )
        entry.update(dict.fromkeys(TABLE_COLUMNS[3:]))
        if ok:
            best = min(ok, key=lambda r: (r["best_val_loss"], r.get("trial", 0)))
            entry.update(
                best_trial=best.get("trial"),
                learning_rate=best.get("learning_rate"),
                seed=best.get("seed"),
                best_step=best.get("best_step"),
                val_loss=best["best_val_loss"],
                train_loss=best.get("train_loss_at_best"),
                gap=_sub(best["best_val_loss"], best.get("train_loss_at_best")),
                val_accuracy=best.get("best_val_accuracy"),
                test_accuracy=best.get("test_accuracy"),
                final_train_loss=best.get("final_train_loss"),
            )
            by_rate: dict[Any, list[Mapping]] = {}
            for r in ok:
                by_rate.setdefault(rate_of(r), []).append(r)
            rate, seeds = min(
                by_rate.items(), key=lambda kv: (_mean([r["best_val_loss"] for r in kv[1]]), kv[0])
            )
            gaps = [_sub(r["best_val_loss"], r.get("train_loss_at_best")) for r in seeds]
            entry.update(
                seeds=len(seeds),
                mean_at_learning_rate=rate,
                mean_val_loss=_mean([r["best_val_loss"] for r in seeds]),
                std_val_loss=_std([r["best_val_loss"] for r in seeds]),
                mean_train_loss=_mean([r.get("train_loss_at_best") for r in seeds]),
                mean_gap=_mean(gaps),
                mean_test_accuracy=_mean([r.get("test_accuracy") for r in seeds]),
                seed_values=paired.seed_values(seeds),
            )
        out.append(entry)

    return sorted(out, key=lambda entry: _sort_key(tuple(entry[k] for k in keys)))


# ------------------------------------------------------------------------------------ findings


@dataclasses.dataclass(frozen=True)
class Finding:
    """One of the guide's predictions, checked against a study's numbers.

    ``verdict`` is ``supported``, ``mixed``, ``not supported`` or ``not tested`` (the grid cannot
    tell), and ``evidence`` a sentence with the numbers behind it.
    """

    claim: str
    verdict: str
    evidence: str


def _g(v: Any) -> str:
    return f"{v:.4g}" if is_finite_number(v) else "n/a"


def by_depth(
    table: Sequence[Mapping], width: str, value: str, group: str = DEPTH_KEY
) -> dict[Any, list[tuple]]:
    """depth (or ``group``) -> [(width, value)] sorted by width, only finite values."""
    lines: dict[Any, list[tuple]] = {}
    for row in table:
        if is_finite_number(row.get(width)) and is_finite_number(row.get(value)):
            lines.setdefault(row.get(group), []).append((row[width], row[value]))
    return {d: sorted(v) for d, v in sorted(lines.items(), key=lambda kv: str(kv[0]))}


def _verdict(passed: int, total: int) -> str:
    if total == 0:
        return "not tested"
    if passed == total:
        return "supported"
    return "not supported" if passed == 0 else "mixed"


def depth_name(depth: Any) -> str:
    return f"{depth} layer{'s' if depth != 1 else ''}"


def _capacity_grows(table: Sequence[Mapping], width: str, unit: str) -> Finding:
    claim = f"Capacity grows with {unit}: wider models reach a lower training loss."
    lines = {d: v for d, v in by_depth(table, width, "final_train_loss").items() if len(v) > 1}
    parts, passed = [], 0
    for depth, points in lines.items():
        (w0, first), (w1, last) = points[0], points[-1]
        falls = sum(b[1] < a[1] for a, b in zip(points[:-1], points[1:], strict=True))
        ok = last < first and falls >= (len(points) - 1) / 2
        passed += ok
        parts.append(
            f"{depth_name(depth)}: final training loss {_g(first)} at {w0} {unit} -> "
            f"{_g(last)} at {w1} ({falls} of {len(points) - 1} steps wider lower it)"
        )
    if not lines:
        return Finding(claim, "not tested", f"the grid has a single {width} per depth.")
    return Finding(claim, _verdict(passed, len(lines)), "; ".join(parts) + ".")


def _too_much_overfits(table: Sequence[Mapping], width: str, unit: str) -> Finding:
    claim = (
        f"Too much capacity overfits: the gap between validation and training loss grows with "
        f"{unit}, and past some width the validation loss gets worse."
    )
    gaps = {d: v for d, v in by_depth(table, width, "gap").items() if len(v) > 1}
    vals = by_depth(table, width, "val_loss")
    parts, grows, turns = [], 0, 0
    for depth, points in gaps.items():
        (w0, g0), (w1, g1) = points[0], points[-1]
        best_w, best_v = min(vals[depth], key=lambda p: p[1])
        interior = best_w != vals[depth][-1][0]
        grows += g1 > g0
        turns += interior
        parts.append(
            f"{depth_name(depth)}: gap {_g(g0)} at {w0} {unit} -> {_g(g1)} at {w1}; lowest "
            f"validation loss {_g(best_v)} at {best_w} {unit}"
            + (" (wider did worse)" if interior else " (the widest: no turn within the grid)")
        )
    if not gaps:
        return Finding(claim, "not tested", f"the grid has a single {width} per depth.")
    if grows == len(gaps) and turns:
        verdict = "supported"
    elif grows == 0 and turns == 0:
        verdict = "not supported"
    else:
        verdict = "mixed"
    return Finding(claim, verdict, "; ".join(parts) + ".")


def _pull_away(table: Sequence[Mapping], width: str, unit: str) -> Finding:
    claim = (
        f"If the model is not learning, add {unit} until the validation loss pulls away from the "
        f"training loss (here: a gap above {PULL_AWAY_GAP} nats at the early-stop point)."
    )
    gaps = {d: v for d, v in by_depth(table, width, "gap").items() if len(v) > 1}
    parts, pulled, already = [], 0, 0
    for depth, points in gaps.items():
        first = next((w for w, g in points if g > PULL_AWAY_GAP), None)
        if first is None:
            parts.append(
                f"{depth_name(depth)}: never, up to {points[-1][0]} {unit} (largest gap "
                f"{_g(max(g for _, g in points))})"
            )
        elif first == points[0][0]:
            already += 1
            parts.append(f"{depth_name(depth)}: already at {first} {unit}, the narrowest")
        else:
            pulled += 1
            below = max(w for w, _ in points if w < first)
            parts.append(
                f"{depth_name(depth)}: from {first} {unit} (gap {_g(dict(points)[first])}; "
                f"{_g(dict(points)[below])} at {below})"
            )
    if not gaps:
        return Finding(claim, "not tested", f"the grid has a single {width} per depth.")
    if pulled:
        verdict = "supported"
    elif already == len(gaps):
        verdict = "not tested"
    else:
        verdict = "not supported"
    return Finding(claim, verdict, "; ".join(parts) + ".")


def _more_units_than_inputs(table: Sequence[Mapping], width: str, input_dim: int | None) -> Finding:
    claim = "Use more hidden units than inputs."
    if input_dim is None:
        return Finding(claim, "not tested", "the input dimension is unknown.")
    rows = [
        r for r in table if is_finite_number(r.get(width)) and is_finite_number(r.get("val_loss"))
    ]
    few = [r for r in rows if r[width] < input_dim]
    many = [r for r in rows if r[width] >= input_dim]
    if not few or not many:
        side = "fewer" if few else "at least as many"
        return Finding(
            claim,
            "not tested",
            f"every width in the grid has {side} units than the {input_dim} inputs.",
        )
    best_few = min(few, key=lambda r: r["val_loss"])
    best_many = min(many, key=lambda r: r["val_loss"])
    ok = best_many["val_loss"] < best_few["val_loss"]
    return Finding(
        claim,
        "supported" if ok else "not supported",
        f"best validation loss with fewer than {input_dim} units {_g(best_few['val_loss'])} "
        f"({best_few[width]} units, {depth_name(best_few.get(DEPTH_KEY))}); with at least "
        f"{input_dim}: {_g(best_many['val_loss'])} ({best_many[width]} units, "
        f"{depth_name(best_many.get(DEPTH_KEY))}).",
    )


def _compare_depths(
    table: Sequence[Mapping], width: str, unit: str, shallow: Any, deep: Any
) -> tuple[list[paired.Paired], list[str]]:
    """Depth ``deep`` against ``shallow`` at each width both have, paired over seeds."""
    rows = {
        (r.get(DEPTH_KEY), r.get(width)): r
        for r in table
        if r.get("seed_values") is not None and is_finite_number(r.get(width))
    }
    common = sorted({w for d, w in rows if d == shallow} & {w for d, w in rows if d == deep})
    comparisons, parts = [], []
    for w in common:
        a, b = rows[(shallow, w)], rows[(deep, w)]
        p = paired.compare(a["seed_values"], b["seed_values"])
        comparisons.append(p)
        parts.append(
            f"{w} {unit}: {_g(a['mean_val_loss'])} vs {_g(b['mean_val_loss'])}, "
            + paired.describe(p, depth_name(shallow), depth_name(deep))
        )
    return comparisons, parts


PAIRED_NOTE = (
    "seed-mean validation loss at each architecture's best rate, then the difference seed by seed "
    "with its 95% t-interval"
)


def _depth_findings(table: Sequence[Mapping], width: str, unit: str, model: str) -> list[Finding]:
    depths = sorted({r.get(DEPTH_KEY) for r in table if is_finite_number(r.get(DEPTH_KEY))})
    if model == "cnn":
        claim = "For CNNs deeper is better."
        if len(depths) < 2:
            return [Finding(claim, "not tested", "the grid has a single depth.")]
        comparisons, parts = [], []
        for shallow, deep in zip(depths[:-1], depths[1:], strict=True):
            found, detail = _compare_depths(table, width, unit, shallow, deep)
            comparisons += found
            parts.append(
                f"{deep} vs {shallow} layers: deeper lower in {_won(found)} ({'; '.join(detail)})"
            )
        evidence = f"{PAIRED_NOTE}: " + "; ".join(parts) + "."
        return [Finding(claim, paired.claim_verdict(comparisons), evidence)]
    findings = []
    claim = "Three layers usually beat two."
    if 2 in depths and 3 in depths:
        found, detail = _compare_depths(table, width, unit, 2, 3)
        evidence = f"{PAIRED_NOTE}: {'; '.join(detail)}; three layers lower in {_won(found)}."
        findings.append(Finding(claim, paired.claim_verdict(found), evidence))
    else:
        findings.append(Finding(claim, "not tested", "the grid lacks 2 or 3 layers."))
    deeper = [d for d in depths if d > 3]
    if 3 in depths and deeper:
        parts, comparisons = [], []
        for d in deeper:
            found, detail = _compare_depths(table, width, unit, 3, d)
            comparisons += found
            parts.append(f"3 vs {d} layers: {'; '.join(detail)}")
        findings.append(
            Finding(
                "More than three layers rarely helps.",
                _rarely_helps(comparisons),
                f"{PAIRED_NOTE}: " + "; ".join(parts) + ".",
            )
        )
    return findings


def _rarely_helps(comparisons: Sequence[paired.Paired]) -> str:
    """The verdict on "deeper than three rarely helps": supported when deeper wins none of the
    comparisons decidedly and three wins some, undecided when none is decided, not supported
    when deeper wins more than half, mixed otherwise."""
    helps = sum(p.winner == "b" for p in comparisons)
    if not comparisons:
        return "not tested"
    if helps > len(comparisons) / 2:
        return "not supported"
    if helps == 0:
        return "undecided" if all(p.winner == "undecided" for p in comparisons) else "supported"
    return "mixed"


def _won(comparisons: Sequence[paired.Paired]) -> str:
    """'K of N widths by more than the seeds' spread': how often the deeper side won decidedly."""
    decided = sum(p.winner == "b" for p in comparisons)
    return f"{decided} of {len(comparisons)} widths by more than the seeds' spread"


def capacity_findings(
    table: Sequence[Mapping], model: str, width: str, input_dim: int | None = None
) -> list[Finding]:
    """The guide's capacity predictions, each checked against the architecture ``table``."""
    unit = "channels" if model == "cnn" else "units"
    findings = [
        _capacity_grows(table, width, unit),
        _too_much_overfits(table, width, unit),
        _pull_away(table, width, unit),
    ]
    if model == "mlp":
        findings.append(_more_units_than_inputs(table, width, input_dim))
    return findings + _depth_findings(table, width, unit, model)


# --------------------------------------------------------------------------------------- plots


# -------------------------------------------------------------------------------------- report


def diagnostics_by(
    diagnostics: Sequence[Any], summary: Sequence[Mapping], keys: Sequence[str]
) -> list[dict]:
    """Counts of each diagnostic kind per architecture (rows with ``keys`` and kind counts)."""
    arch = {r.get("trial"): tuple(r.get(k) for k in keys) for r in summary}
    counts: dict[tuple, dict[str, int]] = {}
    for d in diagnostics:
        counts.setdefault(arch.get(d.trial, ()), {}).setdefault(d.kind, 0)
        counts[arch.get(d.trial, ())][d.kind] += 1
    return [
        {**dict(zip(keys, values, strict=False)), **counts[values]}
        for values in sorted(counts, key=_sort_key)
    ]


def diagnostics_lines(
    diagnostics: Sequence[Any], summary: Sequence[Mapping], keys: Sequence[str]
) -> list[str]:
    """Markdown lines: what the study's diagnostics found, per architecture (see report.md)."""
    lines = ["## Diagnostics", ""]
    if not diagnostics:
        return lines + ["None fired (details in [report.md](report.md)).", ""]
    rows = diagnostics_by(diagnostics, summary, keys)
    kinds = [k for k in KINDS if any(k in r for r in rows)]
    kinds += sorted({k for r in rows for k in r} - set(kinds) - set(keys))
    lines += [
        "Trials per architecture for which each of the guide's diagnostics fired; each one, "
        "with the numbers that triggered it, is listed in [report.md](report.md).",
        "",
        markdown.markdown_table(
            [{**r, **{k: r.get(k, 0) for k in kinds}} for r in rows], [*keys, *kinds]
        ),
    ]
    return lines


def findings_lines(findings: Sequence[Finding]) -> list[str]:
    lines = ["| the guide predicts | verdict | what the numbers show |", "|---|---|---|"]
    for f in findings:
        lines.append(f"| {f.claim} | **{f.verdict}** | {f.evidence.replace('|', '/')} |")
    return lines + ["", paired.VERDICT_NOTE, ""]
