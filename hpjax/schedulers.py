"""Trial schedulers of an adaptive study, decided on the host at evaluation boundaries.

- :class:`Asha`: asynchronous successive halving (Li et al. 2018, "A System for Massively
  Parallel Hyperparameter Tuning"). Rungs at ``r, r*eta, r*eta^2, ...`` optimizer steps; a trial
  that reaches a rung goes on only if its best monitored value so far is in the best ``1/eta``
  of the values recorded at that rung so far (no waiting for stragglers), else it is pruned and
  its slot takes the next trial.
- :class:`Pbt`: population-based training (Jaderberg et al. 2017). Every ``interval`` steps the
  bottom ``fraction`` of the members copy the training state of a random member of the top
  ``fraction`` (exploit) and perturb the searched hyperparameters by x0.8 or x1.25, or resample
  them with some probability (explore).

Both keep their whole state in plain JSON, saved with the study's checkpoints.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from hpjax import plan as plan_lib
from hpjax import space as space_lib
from hpjax.config import as_tuple, plain
from hpjax.errors import config_error

SCHEDULERS = ("none", "asha", "pbt")
PBT_DEFAULT_KEYS = ("learning_rate", "weight_decay")
PERTURB_FACTORS = (0.8, 1.25)


def validate(config) -> None:
    """The scheduler keys, each named when out of range, before anything compiles."""
    name = config.get("scheduler", "none")
    if name not in SCHEDULERS:
        raise config_error("scheduler", name, f"is unknown; allowed: {', '.join(SCHEDULERS)}")
    slots = config.get("slots", 0)
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 0:
        raise config_error("slots", slots, "must be an integer >= 0 (0 = a row per trial)")
    budget = config.get("budget_trial_steps", 0)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise config_error("budget_trial_steps", budget, "must be an integer >= 0 (0 = none)")
    if name == "asha":
        eta, rung = config.asha.eta, config.asha.min_steps
        if isinstance(eta, bool) or not isinstance(eta, int | float) or not eta >= 2:
            raise config_error("asha.eta", eta, "must be a number >= 2 (the reduction factor)")
        if isinstance(rung, bool) or not isinstance(rung, int) or rung < 1:
            raise config_error("asha.min_steps", rung, "must be a positive number of steps")
    if name == "pbt":
        p = config.pbt
        if not (isinstance(p.fraction, int | float) and 0 < p.fraction <= 0.5):
            raise config_error("pbt.fraction", p.fraction, "must be in (0, 0.5]")
        if not (
            isinstance(p.resample_probability, int | float) and 0 <= p.resample_probability <= 1
        ):
            raise config_error(
                "pbt.resample_probability", p.resample_probability, "must be in [0, 1]"
            )
        every = int(config.eval_every)
        if isinstance(p.interval, bool) or not isinstance(p.interval, int) or p.interval < 1:
            raise config_error("pbt.interval", p.interval, "must be a positive number of steps")
        if p.interval % every:
            raise config_error(
                "pbt.interval", p.interval, f"must be a multiple of eval_every ({every})"
            )
        if slots:
            raise config_error("slots", slots, "must be 0 with scheduler='pbt' (a slot per member)")
        if len(set(as_tuple(config.get("batch_sizes", ())))) > 1:
            raise config_error(
                "batch_sizes",
                config.batch_sizes,
                "must hold one size with scheduler='pbt' (search space.batch_size instead)",
            )
        _validate_pbt_batch_sizes(config)


def _validate_pbt_batch_sizes(config) -> None:
    """PBT moves a member's batch size between the choices of ``space.batch_size``: all in one
    compiled program, each a divisor of the largest (every member ends its batch at each
    evaluation)."""
    space = config.get("space", None) or {}
    if "batch_size" not in space:
        return
    dim = space_lib.parse_dimension(
        "batch_size", space["batch_size"], where="space", allowed=space_lib.HPARAM_KEYS
    )
    if dim.is_range:
        raise config_error(
            "space.batch_size", space["batch_size"], "must be a tuple of sizes with scheduler='pbt'"
        )
    sizes = sorted(int(b) for b in dim.choices)
    if any(sizes[-1] % b for b in sizes):
        raise config_error(
            "space.batch_size", tuple(sizes), "must hold sizes that each divide the largest"
        )
    groups = plan_lib.batch_groups(
        sizes, config.get("batch_axis", "auto"), int(config.get("max_accumulation", 8))
    )
    if len(set(groups.values())) > 1:
        raise config_error(
            "space.batch_size",
            tuple(sizes),
            "spans several compiled programs; PBT needs one: set batch_axis='vmap' or raise "
            "max_accumulation",
        )


class Asha:
    """Asynchronous successive halving over optimizer steps, lower values better."""

    def __init__(self, min_steps: int, eta: float, max_steps: int, state: dict | None = None):
        self.eta = float(eta)
        self.rungs = []
        rung = float(min_steps)
        while rung < max_steps:
            self.rungs.append(int(round(rung)))
            rung *= self.eta
        state = state or {}
        self.recorded: list[list[float]] = state.get("recorded", [[] for _ in self.rungs])
        self.passed: dict[int, int] = {int(k): v for k, v in state.get("passed", {}).items()}

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
            finite = [v for v in self.recorded[k] if math.isfinite(v)]
            cutoff = np.quantile(finite, 1 / self.eta) if finite else math.inf
            if value > cutoff:
                return self.rungs[k]
        return None

    def state_dict(self) -> dict:
        return {"recorded": self.recorded, "passed": self.passed}


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


class Pbt:
    """Exploit and explore over the members of one population."""

    def __init__(self, config, state: dict | None = None):
        p = config.pbt
        self.interval = int(p.interval)
        self.fraction = float(p.fraction)
        self.resample_probability = float(p.resample_probability)
        space = config.get("space", None) or {}
        self.dimensions = {d.key: d for d in space_lib.parse_space(space)}
        keys = [k for k in self.dimensions if k != "seed"]
        self.keys = tuple(keys) or PBT_DEFAULT_KEYS
        state = state or {}
        self.rng = np.random.default_rng(int(p.seed))
        if "rng" in state:
            self.rng.bit_generator.state = state["rng"]
        self.next_step = int(state.get("next_step", self.interval))
        self.history = [Exploit(**e) for e in state.get("history", [])]

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
        return int(round(new)) if key in space_lib.INTEGER_KEYS else float(new)

    def step(
        self, values: np.ndarray, columns: dict[str, np.ndarray], tick: int, step: int
    ) -> tuple[np.ndarray, np.ndarray, list[Exploit]]:
        """One exploit/explore round over members ranked by ``values`` (lower better, non-finite
        worst); ``columns`` (key -> [S]) are changed in place for the exploited members.

        Returns the donor of each row, which rows copy, and the round's exploits.
        """
        size = len(values)
        ranked = np.argsort(np.where(np.isfinite(values), values, np.inf), kind="stable")
        count = max(1, int(self.fraction * size))
        top, bottom = ranked[:count], ranked[size - count :]
        source = np.arange(size)
        copies = np.zeros(size, bool)
        exploits = []
        for member in bottom:
            parent = int(self.rng.choice(top))
            before = {k: plain(columns[k][member]) for k in self.keys}
            for k in self.keys:
                columns[k][member] = self.explore(k, plain(columns[k][parent]))
            source[member], copies[member] = parent, True
            after = {k: plain(columns[k][member]) for k in self.keys}
            exploits.append(Exploit(tick, step, int(member), parent, before, after))
        self.history.extend(exploits)
        self.next_step += self.interval
        return source, copies, exploits

    def state_dict(self) -> dict:
        return {
            "rng": self.rng.bit_generator.state,
            "next_step": self.next_step,
            "history": [dataclasses.asdict(e) for e in self.history],
        }
