"""Adaptive studies: more trials than rows in the compiled program, a queue, and schedulers.

A population of N trials runs in S rows (``config.slots``). When a row's trial ends (early stop,
divergence, spent budget, or pruned by ASHA), its final state goes to the host and the next
pending trial takes the row at that evaluation boundary: its hyperparameter row is rewritten and
:func:`hpjax.engine.population.restart_rows` starts it from its own seed, data stream and step 0
while its neighbours go on. Shapes never change, so nothing recompiles. With ``scheduler='pbt'``
the rows are the members of population-based training instead, and exploit/explore rounds
rewrite them in place (:func:`hpjax.engine.population.copy_rows`).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from hpjax import plan as study
from hpjax import progress, runner, schedulers
from hpjax import rows as rows_lib
from hpjax.config import plain
from hpjax.engine import early_stopping, population
from hpjax.engine.sharding import TrialSharding
from hpjax.results import checkpoints, files

HPARAM_FIELDS = tuple(f.name for f in population.TrialHParams.__dataclass_fields__.values())


def is_adaptive(config) -> bool:
    """Whether a study runs through slots (a queue, ASHA or PBT) rather than one row per trial."""
    return int(config.get("slots", 0) or 0) > 0 or config.get("scheduler", "none") != "none"


class SlotLayout:
    """The rows of an adaptive program: which trial each holds, the queue, finished trials."""

    def __init__(self, full_hparams: population.TrialHParams, sharding: TrialSharding, slots: int):
        self.full = {k: np.asarray(getattr(full_hparams, k)) for k in HPARAM_FIELDS}
        self.num_trials = len(self.full["seed"])
        self.sharding = sharding
        slots = min(slots or self.num_trials, self.num_trials)
        self.full_rows = sharding.padded_size(slots)
        self.positions = np.full(self.full_rows, -1)
        self.positions[:slots] = np.arange(slots)
        self.next = slots
        self.columns = {k: v[np.maximum(self.positions, 0)].copy() for k, v in self.full.items()}
        self.columns["max_steps"][self.positions < 0] = 0
        self.retired: dict = {}  # the grid runner's name; finished trials live in `done`
        self.finished: list[int] = []
        self.pruned: dict[int, int] = {}  # trial -> the rung (steps) it was pruned at
        self.budget_stopped: list[int] = []  # trials stopped when the study's budget ran out
        self.push()

    @property
    def real(self) -> np.ndarray:
        return self.positions >= 0

    def push(self) -> None:
        """The rows' hyperparameters onto the devices."""
        self.hparams = self.sharding.put_rows(population.make_hparams(**self.columns))

    def start(self, rows: np.ndarray, allowed: bool) -> np.ndarray:
        """The next pending trials take ``rows`` (those left over stay empty); which did."""
        started = np.zeros(len(self.positions), bool)
        for r in np.flatnonzero(rows):
            if allowed and self.next < self.num_trials:
                self.positions[r], self.next = self.next, self.next + 1
                for k, v in self.full.items():
                    self.columns[k][r] = v[self.positions[r]]
                started[r] = True
            else:
                self.positions[r] = -1
                self.columns["max_steps"][r] = 0
        self.push()
        return started

    def alive(self) -> list[int]:
        return [int(p) for p in self.positions if p >= 0]

    def shrink(self, state: population.PopulationState, active: np.ndarray):
        """Once the queue is empty and at most half the rows train: a program of just those
        rows (padded to the device count), so the tail of a study does not run idle rows."""
        live = np.flatnonzero(active & self.real)
        size = self.sharding.padded_size(len(live))
        if self.next < self.num_trials or not len(live) or size > len(self.positions) // 2:
            return None
        keep = np.concatenate([live, np.full(size - len(live), live[0])])
        self.positions = np.concatenate([self.positions[live], np.full(size - len(live), -1)])
        self.columns = {k: v[keep].copy() for k, v in self.columns.items()}
        self.columns["max_steps"][self.positions < 0] = 0
        self.push()
        host = rows_lib.take_state(self.sharding.to_host(state), keep)
        return self.sharding.put_rows(host.replace(tick=np.asarray(state.tick)))

    def host_state(self) -> dict:
        """The layout as JSON, at its full row count (a shrunk program's extra rows empty), so
        that every checkpoint has the same shapes."""
        pad = self.full_rows - len(self.positions)
        columns = {k: np.concatenate([v, np.repeat(v[:1], pad)]) for k, v in self.columns.items()}
        columns["max_steps"][len(self.positions) :] = 0
        return {
            "positions": self.positions.tolist() + [-1] * pad,
            "next": self.next,
            "columns": {k: v.tolist() for k, v in columns.items()},
            "finished": self.finished,
            "pruned": self.pruned,
            "budget_stopped": self.budget_stopped,
        }

    def load(self, host: dict) -> None:
        self.positions = np.asarray(host["positions"], int)
        self.next = int(host["next"])
        self.columns = {k: np.asarray(v, self.full[k].dtype) for k, v in host["columns"].items()}
        self.finished = list(host["finished"])
        self.pruned = {int(k): int(v) for k, v in host["pruned"].items()}
        self.budget_stopped = list(host["budget_stopped"])
        self.push()


