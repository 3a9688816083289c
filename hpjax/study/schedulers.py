"""Trial schedulers of an adaptive study, decided on the host at evaluation boundaries.

The host loop hands a scheduler an :class:`Observation` of the rows after each evaluation and
applies the :class:`Decision` it returns; nothing else of the loop knows which scheduler runs.

- :class:`Asha`: asynchronous successive halving (Li et al. 2018, "A System for Massively
  Parallel Hyperparameter Tuning"). Rungs at ``r, r*eta, r*eta^2, ...`` optimizer steps; a trial
  that reaches a rung goes on only if its best monitored value so far is in the best ``1/eta``
  of the values recorded at that rung so far (no waiting for stragglers), else it is pruned and
  its row takes the next trial. With a :class:`RungBoard` (search workers sharing one Optuna
  study) the values at a rung are those of the whole study, not only of this program.
- :class:`Pbt`: population-based training (Jaderberg et al. 2017). Every ``interval`` steps the
  bottom ``fraction`` of the members copy the training state of a random member of the top
  ``fraction`` (exploit) and perturb the searched hyperparameters by x0.8 or x1.25, or resample
  them with some probability (explore).

Both keep their whole state in plain JSON, saved with the study's checkpoints.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Protocol

import numpy as np

from hpjax.config import plain
from hpjax.engine import hparams
from hpjax.results import files
from hpjax.study.sections import AdaptiveSpec

PERTURB_FACTORS = (0.8, 1.25)


@dataclasses.dataclass(frozen=True)
class Observation:
    """The rows as the host sees them after an evaluation."""

    positions: np.ndarray  # [R] the trial in each row (-1: none)
    active: np.ndarray  # [R] rows still training
    steps: np.ndarray  # [R] optimizer steps taken
    best: np.ndarray  # [R] best monitored value so far
    last_value: dict[int, float]  # trial -> its monitored value at its last evaluation
    columns: dict[str, np.ndarray]  # hyperparameter -> [R]; PBT changes them in place
    tick: int


@dataclasses.dataclass
class Exploit:
    """One member taking another's state: where, from whom, and its values before and after."""

    tick: int
    step: int
    trial: int
    parent: int
    before: dict[str, float]
    after: dict[str, float]

    def row(self) -> dict:
        return (
            {"tick": self.tick, "step": self.step, "trial": self.trial, "parent": self.parent}
            | {f"before_{k}": v for k, v in self.before.items()}
            | {f"after_{k}": v for k, v in self.after.items()}
        )


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the loop applies: rows pruned (row -> rung in steps), members exploited."""

    pruned: dict[int, int] = dataclasses.field(default_factory=dict)
    exploits: tuple[Exploit, ...] = ()


class RungBoard(Protocol):
    """ASHA's values at its rungs shared beyond one program (trials are the plan's positions)."""

    def values(self, rung: int) -> list[float]:
        """The values recorded at ``rung`` (steps) by trials outside this program."""

    def record(self, trial: int, rung: int, value: float) -> None:
        """Shares ``trial``'s ``value`` at ``rung``."""


def make_scheduler(
    adaptive: AdaptiveSpec, max_steps: int, board: RungBoard | None = None
) -> Asha | Pbt | None:
    """The study's scheduler (None for a plain queue or a grid)."""
    if adaptive.scheduler == "asha":
        return Asha(adaptive.asha_min_steps, adaptive.asha_eta, max_steps, board)
    if adaptive.scheduler == "pbt":
        return Pbt(adaptive)
    return None


class Asha:
    """Asynchronous successive halving over optimizer steps, lower values better."""

    def __init__(self, min_steps: int, eta: float, max_steps: int, board: RungBoard | None = None):
        self.eta = float(eta)
        self.board = board
        self.rungs = []
        rung = float(min_steps)
        while rung < max_steps:
            self.rungs.append(int(round(rung)))
            rung *= self.eta
        self.load_state(None)

    def judge(self, trial: int, step: int, value: float) -> int | None:
        """Records ``trial``'s ``value`` at each rung its ``step`` has reached; returns the rung
        (in steps) at which it is pruned, or None if it goes on."""
        if not math.isfinite(value):
            value = math.inf
        while self.passed.get(trial, 0) < len(self.rungs):
            k = self.passed.get(trial, 0)
            if step < self.rungs[k]:
                return None
            self.recorded[k].append(value)
            self.passed[trial] = k + 1
            seen = self.recorded[k]
            if self.board is not None:
                self.board.record(trial, self.rungs[k], value)
                seen = seen + self.board.values(self.rungs[k])
            finite = [v for v in seen if math.isfinite(v)]
            cutoff = np.quantile(finite, 1 / self.eta) if finite else math.inf
            if value > cutoff:
                return self.rungs[k]
        return None

    def decide(self, seen: Observation) -> Decision:
        pruned = {}
        for r in np.flatnonzero(seen.active):
            rung = self.judge(int(seen.positions[r]), int(seen.steps[r]), float(seen.best[r]))
            if rung is not None:
                pruned[int(r)] = rung
        return Decision(pruned=pruned)

    def annotate(self, rows, started, layout) -> None:
        """Nothing to add: the loop marks pruned trials with their rung."""

    def write_files(self, workdir: str) -> None:
        """None of its own."""

    def state_dict(self) -> dict:
        return {"recorded": self.recorded, "passed": self.passed}

    def load_state(self, state: dict | None) -> None:
        state = state or {}
        self.recorded: list[list[float]] = state.get("recorded", [[] for _ in self.rungs])
        self.passed: dict[int, int] = {int(k): v for k, v in state.get("passed", {}).items()}


