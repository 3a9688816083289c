"""The one host loop: trains a planned population, evaluates, schedules, checkpoints, summarises.

For each population the loop alternates one compiled call that trains every row for
``eval_ticks`` ticks with one compiled evaluation of every row; between those calls the host
only decides: the scheduler (ASHA prunes, PBT exploits and explores), the row policy
(:class:`hpjax.study.rows.RowLayout`: ended trials hand their rows to pending ones, a program
shrinks once few rows train), the study's budget, metrics, progress and checkpoints. Every kind
of study runs through this loop; studies that need more than the standard outputs (a
measurement at every evaluation, a timing of the training calls) pass :class:`Hooks`.

A checkpoint holds the rows' device state, the host store of ended trials, the row layout, the
scheduler's state and the loop's own counters, all taken at the same tick, so a killed study
resumes to the same results as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Sequence

import jax
import numpy as np
from absl import logging

from hpjax.data import Dataset
from hpjax.engine import early_stopping, host_data, optim, population, tasks
from hpjax.engine.jit import jit
from hpjax.engine.sharding import TrialSharding, broadcast_flag, broadcast_restored
from hpjax.errors import ConfigError
from hpjax.models import Model
from hpjax.results import checkpoints, files
from hpjax.study import progress, summary
from hpjax.study import schedulers as schedulers_lib
from hpjax.study.hooks import Hooks
from hpjax.study.populations import PopulationPlan, population_spec
from hpjax.study.rows import RowLayout
from hpjax.study.sections import StudySpec

ADAPTIVE_SHRINK = 0.5  # an adaptive study's program shrinks once at most half its rows train


@dataclasses.dataclass
class StudyData:
    """The data set on the device, with the fixed subset used to measure the training loss; with
    ``on_host`` the training set stays a host (or memory-mapped) array, its batches gathered
    there (:mod:`hpjax.engine.host_data`)."""

    dataset: Dataset
    x_train: jax.Array | np.ndarray
    y_train: jax.Array | np.ndarray
    x_train_eval: jax.Array
    y_train_eval: jax.Array
    x_val: jax.Array
    y_val: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    on_host: bool = False

    @classmethod
    def put(
        cls,
        dataset: Dataset,
        train_eval_examples: int,
        sharding: TrialSharding | None = None,
        on_host: bool = False,
    ) -> StudyData:
        n = min(train_eval_examples, dataset.num_train)
        put = sharding.replicate if sharding else jax.device_put
        train = put if not on_host else lambda a: a
        return cls(
            dataset,
            train(dataset.x_train),
            train(dataset.y_train),
            put(dataset.x_train[:n]),
            put(dataset.y_train[:n]),
            put(dataset.x_val),
            put(dataset.y_val),
            put(dataset.x_test),
            put(dataset.y_test),
            on_host,
        )


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


def _ended_store(fresh: population.PopulationState, num_trials: int) -> dict:
    """Host arrays ``[N]`` for every trial's final state, filled as trials end."""
    zeros = lambda a: np.zeros((num_trials,) + a.shape[1:], a.dtype)  # noqa: E731
    es = early_stopping.init(num_trials, np)
    return {
        "best_params": jax.tree.map(zeros, fresh.best_params),
        "best_value": es.best_value,
        "best_step": es.best_step,
        "bad_evaluations": es.bad_evaluations,
        "stopped": es.stopped,
        "step": np.zeros(num_trials, np.int32),
        "diverged": np.zeros(num_trials, bool),
    }


