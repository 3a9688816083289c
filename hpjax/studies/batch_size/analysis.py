"""Numbers from the studies' results: steps to a target, the critical-batch fit, rank correlation
(scipy), and the tables of the fixed-epochs study.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from hpjax.report import labels
from hpjax.report.labels import is_finite_number
from hpjax.results import files
from hpjax.studies.batch_size.config import SCALING_RULES


def higher_is_better(metric: str) -> bool:
    return "accuracy" in metric


def reaches(value: Any, target: float, metric: str) -> bool:
    if not labels.is_number(value):
        return False
    return value >= target if higher_is_better(metric) else value <= target


def first_reaching(curve: Sequence[Mapping], metric: str, target: float) -> Mapping | None:
    """The first record (by step) whose ``metric`` reaches ``target``, or None."""
    ordered = sorted(curve, key=lambda r: r.get("step") or 0)
    return next((r for r in ordered if reaches(r.get(metric), target, metric)), None)


def crossing_interval(curve: Sequence[Mapping], hit: Mapping) -> int:
    """Steps between the evaluation that first met the target and the one before it: the
    crossing lies in that interval, so a step count is known to within it."""
    earlier = [r["step"] for r in curve if (r.get("step") or 0) < hit["step"]]
    return int(hit["step"] - max(earlier, default=0))


def resolution(interval: int, steps: int) -> float:
    """A step count's uncertainty as a fraction of itself; 0 when known to one step."""
    return 0.0 if interval <= 1 or steps <= 0 else interval / steps


def steps_to_target(
    summary: Sequence[Mapping], metrics_rows: Sequence[Mapping], metric: str, target: float
) -> tuple[list[dict], list[dict]]:
    """Per batch size, the steps at which its fastest rate first reached the target: per seed
    the fewest over the rates, then the median over seeds (a seed no rate brought to the target
    counts as never), with the seeds' range.

    Returns ``(per_batch_size, per_trial)``. A batch size whose median seed missed the target
    has ``reached=False`` and no steps; its ``budget_steps`` says how far it was trained.
    """
    curves = files.curves_by_trial(metrics_rows)
    best = max if higher_is_better(metric) else min
    per_trial = []
    for row in summary:
        curve = curves.get(int(row["trial"]), [])
        hit = first_reaching(curve, metric, target)
        values = [r[metric] for r in curve if labels.is_number(r.get(metric))]
        per_trial.append(
            {
                "trial": row["trial"],
                "batch_size": row["batch_size"],
                "seed": row.get("seed", 0),
                "num_params": row.get("num_params"),
                "learning_rate": row["learning_rate"],
                "base_learning_rate": row.get("base_learning_rate", row["learning_rate"]),
                "momentum": row.get("momentum"),
                "status": row.get("status"),
                "reached": hit is not None,
                "steps": hit["step"] if hit else None,
                "interval": crossing_interval(curve, hit) if hit else None,
                "epochs": hit["epoch"] if hit else None,
                "budget_steps": row.get("steps"),
                "final_metric": values[-1] if values else None,
                "best_metric": best(values) if values else None,
            }
        )
    per_size = [
        _per_size(b, [r for r in per_trial if r["batch_size"] == b])
        for b in sorted({r["batch_size"] for r in per_trial})
    ]
    reached = [r for r in per_size if r["reached"]]
    if reached:
        b0, s0 = reached[0]["batch_size"], reached[0]["steps"]
        for r in per_size:
            r["perfect_scaling_steps"] = s0 * b0 / r["batch_size"]
    return per_size, per_trial


def fastest_by_seed(trials: Sequence[Mapping]) -> dict[Any, Mapping | None]:
    """seed -> its fastest trial to the target (fewest steps, then the lower rate), or None
    where no trial of that seed reached it: the one choice every steps-to-target figure reads."""
    fastest: dict[Any, Mapping | None] = {}
    never = math.inf
    order = sorted(
        trials, key=lambda t: (never if t["steps"] is None else t["steps"], t["learning_rate"])
    )
    for t in order:
        if fastest.get(t["seed"]) is None:
            fastest[t["seed"]] = t if t["reached"] else None
    return fastest


