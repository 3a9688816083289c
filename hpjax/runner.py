"""The one host loop: trains planned populations, evaluates, checkpoints, writes metrics.

For each population the loop alternates one compiled call that trains every trial for
``eval_ticks`` ticks with one compiled evaluation of every trial; the host only logs, writes
metrics and saves checkpoints between those calls. Studies that need more than the standard
outputs (a measurement at every evaluation, a timing of the training calls) pass :class:`Hooks`
instead of writing a loop of their own.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from hpjax import plan as study
from hpjax import progress
from hpjax.config import config_to_dict
from hpjax.data import Dataset
from hpjax.engine import memory, optim, population, tasks
from hpjax.engine.jit import jit
from hpjax.engine.sharding import TrialSharding, broadcast_flag, broadcast_restored
from hpjax.errors import ConfigError
from hpjax.models import Model
from hpjax.results import checkpoints, files
from hpjax.rows import RowLayout


def summary_columns(task: tasks.Task) -> tuple[str, ...]:
    """The first columns of ``summary.csv``, in order; model sizes and measurements follow."""
    metrics = task.metric_names
    return (
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


@dataclasses.dataclass
class StudyData:
    """The data set on the device, with the fixed subset used to measure the training loss."""

    dataset: Dataset
    x_train: jax.Array
    y_train: jax.Array
    x_train_eval: jax.Array
    y_train_eval: jax.Array
    x_val: jax.Array
    y_val: jax.Array
    x_test: jax.Array
    y_test: jax.Array

    @classmethod
    def put(
        cls, dataset: Dataset, train_eval_examples: int, sharding: TrialSharding | None = None
    ) -> StudyData:
        n = min(train_eval_examples, dataset.num_train)
        put = sharding.replicate if sharding else jnp.asarray
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


class Hooks:
    """What a study adds to the host loop; every method is optional and does nothing here.

    ``state`` is the population's device state, valid only during the call (the next training
    call donates it).
    """

    def on_start(self, run: PopulationRun, state: population.PopulationState) -> None:
        """Before the first training call of a population (not called for a finished one)."""

    def on_train(self, run: PopulationRun, num_ticks: int, seconds: float) -> None:
        """After each compiled training call, with its wall time (the result is ready)."""

    def on_evaluation(
        self, run: PopulationRun, state: population.PopulationState, rows: list[dict]
    ) -> None:
        """After each evaluation (the first one before training), with its metrics rows."""

    def on_end(self, run: PopulationRun, summary_rows: list[dict]) -> None:
        """When a population has finished, with its summary rows."""


@jit(static_argnums=0)
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


def model_columns(model_config) -> dict:
    """The model's size hyperparameters, as summary columns."""
    return {k: v for k, v in config_to_dict(model_config).items() if k != "name"}


