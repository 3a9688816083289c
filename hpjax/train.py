"""The host loop: ``train_and_evaluate(config, workdir)`` runs a whole study.

For each population the loop alternates one compiled call that trains every trial for
``eval_ticks`` ticks with one compiled evaluation of every trial; the host only logs, writes
metrics and saves checkpoints between those calls. Everything that can be checked is checked
before the first compilation and before the workdir is touched.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from hpjax import checkpoint, metrics, optim, population, report, study
from hpjax import data as data_lib
from hpjax.errors import ConfigError
from hpjax.models import Model, build_model

# Keys that change how a study is run or shown, not what it computes.
NON_STUDY_KEYS = ("overwrite", "log_every_s", "checkpoint_every_s", "make_report")
OUTPUTS = (
    "config.json",
    "metrics.jsonl",
    "summary.csv",
    "report.md",
    "plots",
    "checkpoints",
    "state",
)
SUMMARY_COLUMNS = (
    "trial",
    "population",
    "model",
    "optimizer",
    "schedule",
    "learning_rate",
    "batch_size",
    "seed",
    "weight_decay",
    "num_params",
    "status",
    "best_val_loss",
    "best_val_accuracy",
    "best_step",
    "best_epoch",
    "test_loss",
    "test_accuracy",
    "train_loss_at_best",
    "final_train_loss",
    "final_val_loss",
    "steps",
    "epochs",
)


@dataclasses.dataclass
class StudyData:
    """The data set on the device, with the fixed subset used to measure the training loss."""

    dataset: data_lib.Dataset
    x_train: jax.Array
    y_train: jax.Array
    x_train_eval: jax.Array
    y_train_eval: jax.Array
    x_val: jax.Array
    y_val: jax.Array
    x_test: jax.Array
    y_test: jax.Array

    @classmethod
    def put(cls, dataset: data_lib.Dataset, train_eval_examples: int) -> StudyData:
        n = min(train_eval_examples, dataset.num_train)
        put = jnp.asarray
        return cls(
            dataset,
            put(dataset.x_train),
            put(dataset.y_train),
            put(dataset.x_train[:n]),
            put(dataset.y_train[:n]),
            put(dataset.x_val),
            put(dataset.y_val),
            put(dataset.x_test),
            put(dataset.y_test),
        )


def config_to_dict(config) -> dict:
    """A plain, JSON-ready dict of the config (tuples become lists)."""
    if isinstance(config, ml_collections.ConfigDict):
        config = config.to_dict()
    return json.loads(json.dumps(config, default=list))


def _study_identity(config_dict: dict) -> dict:
    return {k: v for k, v in config_dict.items() if k not in NON_STUDY_KEYS}


def prepare_workdir(workdir: str, config_dict: dict) -> bool:
    """Makes the workdir ready; returns True when it holds this same study already (resume).

    A workdir that holds a different study is refused unless ``config.overwrite`` is set, in
    which case that study's outputs are removed first.
    """
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if _study_identity(old) == _study_identity(config_dict):
            return True
        if not config_dict.get("overwrite", False):
            differing = sorted(
                k
                for k in set(old) | set(config_dict)
                if k not in NON_STUDY_KEYS and old.get(k) != config_dict.get(k)
            )
            raise ConfigError(
                f"workdir {workdir!r} holds a different study (it differs in "
                f"{', '.join(differing)}); choose another --workdir or pass "
                "--config.overwrite=True to replace it"
            )
        for name in OUTPUTS:
            target = os.path.join(workdir, name)
            if os.path.isdir(target):
                shutil.rmtree(target)
            elif os.path.exists(target):
                os.remove(target)
    os.makedirs(workdir, exist_ok=True)
    metrics.write_json(path, config_dict)
    return False


def _hparams(config, plan: study.PopulationPlan) -> population.TrialHParams:
    k = len(plan.trials)
    return population.make_hparams(
        learning_rate=[t.learning_rate for t in plan.trials],
        batch_size=[t.batch_size for t in plan.trials],
        seed=[t.seed for t in plan.trials],
        weight_decay=[t.weight_decay for t in plan.trials],
        warmup_steps=list(plan.warmup_steps),
        decay_rate=[float(config.get("decay_rate", 0.1))] * k,
        end_factor=[float(config.get("end_factor", 0.0))] * k,
        max_steps=list(plan.max_steps),
    )


def optimizer_options(config) -> tuple[tuple[str, Any], ...]:
    """The static options of ``config.optimizer`` that the config sets."""
    names = {
        "momentum": ("momentum", "nesterov"),
        "adam": ("b1", "b2", "eps"),
        "adagrad": ("initial_accumulator_value", "eps"),
        "rmsprop": ("rms_decay", "eps"),
    }
    return tuple((k, config[k]) for k in names.get(config.optimizer, ()) if k in config)


def make_spec(
    config, model: Model, plan: study.PopulationPlan, num_train: int, num_classes: int
) -> population.PopulationSpec:
    return population.PopulationSpec(
        model=model,
        optimizer=config.optimizer,
        schedule=config.schedule,
        microbatch=plan.microbatch,
        num_train=num_train,
        optimizer_options=optimizer_options(config),
        patience=int(config.get("patience", 0)),
        min_delta=float(config.get("min_delta", 0.0)),
        min_steps=int(config.get("min_steps", 0)),
        eval_batch_size=int(config.get("eval_batch_size", 1024)),
        divergence_loss=float(config.get("divergence_factor", 100.0)) * math.log(num_classes),
    )


@functools.partial(jax.jit, static_argnums=0)
def _current_rates(schedule: str, steps: jax.Array, hparams: population.TrialHParams) -> jax.Array:
    """Each trial's scheduled learning rate at its current step."""
    return optim.learning_rate(
        schedule,
        steps,
        hparams.learning_rate,
        hparams.max_steps,
        warmup_steps=hparams.warmup_steps,
        decay_rate=hparams.decay_rate,
        end_factor=hparams.end_factor,
    )