def _per_size(batch_size: int, trials: Sequence[Mapping]) -> dict:
    """One batch size's row: the median over seeds of each seed's fastest rate (and momentum,
    where the study tunes it)."""
    fastest = fastest_by_seed(trials)
    seed_steps = [fastest[k]["steps"] if fastest[k] else math.inf for k in sorted(fastest)]
    middle = float(np.median(seed_steps))
    hits = [t for t in fastest.values() if t is not None]
    reached = math.isfinite(middle)
    rep = min(hits, key=lambda t: (abs(t["steps"] - middle), t["steps"])) if reached else None
    steps = (int(middle) if middle.is_integer() else middle) if reached else None
    return {
        "batch_size": batch_size,
        "reached": reached,
        "steps": steps,
        "steps_low": min(seed_steps) if reached else None,
        "steps_high": max(seed_steps) if reached and math.isfinite(max(seed_steps)) else None,
        "seeds": len(seed_steps),
        "seeds_reached": len(hits),
        "seed_steps": seed_steps,
        "interval": rep["interval"] if rep else None,
        "resolution": resolution(rep["interval"], rep["steps"]) if rep else None,
        "epochs": _epochs_at(rep, middle),
        "examples": middle * batch_size if reached else None,
        "learning_rate": rep["learning_rate"] if rep else None,
        "base_learning_rate": rep["base_learning_rate"] if rep else None,
        "momentum": rep.get("momentum") if rep else None,
        "trial": rep["trial"] if rep else None,
        "lrs_reached": len({t["learning_rate"] for t in trials if t["reached"]}),
        "lrs_tried": len({t["learning_rate"] for t in trials}),
        "budget_steps": max((t["budget_steps"] or 0) for t in trials),
    }


def _epochs_at(rep: Mapping | None, steps: float) -> float | None:
    """The epochs of ``steps`` at the representative seed's rate of epochs per step."""
    if rep is None:
        return None
    return rep["epochs"] * steps / rep["steps"] if rep["steps"] else rep["epochs"]


def bootstrap_interval(
    samples: np.ndarray,
    statistic: Callable[[np.ndarray], float | None],
    num_resamples: int = 500,
    level: float = 0.9,
    seed: int = 0,
) -> tuple[float, float] | None:
    """The ``level`` percentile interval of ``statistic`` over resamples (with replacement) of
    ``samples``' rows, the seeds; None with fewer than 2 rows or when the statistic is
    undefined on more than half of the resamples."""
    if len(samples) < 2:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_resamples):
        value = statistic(samples[rng.integers(0, len(samples), len(samples))])
        if value is not None and math.isfinite(value):
            values.append(value)
    if len(values) <= num_resamples // 2:
        return None
    tail = 100 * (1 - level) / 2
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def fit_with_interval(per_size: Sequence[Mapping]) -> dict | None:
    """:func:`fit_critical_batch` on the median steps of the batch sizes that reached the target,
    with ``b_crit_interval``, ``s_min_interval`` and ``e_min_interval`` (90%, a bootstrap over
    the seeds) when there are several seeds; ``e_min`` = S_min x B_crit, the fewest examples
    (McCandlish et al.: (S/S_min - 1)(E/E_min - 1) = 1 is the same curve)."""
    reached = [r for r in per_size if r["reached"]]
    fit = fit_critical_batch([r["batch_size"] for r in reached], [r["steps"] for r in reached])
    if fit is None:
        return None
    fit["e_min"] = fit["s_min"] * fit["b_crit"]
    if len({len(r["seed_steps"]) for r in reached}) != 1:  # seeds differ between sizes
        return fit
    sizes = np.array([r["batch_size"] for r in reached], float)
    matrix = np.array([r["seed_steps"] for r in reached], float).T  # [seeds, sizes]

    def refit(rows: np.ndarray, key: str) -> float | None:
        medians = np.median(rows, axis=0)
        ok = np.isfinite(medians)
        again = fit_critical_batch(sizes[ok], medians[ok])
        if not again or again["at_bound"]:
            return None
        return again["s_min"] * again["b_crit"] if key == "e_min" else again[key]

    for key in ("b_crit", "s_min", "e_min"):
        fit[f"{key}_interval"] = bootstrap_interval(matrix, lambda rows, k=key: refit(rows, k))
    return fit


def tunes_momentum(per_trial: Sequence[Mapping]) -> bool:
    """Whether the study tried more than one momentum (``steps_to_target.momenta``)."""
    return len({t.get("momentum") for t in per_trial} - {None}) > 1


def fastest_rates(
    per_trial: Sequence[Mapping], effective: bool = False
) -> tuple[list[int], list, np.ndarray, np.ndarray]:
    """``(sizes, seeds, rates, edge)``: each seed's fastest rate to the target per batch size
    (:func:`fastest_by_seed`) as a ``[seeds, sizes]`` matrix (NaN where no rate reached it), and
    whether that rate is the lowest or highest of its grid. ``effective``: the rate is
    lr / (1 - momentum), what scales with the batch size where the momentum is tuned too
    (Shallue et al. sec. 4.4)."""
    sizes = sorted({t["batch_size"] for t in per_trial})
    seeds = sorted({t["seed"] for t in per_trial}, key=str)
    rates = np.full((len(seeds), len(sizes)), np.nan)
    edge = np.zeros((len(seeds), len(sizes)), bool)
    for j, b in enumerate(sizes):
        trials = [t for t in per_trial if t["batch_size"] == b]
        grid = {t["learning_rate"] for t in trials}
        fastest = fastest_by_seed(trials)
        for i, seed in enumerate(seeds):
            best = fastest.get(seed)
            if best is not None:
                rate = best["learning_rate"]
                rates[i, j] = rate / (1 - best["momentum"]) if effective else rate
                edge[i, j] = len(grid) > 1 and rate in (min(grid), max(grid))
    return sizes, seeds, rates, edge


