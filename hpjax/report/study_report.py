"""The report of a finished study: learning curves, a hyperparameter against the best
validation loss, the summary table and the guide's diagnostics, in ``report.md``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from hpjax.report.diagnostics import diagnose_workdir
from hpjax.report.figures import MAX_LINES, plot_hparam, plot_hparam_panels, plot_learning_curves
from hpjax.report.labels import is_number, varying_hparams
from hpjax.report.markdown import best_trial, write_report
from hpjax.report.optimizers import optimizer_section
from hpjax.report.regularisation import regularisation_section
from hpjax.report.setup import setup_sentence
from hpjax.results import optuna_storage
from hpjax.results.files import PathLike, read_csv, read_workdir
from hpjax.studies.replay.report import replay_section


def _name(v: Any) -> str | None:
    if isinstance(v, Mapping):
        v = v.get("name")
    return None if v is None else str(v)


def _distinct(summary: Sequence[Mapping], key: str) -> str | None:
    values = sorted({str(r[key]) for r in summary if r.get(key) is not None})
    return "/".join(values) if values else None


def _intro(saved: Mapping, summary: Sequence[Mapping], fallback_name: str) -> tuple[str, list[str]]:
    study = saved.get("study")
    name = _name(study) or fallback_name
    lines = []
    if isinstance(study, Mapping) and study.get("description"):
        lines.append(str(study["description"]).rstrip(".") + ".")
    elif saved.get("description"):
        lines.append(str(saved["description"]).rstrip(".") + ".")
    n = len(summary)
    pops = {r.get("population") for r in summary if r.get("population") is not None}
    what = f"{n} trial{'s' if n != 1 else ''}"
    if pops:
        what += f" in {len(pops)} population{'s' if len(pops) != 1 else ''}"
    model = _distinct(summary, "model") or _name(saved.get("model"))
    dataset = _name(saved.get("dataset"))
    sentence = f"Study `{name}` trained {what}"
    if model:
        sentence += f" of `{model}`"
    if dataset:
        sentence += f" on `{dataset}`"
    opt = _distinct(summary, "optimizer") or _name(saved.get("optimizer"))
    sched = _distinct(summary, "schedule") or _name(saved.get("schedule"))
    if opt:
        sentence += f" with `{opt}`" + (f" and a `{sched}` schedule" if sched else "")
    if saved.get("patience") == 0:
        sentence += ", without early stopping (each trial trains to its budget)"
    elif saved.get("patience") is not None:
        sentence += f", stopping each after {saved['patience']} evaluations without improvement"
    lines.append(sentence + ".")
    varying = varying_hparams(summary)
    if varying:
        lines.append("Varied: " + ", ".join(f"`{k}`" for k in varying) + ".")
    lines.append(setup_sentence(saved, summary))
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


def _adaptive(workdir: str, saved: Mapping, summary: Sequence[Mapping]):
    """The intro lines, tables and plots of an adaptive study (slots, ASHA, PBT); empty else."""
    scheduler = saved.get("scheduler", "none")
    if not (saved.get("slots") or scheduler not in (None, "none")):
        return [], [], []
    lines, tables, plots = [], [], []
    path = os.path.join(workdir, "populations.csv")
    populations = read_csv(path, key="population") if os.path.exists(path) else []
    steps = sum(p.get("trial_steps") or 0 for p in populations)
    busy = [p["training_fraction"] for p in populations if is_number(p.get("training_fraction"))]
    if scheduler == "pbt":
        sentence = f"Population-based training of {len(summary)} members"
    else:
        slots = saved.get("slots") or len(summary)
        sentence = f"Adaptive study: {len(summary)} trials through {slots} slots"
        sentence += f", scheduler `{scheduler}`" if scheduler != "none" else ""
    sentence += f"; {steps} trial-steps in all"
    if busy:
        sentence += f"; {min(busy):.1%} of the row-ticks trained (the rest were idle rows)"
    lines.append(sentence + ".")
    if scheduler == "asha":
        rungs: dict[int, list[int]] = {}
        for r in summary:
            for rung in _rungs(saved, r):
                rungs.setdefault(rung, [0, 0])[0] += 1
            if r.get("status") == "pruned":
                rungs.setdefault(int(r["rung"]), [0, 0])[1] += 1
        rows = [
            {"rung (steps)": k, "reached": v[0], "pruned there": v[1]}
            for k, v in sorted(rungs.items())
        ]
        tables.append(("ASHA rungs", rows, ["rung (steps)", "reached", "pruned there"]))
    lineage_path = os.path.join(workdir, "lineage.csv")
    if scheduler == "pbt" and os.path.exists(lineage_path):
        lineage = read_csv(lineage_path)
        lines.append(_best_lineage(summary, lineage))
        tables.append(("PBT exploits (lineage.csv)", lineage, list(lineage[0]) if lineage else []))
        if os.path.exists(os.path.join(workdir, "plots", "pbt_schedules.png")):
            plots.append(os.path.join("plots", "pbt_schedules.png"))
    return lines, tables, plots


def _rungs(saved: Mapping, row: Mapping) -> list[int]:
    """The ASHA rungs (steps) a trial reached."""
    asha = saved.get("asha") or {}
    rung, eta, out = float(asha.get("min_steps", 0) or 0), float(asha.get("eta", 3)), []
    while rung >= 1 and rung <= (row.get("steps") or 0):
        out.append(int(round(rung)))
        rung *= eta
    return out


def default_report(workdir: PathLike, x_hparam: str = "learning_rate") -> str:
    """Plots and ``report.md`` for a finished study's workdir; returns the report's path.

    Writes ``plots/learning_curves.png`` and ``plots/<x_hparam>_vs_best_val_loss.png`` (lines
    grouped by the first other hyperparameter that varies), runs the diagnostics and writes the
    report with the summary table sorted by best validation loss.
    """
    workdir = os.fspath(workdir)
    saved, metrics, summary = read_workdir(workdir)
    name, intro = _intro(saved, summary, os.path.basename(os.path.abspath(workdir)))
    adaptive_lines, adaptive_tables, adaptive_plots = _adaptive(workdir, saved, summary)
    regular_lines, regular_tables, regular_plots = regularisation_section(workdir, summary)
    optimizer_lines, optimizer_tables, _ = optimizer_section(summary)
    intro += adaptive_lines + regular_lines + optimizer_lines

    plots = _plots(workdir, name, metrics, summary, _x_axis(summary, x_hparam))
    replay_lines, replay_tables, replay_plots = replay_section(workdir)
    plots += adaptive_plots + regular_plots + replay_plots

    def sort_key(r: Mapping) -> tuple[bool, float]:
        v = r.get("best_val_loss")
        return (not is_number(v) or r.get("status") == "diverged", v if is_number(v) else 0.0)

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
        "rung",
        "exploits",
    ]
    columns = ["trial"] + hparams + [k for k in results if k in present]
    tables = [("Trials, best validation loss first", sorted(summary, key=sort_key), columns)]
    tables += adaptive_tables + regular_tables + optimizer_tables
    tables += [(*t, replay_lines) for t in replay_tables]
    importances = optuna_storage.param_importances(summary)
    if importances:
        rows = [{"hyperparameter": k, "importance": v} for k, v in importances.items()]
        title = "Hyperparameter importance for the best validation loss (Optuna's fANOVA)"
        tables.append((title, rows, ["hyperparameter", "importance"]))
    return write_report(
        workdir,
        f"hpjax study `{name}`",
        intro,
        tables if summary else [],
        plots,
        diagnose_workdir(workdir),
        summary=summary,
        diagnostics_note=_noise_note(saved),
    )


def _noise_note(saved: Mapping) -> str:
    """How much of a loss's movement the diagnostics read as chance, from the split sizes."""
    val = (saved.get("data_sizes") or {}).get("val")
    if not val:
        return ""
    return (
        f"A validation loss is a mean over {val} examples: the diagnostics count oscillation "
        f"or a rising validation loss only beyond {2 / val**0.5:.1%} of its level (2/sqrt(n), "
        "about what a split of that size moves by chance), and give no advice the config "
        "already follows."
    )


