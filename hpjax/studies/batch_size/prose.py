"""Sentences that compare the measured shapes with the published ones, and the studies' reports."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from hpjax.config import as_tuple
from hpjax.report import markdown
from hpjax.results import files
from hpjax.studies.batch_size.analysis import (
    RULE_EXPONENTS,
    chance,
    fit_rate_power_law,
    higher_is_better,
    is_finite_number,
    log_slope,
    perfect_scaling_end,
    spearman,
    swing,
    usable,
)
from hpjax.studies.batch_size.config import REPORT, SCALING_RULES, momenta


def write_report(
    directory: str, title: str, sections: Sequence[tuple[str, Sequence[str]]], plots: Sequence[str]
) -> str:
    lines = [f"# {title}", ""]
    for heading, body in sections:
        lines += [f"## {heading}", "", *body, ""]
    if plots:
        lines += ["## Plots", ""]
        for plot in plots:
            lines += [f"![{os.path.basename(plot)}]({plot})", ""]
    path = os.path.join(directory, REPORT)
    files.write_markdown(path, lines)
    return path


def compute_section(rows: Sequence[Mapping]) -> list[str]:
    if not rows:
        return ["Not measured (config.compute.enabled=False, or no batch size chosen)."]
    table = [
        {
            "batch_size": r["batch_size"],
            "temp_MiB": r["temp_bytes"] / 2**20 if r["temp_bytes"] is not None else None,
            "peak_MiB": r["peak_bytes"] / 2**20 if r["peak_bytes"] is not None else None,
            "examples_per_s": r["examples_per_s"],
            "steps_per_s": r["steps_per_s"],
            "ms_per_step": r["ms_per_step"],
        }
        for r in rows
    ]
    first, last = rows[0], rows[-1]
    return [
        "One trial trained alone at each batch size (its own compiled loop, one update per "
        "tick). Memory from XLA's memory analysis of that compiled loop (the peak includes the "
        "training set, an argument); speed from a timed run after compilation, on "
        f"`{jax.devices()[0].platform}`.",
        "",
        markdown.markdown_table(table, list(table[0]), ".3g"),
        f"From B={first['batch_size']} to B={last['batch_size']} the examples per second grow "
        f"{last['examples_per_s'] / first['examples_per_s']:.3g}x while each step costs "
        f"{last['ms_per_step'] / first['ms_per_step']:.3g}x the time; the temporaries grow "
        + (
            f"{last['temp_bytes'] / max(first['temp_bytes'], 1):.3g}x."
            if last.get("temp_bytes") is not None and first.get("temp_bytes") is not None
            else "(not reported on this backend)."
        ),
    ]


def engine_section(workdir: str, names: Sequence[str]) -> list[str]:
    """The engine runs' programs (``populations.csv``): trials, micro-batch, memory, wall time."""
    rows = []
    for name in names:
        path = os.path.join(workdir, name, "populations.csv")
        if not os.path.exists(path):
            continue
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                parsed = {k: files.parse_cell(v or "") for k, v in row.items()}
                rows.append({"run": name, **parsed})
    if not rows:
        return []
    columns = ["run", "trials", "microbatch", "memory_estimate_mb", "peak_memory_mb", "wall_s"]
    return [
        "",
        "The compiled programs of the engine runs (from each run's `populations.csv`; the "
        "memory estimate is the engine's, made before compiling; wall time includes "
        "compilation, evaluations and checkpoints):",
        "",
        markdown.markdown_table(rows, [c for c in columns if any(c in r for r in rows)], ".4g"),
    ]


def _series(rows: Sequence[Mapping], rule: str) -> list[Mapping]:
    return sorted((r for r in rows if r["rule"] == rule), key=lambda r: r["batch_size"])


def describe_fixed_epochs(rows: Sequence[Mapping], learning_rate: float, base: int) -> list[str]:
    """Sentences comparing the measured shape with Mishkin et al. (2016)."""
    fixed = [r for r in _series(rows, "fixed") if usable(r)]
    out = _fixed_rate_sentences(fixed, learning_rate)
    diverged_fixed = [
        r["batch_size"] for r in _series(rows, "fixed") if r.get("status") == "diverged"
    ]
    if diverged_fixed:
        out.append(f"  The fixed rate diverged at B={diverged_fixed}.")
    for rule in SCALING_RULES:
        group = _series(rows, rule)
        if group:
            out.append(_scaling_sentence(rule, group, fixed, learning_rate, base))
    return out + _tuned_sentences(_series(rows, "tuned"))