RULE_EXPONENTS = {"linear": 1.0, "square root": 0.5}


def fit_rate_power_law(per_trial: Sequence[Mapping]) -> dict | None:
    """Fits ``lr*(B) = c B^alpha`` to the fastest rate per batch size (Shallue et al. sec. 4.4):
    least squares in log-log on the median over seeds of log lr*, with ``alpha_interval`` (90%,
    a bootstrap over seeds) and the linear and square-root rules' exponents placed against it.

    Needs three batch sizes with a median rate. ``at_edge`` counts the (seed, batch size)
    points whose fastest rate is the grid's lowest or highest: there the true optimum may lie
    beyond the grid, and the exponent is bounded by the grid's own scaling.
    """
    effective = tunes_momentum(per_trial)
    sizes, seeds, rates, edge = fastest_rates(per_trial, effective)
    log_b = np.log(np.asarray(sizes, float))

    def slope(rows: np.ndarray) -> float | None:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            medians = np.nanmedian(np.log(rows), axis=0)
        ok = np.isfinite(medians)
        if ok.sum() < 3:
            return None
        return float(np.polyfit(log_b[ok], medians[ok], 1)[0])

    alpha = slope(rates)
    if alpha is None:
        return None
    interval = bootstrap_interval(rates, slope)
    return {
        "alpha": alpha,
        "alpha_interval": interval,
        "seeds": len(seeds),
        "effective": effective,
        "sizes": sum(np.isfinite(rates).any(axis=0)),
        "points": int(np.isfinite(rates).sum()),
        "at_edge": int(edge.sum()),
        "rules_inside": [
            name
            for name, k in RULE_EXPONENTS.items()
            if interval is not None and interval[0] <= k <= interval[1]
        ],
    }


def fit_critical_batch(batch_sizes: Sequence[float], steps: Sequence[float]) -> dict | None:
    """Fits ``S(B) = S_min (1 + B_crit / B)`` (McCandlish et al. eq. 2.11) in log space.

    Needs three points or more; returns ``s_min``, ``b_crit``, the RMS error of ``log S`` and
    ``at_bound`` (the best ``B_crit`` lies at the edge of the search, i.e. no flattening, or no
    perfect scaling, was seen in the range).
    """
    b = np.asarray(batch_sizes, float)
    s = np.asarray(steps, float)
    if len(b) < 3 or np.any(b <= 0) or np.any(s <= 0):
        return None
    candidates = np.logspace(np.log10(b.min()) - 2, np.log10(b.max()) + 2, 801)
    log_s = np.log(s)
    best = None
    for b_crit in candidates:
        shape = np.log1p(b_crit / b)
        log_s_min = np.mean(log_s - shape)
        err = float(np.sqrt(np.mean((log_s - log_s_min - shape) ** 2)))
        if best is None or err < best[0]:
            best = (err, float(b_crit), float(np.exp(log_s_min)))
    err, b_crit, s_min = best
    at_bound = b_crit in (float(candidates[0]), float(candidates[-1]))
    return {"s_min": s_min, "b_crit": b_crit, "rms_log_error": err, "at_bound": at_bound}


