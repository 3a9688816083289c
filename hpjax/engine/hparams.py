"""The per-trial hyperparameters, named once: what every part that shows or searches them reads.

Each entry is a row of :class:`hpjax.engine.population.TrialHParams` (an array ``[K]`` in a
compiled population). The study floor reads this table for what a trial or a search space may
set, the summary and the reports for their columns and axes, TensorBoard and Optuna for the
names of their hyperparameters.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class HParam:
    """One per-trial hyperparameter."""

    name: str
    integer: bool
    scale: str  # "log" | "linear": how plots and PBT's perturbations treat it
    default: float | int | None  # None: a trial must give it
    searchable: bool  # a trial, a search space or PBT may set it
    always_in_summary: bool  # a column of every summary.csv (else only when a trial sets it)
    doc: str


HPARAMS: tuple[HParam, ...] = (
    HParam("learning_rate", False, "log", None, True, True, "peak rate; the schedule scales it"),
    HParam("batch_size", True, "log", None, True, True, "examples per optimizer update"),
    HParam("seed", True, "linear", 0, True, True, "initialisation and data order"),
    HParam("weight_decay", False, "log", 0.0, True, True, "decoupled: lr x wd x weights a step"),
    HParam("warmup_steps", True, "linear", 0, True, False, "steps of linear warmup"),
    HParam("decay_rate", False, "log", 0.1, True, False, "exponential: factor at the end"),
    HParam("end_factor", False, "linear", 0.0, True, False, "linear, cosine: final rate fraction"),
    HParam("momentum", False, "linear", 0.9, True, False, "momentum, or Adam's b1"),
    HParam("dropout", False, "linear", 0.0, True, False, "rate of the model's TrialDropout"),
    HParam("label_smoothing", False, "linear", 0.0, True, False, "uniform share of the labels"),
    HParam("max_steps", True, "linear", 2**30, False, False, "budget and schedule horizon"),
)
BY_NAME: dict[str, HParam] = {h.name: h for h in HPARAMS}
NAMES: tuple[str, ...] = tuple(h.name for h in HPARAMS)
SEARCHABLE: tuple[str, ...] = tuple(h.name for h in HPARAMS if h.searchable)
INTEGER: tuple[str, ...] = tuple(h.name for h in HPARAMS if h.integer)
# Schedule parameters a trial may set for itself; otherwise the study's value.
OPTIONAL: tuple[str, ...] = tuple(
    h.name for h in HPARAMS if h.searchable and not h.always_in_summary
)
SUMMARY: tuple[str, ...] = tuple(h.name for h in HPARAMS if h.always_in_summary)