def _fixed_rate_sentences(fixed: list[Mapping], learning_rate: float) -> list[str]:
    out = []
    if len(fixed) >= 2:
        sizes = [r["batch_size"] for r in fixed]
        accs = [r["final_val_accuracy"] for r in fixed]
        peak = int(np.argmax(accs))
        tail_rho = spearman(sizes[peak:], accs[peak:])
        falls = accs[-1] < accs[peak] - 0.03 and (tail_rho is None or tail_rho < -0.5)
        text = f"- **Fixed rate {learning_rate:g}.** Final validation accuracy "
        if peak > 0:
            text += (
                f"rises from {accs[0]:.3f} at B={sizes[0]} to its peak {accs[peak]:.3f} at "
                f"B={sizes[peak]}, then goes to {accs[-1]:.3f} at B={sizes[-1]}"
            )
        else:
            text += f"goes from {accs[0]:.3f} at B={sizes[0]} to {accs[-1]:.3f} at B={sizes[-1]}"
        if tail_rho is not None:
            text += f" (rank correlation with B from the peak on: {tail_rho:+.2f})"
        if falls:
            text += (
                ". Above the peak it falls with the batch size, as Mishkin et al. found: at "
                "equal epochs a larger batch takes fewer steps of the same size."
            )
        else:
            text += (
                ". It does not fall steadily with the batch size: this differs from Mishkin et al."
            )
        if peak > 0:
            text += (
                f" Below B={sizes[peak]} the rate is too large for the noisier small batches "
                "(the tuned rate there is smaller); the published study starts at B=32 and does "
                "not show this side."
            )
        out.append(text)
    return out


def _scaling_sentence(rule, group, fixed, learning_rate: float, base: int) -> str:
    reference = next((r for r in group if usable(r)), None)
    if reference is None:
        return f"- **{rule.capitalize()} scaling** diverged at every batch size."
    held, broke = [], None
    for r in group:
        if usable(r) and r["final_val_accuracy"] >= reference["final_val_accuracy"] - 0.03:
            held.append(r)
        elif r["batch_size"] > reference["batch_size"]:
            broke = r
            break
    last = held[-1]
    text = (
        f"- **{rule.capitalize()} scaling** (rate {learning_rate:g} x "
        f"{'B' if rule == 'linear' else 'sqrt(B)'}/{base}): accuracy stays within 0.03 of its "
        f"B={reference['batch_size']} value ({reference['final_val_accuracy']:.3f}) up to "
        f"B={last['batch_size']} (rate {last['learning_rate']:.3g})"
    )
    if broke is None:
        text += ", the largest batch size tried: no instability in this range."
    elif broke.get("status") == "diverged" or chance(broke):
        text += (
            f"; at B={broke['batch_size']} the scaled rate {broke['learning_rate']:.3g} "
            + (
                "diverged"
                if broke.get("status") == "diverged"
                else f"is unstable (accuracy {broke['final_val_accuracy']:.3f}, chance level)"
            )
            + ": the rule holds until the scaled rate becomes unstable (Goyal et al. 2017 "
            "report the same limit)."
        )
    else:
        text += (
            f"; at B={broke['batch_size']} (rate {broke['learning_rate']:.3g}) it drops to "
            f"{broke['final_val_accuracy']:.3f}."
        )
    same_b = next((r for r in fixed if r["batch_size"] == last["batch_size"]), None)
    if same_b is not None and last["batch_size"] != reference["batch_size"]:
        gain = last["final_val_accuracy"] - same_b["final_val_accuracy"]
        text += (
            f" At B={last['batch_size']} it reaches {last['final_val_accuracy']:.3f} against "
            f"{same_b['final_val_accuracy']:.3f} with the fixed rate"
            + (" (scaling holds accuracy up)." if gain > 0.01 else " (no gain).")
        )
    return text


