"""A finished population's results: one summary row per trial, and each trial's best checkpoint.

The rows are read from the loop's host store of ended trials (each trial's best parameters,
early-stopping state, steps and divergence), its metrics history and the test metrics of its
best parameters; the scheduler adds its own columns (PBT: final values and exploit counts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import numpy as np

from hpjax.engine import hparams as hparams_lib
from hpjax.engine import population, tasks
from hpjax.results import checkpoints
from hpjax.study.populations import PopulationPlan, take_trials

if TYPE_CHECKING:  # the loop calls this module with itself
    from hpjax.study.loop import PopulationRun


def summary_columns(task: tasks.Task) -> tuple[str, ...]:
    """The first columns of ``summary.csv``, in order; model sizes and measurements follow."""
    metrics = task.metric_names
    return (
        "trial",
        "population",
        "model",
        "optimizer",
        "schedule",
        *hparams_lib.SUMMARY,
        "num_params",
        "status",
        "best_val_loss",
        *(f"best_val_{m}" for m in metrics),
        "best_step",
        "best_epoch",
        "test_loss",
        *(f"test_{m}" for m in metrics),
        "train_loss_at_best",
        "final_train_loss",
        "final_val_loss",
        "steps",
        "epochs",
    )


SUMMARY_COLUMNS = summary_columns(tasks.CLASSIFICATION)


def summarise(run: PopulationRun) -> list[dict]:
    """One summary row per started trial (in plan order), with the test metrics of its best
    parameters; writes their best checkpoints (process 0)."""
    ended, layout = run.ended, run.rows
    started = sorted(layout.finished)
    plan = take_trials(run.plan, started)
    idx = np.asarray(started, int)
    best_params = jax.tree.map(lambda a: a[idx], ended["best_params"])
    shardable = len(started) % run.sharding.num_devices == 0
    put = run.sharding.put_rows if shardable else run.sharding.replicate
    d = run.data
    test = run.sharding.to_host(population.evaluate(run.spec, put(best_params), d.x_test, d.y_test))
    optional = [  # once, not per row: a population of N trials would check N^2 of them
        key
        for key in hparams_lib.OPTIONAL
        if any(getattr(t, key) is not None for t in run.plan.trials)
    ]
    rows = [
        _summary_row(run, plan, j, pos, {k: v[j] for k, v in test.items()}, optional)
        for j, pos in enumerate(started)
    ]
    if run.scheduler is not None:
        run.scheduler.annotate(rows, started, layout)
    if run.sharding.is_writer:
        write_best_checkpoints(run, rows)
        if run.scheduler is not None:
            run.scheduler.write_files(run.workdir)
    return rows


def write_best_checkpoints(run: PopulationRun, rows: list[dict]) -> None:
    """The started trials' best parameters (from the loop's ended store) with their summary
    rows (``rows``, in plan order of the started trials), as one checkpoint in
    ``checkpoints/``."""
    started = np.asarray(sorted(run.rows.finished), int)
    best_params = jax.tree.map(lambda a: a[started], run.ended["best_params"])
    checkpoints.save_best(
        run.workdir,
        run.plan.index,
        best_params,
        rows,
        {
            "model_config": dict(run.model_config),
            # the keywords a user factory was called with, which restore_best calls it with
            "architecture": [list(kv) for kv in run.plan.trials[0].architecture],
            "input_shape": list(run.data.dataset.input_shape),
            "num_classes": int(run.data.dataset.num_classes),
            "task": run.task.name,
        },
    )


def _summary_row(
    run: PopulationRun, plan: PopulationPlan, j: int, pos: int, test: dict, optional: list[str]
) -> dict:
    ended, layout = run.ended, run.rows
    trial = plan.trials[j]
    history = run.history[trial.index]
    best_step = int(ended["best_step"][pos])
    at_best = next((r for r in history if r["step"] == best_step), None) or {}
    if pos in layout.budget_stopped:
        status = "study_budget"
    elif pos in layout.pruned:
        status = "pruned"
    elif ended["diverged"][pos]:
        status = "diverged"
    elif ended["stopped"][pos]:
        status = "early_stopped"
    else:
        status = "budget_exhausted"
    num_train = run.data.dataset.num_train
    metrics = run.task.metric_names
    best_value = float(ended["best_value"][pos])
    steps = int(ended["step"][pos])
    row = {
        "trial": trial.index,
        "population": run.plan.index,
        "model": run.model.name,
        "optimizer": run.spec.optimizer,
        "schedule": run.study.optimizer.schedule,
        **{k: getattr(trial, k) for k in hparams_lib.SUMMARY},
        "num_params": run.model.num_params,
        "status": status,
        "best_val_loss": best_value if run.task.monitor == "loss" else at_best.get("val_loss"),
        **{f"best_val_{m}": at_best.get(f"val_{m}") for m in metrics},
        "best_step": best_step,
        "best_epoch": float(best_step * trial.batch_size / num_train),
        "test_loss": float(test["loss"]),
        **{f"test_{m}": float(test[m]) for m in metrics},
        "train_loss_at_best": at_best.get("train_loss"),
        "final_train_loss": history[-1]["train_loss"] if history else None,
        "final_val_loss": history[-1]["val_loss"] if history else None,
        "steps": steps,
        "epochs": float(steps * trial.batch_size / num_train),
    }
    if pos in layout.pruned:
        row["rung"] = layout.pruned[pos]
    if run.task.monitor != "loss":
        row[f"best_val_{run.task.monitor}"] = best_value
    for key in optional:
        row[key] = getattr(trial, key)
    for key in run.plan.optimizer_keys:  # an optax factory's per-trial keywords
        row[key] = run.plan.optimizer_value(trial, key)
    row.update({k: v for k, v in run.model_config.items() if k != "name"})
    row["base_learning_rate"] = trial.base_learning_rate
    row["input_dim"] = int(np.prod(run.data.dataset.input_shape))
    if run.task.classification:
        row["num_classes"] = int(run.data.dataset.num_classes)
    return row
