"""The guide's diagnostics, computed from the curves a study records in its workdir.

Each rule looks at one trial's evaluations (``metrics.jsonl``) and, where it fires, returns a
:class:`Diagnostic` that names the trial, the numbers that triggered it and the guide's advice:

- ``diverged``: the trial's status is ``diverged``, or a loss became non-finite (null) after it
  had been finite. The curve-based rules below are skipped for such a trial: its last finite
  values are not evidence of oscillation or overfitting.
- ``not_learning``: even the best training loss stays near chance, above
  ``not_learning_frac * ln(num_classes)``.
- ``oscillating``: over the last half of the curve the loss keeps changing direction, by a
  sizeable fraction of its level, and does not settle below what it already reached in the
  first half.
- ``overfitting``: after the best validation point the validation loss rises while the training
  loss keeps falling, or at the end the validation loss is far above the training loss.
- ``too_few_units``: fewer hidden units than inputs.

Rules need a minimum of evidence (see :class:`Thresholds`), so a short or clean, smoothly
decreasing curve fires nothing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from hpjax.report.labels import is_finite_number
from hpjax.results import files

KINDS = ("diverged", "not_learning", "oscillating", "overfitting", "too_few_units")

# Fallbacks for the embedded data sets, used only when neither summary.csv nor config.json
# states the input dimension or the number of classes.
_KNOWN_DATASETS = {"mnist1d": (40, 10), "digits": (64, 10)}
# Model families for which "more hidden units than inputs" is not the right rule (for a CNN or
# an RNN the input of a layer is a channel or a time step, not the flattened example).
_NOT_DENSE = ("cnn", "conv", "rnn", "lstm", "gru")


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Where each diagnostic fires. Losses are cross-entropies in nats.

    Attributes:
        min_points: evaluations with finite train and validation loss needed before the
            overfitting rule looks at a curve.
        osc_min_points: finite values of a loss needed before the oscillation rule looks at it.
        osc_sign_change_frac: oscillating needs more than this fraction of sign changes between
            successive differences over the last half of the curve (1.0 is a perfect zig-zag;
            independent noise gives about 2/3; a monotone curve gives 0).
        osc_rel_amplitude: ... and a mean absolute change between successive evaluations above
            this fraction of the mean loss over that half.
        osc_settle_margin: ... and the last quarter's minimum not below the first half's minimum
            by more than this fraction (a curve still reaching new lows is converging, noisily).
        not_learning_frac: not_learning fires when the best training loss exceeds this fraction
            of ln(num_classes), the cross-entropy of a uniform guess.
        overfit_rise: overfitting (rising) fires when the final validation loss exceeds its
            minimum by more than this fraction while the final training loss is below the
            training loss at the validation minimum.
        overfit_gap_frac: overfitting (gap) fires when at the end validation minus training loss
            exceeds this fraction of the validation loss ...
        overfit_gap_abs: ... and exceeds this many nats (a gap of 0.02 on a loss of 0.03 is no
            reason to shrink the model).
    """

    min_points: int = 4
    osc_min_points: int = 8
    osc_sign_change_frac: float = 0.5
    osc_rel_amplitude: float = 0.05
    osc_settle_margin: float = 0.05
    not_learning_frac: float = 0.9
    overfit_rise: float = 0.10
    overfit_gap_frac: float = 0.5
    overfit_gap_abs: float = 0.1


@dataclasses.dataclass(frozen=True)
class Diagnostic:
    """One fired diagnostic: its kind, the trial, a sentence for people, the triggering numbers."""

    kind: str
    trial: int
    message: str
    numbers: dict


def _series(curve: Sequence[Mapping], key: str) -> list[tuple[int, float]]:
    """(step, value) of the finite values of ``key`` along the curve."""
    return [
        (int(p.get("step", i)), float(p[key]))
        for i, p in enumerate(curve)
        if is_finite_number(p.get(key))
    ]


def _g(v: float) -> str:
    return f"{v:.4g}"


@dataclasses.dataclass(frozen=True)
class Setting:
    """What a trial already does, so that no advice repeats it, and how many examples its
    losses are measured on, so that noise is not read as a symptom."""

    optimizer: str | None = None
    schedule: str | None = None
    weight_decay: float | None = None
    patience: int | None = None
    val_examples: int | None = None
    train_examples: int | None = None

    def noise(self, key: str) -> float:
        """The relative noise of a loss measured on the split behind ``key``: about
        1/sqrt(examples) for a mean of per-example losses of a similar spread; twice that is
        taken as what an evaluation can move by chance (0 when the size is unknown)."""
        n = self.val_examples if key == "val_loss" else self.train_examples
        return 2.0 / math.sqrt(n) if n else 0.0