def _tuned_sentences(tuned: list[Mapping]) -> list[str]:
    out = []
    if len(tuned) >= 2:
        slope = log_slope([r["batch_size"] for r in tuned], [r["learning_rate"] for r in tuned])
        accs = [r["final_val_accuracy"] for r in tuned]
        best = max(range(len(accs)), key=accs.__getitem__)
        near = [r for r in tuned if r["final_val_accuracy"] >= accs[best] - 0.05]
        out.append(
            f"- **Tuned per batch size.** The best rate of the grid grows as B^{slope:.2f} "
            "(linear scaling predicts 1, square root 0.5; the grid's edges cap it). Tuned "
            f"accuracy peaks at {accs[best]:.3f} (B={tuned[best]['batch_size']}), stays within "
            f"0.05 of it for B={near[0]['batch_size']}..{near[-1]['batch_size']} and is "
            f"{accs[-1]:.3f} at B={tuned[-1]['batch_size']} ({tuned[-1]['steps']} steps)."
        )
    return out


def setup_sentence(config, dataset, per_trial: Sequence[Mapping]) -> str:
    """What a reader needs to redo the study: model and size, optimizer, data, seeds, target."""
    s, model = config.steps_to_target, config.model
    keys = ", ".join(f"{k}={v}" for k, v in model.items() if k != "name")
    params = next((t["num_params"] for t in per_trial if t.get("num_params")), None)
    optimizer = config.optimizer + (
        (
            f" (momentum tuned with the rate over {momenta(s)})"
            if momenta(s)
            else f" (momentum {config.momentum:g}, not tuned)"
        )
        if config.optimizer == "momentum"
        else ""
    )
    largest = max(as_tuple(s.batch_sizes))
    op = ">=" if higher_is_better(s.metric) else "<="
    return (
        f"Model: {model.name} ({keys})"
        + (f", {params:,} parameters" if params else "")
        + f"; optimizer {optimizer}, {config.schedule} schedule; data {dataset.name}: "
        f"{dataset.num_train:,} training and {len(dataset.y_val):,} validation examples (the "
        f"largest batch, {largest}, is {largest / dataset.num_train:.0%} of the training set); "
        f"seeds {tuple(as_tuple(s.seeds))}; target {s.metric} {op} {s.target:g}."
    )


def describe_steps(
    per_size: Sequence[Mapping],
    fit: Mapping | None,
    metric: str,
    target: float,
    per_trial: Sequence[Mapping] = (),
) -> list[str]:
    """Sentences comparing the steps-to-target curve with Shallue et al. (2018)."""
    op = ">=" if higher_is_better(metric) else "<="
    reached = [r for r in per_size if r["reached"]]
    missed = [r for r in per_size if not r["reached"]]
    out = []
    out += _edge_sentences(reached, per_trial)
    if missed:
        out.append(
            f"- **Not reached** ({metric} {op} {target:g}) within the budget: "
            + ", ".join(f"B={r['batch_size']} ({r['budget_steps']} steps)" for r in missed)
            + "."
        )
    if len(reached) < 2:
        out.append("- Too few batch sizes reached the target to compare the curve's shape.")
        return out
    sizes = [r["batch_size"] for r in reached]
    steps = [r["steps"] for r in reached]
    out.append(_steps_sentence(reached))
    out.append(_resolution_sentence(reached))
    within = perfect_scaling_end(reached)
    perfect = [r["perfect_scaling_steps"] for r in reached]
    if within + 1 < len(reached):
        out.append(
            f"- Perfect scaling (steps x B constant, within 25%) holds from B={sizes[0]} up to "
            f"B={sizes[within]}; at B={sizes[within + 1]} the target takes {steps[within + 1]} "
            f"steps where perfect scaling predicts {perfect[within + 1]:.3g}: the knee of the "
            "curve, where diminishing returns begin."
        )
    else:
        out.append(
            f"- Perfect scaling (steps x B constant, within 25%) holds over the whole range "
            f"B={sizes[0]}..{sizes[-1]}: no knee seen."
        )
    out += _slope_sentences(sizes, steps)
    out += _rate_law_sentence(per_trial)
    if fit is not None:
        note = (
            " The best B_crit lies at the edge of the search: the range shows no clear knee."
            if fit["at_bound"]
            else ""
        )
        out.append(
            f"- Fit S(B) = S_min (1 + B_crit / B) (McCandlish et al.): S_min={fit['s_min']:.3g} "
            f"steps{_interval(fit.get('s_min_interval'))}, B_crit={fit['b_crit']:.3g}"
            f"{_interval(fit.get('b_crit_interval'))} (RMS error of log S "
            f"{fit['rms_log_error']:.2f}); E_min = S_min B_crit = {fit['e_min']:.3g} examples"
            f"{_interval(fit.get('e_min_interval'))}, "
            "the same curve as (S/S_min - 1)(E/E_min - 1) = 1." + note
        )
    return out