class PopulationRun:
    """Trains one population to the end of its budget, writing metrics as it goes."""

    ADAPTIVE = False  # a row per trial (an adaptive study's runner reuses rows)

    def __init__(
        self,
        config,
        plan: study.PopulationPlan,
        model: Model,
        data: StudyData,
        workdir: str,
        *,
        label: str,
        sharding: TrialSharding,
        task: tasks.Task = tasks.CLASSIFICATION,
        hooks: Sequence[Hooks] = (),
    ):
        self.config = config
        self.plan = plan
        self.model = model
        self.model_config = study.model_config(config, plan.trials[0].architecture)
        self.data = data
        self.workdir = workdir
        self.sharding = sharding
        self.task = task
        self.hooks = tuple(hooks)
        dataset = data.dataset
        self.spec = study.population_spec(
            config,
            model,
            plan,
            num_train=dataset.num_train,
            num_classes=dataset.num_classes,
            task=task,
        )
        self.rows = RowLayout(plan.hparams(), sharding)
        self.history: dict[int, list[dict]] = {t.index: [] for t in plan.trials}
        self.label = label
        self.writer = files.JsonlWriter(os.path.join(workdir, "metrics.jsonl"))
        self.start_time = time.perf_counter()
        self.last_rows: list[dict] = []
        self.stats: dict = {}  # figures of the run for populations.csv
        self.restored = False  # True when it had finished before: its results were read back

    # Evaluation and metrics.

    def evaluate(self, state: population.PopulationState, evaluated: np.ndarray):
        """Evaluates every row, records the trials ``evaluated``, and returns the new state."""
        d, spec = self.data, self.spec
        train = population.evaluate(spec, state.trials.params, d.x_train_eval, d.y_train_eval)
        val = population.evaluate(spec, state.trials.params, d.x_val, d.y_val)
        state, _ = population.record_evaluation(
            spec, state, val[self.task.monitor], jnp.asarray(evaluated)
        )
        rates = _current_rates(spec.schedule, state.trials.step, self.rows.hparams)
        steps, rates, train, val = self.sharding.to_host((state.trials.step, rates, train, val))
        names = ("loss", *self.task.metric_names)
        rows = []
        elapsed = time.perf_counter() - self.start_time
        num_train = d.dataset.num_train
        for r, pos in enumerate(self.rows.positions):
            if pos < 0 or not evaluated[r]:
                continue
            trial = self.plan.trials[pos]
            row = {
                "trial": trial.index,
                "step": int(steps[r]),
                "epoch": float(steps[r] * trial.batch_size / num_train),
                "examples_seen": int(steps[r] * trial.batch_size),
                "learning_rate": float(rates[r]),
            }
            row |= {f"train_{k}": float(train[k][r]) for k in names}
            row |= {f"val_{k}": float(val[k][r]) for k in names}
            row["elapsed_s"] = round(elapsed, 3)
            row |= self.row_extra(int(pos))
            rows.append(row)
            self.history[trial.index].append(row)
        if self.sharding.is_writer:
            self.writer.write(rows)
        self.last_rows = rows
        for hook in self.hooks:
            hook.on_evaluation(self, state, rows)
        return state

    def row_extra(self, pos: int) -> dict:
        """Fields a subclass adds to trial ``pos``'s metrics row (the grid adds none)."""
        return {}

    # The loop.

    def _restore(self, saved: checkpoints.StateCheckpoints | None, fresh, lines_before: int):
        """The state to start from: a restored one, or ``fresh``; None when already finished."""
        template = jax.device_get(fresh)
        failure = None
        try:
            restored = saved.restore_latest(template) if saved else None
        except ConfigError as error:
            failure, restored = error, None
        if jax.process_count() > 1 and broadcast_flag(failure is not None):
            raise failure or ConfigError("process 0 found no state checkpoint it can resume from")
        if failure is not None:
            raise failure
        if jax.process_count() > 1:  # process 0 read it; every process resumes from it
            restored = broadcast_restored(restored, template)
        writer = self.sharding.is_writer
        if restored is None:
            dropped = self.writer.count_lines() - lines_before if writer else 0
            if dropped > 0:
                logging.warning(
                    "%s: no checkpoint to resume from; its %d metric rows written "
                    "before the interruption are discarded",
                    self.label,
                    dropped,
                )
            if writer:
                self.writer.truncate_to(lines_before)
            state = self.rows.place(jax.device_get(fresh), np.arange(len(self.plan.trials)))
            return self.evaluate(state, self.rows.real), None
        full, host = restored
        if writer:  # the other processes see no workdir (it may be on process 0's host only)
            self.writer.truncate_to(host["metrics_lines"])
            for row in files.read_metrics(self.workdir):
                if row["trial"] in self.history:
                    self.history[row["trial"]].append(row)
        if host.get("finished"):
            logging.info("%s: already finished, taking its saved results", self.label)
            return None, host
        alive = np.asarray(host["alive"], int)
        self.rows.retire(full, sorted(set(range(len(self.plan.trials))) - set(alive.tolist())))
        logging.info(
            "%s: resuming at tick %d of %d", self.label, int(full.tick), self.plan.total_ticks
        )
        return self.rows.place(full, alive), host

    def run(self, metrics_lines_before: int) -> tuple[list[dict], int]:
        """Trains (or resumes) the population; returns its summary rows and metrics line count."""
        plan, spec = self.plan, self.spec
        # Initialise on one device, then shard (RowLayout.place): initialising with hyperparameters
        # already sharded over host CPU devices was seen to hang for a small GRU population.
        fresh = population.init_population(spec, self.rows.full_hparams)
        # Process 0 saves and restores; with several processes it broadcasts what it restored.
        saved = (
            checkpoints.StateCheckpoints(self.workdir, plan.index)
            if self.sharding.is_writer
            else None
        )
        state, host = self._restore(saved, fresh, metrics_lines_before)
        if state is None:
            if saved:
                saved.close()
            for hook in self.hooks:
                hook.on_end(self, host["rows"])
            self.restored = True
            return host["rows"], host["metrics_lines"]
        for hook in self.hooks:
            hook.on_start(self, state)
        reporter = progress.Progress(
            self.label,
            plan.total_ticks,
            len(plan.trials),
            float(self.config.get("log_every_s", 5.0)),
        )
        every = int(self.config.get("checkpoint_every", 20))
        fraction = float(self.config.get("compact_fraction", 0.0))
        tick = int(state.tick)
        reporter.update(tick)
        evaluations = row_ticks = training_ticks = 0
        while tick < plan.total_ticks:
            active = self._active(state)
            if not active.any():
                break
            compacted = self.rows.compact(state, active, fraction)
            if compacted is not None:
                logging.info(
                    "%s: %d rows still training; continuing with a smaller program",
                    self.label,
                    int(active.sum()),
                )
                state = compacted
                active = self._active(state)
            num_ticks = min(plan.eval_ticks, plan.total_ticks - tick)
            state = self._train(state, num_ticks)
            row_ticks += len(self.rows.positions) * num_ticks
            training_ticks += int((active & self.rows.real).sum()) * num_ticks
            state = self.evaluate(state, active)
            tick = int(state.tick)
            reporter.update(tick, self._best_message(state))
            evaluations += 1
            if every > 0 and evaluations % every == 0:
                self._save(saved, self.rows.full_state(state), {})
        reporter.update(tick, self._best_message(state), force=True)
        full = self.rows.full_state(state)  # gathered on every process (a collective)
        rows = self.summarise(full)
        self.stats = {
            "training_fraction": round(training_ticks / row_ticks, 4) if row_ticks else None,
            "trial_steps": int(np.asarray(full.trials.step).sum()),
            "trials_started": len(rows),
        }
        lines = self._save(saved, full, {"finished": True, "rows": rows})
        if saved:
            saved.close()
        for hook in self.hooks:
            hook.on_end(self, rows)
        return rows, lines

    def _train(self, state: population.PopulationState, num_ticks: int):
        d = self.data
        start = time.perf_counter()
        state = population.train_ticks(
            self.spec,
            state,
            self.rows.hparams,
            d.x_train,
            d.y_train,
            jnp.asarray(num_ticks, jnp.int32),
        )
        if self.hooks:
            jax.block_until_ready(state)
            seconds = time.perf_counter() - start
            for hook in self.hooks:
                hook.on_train(self, num_ticks, seconds)
        return state

    def _active(self, state: population.PopulationState) -> np.ndarray:
        return np.asarray(self.sharding.to_host(population.active_mask(state, self.rows.hparams)))

    def _save(self, saved, full: population.PopulationState, extra: dict) -> int:
        """Saves the host state ``full`` of every trial (process 0); returns the metrics lines."""
        lines = self.writer.count_lines() if self.sharding.is_writer else 0
        if saved is not None:
            saved.save(
                int(full.tick),
                full,
                {"metrics_lines": lines, "alive": self.rows.alive()} | extra,
            )
        return lines

    def _best_message(self, state: population.PopulationState) -> str:
        positions = self.rows.positions
        active = self._active(state) & self.rows.real
        current = self.sharding.to_host(state.early_stop.best_value)
        best = {pos: float(v) for pos, v in zip(positions, current, strict=True) if pos >= 0}
        best |= {pos: float(s.early_stop.best_value[0]) for pos, s in self.rows.retired.items()}
        pos = min(best, key=best.get)
        return (
            f"{int(active.sum())} active, best val {self.task.monitor} {best[pos]:.4f} "
            f"(trial {self.plan.trials[pos].index})"
        )

    # Results.

    def summarise(self, full: population.PopulationState) -> list[dict]:
        """One summary row per trial, with the test metrics of its best parameters."""
        d = self.data
        shardable = len(self.plan.trials) % self.sharding.num_devices == 0
        put = self.sharding.put_rows if shardable else self.sharding.replicate
        test = self.sharding.to_host(
            population.evaluate(self.spec, put(full.best_params), d.x_test, d.y_test)
        )
        es = full.early_stop
        steps = np.asarray(full.trials.step)
        diverged = np.asarray(full.trials.diverged)
        num_train = d.dataset.num_train
        metrics = self.task.metric_names
        rows = []
        for j, trial in enumerate(self.plan.trials):
            history = self.history[trial.index]
            at_best = next((r for r in history if r["step"] == int(es.best_step[j])), None)
            at_best = at_best or {}
            status = (
                "diverged"
                if diverged[j]
                else "early_stopped"
                if es.stopped[j]
                else "budget_exhausted"
            )
            best_loss = es.best_value[j] if self.task.monitor == "loss" else None
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
                "best_val_loss": float(best_loss)
                if best_loss is not None
                else at_best.get("val_loss"),
                **{f"best_val_{m}": at_best.get(f"val_{m}") for m in metrics},
                "best_step": int(es.best_step[j]),
                "best_epoch": float(es.best_step[j] * trial.batch_size / num_train),
                "test_loss": float(test["loss"][j]),
                **{f"test_{m}": float(test[m][j]) for m in metrics},
                "train_loss_at_best": at_best.get("train_loss"),
                "final_train_loss": history[-1]["train_loss"] if history else None,
                "final_val_loss": history[-1]["val_loss"] if history else None,
                "steps": int(steps[j]),
                "epochs": float(steps[j] * trial.batch_size / num_train),
            }
            if self.task.monitor != "loss":
                row[f"best_val_{self.task.monitor}"] = float(es.best_value[j])
            for key in ("warmup_steps", "decay_rate", "end_factor", "momentum"):
                if any(getattr(t, key) is not None for t in self.plan.trials):
                    row[key] = getattr(trial, key)
            row.update(model_columns(self.model_config))
            row["base_learning_rate"] = trial.base_learning_rate
            row["input_dim"] = int(np.prod(d.dataset.input_shape))
            if self.task.classification:
                row["num_classes"] = int(d.dataset.num_classes)
            rows.append(row)
        if self.sharding.is_writer:
            checkpoints.save_best(
                self.workdir,
                full.best_params,
                rows,
                {
                    "model_config": config_to_dict(self.model_config),
                    "input_shape": list(d.dataset.input_shape),
                    "num_classes": int(d.dataset.num_classes),
                    "task": self.task.name,
                },
            )
        return rows