def _best_lineage(summary: Sequence[Mapping], lineage: Sequence[Mapping]) -> str:
    """Which members trained the state that reached the best validation loss, step by step: a
    member's best is its own evaluation, but the state may have been copied from others."""
    best = best_trial(summary)
    if best is None:
        return ""
    member, step = int(best["trial"]), int(best["best_step"])
    chain = []
    while True:
        copies = [e for e in lineage if int(e["trial"]) == member and int(e["step"]) < step]
        if not copies:
            chain.append(f"member {member} (steps 0-{step})")
            break
        last = max(copies, key=lambda e: int(e["step"]))
        chain.append(f"member {member} (steps {last['step']}-{step})")
        member, step = int(last["parent"]), int(last["step"])
    return (
        f"The best validation loss ({best['best_val_loss']:.4g}) is member {best['trial']}'s own "
        f"evaluation at step {best['best_step']}; the state it evaluated was trained by "
        + " after ".join(chain)
        + "."
    )


def _x_axis(summary: Sequence[Mapping], x_hparam: str) -> str:
    """``x_hparam``; the default, the learning rate, gives way to another hyperparameter when
    it does not vary and that one does (dropout rates at one learning rate are plotted against
    the dropout rate)."""
    varying = [k for k in varying_hparams(summary) if k != "seed"]
    if x_hparam != "learning_rate" or x_hparam in varying or not varying:
        return x_hparam
    return varying[0]


def _plots(workdir: str, name: str, metrics, summary, x_hparam: str) -> list[str]:
    """The learning curves, the result against ``x_hparam`` and, for a sampled space, a panel
    per sampled hyperparameter; returns their paths relative to the workdir."""
    plots = [os.path.join("plots", "learning_curves.png")]
    plot_learning_curves(
        metrics, summary, os.path.join(workdir, plots[0]), title=f"{name}: learning curves"
    )
    xs = [r[x_hparam] for r in summary if r.get(x_hparam) is not None]
    if xs:
        rel = os.path.join("plots", f"{x_hparam}_vs_best_val_loss.png")
        numeric = all(is_number(v) for v in xs)
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
    sampled = [  # hyperparameters a space samples: each gets a panel of its own
        k
        for k in varying_hparams(summary)
        if k != "seed" and len({r.get(k) for r in summary if is_number(r.get(k))}) > MAX_LINES
    ]
    if len(sampled) >= 2:
        rel = os.path.join("plots", "hparams_vs_best_val_loss.png")
        plot_hparam_panels(
            summary,
            sampled,
            "best_val_loss",
            os.path.join(workdir, rel),
            title=f"{name}: best validation loss against each sampled hyperparameter",
        )
        plots.append(rel)
    return plots