def _edge_sentences(reached: Sequence[Mapping], per_trial: Sequence[Mapping]) -> list[str]:
    """Batch sizes whose fastest rate (or momentum) is the lowest or highest its grid tried."""
    out = []
    for key, what in (("base_learning_rate", "rate"), ("momentum", "momentum")):
        edges = []
        for r in reached:
            grid = {t[key] for t in per_trial if t["batch_size"] == r["batch_size"]} - {None}
            if len(grid) > 1 and r.get(key) in (min(grid), max(grid)):
                edges.append(r["batch_size"])
        if edges:
            out.append(
                f"- The fastest {what} lies at an edge of its grid for B={edges}: a {what} "
                "beyond it might reach the target in fewer steps; extend the grid there."
            )
    return out


def _rate_law_sentence(per_trial: Sequence[Mapping]) -> list[str]:
    """The fastest rate against batch size as a power law, set against the linear and
    square-root rules."""
    law = fit_rate_power_law(per_trial)
    if law is None:
        return []
    inside = law["rules_inside"]
    bounds = law["alpha_interval"]
    rule = {name: f"the {name} rule ({k:g})" for name, k in RULE_EXPONENTS.items()}
    outside = [name for name in RULE_EXPONENTS if name not in inside]
    if bounds is None:
        verdict = (
            "one seed gives no interval to set the rules against."
            if law["seeds"] < 2
            else "the exponent is undefined on most resamples of the seeds, so it has no interval."
        )
    elif not outside:
        verdict = f"{' and '.join(rule.values())} both lie inside it: the seeds cannot choose."
    elif inside:
        verdict = f"{rule[inside[0]]} lies inside the interval, {rule[outside[0]]} does not."
    else:
        nearest = min(RULE_EXPONENTS, key=lambda r: abs(RULE_EXPONENTS[r] - law["alpha"]))
        verdict = f"neither rule lies inside the interval; the nearer is {rule[nearest]}."
    edge = (
        f" {law['at_edge']} of the {law['points']} (seed, batch size) fastest rates lie at an "
        "edge of their grid, where the true optimum may lie beyond it and the exponent is "
        "bounded by the grid's own scaling."
        if law["at_edge"]
        else " No fastest rate lies at an edge of its grid."
    )
    return [
        f"- Fastest {'effective rate lr / (1 - momentum)' if law['effective'] else 'rate'} "
        f"against batch size (Shallue et al. sec. 4.4): lr* ~ B^{law['alpha']:.2f}"
        f"{_interval(bounds)} (least squares in log-log over {law['sizes']} batch sizes, on the "
        f"median over seeds of each seed's fastest rate); {verdict}{edge}"
    ]


def _interval(bounds) -> str:
    """`` [low, high]`` (90%, a bootstrap over seeds), or nothing with one seed."""
    return "" if not bounds else f" [90% over seeds: {bounds[0]:.3g}-{bounds[1]:.3g}]"


def _steps_sentence(reached: Sequence[Mapping]) -> str:
    """The steps per batch size; over several seeds the median and the seeds' range."""
    seeds = max(r.get("seeds", 1) for r in reached)
    if seeds <= 1:
        return (
            "- Steps to target: "
            + ", ".join(f"B={r['batch_size']}: {r['steps']}" for r in reached)
            + "."
        )
    parts = []
    for r in reached:
        high = "never" if r["steps_high"] is None else f"{r['steps_high']:g}"
        parts.append(f"B={r['batch_size']}: {r['steps']:g} ({r['steps_low']:g}-{high})")
    return (
        f"- Steps to target, the median over {seeds} seeds of each seed's fastest rate (the "
        "seeds' range in brackets; never: a seed that no rate brought to the target): "
        + ", ".join(parts)
        + "."
    )