def _measure(run: PopulationRun, rows: list[dict], estimate: float, start: float, earlier):
    """The population's row of populations.csv, its measurements put into its summary rows;
    a population that finished in an earlier run keeps that run's measurements."""
    if run.restored and earlier is not None:
        old_rows = {r["trial"]: r for r in earlier["rows"]}
        for row in rows:
            for key in ("memory_estimate_mb", "peak_memory_mb"):
                row[key] = old_rows.get(row["trial"], {}).get(key)
        return earlier["population"]
    peak, source = memory.peak_memory_bytes()
    for row in rows:
        row["memory_estimate_mb"] = round(estimate, 3)
        row["peak_memory_mb"] = round(peak / 2**20, 1)  # a measurement, not a result
    plan = run.plan
    return {
        "population": plan.index,
        "trials": len(plan.trials),
        "microbatch": plan.microbatch,
        "architecture": json.dumps(plan.architecture),
        "memory_estimate_mb": estimate,
        "peak_memory_mb": peak / 2**20,
        "peak_memory_source": source,
        "wall_s": round(time.perf_counter() - start, 2),
    } | run.stats


def _earlier_measurements(workdir: str) -> dict[int, dict]:
    """The populations.csv rows (and summary rows) of populations finished by an earlier run."""
    try:
        summary = files.read_summary(workdir)
        populations = files.read_csv(os.path.join(workdir, "populations.csv"), key="population")
    except (OSError, ValueError):
        return {}
    return {
        int(p["population"]): {
            "population": p,
            "rows": [r for r in summary if r.get("population") == p["population"]],
        }
        for p in populations
    }