_ADAPTIVE = ("adam", "adagrad", "rmsprop")


def _rate_advice(setting: Setting) -> str:
    """Lower the rate; a decaying schedule and an adaptive optimizer only where it lacks them."""
    options = ["lower its learning rate"]
    already = []
    if setting.schedule in (None, "constant"):
        options.append("use a decaying learning rate (linear or exponential)")
    else:
        already.append(f"a {setting.schedule} schedule")
    if setting.optimizer in _ADAPTIVE:
        already.append(setting.optimizer)
    else:
        options.append("use an adaptive optimizer (Adam, Adagrad)")
    text = ", or ".join(options)
    return text + (f" (it already uses {' and '.join(already)})" if already else "") + "."


def _overfit_advice(setting: Setting) -> str:
    options = ["use fewer hidden units"]
    if setting.patience == 0:
        options.append("stop early (patience > 0 keeps the best checkpoint)")
    if not setting.weight_decay:
        options.append("add weight decay")
    else:
        options.append(f"use more weight decay than its {setting.weight_decay:g}")
    return ", or ".join(options) + "."


def _diverged(
    trial: int, curve: Sequence[Mapping], status: str | None, setting: Setting = Setting()
) -> Diagnostic | None:
    first_bad: tuple[int, str, float | None, int | None] | None = None
    for key in ("train_loss", "val_loss"):
        seen: tuple[int, float] | None = None
        for i, p in enumerate(curve):
            v = p.get(key)
            step = int(p.get("step", i))
            if is_finite_number(v):
                seen = (step, float(v))
            elif seen is not None:  # non-finite after a finite value: the loss blew up
                if first_bad is None or step < first_bad[0]:
                    first_bad = (step, key, seen[1], seen[0])
                break
    if status != "diverged" and first_bad is None:
        return None
    numbers: dict[str, Any] = {"status": status}
    if first_bad is not None:
        step, key, last, last_step = first_bad
        numbers.update(
            first_nonfinite_step=step, loss=key, last_finite_loss=last, last_finite_step=last_step
        )
        what = (
            f"its {key.replace('_', ' ')} became non-finite at step {step} "
            f"(last finite value {_g(last)} at step {last_step})"
        )
    else:
        what = "the engine stopped it as diverged"
    return Diagnostic(
        "diverged",
        trial,
        f"Trial {trial} diverged: {what}; " + _rate_advice(setting),
        numbers,
    )


def _not_learning(
    trial: int, curve: Sequence[Mapping], num_classes: int | None, th: Thresholds
) -> Diagnostic | None:
    if num_classes is None or num_classes < 2:
        return None
    key = "train_loss"
    values = _series(curve, key)
    if not values:
        key, values = "val_loss", _series(curve, "val_loss")
    if not values or max(s for s, _ in values) <= 0:  # nothing trained yet
        return None
    chance = math.log(num_classes)
    step, best = min(values, key=lambda sv: sv[1])
    limit = th.not_learning_frac * chance
    if best <= limit:
        return None
    numbers = {
        "loss": key,
        "best_loss": best,
        "best_step": step,
        "final_loss": values[-1][1],
        "chance_loss": chance,
        "threshold": limit,
        "num_classes": num_classes,
    }
    return Diagnostic(
        "not_learning",
        trial,
        f"Trial {trial} is not learning: its best {key.replace('_', ' ')} {_g(best)} "
        f"(step {step}) stays above {th.not_learning_frac:g} x ln({num_classes}) = {_g(limit)}, "
        "near chance; add hidden units or raise the learning rate.",
        numbers,
    )