def _resolution_sentence(reached: Sequence[Mapping]) -> str:
    """How precisely the step counts are known: each lies after the evaluation before it."""
    worst = max(reached, key=lambda r: r["resolution"] or 0.0)
    if not worst["resolution"]:
        return "- Each step count is exact: the evaluations before it were one step apart."
    return (
        f"- Resolution: each step count is the evaluation that first met the target; the "
        f"crossing lies after the evaluation before it, so the counts are known to within "
        f"{100 * worst['resolution']:.1f}% (the coarsest: B={worst['batch_size']}, "
        f"{worst['interval']} steps before {worst['steps']})"
        + ("." if worst["resolution"] <= 0.02 else "; more evaluations (eval_growth) narrow it.")
    )


def _slope_sentences(sizes: Sequence[int], steps: Sequence[int]) -> list[str]:
    """The log-log slope of steps against batch size over the smallest and the largest (up to)
    three batch sizes that reached the target, each judged against Shallue et al. (2018)."""
    out = []
    k = min(3, len(sizes))
    small = log_slope(sizes[:k], steps[:k])
    large = log_slope(sizes[-k:], steps[-k:])
    out.append(
        f"- **Small batches** (B={sizes[0]}..{sizes[k - 1]}): log-log slope {small:.2f}; "
        + (
            "close to -1, perfect scaling as Shallue et al. found."
            if small <= -0.7
            else "shallower than the -1 of perfect scaling: this differs."
        )
    )
    if len(sizes) > k:
        if large > -0.15:
            verdict = "a plateau: more batch buys no fewer steps, as Shallue et al. found."
        elif large > -0.6:
            verdict = "diminishing returns, as Shallue et al. found."
        else:
            verdict = "still near perfect scaling: no flattening within the range (differs)."
        out.append(
            f"- **Large batches** (B={sizes[-k]}..{sizes[-1]}): slope {large:.2f}; {verdict}"
        )
    return out