class PopulationRun:
    """Trains one population to the end of its budget, writing metrics as it goes."""

    def __init__(
        self,
        config,
        plan: study.PopulationPlan,
        models: dict[tuple, Model],
        data: StudyData,
        workdir: str,
        num_populations: int,
    ):
        self.config = config
        self.plan = plan
        self.model_config = study.model_config(config, plan.trials[0].architecture)
        self.model = models[plan.trials[0].architecture]
        self.data = data
        self.workdir = workdir
        self.spec = make_spec(
            config, self.model, plan, data.dataset.num_train, data.dataset.num_classes
        )
        self.hparams = _hparams(config, plan)
        self.batch = np.array([t.batch_size for t in plan.trials])
        self.history: dict[int, list[dict]] = {t.index: [] for t in plan.trials}
        self.label = f"population {plan.index + 1}/{num_populations} ({len(plan.trials)} trials)"
        self.writer = metrics.JsonlWriter(os.path.join(workdir, "metrics.jsonl"))
        self.start_time = time.perf_counter()

    def evaluate(self, state: population.PopulationState, evaluated: np.ndarray):
        """Evaluates every trial, records it, and returns the updated state."""
        d = self.data
        train_loss, train_acc = population.evaluate(
            self.spec, state.trials.params, d.x_train_eval, d.y_train_eval
        )
        val_loss, val_acc = population.evaluate(self.spec, state.trials.params, d.x_val, d.y_val)
        state, _ = population.record_evaluation(
            self.spec, state, val_loss, val_acc, jnp.asarray(evaluated)
        )
        steps, rates, *host = jax.device_get(
            (
                state.trials.step,
                _current_rates(self.spec.schedule, state.trials.step, self.hparams),
                train_loss,
                train_acc,
                val_loss,
                val_acc,
            )
        )
        rows = []
        elapsed = time.perf_counter() - self.start_time
        for j, trial in enumerate(self.plan.trials):
            if not evaluated[j]:
                continue
            row = {
                "trial": trial.index,
                "step": int(steps[j]),
                "epoch": float(steps[j] * self.batch[j] / self.data.dataset.num_train),
                "examples_seen": int(steps[j] * self.batch[j]),
                "learning_rate": float(rates[j]),
                "train_loss": float(host[0][j]),
                "train_accuracy": float(host[1][j]),
                "val_loss": float(host[2][j]),
                "val_accuracy": float(host[3][j]),
                "elapsed_s": round(elapsed, 3),
            }
            rows.append(row)
            self.history[trial.index].append(row)
        self.writer.write(rows)
        return state

    def run(self, metrics_lines_before: int) -> tuple[list[dict], int]:
        """Trains (or resumes) the population; returns its summary rows and metrics line count."""
        plan, spec = self.plan, self.spec
        state = population.init_population(spec, self.hparams)
        checkpoints = checkpoint.StateCheckpoints(self.workdir, plan.index)
        restored = checkpoints.restore_latest(state)
        if restored is not None:
            state, host = restored
            self.writer.truncate_to(host["metrics_lines"])
            self._reload_history()
            if host.get("finished"):
                logging.info("%s: already finished, taking its saved results", self.label)
                checkpoints.close()
                return host["rows"], host["metrics_lines"]
            logging.info(
                "%s: resuming at tick %d of %d", self.label, int(state.tick), plan.total_ticks
            )
        else:
            dropped = self.writer.count_lines() - metrics_lines_before
            if dropped > 0:
                logging.warning(
                    "%s: no checkpoint to resume from; its %d metric rows written "
                    "before the interruption are discarded",
                    self.label,
                    dropped,
                )
            self.writer.truncate_to(metrics_lines_before)
            state = self.evaluate(state, np.ones(len(plan.trials), bool))
        progress = metrics.Progress(
            self.label,
            plan.total_ticks,
            len(plan.trials),
            float(self.config.get("log_every_s", 5.0)),
        )
        every = int(self.config.get("checkpoint_every", 20))
        tick = int(state.tick)
        progress.update(tick)
        evaluations = 0
        while tick < plan.total_ticks:
            active = np.asarray(population.active_mask(state, self.hparams))
            if not active.any():
                break
            num_ticks = min(plan.eval_ticks, plan.total_ticks - tick)
            state = population.train_ticks(
                spec,
                state,
                self.hparams,
                self.data.x_train,
                self.data.y_train,
                jnp.asarray(num_ticks, jnp.int32),
            )
            state = self.evaluate(state, active)
            tick = int(state.tick)
            progress.update(tick, self._best_message(state))
            evaluations += 1
            if every > 0 and evaluations % every == 0:
                checkpoints.save(tick, state, {"metrics_lines": self.writer.count_lines()})
        progress.update(tick, self._best_message(state), force=True)
        rows = self.summarise(state)
        lines = self.writer.count_lines()
        checkpoints.save(tick, state, {"metrics_lines": lines, "finished": True, "rows": rows})
        checkpoints.close()
        return rows, lines

    def _reload_history(self) -> None:
        for row in report.read_metrics(self.workdir):
            if row["trial"] in self.history:
                self.history[row["trial"]].append(row)

    def _best_message(self, state: population.PopulationState) -> str:
        best = np.asarray(state.early_stop.best_val_loss)
        active = np.asarray(population.active_mask(state, self.hparams))
        j = int(np.argmin(best))
        return (
            f"{int(active.sum())} active, best val loss {best[j]:.4f} "
            f"(trial {self.plan.trials[j].index})"
        )

    def summarise(self, state: population.PopulationState) -> list[dict]:
        """One summary row per trial, with the test metrics of its best parameters."""
        d = self.data
        test_loss, test_acc = jax.device_get(
            population.evaluate(self.spec, state.best_params, d.x_test, d.y_test)
        )
        es = jax.device_get(state.early_stop)
        steps = np.asarray(state.trials.step)
        diverged = np.asarray(state.trials.diverged)
        rows = []
        for j, trial in enumerate(self.plan.trials):
            history = self.history[trial.index]
            at_best = next((r for r in history if r["step"] == int(es.best_step[j])), None)
            status = (
                "diverged"
                if diverged[j]
                else "early_stopped"
                if es.stopped[j]
                else "budget_exhausted"
            )
            row = {
                "trial": trial.index,
                "population": self.plan.index,
                "model": self.model.name,
                "optimizer": self.config.optimizer,
                "schedule": self.config.schedule,
                "learning_rate": trial.learning_rate,
                "batch_size": trial.batch_size,
                "seed": trial.seed,
                "weight_decay": trial.weight_decay,
                "num_params": self.model.num_params,
                "status": status,
                "best_val_loss": float(es.best_val_loss[j]),
                "best_val_accuracy": float(es.best_val_accuracy[j]),
                "best_step": int(es.best_step[j]),
                "best_epoch": float(es.best_step[j] * trial.batch_size / d.dataset.num_train),
                "test_loss": float(test_loss[j]),
                "test_accuracy": float(test_acc[j]),
                "train_loss_at_best": at_best["train_loss"] if at_best else None,
                "final_train_loss": history[-1]["train_loss"] if history else None,
                "final_val_loss": history[-1]["val_loss"] if history else None,
                "steps": int(steps[j]),
                "epochs": float(steps[j] * trial.batch_size / d.dataset.num_train),
            }
            row.update(model_columns(self.model_config))
            row["base_learning_rate"] = trial.base_learning_rate
            row["input_dim"] = int(np.prod(d.dataset.input_shape))
            row["num_classes"] = int(d.dataset.num_classes)
            rows.append(row)
        checkpoint.save_best(
            self.workdir,
            state.best_params,
            rows,
            {
                "model_config": config_to_dict(self.model_config),
                "input_shape": list(d.dataset.input_shape),
                "num_classes": int(d.dataset.num_classes),
            },
        )
        return rows