class SlotRun(runner.PopulationRun):
    """Trains one population's trials through ``config.slots`` rows, with a scheduler.

    With ``config.budget_trial_steps`` the study ends before the training call that would take
    its trials past that many optimizer steps in all: the trials still running stop there
    (status ``study_budget``), and no new trial starts unless its first window fits.
    """

    ADAPTIVE = True

    def __init__(self, config, plan: study.PopulationPlan, *args, **kwargs):
        super().__init__(config, plan, *args, **kwargs)
        self.rows = SlotLayout(plan.hparams(), self.sharding, int(config.get("slots", 0) or 0))
        name = config.get("scheduler", "none")
        self.asha = (
            schedulers.Asha(config.asha.min_steps, config.asha.eta, max(plan.max_steps))
            if name == "asha"
            else None
        )
        self.pbt = schedulers.Pbt(config) if name == "pbt" else None
        self.budget = int(config.get("budget_trial_steps", 0) or 0)
        self.last_value: dict[int, float] = {}
        self.parent_of: dict[int, int] = {}  # member -> donor, for its next metrics row
        self.row_ticks = self.training_ticks = 0
        self.done = None  # host arrays [N]: each finished trial's best point and final state

    # What the grid runner calls.

    def row_extra(self, pos: int) -> dict:
        parent = self.parent_of.pop(pos, None)
        return {} if parent is None else {"parent": parent}

    def evaluate(self, state, evaluated):
        state = super().evaluate(state, evaluated)
        monitor = f"val_{self.task.monitor}"
        for row in self.last_rows:
            self.last_value[row["trial"]] = row[monitor]
        return state

    def _best_message(self, state) -> str:
        active = self._active(state) & self.rows.real
        best = [float(v) for v in self.done["best_value"][self.rows.finished]]
        best += [float(v) for v in self.sharding.to_host(state.early_stop.best_value)[active]]
        return (
            f"{int(active.sum())} training, {len(self.rows.finished)} finished, "
            f"{self.rows.num_trials - self.rows.next} pending of {self.rows.num_trials}; "
            f"best val {self.task.monitor} {min(best, default=float('nan')):.4f}"
        )

    # The loop.

    def run(self, metrics_lines_before: int) -> tuple[list[dict], int]:
        layout, spec = self.rows, self.spec
        fresh = population.init_population(spec, population.make_hparams(**layout.columns))
        self.done = _empty_done(jax.device_get(fresh), layout.num_trials)
        saved = (
            checkpoints.StateCheckpoints(self.workdir, self.plan.index)
            if self.sharding.is_writer
            else None
        )
        state, host = self._resume(saved, fresh, metrics_lines_before)
        if state is None:
            if saved:
                saved.close()
            self.restored = True
            return host["rows"], host["metrics_lines"]
        for hook in self.hooks:
            hook.on_start(self, state)
        reporter = progress.Progress(
            self.label, 0, len(layout.positions), float(self.config.get("log_every_s", 5.0))
        )
        every = int(self.config.get("checkpoint_every", 20))
        evaluations = 0
        while True:
            state = self._schedule(state)
            state = self._refill(state)
            active = self._active(state) & layout.real
            if not active.any():
                break
            if self.pbt is None and (smaller := layout.shrink(state, active)) is not None:
                logging.info(
                    "%s: %d trials left; continuing in %d rows",
                    self.label,
                    int(active.sum()),
                    len(layout.positions),
                )
                state = smaller
                active = self._active(state) & layout.real
            if self.budget and self._spent(state) + self._window_steps(active) > self.budget:
                self._stop_for_budget(state)
                break
            state = self._train(state, self.plan.eval_ticks)
            self.row_ticks += len(layout.positions) * self.plan.eval_ticks
            self.training_ticks += int(active.sum()) * self.plan.eval_ticks
            state = self.evaluate(state, active)
            reporter.update(int(state.tick), self._best_message(state))
            evaluations += 1
            if every > 0 and evaluations % every == 0:
                self._save_slots(saved, state, {})
        self._finish(state, layout.real)
        rows = self._summary(state)
        lines = self._save_slots(saved, state, {"finished": True, "rows": rows})
        if saved:
            saved.close()
        for hook in self.hooks:
            hook.on_end(self, rows)
        return rows, lines

    def _window_steps(self, rows: np.ndarray) -> int:
        """Optimizer steps the trials in ``rows`` take in one training call."""
        sizes = self.rows.columns["batch_size"][rows]
        return int((self.plan.eval_ticks * self.plan.microbatch // sizes).sum())

    def _spent(self, state) -> int:
        live = np.asarray(self.sharding.to_host(state.trials.step))[self.rows.real].sum()
        return int(self.done["step"].sum() + live)

    def _schedule(self, state):
        """ASHA prunes; PBT exploits and explores."""
        layout = self.rows
        if self.asha is not None:
            steps, best = self.sharding.to_host((state.trials.step, state.early_stop.best_value))
            active = self._active(state) & layout.real
            pruned = False
            for r in np.flatnonzero(active):
                pos = int(layout.positions[r])
                rung = self.asha.judge(pos, int(steps[r]), float(best[r]))
                if rung is not None:
                    layout.pruned[pos] = rung
                    layout.columns["max_steps"][r] = 0  # frozen; finished below
                    pruned = True
            if pruned:
                layout.push()
        if self.pbt is not None:
            steps = np.asarray(self.sharding.to_host(state.trials.step))
            active = self._active(state) & layout.real
            if active.any() and self.pbt.due(int(steps[active].max())):
                values = np.array(
                    [
                        self.last_value.get(int(p), np.inf) if p >= 0 else np.inf
                        for p in layout.positions
                    ]
                )
                source, copies, exploits = self.pbt.step(
                    values, layout.columns, int(state.tick), int(steps[layout.real].max())
                )
                for e in exploits:
                    self.parent_of[e.trial] = e.parent
                layout.push()
                state = population.copy_rows(state, jnp.asarray(source), jnp.asarray(copies))
        return state

    def _refill(self, state):
        """Rows whose trial ended go to the host; the next pending trials take them."""
        layout = self.rows
        if self.pbt is not None:  # members persist; a stopped one waits to be exploited
            return state
        ended = layout.real & ~(self._active(state))
        if not ended.any():
            return state
        self._finish(state, ended)
        allowed = True
        if self.budget:  # a trial starts only if the next window still fits in the budget
            running = self._active(state) & layout.real
            next_window = self._window_steps(running) + self._window_steps(ended)
            allowed = self._spent(state) + next_window <= self.budget
        started = layout.start(ended, allowed)
        if started.any():
            state = population.restart_rows(self.spec, state, layout.hparams, started)
            state = self.evaluate(state, started)
        return state

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
            self.rows.num_trials - self.rows.next,
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
                jax.tree.leaves(self.done["best_params"]), jax.tree.leaves(best), strict=True
            ):
                leaf[pos] = src[r]
            for name in ("best_value", "best_step", "bad_evaluations", "stopped"):
                self.done[name][pos] = getattr(es, name)[r]
            self.done["step"][pos], self.done["diverged"][pos] = steps[r], diverged[r]
            if pos not in self.rows.finished:
                self.rows.finished.append(pos)

    # Results.

    def _summary(self, state) -> list[dict]:
        done, layout = self.done, self.rows
        started = sorted(layout.finished)
        full_plan = self.plan
        self.plan = study.take_trials(full_plan, started)
        idx = np.asarray(started, int)
        full = population.PopulationState(
            trials=population.TrialState(
                *(None,) * 5,
                step=done["step"][idx],
                data_key=None,
                ticks=None,
                diverged=done["diverged"][idx],
            ),
            best_params=jax.tree.map(lambda a: a[idx], done["best_params"]),
            early_stop=early_stopping.EarlyStopState(
                *(done[k][idx] for k in ("best_value", "best_step", "bad_evaluations", "stopped"))
            ),
            tick=np.asarray(state.tick),
        )
        rows = self.summarise(full)
        self.plan = full_plan
        for row in rows:
            pos = row["trial"]
            if pos in layout.pruned:
                row["status"], row["rung"] = "pruned", layout.pruned[pos]
            if pos in layout.budget_stopped:
                row["status"] = "study_budget"
        if self.pbt is not None:
            for row, pos in zip(rows, started, strict=True):
                r = int(np.flatnonzero(layout.positions == pos)[0])
                for k in self.pbt.keys:
                    row[k] = plain(layout.columns[k][r])
                row["exploits"] = sum(e.trial == pos for e in self.pbt.history)
            if self.sharding.is_writer:
                lineage = [e.row() for e in self.pbt.history]
                columns = ["tick", "step", "trial", "parent"] + [
                    f"{w}_{k}" for w in ("before", "after") for k in self.pbt.keys
                ]
                path = os.path.join(self.workdir, "lineage.csv")
                files.write_csv(path, lineage, columns, exact=True)
        self.stats = {
            "training_fraction": round(self.training_ticks / max(self.row_ticks, 1), 4),
            "trial_steps": int(done["step"].sum()),
            "trials_started": len(started),
        }
        return rows

    # Checkpoints.

    def _scheduler_state(self) -> dict:
        return {
            "asha": self.asha.state_dict() if self.asha else None,
            "pbt": self.pbt.state_dict() if self.pbt else None,
            "row_ticks": self.row_ticks,
            "training_ticks": self.training_ticks,
        }

    def _save_slots(self, saved, state, extra: dict) -> int:
        lines = self.writer.count_lines() if self.sharding.is_writer else 0
        if saved is not None:
            live = self.sharding.to_host(state)
            pad = self.rows.full_rows - len(self.rows.positions)
            if pad:  # a shrunk program: saved at full size, its extra rows empty
                live = rows_lib.take_state(
                    live, np.r_[np.arange(len(self.rows.positions)), [0] * pad]
                )
                live = live.replace(tick=np.asarray(state.tick))
            tree = {"live": live, "done": self.done}
            host = {"metrics_lines": lines, "slots": self.rows.host_state()}
            saved.save(int(state.tick), tree, host | self._scheduler_state() | extra)
        return lines

    def _resume(self, saved, fresh, lines_before: int):
        template = {"live": jax.device_get(fresh), "done": self.done}
        restored = saved.restore_latest(template) if saved else None
        if restored is None:
            if self.sharding.is_writer:
                self.writer.truncate_to(lines_before)
            state = self.sharding.put_rows(jax.device_get(fresh))
            return self.evaluate(state, self.rows.real), None
        tree, host = restored
        if self.sharding.is_writer:
            self.writer.truncate_to(host["metrics_lines"])
            for row in files.read_metrics(self.workdir):
                if row["trial"] in self.history:
                    self.history[row["trial"]].append(row)
        if host.get("finished"):
            logging.info("%s: already finished, taking its saved results", self.label)
            return None, host
        self.done = jax.tree.map(np.array, tree["done"])
        self.rows.load(host["slots"])
        if self.asha is not None:
            self.asha = schedulers.Asha(
                self.config.asha.min_steps,
                self.config.asha.eta,
                max(self.plan.max_steps),
                host["asha"],
            )
        if self.pbt is not None:
            self.pbt = schedulers.Pbt(self.config, host["pbt"])
        self.row_ticks, self.training_ticks = host["row_ticks"], host["training_ticks"]
        logging.info("%s: resuming at tick %d", self.label, int(tree["live"].tick))
        return self.sharding.put_rows(tree["live"]), host


def _empty_done(fresh: population.PopulationState, num_trials: int) -> dict:
    """Host arrays ``[N]`` for every trial's final state, filled as trials finish."""
    zeros = lambda a: np.zeros((num_trials,) + a.shape[1:], a.dtype)  # noqa: E731
    es = early_stopping.init(num_trials)
    return {
        "best_params": jax.tree.map(zeros, fresh.best_params),
        "best_value": np.array(es.best_value),
        "best_step": np.array(es.best_step),
        "bad_evaluations": np.array(es.bad_evaluations),
        "stopped": np.array(es.stopped),
        "step": np.zeros(num_trials, np.int32),
        "diverged": np.zeros(num_trials, bool),
    }