def _noise_along_training(rows: Sequence[Mapping]) -> list[str]:
    """How B_simple moves along training, and the two-batch estimate against the exact one."""
    out = []
    if len(rows) >= 4:
        quarter = max(1, len(rows) // 4)

        def pooled(part):  # numerator and denominator averaged apart, then divided
            return np.mean([r["trace"] for r in part]) / np.mean([r["grad_sq"] for r in part])

        early, late = pooled(rows[:quarter]), pooled(rows[-quarter:])
        grows = late > early
        out.append(
            f"- Along training B_simple (pooled over the first and the last quarter of the "
            f"measurements) goes from {early:.3g} to {late:.3g} as the validation loss goes "
            f"from {rows[0]['val_loss']:.3g} to {rows[-1]['val_loss']:.3g}"
            + (
                ": it grows as the loss falls, as McCandlish et al. observed."
                if grows
                else ": it does not grow as the loss falls; this differs from McCandlish et al."
            )
            + " Between neighbouring measurements it swings by up to a factor "
            f"{swing(rows):.2g} (the exact value too): one measurement says little."
        )
    exact = [
        r for r in rows if is_finite_number(r.get("b_simple_exact")) and r["b_simple_exact"] > 0
    ]
    if exact:
        ratios = [
            r["b_simple"] / r["b_simple_exact"]
            for r in exact
            if is_finite_number(r.get("b_simple"))
        ]
        if ratios:
            out.append(
                "- The two-batch estimate against the exact value (all per-example gradients of "
                f"the training set): median ratio {np.median(ratios):.3g}, range "
                f"{min(ratios):.3g}..{max(ratios):.3g} over {len(ratios)} measurements."
            )
    return out


def describe_noise(
    at_target: Mapping | None,
    rows: Sequence[Mapping],
    fit: Mapping | None,
    per_size: Sequence[Mapping],
    metric: str,
    target: float,
) -> list[str]:
    """Sentences comparing B_simple with the steps-to-target curve (McCandlish et al. 2018)."""
    out = _noise_along_training(rows)
    if at_target is None:
        out.append(
            f"- The measured trial never reached {metric} {target:g}, so B_simple at the "
            "target is not available."
        )
        return out
    out.append(
        f"- At the target (step {at_target['step']}): B_simple estimate "
        f"{at_target['b_simple']:.3g}, moving average {at_target['b_simple_ema']:.3g}"
        + (
            f"; exact {at_target['b_simple_exact']:.3g}, moving average "
            f"{at_target['b_simple_exact_ema']:.3g}"
            if is_finite_number(at_target.get("b_simple_exact_ema"))
            else ""
        )
        + "."
    )
    reached = [r for r in per_size if r["reached"]]
    end = perfect_scaling_end(reached) if reached else 0
    if 0 < end + 1 < len(reached):
        low, high = reached[end]["batch_size"], reached[end + 1]["batch_size"]
        value = at_target["b_simple_ema"]
        where = "between them" if low <= value <= high else ("below" if value < low else "above")
        out.append(
            f"- Steps to target leave perfect scaling between B={low} and B={high}; B_simple at "
            f"the target ({value:.3g}, moving average) lies {where}"
            + (" that knee." if where != "between them" else ".")
        )
    if fit is not None and not fit["at_bound"]:
        out.append(_b_simple_against_b_crit(at_target["b_simple_ema"], fit))
    elif reached:
        out.append(
            "- The steps-to-target curve shows no fitted knee within "
            f"B={reached[0]['batch_size']}..{reached[-1]['batch_size']}; B_simple "
            f"{at_target['b_simple_ema']:.3g} "
            + (
                "lies beyond that range, consistent with no flattening seen."
                if at_target["b_simple_ema"] > reached[-1]["batch_size"]
                else "lies inside it, where no flattening is seen: this differs."
            )
        )
    return out


def _b_simple_against_b_crit(b_simple: float, fit: Mapping) -> str:
    """B_simple set against the fitted B_crit (and its interval): within 2x, or by how much not."""
    ratio = b_simple / fit["b_crit"]
    if not (is_finite_number(ratio) and ratio > 0):
        return (
            f"- Critical batch size from the steps-to-target fit: B_crit={fit['b_crit']:.3g}; "
            f"B_simple at the target ({b_simple:.3g}) is not a positive number (its trace "
            "estimate went negative), so it cannot be set against B_crit."
        )
    factor = max(ratio, 1 / ratio)
    bounds = fit.get("b_crit_interval")
    inside = (
        f"; it lies {'inside' if bounds[0] <= b_simple <= bounds[1] else 'outside'} B_crit's "
        "interval"
        if bounds
        else ""
    )
    return (
        f"- Critical batch size from the steps-to-target fit: B_crit={fit['b_crit']:.3g}"
        f"{_interval(bounds)}; B_simple / B_crit = {ratio:.2g}{inside}: "
        + (
            "within 2x, as McCandlish et al. predict (B_simple ~ B_crit)."
            if factor <= 2
            else f"B_simple is {factor:.2g}x {'above' if ratio > 1 else 'below'} B_crit, "
            "beyond the factor 2 of McCandlish et al.'s B_simple ~ B_crit."
        )
    )


def noise_intro(s, b: int, rate: float, steps: int) -> list[str]:
    """The setup of the noise-scale study (``s``: its config section), in a paragraph."""
    return [
        f"One trial (B={b}, learning rate {rate:.3g}: the fastest rate to the target at this "
        "batch size in the steps-to-target study, unless noise_scale.learning_rate sets it) "
        f"trained for {steps} steps. About {s.num_measurements} times along training, "
        f"{s.num_draws} pairs of batches (B_small={s.small_batch}, B_big={s.big_batch}, drawn "
        "with replacement from the training set) give |G_small|^2 and |G_big|^2; the unbiased "
        "estimates of |G|^2 and tr(Sigma) are averaged over the pairs (and, for the moving "
        f"average, over measurements with decay {s.ema_decay:g}) before dividing. "
        + (
            "The exact value uses every per-example gradient of the training set."
            if s.get("exact", True)
            else ""
        ),
    ]