def model_columns(model_config) -> dict:
    """The model's size hyperparameters, as summary columns."""
    return {k: v for k, v in config_to_dict(model_config).items() if k != "name"}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
    """Runs the study ``config`` into ``workdir``; returns the summary rows.

    Raises :class:`ConfigError` before compiling anything for a bad config or bad data.
    """
    study.validate_config(config)
    dataset = data_lib.load_dataset(config)
    study.validate_config(config, dataset.num_train)
    trials = study.build_trials(config)
    plans = study.plan_populations(config, trials, dataset.num_train)
    models = {  # builds and validates every architecture before anything compiles
        arch: build_model(
            study.model_config(config, arch), dataset.input_shape, dataset.num_classes
        )
        for arch in study.architectures(config)
    }
    config_dict = config_to_dict(config)
    prepare_workdir(workdir, config_dict)

    logging.info(
        "study: %d trials in %d population(s); data %s: %d train, %d val, %d test",
        len(trials),
        len(plans),
        dataset.name,
        dataset.num_train,
        len(dataset.y_val),
        len(dataset.y_test),
    )
    data = StudyData.put(dataset, int(config.get("train_eval_examples", 2048)))
    rows: list[dict] = []
    lines = 0
    for plan in plans:
        plan_rows, lines = PopulationRun(config, plan, models, data, workdir, len(plans)).run(lines)
        rows.extend(plan_rows)
    rows.sort(key=lambda r: r["trial"])
    extra = [k for k in rows[0] if k not in SUMMARY_COLUMNS]
    metrics.write_csv(os.path.join(workdir, "summary.csv"), rows, SUMMARY_COLUMNS + tuple(extra))
    if all(r["status"] == "diverged" for r in rows):
        logging.error(
            "every trial diverged (learning rates %s); lower the learning rates",
            sorted({r["learning_rate"] for r in rows}),
        )
    if config.get("make_report", True):
        report.default_report(workdir, x_hparam=config.get("report_x", "learning_rate"))
    return rows