def _oscillation(values: list[float], th: Thresholds, noise: float = 0.0) -> dict | None:
    """The oscillation numbers of one series if it oscillates without settling, by more than
    ``noise`` (relative) as well as the threshold, else None."""
    n = len(values)
    if n < max(th.osc_min_points, 4):
        return None
    tail = values[n // 2 :]
    diffs = [b - a for a, b in zip(tail[:-1], tail[1:], strict=True)]
    pairs = [(a, b) for a, b in zip(diffs[:-1], diffs[1:], strict=True) if a != 0 and b != 0]
    if not pairs:
        return None
    sign_frac = sum((a > 0) != (b > 0) for a, b in pairs) / len(pairs)
    level = sum(abs(v) for v in tail) / len(tail)
    if level == 0:
        return None
    amplitude = sum(abs(d) for d in diffs) / len(diffs) / level
    first_half_min = min(values[: n // 2])
    last_quarter_min = min(values[n - max(n // 4, 1) :])
    settled = last_quarter_min < first_half_min * (1 - th.osc_settle_margin)
    floor = max(th.osc_rel_amplitude, noise)
    if sign_frac <= th.osc_sign_change_frac or amplitude <= floor or settled:
        return None
    return {
        "sign_change_frac": sign_frac,
        "rel_amplitude": amplitude,
        "first_half_min": first_half_min,
        "last_quarter_min": last_quarter_min,
        "num_points": n,
        "noise": noise,
    }


def _oscillating(
    trial: int, curve: Sequence[Mapping], th: Thresholds, setting: Setting = Setting()
) -> Diagnostic | None:
    for key in ("val_loss", "train_loss"):
        values = [v for _, v in _series(curve, key)]
        numbers = _oscillation(values, th, setting.noise(key))
        if numbers is None:
            continue
        numbers = {"loss": key, **numbers}
        return Diagnostic(
            "oscillating",
            trial,
            f"Trial {trial} oscillates: over the last half of its curve the "
            f"{key.replace('_', ' ')} changes direction at {numbers['sign_change_frac']:.0%} of "
            f"evaluations by {numbers['rel_amplitude']:.1%} of its level on average, and its "
            f"last-quarter minimum {_g(numbers['last_quarter_min'])} is not below its "
            f"first-half minimum {_g(numbers['first_half_min'])}; " + _rate_advice(setting),
            numbers,
        )
    return None


def _overfitting(
    trial: int, curve: Sequence[Mapping], th: Thresholds, setting: Setting = Setting()
) -> Diagnostic | None:
    points = [
        (int(p.get("step", i)), float(p["train_loss"]), float(p["val_loss"]))
        for i, p in enumerate(curve)
        if is_finite_number(p.get("train_loss")) and is_finite_number(p.get("val_loss"))
    ]
    if len(points) < th.min_points:
        return None
    best = min(range(len(points)), key=lambda i: points[i][2])
    best_step, train_at_best, best_val = points[best]
    final_step, final_train, final_val = points[-1]
    advice = _overfit_advice(setting)
    if best < len(points) - 1 and best_val > 0:
        rise = final_val / best_val - 1
        if rise > max(th.overfit_rise, setting.noise("val_loss")) and final_train < train_at_best:
            numbers = {
                "reason": "val_rising",
                "best_step": best_step,
                "best_val_loss": best_val,
                "final_step": final_step,
                "final_val_loss": final_val,
                "val_rise": rise,
                "train_loss_at_best": train_at_best,
                "final_train_loss": final_train,
            }
            return Diagnostic(
                "overfitting",
                trial,
                f"Trial {trial} overfits: its validation loss rose {rise:.0%} from its minimum "
                f"{_g(best_val)} (step {best_step}) to {_g(final_val)} (step {final_step}) while "
                f"its training loss fell from {_g(train_at_best)} to {_g(final_train)}; " + advice,
                numbers,
            )
    gap = final_val - final_train
    if final_val > 0 and gap > th.overfit_gap_frac * final_val and gap > th.overfit_gap_abs:
        numbers = {
            "reason": "gap",
            "final_step": final_step,
            "final_val_loss": final_val,
            "final_train_loss": final_train,
            "gap": gap,
            "gap_frac": gap / final_val,
        }
        return Diagnostic(
            "overfitting",
            trial,
            f"Trial {trial} overfits: at step {final_step} its validation loss {_g(final_val)} "
            f"is {_g(gap)} above its training loss {_g(final_train)} ({gap / final_val:.0%} of "
            "the validation loss); " + advice,
            numbers,
        )
    return None


def _too_few_units(trial: int, hidden_units: Any, input_dim: int | None) -> Diagnostic | None:
    units = _units(hidden_units)
    if not units or input_dim is None or min(units) >= input_dim:
        return None
    fewest = min(units)
    numbers = {"hidden_units": fewest if len(units) == 1 else list(units), "input_dim": input_dim}
    return Diagnostic(
        "too_few_units",
        trial,
        f"Trial {trial} has {fewest} hidden units per layer, fewer than its {input_dim} inputs; "
        "the guide says to use more hidden units than inputs.",
        numbers,
    )


def diagnose_trial(
    trial: int,
    curve: list[dict],
    *,
    num_classes: int | None,
    status: str | None = None,
    hidden_units: int | Sequence[int] | None = None,
    input_dim: int | None = None,
    thresholds: Thresholds = Thresholds(),
    setting: Setting = Setting(),
) -> list[Diagnostic]:
    """The diagnostics that fire for one trial's curve (its ``metrics.jsonl`` records), with
    advice that fits what the trial already does (``setting``)."""
    curve = sorted(curve, key=lambda p: p.get("step", 0) or 0)
    out: list[Diagnostic | None] = []
    diverged = _diverged(trial, curve, status, setting)
    if diverged is not None:
        out.append(diverged)
    else:
        out += [
            _not_learning(trial, curve, num_classes, thresholds),
            _oscillating(trial, curve, thresholds, setting),
            _overfitting(trial, curve, thresholds, setting),
        ]
    out.append(_too_few_units(trial, hidden_units, input_dim))
    return [d for d in out if d is not None]


def _units(hidden_units: Any) -> list[int]:
    """Hidden units as a list of ints: 64, "64", [64, 32] or "[64, 32]"."""
    if hidden_units is None or hidden_units == "":
        return []
    if isinstance(hidden_units, str):
        try:
            hidden_units = json.loads(hidden_units.replace("(", "[").replace(")", "]"))
        except json.JSONDecodeError:
            return []
    if isinstance(hidden_units, int | float) and not isinstance(hidden_units, bool):
        return [int(hidden_units)]
    if isinstance(hidden_units, Sequence):
        return [int(u) for u in hidden_units if is_finite_number(u)]
    return []


def _lookup(saved: Mapping, row: Mapping, key: str) -> Any:
    """``key`` from the summary row, else from the saved config (config.json): its top level,
    then its model, dataset and data sections."""
    if row.get(key) is not None:
        return row[key]
    for section in (saved, saved.get("model"), saved.get("dataset"), saved.get("data")):
        if isinstance(section, Mapping) and section.get(key) is not None:
            return section[key]
    return None


def _dataset_name(saved: Mapping) -> str | None:
    ds = saved.get("dataset")
    if isinstance(ds, Mapping):
        ds = ds.get("name")
    return str(ds).lower() if ds is not None else None


def diagnose_workdir(
    workdir: str | os.PathLike, thresholds: Thresholds = Thresholds()
) -> list[Diagnostic]:
    """Diagnostics of every trial in a workdir (metrics.jsonl, summary.csv, config.json).

    The number of classes, the input dimension and the hidden units come from the trial's row in
    summary.csv, else from config.json, else (classes and inputs) from the embedded data set's
    known shape. ``too_few_units`` is only checked for dense models (not CNNs or RNNs).
    """
    saved, metrics, summary = files.read_workdir(workdir)
    curves = files.curves_by_trial(metrics)
    rows = {int(r["trial"]): r for r in summary if r.get("trial") is not None}
    known = _KNOWN_DATASETS.get(_dataset_name(saved) or "", (None, None))
    out: list[Diagnostic] = []
    for trial in sorted(set(curves) | set(rows)):
        row = rows.get(trial, {})
        num_classes = _lookup(saved, row, "num_classes") or known[1]
        input_dim = _lookup(saved, row, "input_dim") or known[0]
        model = row.get("model")
        if model is None and isinstance(saved.get("model"), Mapping):
            model = saved["model"].get("name")
        hidden = _lookup(saved, row, "hidden_units")
        if any(name in str(model or "").lower() for name in _NOT_DENSE) or row.get("cell"):
            hidden = None
        out += diagnose_trial(
            trial,
            curves.get(trial, []),
            num_classes=int(num_classes) if is_finite_number(num_classes) else None,
            status=row.get("status"),
            hidden_units=hidden,
            input_dim=int(input_dim) if is_finite_number(input_dim) else None,
            thresholds=thresholds,
            setting=trial_setting(saved, row),
        )
    return out


def trial_setting(saved: Mapping, row: Mapping) -> Setting:
    """A trial's :class:`Setting` from its summary row and the study's config.json."""
    sizes = saved.get("data_sizes") or {}
    train = sizes.get("train")
    evaluated = saved.get("train_eval_examples")
    if train and is_finite_number(evaluated) and evaluated > 0:
        train = min(int(train), int(evaluated))
    decay = _lookup(saved, row, "weight_decay")
    if decay is None:
        decays = saved.get("weight_decays") or ()
        decay = decays[0] if len(decays) == 1 else None
    patience = saved.get("patience")
    return Setting(
        optimizer=_lookup(saved, row, "optimizer"),
        schedule=_lookup(saved, row, "schedule"),
        weight_decay=float(decay) if is_finite_number(decay) else None,
        patience=int(patience) if is_finite_number(patience) else None,
        val_examples=sizes.get("val"),
        train_examples=train,
    )