class Pbt:
    """Exploit and explore over the members of one population."""

    def __init__(self, adaptive: AdaptiveSpec):
        self.interval = adaptive.pbt_interval
        self.fraction = adaptive.pbt_fraction
        self.resample_probability = adaptive.pbt_resample_probability
        self.seed = adaptive.pbt_seed
        self.dimensions = {d.key: d for d in adaptive.dimensions}
        self.keys = adaptive.pbt_keys
        self.load_state(None)

    def due(self, step: int) -> bool:
        return step >= self.next_step

    def explore(self, key: str, value: float) -> float:
        dim = self.dimensions.get(key)
        if dim is not None and self.rng.random() < self.resample_probability:
            return dim.at(float(self.rng.random()))
        if dim is not None and not dim.is_range:  # choices (batch sizes): a neighbouring one
            choices = sorted(dim.choices)
            nearest = int(np.argmin([abs(c - value) for c in choices]))
            i = nearest + (1 if self.rng.integers(2) else -1)
            return choices[min(max(i, 0), len(choices) - 1)]
        new = value * PERTURB_FACTORS[int(self.rng.integers(2))]
        if dim is not None and dim.is_range:
            new = min(max(new, dim.low), dim.high)
        return int(round(new)) if key in hparams.INTEGER else float(new)

    def decide(self, seen: Observation) -> Decision:
        if not seen.active.any() or not self.due(int(seen.steps[seen.active].max())):
            return Decision()
        values = np.array(
            [seen.last_value.get(int(p), np.inf) if p >= 0 else np.inf for p in seen.positions]
        )
        real = seen.positions >= 0
        return Decision(
            exploits=tuple(self.step(values, seen.columns, seen.tick, int(seen.steps[real].max())))
        )

    def step(
        self, values: np.ndarray, columns: dict[str, np.ndarray], tick: int, step: int
    ) -> list[Exploit]:
        """One exploit/explore round over members ranked by ``values`` (lower better, non-finite
        worst); ``columns`` (key -> [S]) are changed in place for the exploited members."""
        size = len(values)
        ranked = np.argsort(np.where(np.isfinite(values), values, np.inf), kind="stable")
        count = max(1, int(self.fraction * size))
        top, bottom = ranked[:count], ranked[size - count :]
        exploits = []
        for member in bottom:
            parent = int(self.rng.choice(top))
            before = {k: plain(columns[k][member]) for k in self.keys}
            for k in self.keys:
                columns[k][member] = self.explore(k, plain(columns[k][parent]))
            after = {k: plain(columns[k][member]) for k in self.keys}
            exploits.append(Exploit(tick, step, int(member), parent, before, after))
        self.history.extend(exploits)
        self.next_step += self.interval
        return exploits

    def annotate(self, rows, started, layout) -> None:
        """Each member's final values, the values in force when it reached its best
        (``KEY_at_best``) and its exploit count."""
        for row, pos in zip(rows, started, strict=True):
            r = int(np.flatnonzero(layout.positions == pos)[0])
            final = {k: plain(layout.columns[k][r]) for k in self.keys}
            row |= final
            mine = sorted((e for e in self.history if e.trial == pos), key=lambda e: e.step)
            row["exploits"] = len(mine)
            row |= {
                f"{k}_at_best": v for k, v in self.in_force(mine, row["best_step"], final).items()
            }

    def in_force(self, exploits: list[Exploit], step: int, final: dict) -> dict:
        """A member's values while it trained up to the evaluation at ``step``: set by its last
        exploit before that step, else its first values (``exploits`` sorted by step)."""
        before = [e for e in exploits if e.step < step]
        if before:
            return dict(before[-1].after)
        return dict(exploits[0].before) if exploits else dict(final)

    def write_files(self, workdir: str) -> None:
        """``lineage.csv``: every exploit, from the saved history (so also rewritten whole when
        a finished study is rerun)."""
        columns = ["tick", "step", "trial", "parent"] + [
            f"{w}_{k}" for w in ("before", "after") for k in self.keys
        ]
        path = os.path.join(workdir, "lineage.csv")
        files.write_csv(path, [e.row() for e in self.history], columns, exact=True)

    def state_dict(self) -> dict:
        return {
            "rng": self.rng.bit_generator.state,
            "next_step": self.next_step,
            "history": [dataclasses.asdict(e) for e in self.history],
        }

    def load_state(self, state: dict | None) -> None:
        state = state or {}
        self.rng = np.random.default_rng(self.seed)
        if "rng" in state:
            self.rng.bit_generator.state = state["rng"]
        self.next_step = int(state.get("next_step", self.interval))
        self.history = [Exploit(**e) for e in state.get("history", [])]
