"""The capacity sweep as a study: train the grid, then write ``capacity.csv``,
``plots/capacity.png`` and ``capacity_report.md`` from its workdir."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax

from hpjax.config import config_to_dict
from hpjax.errors import ConfigError
from hpjax.report import labels, markdown
from hpjax.report.diagnostics import diagnose_workdir
from hpjax.report.labels import is_finite_number
from hpjax.report.setup import setup_sentence
from hpjax.results import files
from hpjax.studies import capacity, capacity_plot
from hpjax.study import spec as spec_lib
from hpjax.study.run import train_and_evaluate


def write_capacity_outputs(workdir: str, saved: Mapping | None = None) -> dict[str, str]:
    """Writes capacity.csv, plots/capacity.png and capacity_report.md from a finished workdir.

    Returns the paths written, by name. ``saved`` defaults to the workdir's config.json.
    """
    workdir = os.fspath(workdir)
    saved = dict(saved) if saved is not None else files.read_config(workdir)
    summary = files.read_summary(workdir)
    model_cfg = saved.get("model") or {}
    model = str(model_cfg.get("name", summary[0].get("model") if summary else "mlp"))
    width = capacity.WIDTH_KEYS.get(model, "hidden_units")
    keys = [capacity.DEPTH_KEY, width]
    extra = [k for k in labels.varying_hparams(summary) if k in (saved.get("model_grid") or {})]
    keys += [k for k in extra if k not in keys]
    table = capacity.architecture_table(summary, keys)
    input_dim = next(
        (r["input_dim"] for r in summary if is_finite_number(r.get("input_dim"))), None
    )
    findings = capacity.capacity_findings(table, model, width, input_dim)

    paths = {"csv": os.path.join(workdir, "capacity.csv")}
    files.write_csv(paths["csv"], table, tuple(keys) + capacity.TABLE_COLUMNS)
    paths["plot"] = capacity_plot.plot_capacity(
        table,
        width,
        os.path.join(workdir, "plots", "capacity.png"),
        title=f"{model.upper()} capacity on {saved.get('dataset', 'the data')}",
        input_dim=input_dim if model == "mlp" else None,
    )

    lines = _report_lines(workdir, saved, summary, table, keys, findings, (model, input_dim))
    paths["report"] = os.path.join(workdir, "capacity_report.md")
    files.write_markdown(paths["report"], lines)
    return paths


BEST_COLUMNS = (
    "num_params",
    "learning_rate",
    "seed",
    "best_step",
    "val_loss",
    "train_loss",
    "gap",
    "val_accuracy",
    "test_accuracy",
    "diverged",
)
MEAN_COLUMNS = (
    "seeds",
    "mean_at_learning_rate",
    "mean_val_loss",
    "std_val_loss",
    "mean_train_loss",
    "mean_gap",
    "mean_test_accuracy",
)


def _report_lines(workdir, saved, summary, table, keys, findings, model_and_inputs) -> list[str]:
    """The lines of ``capacity_report.md``: setup, findings, both tables, plot, diagnostics."""
    model, input_dim = model_and_inputs
    seeds = sorted({r.get("seed") for r in summary})
    rates = sorted({capacity.rate_of(r) for r in summary if is_finite_number(capacity.rate_of(r))})
    unit = "channels" if model == "cnn" else "units"
    return [
        f"# Capacity study: {model.upper()} {unit} x layers",
        "",
        f"{len(table)} architectures ({', '.join(keys)}), each its own population of "
        f"{len(rates)} learning rate{'s' if len(rates) != 1 else ''} x {len(seeds)} "
        f"seed{'s' if len(seeds) != 1 else ''} trained at once; {len(summary)} trials on "
        f"`{saved.get('dataset', '?')}`"
        + (f" ({input_dim} inputs)" if input_dim else "")
        + ". Every loss is taken at the trial's early-stop point (its lowest validation loss); "
        "the gap is validation minus training loss there.",
        "",
        setup_sentence(saved, summary),
        "",
        "## What the guide predicts and what the numbers show",
        "",
        *capacity.findings_lines(findings),
        "## Each architecture's best trial (over learning rates and seeds)",
        "",
        markdown.markdown_table(table, [*keys, *BEST_COLUMNS]),
        "## Mean over seeds at each architecture's best learning rate",
        "",
        markdown.markdown_table(table, [*keys, *MEAN_COLUMNS]),
        "## Plot",
        "",
        "![capacity](plots/capacity.png)",
        "",
        *capacity.diagnostics_lines(diagnose_workdir(workdir), summary, keys),
        "The full per-trial table, learning curves and the study report: `summary.csv`, "
        "[report.md](report.md); this table: `capacity.csv`.",
    ]


def validate_capacity_config(config: Any) -> None:
    """A capacity sweep needs a model with a width axis and a grid over width and/or depth."""
    study = spec_lib.parse(config)
    model = study.model.get("name")
    if model not in capacity.WIDTH_KEYS:
        raise ConfigError(
            f"config.model.name={model!r} has no capacity axis; allowed: "
            + ", ".join(capacity.WIDTH_KEYS)
        )
    grid = dict(study.source.model_grid)
    if not set(grid) & {capacity.WIDTH_KEYS[model], capacity.DEPTH_KEY}:
        raise ConfigError(
            f"config.model_grid={dict(grid)!r} varies neither "
            f"model.{capacity.WIDTH_KEYS[model]} nor model.{capacity.DEPTH_KEY}; list values of "
            "at least one for a capacity sweep"
        )


def run_capacity_study(config: Any, workdir: str) -> dict[str, str]:
    """Trains the sweep (``train_and_evaluate``) and writes the capacity outputs.

    Returns the paths written ({} on processes other than 0 of a multi-host run).
    """
    validate_capacity_config(config)
    train_and_evaluate(config, workdir)
    if jax.process_index() != 0:  # only process 0 writes the workdir
        return {}
    return write_capacity_outputs(workdir, files.read_config(workdir) or config_to_dict(config))
