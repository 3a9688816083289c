"""The setup of a study in one paragraph, from its ``config.json`` and ``summary.csv``: what a
reader needs to judge or redo it (model and size, optimizer and its fixed settings, data and its
sizes, seeds, budget, evaluation, early stopping and the metric that ranks trials)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from hpjax.engine import optim
from hpjax.report.labels import is_finite_number
from hpjax.study.optimizer_section import OPTIMIZER_OPTIONS


def _model(model: Any, grid: Any, summary: Sequence[Mapping]) -> str:
    """``mlp (hidden_units=128, num_layers=2), 22,026 parameters``; a key of the model grid
    shows its values; model keys left at an off value (0, False, empty) are left out, and μP's
    keys unless μP is on."""
    if not isinstance(model, Mapping):
        return f"`{model}`" if model else "the model given in Python"
    grid = dict(grid) if isinstance(grid, Mapping) else {}
    model = {**model, **{k: "/".join(str(v) for v in values) for k, values in grid.items()}}
    mup = "mup" in str(model.get("parametrization", "standard"))
    keys = [
        f"{k}={v}"
        for k, v in model.items()
        if k != "name"
        and v not in (0, False, "", None)
        and (mup or k not in ("parametrization", "base_width"))
    ]
    counts = sorted(
        {int(r["num_params"]) for r in summary if is_finite_number(r.get("num_params"))}
    )
    size = ""
    if counts:
        size = f", {counts[0]:,}" + (f"-{counts[-1]:,}" if len(counts) > 1 else "") + " parameters"
    return f"{model.get('name')} ({', '.join(keys)}){size}"


def _name(value: Any) -> str:
    """A config entry's name: the entry itself, or its ``name`` where it is a mapping."""
    return str(value.get("name", "?") if isinstance(value, Mapping) else value)


def _optimizer(saved: Mapping, summary: Sequence[Mapping]) -> str:
    """Each optimizer of the study with its fixed settings (``config.optimizers``: all of them),
    and the schedule."""
    names = [_name(n) for n in saved.get("optimizers") or ()] or [_name(saved.get("optimizer"))]
    keywords = json.loads(saved.get("optimizer_kwargs") or "{}")
    per_trial = {k for r in summary for k, v in r.items() if v not in (None, "")}
    described = [
        _fixed_settings(
            name,
            saved,
            keywords.get(name, {}) if len(names) > 1 or saved.get("optimizers") else keywords,
            per_trial,
        )
        for name in names
    ]
    schedule = _name(saved.get("schedule", "constant"))
    warmup = saved.get("warmup_steps") or 0
    return (
        "; ".join(described)
        + f", {schedule} learning rate"
        + (f" after {warmup} warmup steps" if warmup else "")
    )


def _fixed_settings(name: str, saved: Mapping, keywords: Mapping, per_trial: set) -> str:
    """``name (its fixed options)``: a built-in's config keys, a factory's fixed keywords;
    those trials set for themselves are left out."""
    if optim.is_factory(name):
        fixed = [f"{k} {v}" for k, v in keywords.items() if k not in per_trial]
    else:
        fixed = [
            f"{k} {saved[k]:g}" if isinstance(saved[k], float) else f"{k} {saved[k]}"
            for k in OPTIMIZER_OPTIONS.get(name, ())
            if k in saved
            and saved[k] is not False
            and not (k == "eps" and not saved[k])  # 0: optax's default
            and not (k == "momentum" and k in per_trial)
        ]
    return f"{name}" + (f" ({', '.join(fixed)})" if fixed else "")


def _data(saved: Mapping) -> str:
    sizes = saved.get("data_sizes") or {}
    parts = [
        f"{sizes[k]:,} {k}" for k in ("train", "val", "test") if is_finite_number(sizes.get(k))
    ]
    subset = saved.get("train_subset") or 0
    return (
        f"{_name(saved.get('dataset', '?'))}"
        + (f" ({', '.join(parts)} examples)" if parts else "")
        + (f", a random {subset:,} of the training examples" if subset else "")
    )


def _budget(saved: Mapping, summary: Sequence[Mapping]) -> str:
    steps = sorted({int(r["steps"]) for r in summary if is_finite_number(r.get("steps"))})
    budget = saved.get("num_steps")
    if is_finite_number(budget) and budget > 0:
        most = f"a budget of {int(budget):,} steps"
    else:
        most = f"up to {steps[-1]:,} steps" if steps else "its step budget"
    sizes = sorted({int(r["batch_size"]) for r in summary if is_finite_number(r.get("batch_size"))})
    batch = (
        f" at batch size {sizes[0]}"
        if len(sizes) == 1
        else f" at batch sizes {sizes[0]}-{sizes[-1]}"
        if sizes
        else ""
    )
    every = saved.get("eval_every")
    growth = saved.get("eval_growth") or 0.0
    evaluation = (
        f"; evaluated every {every} steps"
        + (f", early on every {100 * growth:g}% of the steps taken" if growth else "")
        if every
        else ""
    )
    patience = saved.get("patience")
    stopping = (
        "; no early stopping"
        if not patience
        else f"; early stopping after {patience} evaluations without a lower validation loss"
        + (f" (not before step {saved['min_steps']})" if saved.get("min_steps") else "")
    )
    return f"{most}{batch}{evaluation}{stopping}"


def setup_sentence(
    saved: Mapping, summary: Sequence[Mapping], title: str = "Setup", ranked: bool = True
) -> str:
    """One paragraph: model and size, optimizer, data and sizes, seeds, budget, evaluation,
    early stopping and (``ranked``: for a report that ranks trials by it) the metric that ranks
    trials."""
    seeds = sorted({r.get("seed") for r in summary if r.get("seed") is not None}, key=str)
    model = _model(saved.get("model"), saved.get("model_grid"), summary)
    return (
        f"**{title}.** Model: {model}. Optimizer{'s' if saved.get('optimizers') else ''}: "
        f"{_optimizer(saved, summary)}. Data: {_data(saved)}. Seeds: "
        f"{', '.join(str(s) for s in seeds) or 'none recorded'}. Budget: each trial "
        f"{_budget(saved, summary)}."
        + (
            " Trials are ranked by their lowest validation loss (cross-entropy for a "
            "classifier, mean squared error for a regression)."
            if ranked
            else ""
        )
    )