def run_plans(
    config,
    plans: list[study.PopulationPlan],
    models: dict[tuple, Model],
    data: StudyData,
    workdir: str,
    *,
    sharding: TrialSharding,
    task: tasks.Task = tasks.CLASSIFICATION,
    hooks: Sequence[Hooks] = (),
    population_run: type[PopulationRun] | None = None,
) -> list[dict]:
    """Fits the plans to memory, trains them in turn and writes ``summary.csv`` and
    ``populations.csv`` (process 0); returns the summary rows sorted by trial.

    ``population_run`` trains each plan (:class:`PopulationRun`, or an adaptive study's
    :class:`hpjax.slots.SlotRun`)."""
    population_run = population_run or PopulationRun
    dataset = data.dataset
    specs = [
        study.population_spec(
            config,
            models[p.trials[0].architecture],
            p,
            num_train=dataset.num_train,
            num_classes=dataset.num_classes,
            task=task,
        )
        for p in plans
    ]
    plans, estimates = study.fit_plans(
        plans,
        specs,
        dataset.input_shape,
        target_shape=dataset.y_train.shape[1:],
        target_dtype=str(dataset.y_train.dtype),
        num_devices=sharding.num_devices,
        memory_fraction=float(config.get("memory_fraction", 0.8)),
        max_population=int(config.get("max_population", 0)),
        slots=int(config.get("slots", 0) or 0) if population_run.ADAPTIVE else 0,
    )
    rows: list[dict] = []
    populations: list[dict] = []
    lines = 0
    measured = _earlier_measurements(workdir) if sharding.is_writer else {}
    for plan, estimate in zip(plans, estimates, strict=True):
        start = time.perf_counter()
        run = population_run(
            config,
            plan,
            models[plan.trials[0].architecture],
            data,
            workdir,
            label=f"population {plan.index + 1}/{len(plans)} ({len(plan.trials)} trials)",
            sharding=sharding,
            task=task,
            hooks=hooks,
        )
        plan_rows, lines = run.run(lines)
        populations.append(_measure(run, plan_rows, estimate, start, measured.get(plan.index)))
        rows.extend(plan_rows)
    rows.sort(key=lambda r: r["trial"])
    if sharding.is_writer:
        columns = summary_columns(task)
        extra = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in columns]
        files.write_csv(os.path.join(workdir, "summary.csv"), rows, columns + tuple(extra))
        population_columns = list(dict.fromkeys(k for p in populations for k in p))
        files.write_csv(os.path.join(workdir, "populations.csv"), populations, population_columns)
    return rows