def log_slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """The least-squares slope of ``log y`` against ``log x`` (two points or more)."""
    if len(xs) < 2:
        return None
    return float(np.polyfit(np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float)), 1)[0])


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation (``scipy.stats.spearmanr``; ties get their mean rank), or
    None for fewer than 3 points or a constant series."""
    if len(xs) < 3 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return None
    from scipy import stats  # here: importing scipy.stats takes 0.7 s of every binary's start

    return float(stats.spearmanr(xs, ys).statistic)


def merge_compute(rows: list[dict], compute_rows: Sequence[Mapping]) -> None:
    by_size = {r["batch_size"]: r for r in compute_rows}
    for row in rows:
        extra = by_size.get(row["batch_size"], {})
        for key in ("temp_bytes", "peak_bytes", "examples_per_s", "ms_per_step"):
            row[key] = extra.get(key)


def _final_records(metrics_rows: Sequence[Mapping]) -> dict[int, Mapping]:
    return {t: curve[-1] for t, curve in files.curves_by_trial(metrics_rows).items() if curve}


def _result_row(rule: str, run: str, row: Mapping, final: Mapping | None) -> dict:
    final = final or {}
    return {
        "rule": rule,
        "run": run,
        "trial": row["trial"],
        "batch_size": row["batch_size"],
        "learning_rate": row["learning_rate"],
        "status": row.get("status"),
        "steps": row.get("steps"),
        "epochs": row.get("epochs"),
        "final_val_accuracy": final.get("val_accuracy"),
        "final_val_loss": final.get("val_loss"),
        "best_val_loss": row.get("best_val_loss"),
        "test_accuracy": row.get("test_accuracy"),
        "test_loss": row.get("test_loss"),
        "num_classes": row.get("num_classes"),
    }


def usable(row: Mapping) -> bool:
    return row.get("status") != "diverged" and is_finite_number(row.get("final_val_accuracy"))


def fixed_epochs_rows(
    runs: Mapping[str, tuple[Sequence[Mapping], Sequence[Mapping]]], learning_rate: float
) -> tuple[list[dict], list[dict]]:
    """``(rows, grid_rows)``: per rule and batch size, and every trial of the rate grid.

    Rules: ``fixed`` (the grid's trials at ``learning_rate``), each scaling rule's run, and
    ``tuned`` (per batch size, the grid's rate with the best final validation accuracy; the
    lower final validation loss breaks ties).
    """
    summary, metrics_rows = runs["grid"]
    finals = _final_records(metrics_rows)
    grid_rows = [_result_row("grid", "grid", r, finals.get(int(r["trial"]))) for r in summary]
    rows = []
    for b in sorted({r["batch_size"] for r in grid_rows}):
        at_b = [r for r in grid_rows if r["batch_size"] == b]
        fixed = min(at_b, key=lambda r: abs(math.log(r["learning_rate"] / learning_rate)))
        rows.append(dict(fixed, rule="fixed"))
        ok = [r for r in at_b if usable(r)]
        if ok:
            best = max(ok, key=lambda r: (r["final_val_accuracy"], -(r["final_val_loss"] or 0)))
            rows.append(dict(best, rule="tuned"))
    for name, (summary, metrics_rows) in runs.items():
        if name == "grid":
            continue
        finals = _final_records(metrics_rows)
        rows += [_result_row(name, name, r, finals.get(int(r["trial"]))) for r in summary]
    order = {"fixed": 0, **{rule: 1 + i for i, rule in enumerate(SCALING_RULES)}, "tuned": 9}
    rows.sort(key=lambda r: (order.get(r["rule"], 5), r["batch_size"]))
    return rows, grid_rows


def chance(row: Mapping) -> bool:
    """At chance level: final validation accuracy at most 1.5 / classes."""
    classes = row.get("num_classes")
    return (
        is_finite_number(classes)
        and is_finite_number(row.get("final_val_accuracy"))
        and (row["final_val_accuracy"] <= 1.5 / classes)
    )


def perfect_scaling_end(reached: Sequence[Mapping], tolerance: float = 1.25) -> int:
    """The index of the last reached batch size up to which steps x B stays within
    ``tolerance`` of the smallest batch size's."""
    within = 0
    while within + 1 < len(reached) and (
        reached[within + 1]["steps"] <= tolerance * reached[within + 1]["perfect_scaling_steps"]
    ):
        within += 1
    return within


def noise_trial(
    config, per_size: Sequence[Mapping], per_trial: Sequence[Mapping]
) -> tuple[float, float | None]:
    """The base learning rate (before scaling) and momentum (None: the config's) of the
    measured trial: the fastest pair at ``noise_scale.batch_size``, else the best metric's."""
    s = config.noise_scale
    if s.learning_rate > 0:
        return float(s.learning_rate), None
    row = next(r for r in per_size if r["batch_size"] == s.batch_size)
    if not row["reached"]:
        at_b = [
            r
            for r in per_trial
            if r["batch_size"] == s.batch_size and is_finite_number(r["best_metric"])
        ]
        pick = max if higher_is_better(config.steps_to_target.metric) else min
        row = pick(at_b, key=lambda r: r["best_metric"])
    momentum = row.get("momentum")
    return float(row["base_learning_rate"]), (
        float(momentum) if is_finite_number(momentum) else None
    )


def swing(rows: Sequence[Mapping]) -> float:
    key = (
        "b_simple_exact"
        if all(is_finite_number(r.get("b_simple_exact")) for r in rows)
        else "b_simple"
    )
    values = [r[key] for r in rows if is_finite_number(r.get(key)) and r[key] > 0]
    pairs = [max(a, b) / min(a, b) for a, b in zip(values, values[1:], strict=False)]
    return max(pairs) if pairs else 1.0
