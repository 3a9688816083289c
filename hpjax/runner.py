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

from hpjax import data as data_lib
from hpjax import plan as study
from hpjax import progress
from hpjax.engine import memory, optim, population
from hpjax.engine.sharding import TrialSharding
from hpjax.errors import ConfigError
from hpjax.models import Model, build_model
from hpjax.report import study_report
from hpjax.results import checkpoints as checkpoint
from hpjax.results import files

# Keys that change how a study is run or shown, not what it computes.
NON_STUDY_KEYS = ("overwrite", "log_every_s", "checkpoint_every_s", "make_report")
OUTPUTS = (
    "config.json",
    "metrics.jsonl",
    "summary.csv",
    "populations.csv",
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
    def put(
        cls,
        dataset: data_lib.Dataset,
        train_eval_examples: int,
        sharding: TrialSharding | None = None,
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
    files.write_json(path, config_dict)
    return False


def trial_hparams(config, plan: study.PopulationPlan) -> population.TrialHParams:
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
        accumulates=any(t.batch_size != plan.microbatch for t in plan.trials),
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


def _take(tree, rows: np.ndarray):
    """The rows ``rows`` of every leaf's leading axis."""
    idx = np.asarray(rows)
    return jax.tree.map(lambda a: a[idx], tree)


def _take_state(state: population.PopulationState, rows) -> population.PopulationState:
    return state.replace(
        trials=_take(state.trials, rows),
        best_params=_take(state.best_params, rows),
        early_stop=_take(state.early_stop, rows),
    )


class PopulationRun:
    """Trains one population to the end of its budget, writing metrics as it goes.

    The compiled program holds *rows*; ``self.positions[r]`` is the plan position of the trial
    in row ``r``, or -1 for a padding row (a frozen copy that makes the row count a multiple of
    the device count). When at most ``config.compact_fraction`` of the rows are still training,
    the stopped trials are retired to the host and the rest continue in a smaller program.
    """

    def __init__(
        self,
        config,
        plan: study.PopulationPlan,
        models: dict[tuple, Model],
        data: StudyData,
        workdir: str,
        num_populations: int,
        sharding: TrialSharding,
    ):
        self.config = config
        self.plan = plan
        self.model_config = study.model_config(config, plan.trials[0].architecture)
        self.model = models[plan.trials[0].architecture]
        self.data = data
        self.workdir = workdir
        self.sharding = sharding
        self.spec = make_spec(
            config, self.model, plan, data.dataset.num_train, data.dataset.num_classes
        )
        self.full_hparams = trial_hparams(config, plan)
        self.batch = np.array([t.batch_size for t in plan.trials])
        self.history: dict[int, list[dict]] = {t.index: [] for t in plan.trials}
        self.label = f"population {plan.index + 1}/{num_populations} ({len(plan.trials)} trials)"
        self.writer = files.JsonlWriter(os.path.join(workdir, "metrics.jsonl"))
        self.start_time = time.perf_counter()
        self.retired: dict[int, Any] = {}  # plan position -> host slice of its final state
        self.positions = np.arange(len(plan.trials))
        self.hparams = self.full_hparams

    # Rows: which trials the compiled program holds.

    def _place(self, full_state: population.PopulationState, alive: np.ndarray):
        """The program's state for the trials ``alive`` (plan positions), padded and sharded."""
        alive = np.asarray(alive, int)
        pad = self.sharding.padded_size(len(alive)) - len(alive)
        rows = np.concatenate([alive, np.full(pad, alive[0])])
        self.positions = np.concatenate([alive, np.full(pad, -1)])
        hparams = _take(self.full_hparams, rows)
        if pad:  # padding rows have no budget: frozen from the start
            hparams = hparams.replace(
                max_steps=jnp.where(jnp.asarray(self.positions) < 0, 0, hparams.max_steps)
            )
        self.hparams = self.sharding.put_rows(hparams)
        state = _take_state(full_state, rows)
        return self.sharding.put_rows(state.replace(tick=jnp.asarray(full_state.tick)))

    def full_state(self, state: population.PopulationState) -> population.PopulationState:
        """All the plan's trials in plan order, on the host: live rows and retired ones."""
        host = self.sharding.to_host(state)
        slices = dict(self.retired)
        for r, pos in enumerate(self.positions):
            if pos >= 0:
                slices[pos] = _take_state(host, [r])
        parts = [slices[p] for p in range(len(self.plan.trials))]
        concat = lambda *xs: np.concatenate(xs)  # noqa: E731
        return population.PopulationState(
            trials=jax.tree.map(concat, *[p.trials for p in parts]),
            best_params=jax.tree.map(concat, *[p.best_params for p in parts]),
            early_stop=jax.tree.map(concat, *[p.early_stop for p in parts]),
            tick=np.asarray(host.tick),
        )

    def compact(self, state: population.PopulationState, active: np.ndarray):
        """Retires the rows that stopped and continues with the others, if that pays."""
        real = self.positions >= 0
        live = int((active & real).sum())
        fraction = float(self.config.get("compact_fraction", 0.0))
        if live == 0 or live > fraction * len(self.positions):
            return state
        if self.sharding.padded_size(live) >= len(self.positions):
            return state
        full = self.full_state(state)
        for r, pos in enumerate(self.positions):
            if pos >= 0 and not active[r]:
                self.retired[pos] = _take_state(full, [pos])
        logging.info(
            "%s: %d of %d rows still training; continuing with a smaller program",
            self.label,
            live,
            len(self.positions),
        )
        return self._place(full, self.positions[active & real])

    # Evaluation and metrics.

    def evaluate(self, state: population.PopulationState, evaluated: np.ndarray):
        """Evaluates every row, records the trials ``evaluated``, and returns the new state."""
        d = self.data
        train_loss, train_acc = population.evaluate(
            self.spec, state.trials.params, d.x_train_eval, d.y_train_eval
        )
        val_loss, val_acc = population.evaluate(self.spec, state.trials.params, d.x_val, d.y_val)
        state, _ = population.record_evaluation(
            self.spec, state, val_loss, val_acc, jnp.asarray(evaluated)
        )
        steps, rates, *host = self.sharding.to_host(
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
        for r, pos in enumerate(self.positions):
            if pos < 0 or not evaluated[r]:
                continue
            trial = self.plan.trials[pos]
            row = {
                "trial": trial.index,
                "step": int(steps[r]),
                "epoch": float(steps[r] * trial.batch_size / d.dataset.num_train),
                "examples_seen": int(steps[r] * trial.batch_size),
                "learning_rate": float(rates[r]),
                "train_loss": float(host[0][r]),
                "train_accuracy": float(host[1][r]),
                "val_loss": float(host[2][r]),
                "val_accuracy": float(host[3][r]),
                "elapsed_s": round(elapsed, 3),
            }
            rows.append(row)
            self.history[trial.index].append(row)
        if self.sharding.is_writer:
            self.writer.write(rows)
        return state

    def run(self, metrics_lines_before: int) -> tuple[list[dict], int]:
        """Trains (or resumes) the population; returns its summary rows and metrics line count."""
        plan, spec = self.plan, self.spec
        # Initialise on one device, then shard (_place): initialising with hyperparameters already
        # sharded over host CPU devices was seen to hang for a small GRU population.
        fresh = population.init_population(spec, self.full_hparams)
        if jax.process_count() == 1:
            checkpoints = checkpoint.StateCheckpoints(self.workdir, plan.index)
            restored = checkpoints.restore_latest(jax.device_get(fresh))
        else:  # each host would need the restored state: resuming is single-host for now
            checkpoints, restored = None, None
        if restored is not None:
            full, host = restored
            self.writer.truncate_to(host["metrics_lines"])
            self._reload_history()
            if host.get("finished"):
                logging.info("%s: already finished, taking its saved results", self.label)
                if checkpoints:
                    checkpoints.close()
                return host["rows"], host["metrics_lines"]
            alive = np.asarray(host["alive"], int)
            for pos in set(range(len(plan.trials))) - set(alive.tolist()):
                self.retired[pos] = _take_state(full, [pos])
            state = self._place(full, alive)
            logging.info(
                "%s: resuming at tick %d of %d", self.label, int(full.tick), plan.total_ticks
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
            state = self._place(jax.device_get(fresh), np.arange(len(plan.trials)))
            state = self.evaluate(state, self.positions >= 0)
        reporter = progress.Progress(
            self.label,
            plan.total_ticks,
            len(plan.trials),
            float(self.config.get("log_every_s", 5.0)),
        )
        every = int(self.config.get("checkpoint_every", 20))
        tick = int(state.tick)
        reporter.update(tick)
        evaluations = 0
        x_train, y_train = self.data.x_train, self.data.y_train
        while tick < plan.total_ticks:
            active = self._active(state)
            if not active.any():
                break
            state = self.compact(state, active)
            active = self._active(state)
            num_ticks = min(plan.eval_ticks, plan.total_ticks - tick)
            state = population.train_ticks(
                spec, state, self.hparams, x_train, y_train, jnp.asarray(num_ticks, jnp.int32)
            )
            state = self.evaluate(state, active)
            tick = int(state.tick)
            reporter.update(tick, self._best_message(state))
            evaluations += 1
            if every > 0 and evaluations % every == 0:
                self._save(checkpoints, state, {})
        reporter.update(tick, self._best_message(state), force=True)
        full = self.full_state(state)
        rows = self.summarise(full)
        lines = self._save(checkpoints, state, {"finished": True, "rows": rows})
        if checkpoints:
            checkpoints.close()
        return rows, lines

    def _active(self, state: population.PopulationState) -> np.ndarray:
        return np.asarray(self.sharding.to_host(population.active_mask(state, self.hparams)))

    def _save(self, checkpoints, state, extra: dict) -> int:
        lines = self.writer.count_lines()
        alive = [int(p) for p in self.positions if p >= 0]
        if checkpoints is not None:
            checkpoints.save(
                int(state.tick),
                self.full_state(state),
                {"metrics_lines": lines, "alive": alive} | extra,
            )
        return lines

    def _shardable(self, full: population.PopulationState) -> bool:
        return len(self.plan.trials) % self.sharding.num_devices == 0

    def _reload_history(self) -> None:
        for row in files.read_metrics(self.workdir):
            if row["trial"] in self.history:
                self.history[row["trial"]].append(row)

    def _best_message(self, state: population.PopulationState) -> str:
        active = self._active(state) & (self.positions >= 0)
        current = self.sharding.to_host(state.early_stop.best_val_loss)
        best = {pos: float(v) for pos, v in zip(self.positions, current, strict=True) if pos >= 0}
        best |= {pos: float(s.early_stop.best_val_loss[0]) for pos, s in self.retired.items()}
        pos = min(best, key=best.get)
        return (
            f"{int(active.sum())} active, best val loss {best[pos]:.4f} "
            f"(trial {self.plan.trials[pos].index})"
        )

    def summarise(self, full: population.PopulationState) -> list[dict]:
        """One summary row per trial, with the test metrics of its best parameters."""
        d = self.data
        best_params = (
            self.sharding.put_rows(full.best_params)
            if self._shardable(full)
            else (self.sharding.replicate(full.best_params))
        )
        test_loss, test_acc = self.sharding.to_host(
            population.evaluate(self.spec, best_params, d.x_test, d.y_test)
        )
        es = full.early_stop
        steps = np.asarray(full.trials.step)
        diverged = np.asarray(full.trials.diverged)
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
        if self.sharding.is_writer:
            checkpoint.save_best(
                self.workdir,
                full.best_params,
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
    sharding = TrialSharding(int(config.get("num_devices", 0)))
    config_dict = config_to_dict(config)
    if sharding.is_writer:
        prepare_workdir(workdir, config_dict)

    logging.info(
        "study: %d trials in %d population(s) on %d %s device(s); data %s: %d train, %d val, "
        "%d test",
        len(trials),
        len(plans),
        sharding.num_devices,
        jax.default_backend(),
        dataset.name,
        dataset.num_train,
        len(dataset.y_val),
        len(dataset.y_test),
    )
    data = StudyData.put(dataset, int(config.get("train_eval_examples", 2048)), sharding)
    specs = [
        make_spec(
            config, models[p.trials[0].architecture], p, dataset.num_train, dataset.num_classes
        )
        for p in plans
    ]
    plans, estimates = study.fit_plans(
        plans,
        specs,
        dataset.input_shape,
        num_devices=sharding.num_devices,
        memory_fraction=float(config.get("memory_fraction", 0.8)),
        max_population=int(config.get("max_population", 0)),
    )
    rows: list[dict] = []
    populations: list[dict] = []
    lines = 0
    for plan, estimate in zip(plans, estimates, strict=True):
        start = time.perf_counter()
        run = PopulationRun(config, plan, models, data, workdir, len(plans), sharding)
        plan_rows, lines = run.run(lines)
        peak, source = memory.peak_memory_bytes()
        for row in plan_rows:
            row["memory_estimate_mb"] = round(estimate, 3)
            row["peak_memory_mb"] = round(peak / 2**20, 1)  # a measurement, not a result
        populations.append(
            {
                "population": plan.index,
                "trials": len(plan.trials),
                "microbatch": plan.microbatch,
                "architecture": json.dumps(plan.architecture),
                "memory_estimate_mb": estimate,
                "peak_memory_mb": peak / 2**20,
                "peak_memory_source": source,
                "wall_s": round(time.perf_counter() - start, 2),
            }
        )
        rows.extend(plan_rows)
    rows.sort(key=lambda r: r["trial"])
    extra = [k for k in rows[0] if k not in SUMMARY_COLUMNS]
    if not sharding.is_writer:
        return rows
    files.write_csv(os.path.join(workdir, "summary.csv"), rows, SUMMARY_COLUMNS + tuple(extra))
    files.write_csv(os.path.join(workdir, "populations.csv"), populations, list(populations[0]))
    if all(r["status"] == "diverged" for r in rows):
        logging.error(
            "every trial diverged (learning rates %s); lower the learning rates",
            sorted({r["learning_rate"] for r in rows}),
        )
    if config.get("make_report", True):
        study_report.default_report(workdir, x_hparam=config.get("report_x", "learning_rate"))
    return rows