class PopulationRun:
    """Trains one population's trials through its rows, with its scheduler, to the end.

    With ``budget_trial_steps`` the study ends before the training call that would take its
    trials past that many optimizer steps in all: the trials still running stop there (status
    ``study_budget``), and no new trial starts unless its first window fits.
    """

    def __init__(
        self,
        study: StudySpec,
        plan: PopulationPlan,
        model: Model,
        data: StudyData,
        workdir: str,
        *,
        label: str,
        sharding: TrialSharding,
        task: tasks.Task = tasks.CLASSIFICATION,
        hooks: Sequence[Hooks] = (),
    ):
        self.study = study
        self.plan = plan
        self.model = model
        self.model_config = study.model_config(plan.trials[0].architecture)
        self.data = data
        self.workdir = workdir
        self.sharding = sharding
        self.task = task
        self.hooks = tuple(hooks)
        self.label = label
        self.host_batches: host_data.HostBatches | None = None  # with data on the host
        dataset = data.dataset
        self.spec = population_spec(
            study,
            model,
            plan,
            num_train=dataset.num_train,
            num_classes=dataset.num_classes,
            task=task,
            augment=dataset.augment,
            num_devices=sharding.num_devices,
        )
        adaptive = study.adaptive
        shrink = ADAPTIVE_SHRINK if adaptive.is_adaptive else study.placement.compact_fraction
        self.rows = RowLayout(plan.hparams(), sharding, adaptive.slots, shrink)
        boards = [h.rung_board(self) for h in self.hooks if hasattr(h, "rung_board")]
        board = next((b for b in boards if b is not None), None)
        self.scheduler = schedulers_lib.make_scheduler(adaptive, max(plan.max_steps), board)
        self.refills = adaptive.scheduler != "pbt"  # PBT's members persist: they are exploited
        self.budget = adaptive.budget_trial_steps
        self.history: dict[int, list[dict]] = {t.index: [] for t in plan.trials}
        self.writer = files.JsonlWriter(os.path.join(workdir, "metrics.jsonl"))
        self.start_time = time.perf_counter()
        self.last_rows: list[dict] = []
        self.last_value: dict[int, float] = {}  # each trial's monitored value, last evaluation
        self.parent_of: dict[int, int] = {}  # member -> donor, for its next metrics row
        self.best_so_far = float("inf")  # for the progress line
        self.row_ticks = self.training_ticks = 0
        self.ended: dict = {}  # host arrays [N]: each ended trial's best point and final state
        self.stats: dict = {}  # figures of the run for populations.csv
        self.restored = False  # True when it had finished before: its results were read back

    # Evaluation and metrics.

    def evaluate(self, state: population.PopulationState, evaluated: np.ndarray):
        """Evaluates every row, records the trials ``evaluated``, and returns the new state."""
        d, spec = self.data, self.spec
        train = population.evaluate(spec, state.trials.params, d.x_train_eval, d.y_train_eval)
        val = population.evaluate(spec, state.trials.params, d.x_val, d.y_val)
        state, _ = population.record_evaluation(
            spec, state, val[self.task.monitor], jax.device_put(np.asarray(evaluated))
        )
        rates = _current_rates(spec.schedule, state.trials.step, self.rows.hparams)
        steps, rates, train, val = self.sharding.to_host((state.trials.step, rates, train, val))
        names = ("loss", *self.task.metric_names)
        rows = []
        elapsed, now = time.perf_counter() - self.start_time, time.time()
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
            row["time"] = round(now, 3)  # wall clock (Unix seconds): dashboards' time axes
            parent = self.parent_of.pop(int(pos), None)
            if parent is not None:
                row["parent"] = parent
            rows.append(row)
            self.history[trial.index].append(row)
            self.last_value[int(pos)] = row[f"val_{self.task.monitor}"]
        if self.sharding.is_writer:
            self.writer.write(rows)
        self.last_rows = rows
        for hook in self.hooks:
            hook.on_evaluation(self, state, rows)
        return state

    # The loop.

    def run(self, metrics_lines_before: int) -> tuple[list[dict], int]:
        """Trains (or resumes) the population; returns its summary rows and metrics line count."""
        layout = self.rows
        # Initialise on one device, then shard (sharded initialisation hung a small GRU).
        fresh = population.init_population(self.spec, layout.make_hparams(layout.columns))
        self.ended = _ended_store(jax.device_get(fresh), layout.num_trials)
        # Process 0 saves and restores; with several processes it broadcasts what it restored.
        saved = (
            checkpoints.StateCheckpoints(self.workdir, self.plan.index)
            if self.sharding.is_writer
            else None
        )
        try:
            return self._train_population(saved, fresh, metrics_lines_before)
        except Exception:  # an error, not a kill: the checkpoint being written finishes now
            if saved:
                with contextlib.suppress(Exception):
                    saved.close()
            raise

    def _train_population(self, saved, fresh, metrics_lines_before: int):
        layout = self.rows
        state, host = self._resume(saved, fresh, metrics_lines_before)
        if state is None:
            if saved:
                saved.close()
            for hook in self.hooks:
                hook.on_end(self, host["rows"])
            self.restored = True
            return host["rows"], host["metrics_lines"]
        for hook in self.hooks:
            hook.on_start(self, state)
        # A row per trial, all from tick 0: the study ends at the plan's last tick. Else rows
        # take new trials at later ticks (or PBT changes batch sizes): no end is known.
        known = not self.study.adaptive.is_adaptive or self.study.adaptive.scheduler == "pbt"
        reporter = progress.Progress(
            self.label,
            self.plan.total_ticks if known else 0,
            len(layout.positions),
            self.study.outputs.log_every_s,
        )
        reporter.update(int(state.tick))
        every = self.study.budget.checkpoint_every
        evaluations = 0
        while True:
            state = self._schedule(state)
            state, active = self._refill(state, self._active(state) & layout.real)
            if not active.any():
                break
            if self.refills and (smaller := layout.shrink(state, active)) is not None:
                logging.info(
                    "%s: %d trials still train; continuing in %d rows",
                    self.label,
                    int(active.sum()),
                    len(layout.positions),
                )
                state = smaller
                active = self._active(state) & layout.real
            if self.budget and self._spent(state) + self._window_steps(active) > self.budget:
                self._stop_for_budget(state)
                break
            num_ticks = self.plan.window_ticks(int(state.tick))
            if known:  # the last window ends with the budget of the longest trial
                num_ticks = min(num_ticks, self.plan.total_ticks - int(state.tick))
            by_row = self.plan.evaluates_by_row
            before = self._steps_and_divergence(state) if by_row else None
            state = self._train(state, num_ticks)
            reporter.num_trials = len(layout.positions)
            self.row_ticks += len(layout.positions) * num_ticks
            self.training_ticks += int(active.sum()) * num_ticks
            state = self.evaluate(state, active & self._due(before, state))
            reporter.update(int(state.tick), self._best_message(state))
            evaluations += 1
            if every > 0 and evaluations % every == 0:
                self._save(saved, state, {})
        reporter.update(int(state.tick), self._best_message(state), force=True)
        self._close_host_batches()
        self._finish(state, layout.real)
        rows = self._summary()
        lines = self._save(saved, state, {"finished": True, "rows": rows})
        if saved:
            saved.close()
        for hook in self.hooks:
            hook.on_end(self, rows)
        return rows, lines

    def _train(self, state: population.PopulationState, num_ticks: int):
        d = self.data
        start = time.perf_counter()
        if d.on_host:
            state = self._train_from_host(state, num_ticks)
        else:
            state = population.train_ticks(
                self.spec,
                state,
                self.rows.hparams,
                d.x_train,
                d.y_train,
                jax.device_put(np.int32(num_ticks)),
            )
        if self.hooks:
            jax.block_until_ready(state)
            seconds = time.perf_counter() - start
            for hook in self.hooks:
                hook.on_train(self, num_ticks, seconds)
        return state

    def _close_host_batches(self) -> None:
        batches, self.host_batches = self.host_batches, None
        if batches is not None:
            batches.close(self.label)

    def _train_from_host(self, state: population.PopulationState, num_ticks: int):
        if self.host_batches is None:
            self.host_batches = host_data.HostBatches(
                self.data.x_train, self.data.y_train, self.spec.microbatch, self.sharding
            )
        return self.host_batches.train(self.spec, state, self.rows.hparams, num_ticks)

    def _steps_and_divergence(self, state: population.PopulationState) -> tuple[np.ndarray, ...]:
        trials = state.trials
        return tuple(np.asarray(a) for a in self.sharding.to_host((trials.step, trials.diverged)))

    def _due(self, before: tuple | None, state: population.PopulationState) -> np.ndarray:
        if before is None:  # every row's evaluation falls at each window's end
            return np.ones(len(self.rows.positions), bool)
        steps, diverged = self._steps_and_divergence(state)
        eval_every = self.study.budget.eval_every
        return self.plan.due(before, (steps, diverged), self.rows.columns["max_steps"], eval_every)

    def _active(self, state: population.PopulationState) -> np.ndarray:
        return np.asarray(self.sharding.to_host(population.active_mask(state, self.rows.hparams)))

    def _window_steps(self, rows: np.ndarray) -> int:
        """Optimizer steps the trials in ``rows`` take in one training call."""
        sizes = self.rows.columns["batch_size"][rows]
        return int((self.plan.eval_ticks * self.plan.microbatch // sizes).sum())

    def _spent(self, state) -> int:
        live = np.asarray(self.sharding.to_host(state.trials.step))[self.rows.real].sum()
        return int(self.ended["step"].sum() + live)

    def _schedule(self, state):
        """The scheduler's decisions at this evaluation boundary (ASHA prunes, PBT exploits)."""
        if self.scheduler is None:
            return state
        layout = self.rows
        steps, best = self.sharding.to_host((state.trials.step, state.early_stop.best_value))
        active = self._active(state) & layout.real
        decision = self.scheduler.decide(
            schedulers_lib.Observation(
                positions=layout.positions,
                active=active,
                steps=np.asarray(steps),
                best=np.asarray(best),
                last_value=self.last_value,
                columns=layout.columns,
                tick=int(state.tick),
            )
        )
        if decision.pruned:
            for r, rung in decision.pruned.items():
                layout.pruned[int(layout.positions[r])] = rung
                layout.columns["max_steps"][r] = 0  # frozen; ended by _refill
        for exploit in decision.exploits:
            self.parent_of[exploit.trial] = exploit.parent
        if decision.pruned or decision.exploits:
            layout.push()
        if decision.exploits:
            source = np.arange(len(layout.positions))
            copies = np.zeros(len(layout.positions), bool)
            for e in decision.exploits:
                source[e.trial], copies[e.trial] = e.parent, True
            state = population.copy_rows(
                state, jax.device_put(np.asarray(source)), jax.device_put(np.asarray(copies))
            )
        return state

    def _refill(self, state, active: np.ndarray):
        """Rows whose trial ended go to the host store; the next pending trials take them.
        Returns the state and the rows that train (``active``: those that trained before)."""
        layout = self.rows
        ended = layout.real & ~active
        if not self.refills or not ended.any():
            return state, active
        self._finish(state, ended)
        allowed = True
        if self.budget:  # a trial starts only if the next window still fits in the budget
            next_window = self._window_steps(active) + self._window_steps(ended)
            allowed = self._spent(state) + next_window <= self.budget
        started = layout.start(ended, allowed)
        if started.any():
            state = population.restart_rows(self.spec, state, layout.hparams, started)
            state = self.evaluate(state, started)
        return state, active | started

    def _stop_for_budget(self, state) -> None:
        active = self._active(state) & self.rows.real
        for pos in self.rows.positions[active]:
            self.rows.budget_stopped.append(int(pos))
        logging.info(
            "%s: the study's budget of %d trial-steps is spent; %d running trials stop, %d "
            "pending never start",
            self.label,
            self.budget,
            int(active.sum()),
            self.rows.pending,
        )

    def _finish(self, state, rows: np.ndarray) -> None:
        """Keeps the final host state of the trials in ``rows``."""
        host = self.sharding.to_host(
            (state.best_params, state.early_stop, state.trials.step, state.trials.diverged)
        )
        best, es, steps, diverged = host
        for r in np.flatnonzero(rows & self.rows.real):
            pos = int(self.rows.positions[r])
            for leaf, src in zip(
                jax.tree.leaves(self.ended["best_params"]), jax.tree.leaves(best), strict=True
            ):
                leaf[pos] = src[r]
            for name in ("best_value", "best_step", "bad_evaluations", "stopped"):
                self.ended[name][pos] = getattr(es, name)[r]
            self.ended["step"][pos], self.ended["diverged"][pos] = steps[r], diverged[r]
            if pos not in self.rows.finished:
                self.rows.finished.append(pos)

    def _best_message(self, state) -> str:
        layout = self.rows
        active = self._active(state) & layout.real
        best = [float(v) for v in self.ended["best_value"][layout.finished]]
        best += [float(v) for v in self.sharding.to_host(state.early_stop.best_value)[active]]
        queue = f", {layout.pending} pending" if layout.pending else ""
        self.best_so_far = min([self.best_so_far, *best])  # never goes back up
        budget = (
            f"; {self._spent(state)}/{self.budget} trial-steps of the budget" if self.budget else ""
        )
        return (
            f"{int(active.sum())} training, {len(layout.finished)} ended{queue} of "
            f"{layout.num_trials}; best val {self.task.monitor} so far "
            f"{self.best_so_far:.4f}{budget}"
        )

    # Results.

    def _summary(self) -> list[dict]:
        rows = summary.summarise(self)
        self.stats = {
            "training_fraction": round(self.training_ticks / max(self.row_ticks, 1), 4),
            "trial_steps": int(self.ended["step"].sum()),
            "trials_started": len(rows),
        }
        return rows

    # Checkpoints: one snapshot of everything the loop knows, at one tick.

    def _save(self, saved, state, extra: dict) -> int:
        """Saves the rows, the ended trials and every host decision (process 0); returns the
        metrics line count."""
        lines = self.writer.count_lines() if self.sharding.is_writer else 0
        live = self.rows.full_size(self.sharding.to_host(state))  # a collective: every process
        if saved is None:
            return lines
        host = {
            "metrics_lines": lines,
            "layout": self.rows.host_state(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "last_value": {str(k): v for k, v in self.last_value.items()},
            "parent_of": {str(k): v for k, v in self.parent_of.items()},
            "row_ticks": self.row_ticks,
            "training_ticks": self.training_ticks,
        }
        if extra.get("finished"):
            host["finished"], host["rows"] = True, extra["rows"]
        saved.save(int(state.tick), {"live": live, "ended": self.ended}, host)
        return lines

    def _unless_rows_lost(self, saved, restored):
        """``restored``, or None (its checkpoints deleted) when ``metrics.jsonl`` lost rows the
        checkpoint counts: the population trains again from the start and writes them anew."""
        if restored is None:
            return None
        counted = restored[1]["metrics_lines"]
        lost = self.sharding.is_writer and self.writer.count_lines() < counted
        if jax.process_count() > 1:
            lost = broadcast_flag(lost)
        if not lost:
            return restored
        logging.warning(
            "%s: metrics.jsonl holds fewer than the %d lines its checkpoint counts (rows were "
            "lost or cut); training it again from the start to write them anew",
            self.label,
            counted,
        )
        if saved:
            saved.clear()
        return None

    def _rebuild_best_checkpoints(self, tree, host) -> None:
        """A finished population's best checkpoint, written again from its final state when
        ``checkpoints/`` lost it."""
        trials = [r["trial"] for r in host["rows"]]
        if checkpoints.has_best(self.workdir, self.plan.index, trials):
            return
        logging.warning(
            "%s: the best checkpoint of trials %s is missing; writing it again from the "
            "population's final state",
            self.label,
            trials,
        )
        self.ended = jax.tree.map(np.array, tree["ended"])
        self.rows.load(host["layout"])
        summary.write_best_checkpoints(self, host["rows"])

    def _resume(self, saved, fresh, lines_before: int):
        """The state to start from: restored (every process alike), or ``fresh`` evaluated;
        ``(None, host)`` when the population had finished."""
        template = {"live": jax.device_get(fresh), "ended": self.ended}
        failure = restored = None
        try:
            restored = saved.restore_latest(template) if saved else None
        except ConfigError as error:
            failure = error
        if jax.process_count() > 1 and broadcast_flag(failure is not None):
            raise failure or ConfigError("process 0 found no state checkpoint it can resume from")
        if failure is not None:
            raise failure
        if jax.process_count() > 1:  # process 0 read it; every process resumes from it
            restored = broadcast_restored(restored, template)
        writer = self.sharding.is_writer
        restored = self._unless_rows_lost(saved, restored)
        if restored is None:
            dropped = self.writer.count_lines() - lines_before if writer else 0
            if dropped > 0:
                logging.warning(
                    "%s: no checkpoint to resume from; its %d metric rows written before the "
                    "interruption are discarded",
                    self.label,
                    dropped,
                )
            if writer:
                self.writer.truncate_to(lines_before)
            state = self.sharding.put_rows(jax.device_get(fresh))
            return self.evaluate(state, self.rows.real), None
        tree, host = restored
        # The other processes see no workdir (it may be on process 0's host only). A finished
        # population's rows are all written; the lines after them are later populations'.
        if writer and not host.get("finished"):
            self.writer.truncate_to(host["metrics_lines"])
        if writer:
            for row in files.read_metrics(self.workdir):
                if row["trial"] in self.history:
                    self.history[row["trial"]].append(row)
        if host.get("finished"):
            logging.info("%s: already finished, taking its saved results", self.label)
            if writer:
                self._rebuild_best_checkpoints(tree, host)
                if self.scheduler is not None:  # its files (lineage.csv), from its saved state
                    self.scheduler.load_state(host["scheduler"])
                    self.scheduler.write_files(self.workdir)
            return None, host
        self.ended = jax.tree.map(np.array, tree["ended"])
        self.rows.load(host["layout"])
        if self.scheduler is not None:
            self.scheduler.load_state(host["scheduler"])
        self.last_value = {int(k): v for k, v in host["last_value"].items()}
        self.parent_of = {int(k): v for k, v in host["parent_of"].items()}
        self.row_ticks, self.training_ticks = host["row_ticks"], host["training_ticks"]
        logging.info("%s: resuming at tick %d", self.label, int(tree["live"].tick))
        return self.sharding.put_rows(tree["live"]), host
