"""What a replayed scheduler found and what it cost, per replay and over all replays.

One replay is a setting run on one seed's curves with one arrival order. Its outcome:

- ``budget_share``: the optimizer steps its trials took over the dense study's (that seed's);
- ``best_value``: the best monitored value among the trials it let finish (its recommendation;
  every trial it started when none finished), and ``trial``, the study's number of that pick;
- ``regret_pct``: how far that is above the dense best, in percent of the dense best;
- ``rank``: where the value it returns falls among all trials' dense best values (1: no trial
  of the dense study did better);
- ``test``: the pick's test value at its dense early-stop point, when the replay let it train
  that far (NaN for a pick cut earlier, whose test value was never measured);
- ``random_regret_pct``: random search's mean regret at the same budget over random arrival
  orders (the first trials of each, trained to their end, while they fit).

Over the replays each figure has its mean and the middle 95% of the replays (2.5th to 97.5th
percentile): where one run of that scheduler on this problem lands, not an interval of a mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from hpjax.studies.replay import simulate
from hpjax.studies.replay.curves import Curves


def _pick(curves: Curves, run: simulate.Run) -> tuple[int, float, float]:
    """The run's spent steps, its pick and the pick's best value (inf when all diverged)."""
    started = run.seen >= 0
    rows = np.arange(curves.size)
    at = np.maximum(run.seen, 0)
    spent = float(curves.steps[rows, at][started].sum())
    candidates = run.completed if run.completed.any() else started
    values = np.where(candidates, curves.running_best[rows, at], np.inf)
    values = np.where(np.isfinite(values), values, np.inf)
    pick = int(np.argmin(values))
    return spent, pick, float(values[pick])


def _regret(curves: Curves, value: float) -> float:
    finite = curves.dense_best[np.isfinite(curves.dense_best)]
    if not len(finite) or not np.isfinite(value):
        return float("nan")
    best = float(finite.min())
    return 100.0 * (value - best) / max(abs(best), 1e-12)


def random_regret(curves: Curves, budget: float, orders: Sequence[np.ndarray]) -> float:
    """Random search's mean regret at ``budget`` steps over the random arrival ``orders``."""
    regrets = [
        _regret(curves, _pick(curves, simulate.random_search(curves, o, budget))[2]) for o in orders
    ]
    finite = [r for r in regrets if np.isfinite(r)]
    return float(np.mean(finite)) if finite else float("nan")


def outcome(curves: Curves, run: simulate.Run, baseline: Sequence[np.ndarray]) -> dict:
    """One replay's figures (see the module's docstring); ``baseline``: the random arrival
    orders random search at the same budget is averaged over."""
    spent, pick, value = _pick(curves, run)
    finite = curves.dense_best[np.isfinite(curves.dense_best)]
    whole = run.seen[pick] == curves.last[pick]  # its test value is at its dense early stop
    return {
        "seed": curves.seed,
        "budget_share": spent / float(curves.final_steps.sum()),
        "trials_started": int((run.seen >= 0).sum()),
        "trials_stopped": len(run.pruned_at),
        "trial": int(curves.trials[pick]),
        "best_value": value,
        "regret_pct": _regret(curves, value),
        "rank": 1 + int((finite < value).sum()),
        "test": float(curves.test[pick]) if whole else float("nan"),
        "random_regret_pct": random_regret(curves, spent, baseline),
    }


def _spread(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and middle 95% of the finite ``values`` (NaN when none)."""
    v = np.asarray([x for x in values if np.isfinite(x)], float)
    if not len(v):
        return (float("nan"),) * 3
    low, high = np.percentile(v, [2.5, 97.5])
    return float(v.mean()), float(low), float(high)


def summarise(key: str, label: str, replays: Sequence[Mapping]) -> dict:
    """One setting's figures over its ``replays``: each with its mean, ``_low`` and ``_high``."""
    row: dict = {"setting": key, "scheduler": label, "replays": len(replays)}
    for name in ("budget_share", "regret_pct", "test", "random_regret_pct"):
        mean, low, high = _spread([r[name] for r in replays])
        row |= {name: mean, f"{name}_low": low, f"{name}_high": high}
    gaps = [r["regret_pct"] - r["random_regret_pct"] for r in replays]
    mean, low, high = _spread(gaps)
    row |= {"minus_random_pct": mean, "minus_random_pct_low": low, "minus_random_pct_high": high}
    ranks = [r["rank"] for r in replays]
    row["median_rank"] = float(np.median(ranks))
    row["found_best"] = float(np.mean([r == 1 for r in ranks]))
    return row
