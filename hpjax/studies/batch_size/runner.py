"""Batch-size studies that reproduce published shapes, with memory and speed per batch size.

Three studies, each in ``<workdir>/<study>/``:

- ``fixed_epochs`` (Mishkin, Sergievskiy and Matas 2016, arXiv 1606.02228): every batch size
  trained for the same number of epochs, with one fixed learning rate, with the rate scaled by a
  rule (linear ``lr * B / B0``, square root; optional warmup in epochs, Goyal et al. 2017), and
  tuned per batch size over a learning-rate grid (the grid and the batch sizes vmapped together in
  one population). Engine runs: ``grid/`` (the fixed rate is one of its rates) and ``<rule>/``.
- ``steps_to_target`` (Shallue et al. 2018, arXiv 1811.03600): for each batch size, the fewest
  optimizer steps at which any rate of its grid first reaches a target validation metric. Each
  batch size is one engine run ``bs_NNNN/`` (its grid vmapped) with its own step budget, since
  large batches need many epochs and small ones many steps.
- ``noise_scale`` (McCandlish et al. 2018, arXiv 1812.06162): the simple noise scale
  ``B_simple`` measured along the training of one trial with the unbiased two-batch estimator
  (:mod:`hpjax.noise_scale`), in a small loop over :mod:`hpjax.population`, next to the
  steps-to-target curve (whose runs it reuses or makes).

Each study writes its CSV, PNG plots under ``plots/`` and ``study_report.md`` with the numbers
and how they compare with the published shape. ``fixed_epochs`` and ``steps_to_target`` also
measure, per batch size, the compiled memory of the training step (XLA's memory analysis) and
the examples per second of one trial (``compute.csv``). An engine run whose directory already
holds the finished run of the same config is reused, not trained again.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from matplotlib import colormaps

from hpjax import data as data_lib
from hpjax import plan as study
from hpjax import progress
from hpjax import runner as train
from hpjax.engine import noise_scale, population
from hpjax.errors import ConfigError
from hpjax.models import build_model
from hpjax.report import figures, labels, markdown
from hpjax.results import files

STUDIES = ("fixed_epochs", "steps_to_target", "noise_scale")
SECTIONS = (*STUDIES, "compute")  # config sub-dicts that are not engine keys
SCALING_RULES = ("linear", "sqrt")
TARGET_METRICS = ("val_accuracy", "val_loss", "train_accuracy", "train_loss")
REPORT = "study_report.md"

FIXED_EPOCHS_COLUMNS = (
    "rule",
    "batch_size",
    "learning_rate",
    "status",
    "steps",
    "epochs",
    "final_val_accuracy",
    "final_val_loss",
    "best_val_loss",
    "test_accuracy",
    "test_loss",
    "trial",
    "run",
)
STEPS_COLUMNS = (
    "batch_size",
    "reached",
    "steps",
    "epochs",
    "examples",
    "learning_rate",
    "trial",
    "lrs_reached",
    "lrs_tried",
    "budget_steps",
    "perfect_scaling_steps",
)
STEPS_TRIAL_COLUMNS = (
    "batch_size",
    "learning_rate",
    "base_learning_rate",
    "status",
    "reached",
    "steps",
    "epochs",
    "budget_steps",
    "final_metric",
    "best_metric",
    "trial",
)
NOISE_COLUMNS = (
    "trial",
    "step",
    "epoch",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "grad_sq",
    "trace",
    "b_simple",
    "b_simple_ema",
    "grad_sq_exact",
    "trace_exact",
    "b_simple_exact",
    "b_simple_exact_ema",
)
COMPUTE_COLUMNS = (
    "batch_size",
    "temp_bytes",
    "peak_bytes",
    "argument_bytes",
    "examples_per_s",
    "steps_per_s",
    "ms_per_step",
    "compile_s",
)


# ------------------------------------------------------------------------------ config checks


def _fail(key: str, value: Any, why: str) -> None:
    raise ConfigError(f"config.{key}={value!r} {why}")


def _tuple(value) -> tuple:
    if value is None:
        return ()
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        return (value,)
    return tuple(value)


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, int | float | np.number) and not isinstance(v, bool)


def check_batch_sizes(value, key: str, num_train: int | None = None) -> tuple[int, ...]:
    """The batch sizes of ``config.<key>``: a non-empty list of distinct positive integers, none
    above ``num_train`` when it is given; else :class:`ConfigError` naming the key."""
    sizes = _tuple(value)
    if not sizes:
        _fail(key, value, "is empty; list at least one batch size, e.g. (8, 16, 32)")
    for size in sizes:
        if not _is_int(size) or size <= 0:
            _fail(key, value, f"must hold positive integers; {size!r} is not one")
    if len(set(sizes)) != len(sizes):
        _fail(key, value, "holds a batch size twice")
    if num_train is not None:
        for size in sizes:
            if size > num_train:
                _fail(key, value, f"holds {size}, larger than the training set ({num_train})")
    return tuple(int(s) for s in sizes)


def _check_rates(value, key: str) -> tuple[float, ...]:
    rates = _tuple(value)
    if not rates:
        _fail(key, value, "is empty; list at least one learning rate")
    if not all(_is_real(r) and math.isfinite(r) and r > 0 for r in rates):
        _fail(key, value, "must hold positive finite numbers")
    return tuple(float(r) for r in rates)


def _check_positive(section, name: str, key: str, integer: bool = False) -> None:
    value = section.get(name)
    ok = (_is_int(value) if integer else _is_real(value)) and math.isfinite(value) and value > 0
    if not ok:
        _fail(f"{key}.{name}", value, f"must be a positive {'integer' if integer else 'number'}")


def _studies(config) -> tuple[str, ...]:
    name = config.get("study", "fixed_epochs")
    if name == "all":
        return STUDIES
    if name not in STUDIES:
        _fail("study", name, f"is unknown; allowed: {', '.join(STUDIES)}, all")
    return (name,)


def validate_config(config, num_train: int | None = None) -> None:
    """Every check of the batch-size study's own keys; ``num_train`` adds the data-dependent ones.

    The engine's keys are checked by :func:`engine_configs` through ``study.validate_config``.
    """
    for name in _studies(config):
        if name not in config:
            _fail(name, None, f"is missing; config.study={config.study!r} needs it")
    names = set(_studies(config))
    if "noise_scale" in names:
        names.add("steps_to_target")
    compute = config.get("compute", None)
    if compute is not None and _tuple(compute.get("batch_sizes", ())):
        check_batch_sizes(compute.batch_sizes, "compute.batch_sizes", num_train)
    if "fixed_epochs" in names:
        s, key = config.fixed_epochs, "fixed_epochs"
        check_batch_sizes(s.batch_sizes, f"{key}.batch_sizes", num_train)
        _check_rates(s.learning_rates, f"{key}.learning_rates")
        _check_rates(s.learning_rate, f"{key}.learning_rate")
        _check_positive(s, "num_epochs", key)
        _check_positive(s, "base_batch_size", key, integer=True)
        _check_positive(s, "eval_every", key, integer=True)
        for rule in _tuple(s.scalings):
            if rule not in SCALING_RULES:
                _fail(f"{key}.scalings", s.scalings, f"allows {', '.join(SCALING_RULES)}")
    if "steps_to_target" in names:
        s, key = config.steps_to_target, "steps_to_target"
        check_batch_sizes(s.batch_sizes, f"{key}.batch_sizes", num_train)
        _check_rates(s.learning_rates, f"{key}.learning_rates")
        if s.metric not in TARGET_METRICS:
            _fail(f"{key}.metric", s.metric, f"is unknown; allowed: {', '.join(TARGET_METRICS)}")
        if not (_is_real(s.target) and math.isfinite(s.target)):
            _fail(f"{key}.target", s.target, "must be a finite number")
        _check_positive(s, "budget_epochs", key)
        for name in ("min_budget_steps", "max_budget_steps", "evals_per_trial", "base_batch_size"):
            _check_positive(s, name, key, integer=True)
        if s.min_budget_steps > s.max_budget_steps:
            _fail(f"{key}.min_budget_steps", s.min_budget_steps, "exceeds max_budget_steps")
    if "noise_scale" in names:
        s, key = config.noise_scale, "noise_scale"
        if not _is_int(s.batch_size) or s.batch_size <= 0:
            _fail(f"{key}.batch_size", s.batch_size, "must be a positive integer")
        if num_train is not None and s.batch_size > num_train:
            _fail(
                f"{key}.batch_size", s.batch_size, f"is larger than the training set ({num_train})"
            )
        small, big = s.small_batch, s.big_batch
        if not (_is_int(small) and _is_int(big) and 0 < small < big):
            _fail(f"{key}.small_batch", (small, big), "and big_batch must be 0 < small < big")
        for name in ("num_measurements", "num_draws"):
            _check_positive(s, name, key, integer=True)
        if not (_is_real(s.ema_decay) and 0 <= s.ema_decay < 1):
            _fail(f"{key}.ema_decay", s.ema_decay, "must be in [0, 1)")
        if not (_is_real(s.learning_rate) and s.learning_rate >= 0):
            _fail(f"{key}.learning_rate", s.learning_rate, "must be >= 0 (0: the fastest rate)")
        stt = check_batch_sizes(config.steps_to_target.batch_sizes, "steps_to_target.batch_sizes")
        if s.learning_rate == 0 and s.batch_size not in stt:
            _fail(
                f"{key}.batch_size",
                s.batch_size,
                "is not in steps_to_target.batch_sizes; add it there or set "
                "noise_scale.learning_rate",
            )


# ------------------------------------------------------------------------- engine configs


def train_config(config, name: str, **keys) -> ml_collections.ConfigDict:
    """An engine config: the study config's shared keys, without its sections, plus ``keys``."""
    base = {k: v for k, v in config.to_dict().items() if k not in (*SECTIONS, "study")}
    base.update(
        study=name,
        lr_sampling="grid",
        batch_axis="vmap",
        lr_scaling="fixed",
        base_batch_size=32,
        warmup_epochs=0.0,
        num_epochs=0.0,
        num_steps=0,
    )
    base.update(keys)
    base.setdefault("batch_size", _tuple(base.get("batch_sizes"))[0])
    return ml_collections.ConfigDict(base)


def budget_steps(section, batch_size: int, num_train: int) -> int:
    """The step budget of ``batch_size`` in steps to target: ``budget_epochs`` of data, clipped
    to ``[min_budget_steps, max_budget_steps]``."""
    steps = math.ceil(float(section.budget_epochs) * num_train / batch_size)
    return int(min(max(steps, section.min_budget_steps), section.max_budget_steps))


def fixed_epochs_configs(config) -> dict[str, ml_collections.ConfigDict]:
    """Run name -> engine config: ``grid`` (rates x batch sizes, fixed rule) and one per rule."""
    s = config.fixed_epochs
    sizes = check_batch_sizes(s.batch_sizes, "fixed_epochs.batch_sizes")
    grid = tuple(sorted(set(_tuple(s.learning_rates)) | {float(s.learning_rate)}))
    common = dict(
        batch_sizes=sizes,
        num_epochs=float(s.num_epochs),
        eval_every=int(s.eval_every),
        batch_axis=s.batch_axis,
        report_x="batch_size",
    )
    runs = {
        "grid": train_config(config, "fixed_epochs/grid", learning_rates=grid, **common),
    }
    for rule in _tuple(s.scalings):
        runs[rule] = train_config(
            config,
            f"fixed_epochs/{rule}",
            learning_rates=(float(s.learning_rate),),
            lr_scaling=rule,
            base_batch_size=int(s.base_batch_size),
            warmup_epochs=float(s.warmup_epochs),
            **common,
        )
    return runs


def steps_to_target_configs(config, num_train: int) -> dict[int, ml_collections.ConfigDict]:
    """Batch size -> engine config: its rate grid, its own step budget and evaluation interval."""
    s = config.steps_to_target
    runs = {}
    for b in check_batch_sizes(s.batch_sizes, "steps_to_target.batch_sizes"):
        steps = budget_steps(s, b, num_train)
        runs[b] = train_config(
            config,
            f"steps_to_target/bs_{b}",
            batch_sizes=(b,),
            learning_rates=_tuple(s.learning_rates),
            lr_scaling=s.lr_scaling,
            base_batch_size=int(s.base_batch_size),
            warmup_epochs=float(s.warmup_epochs),
            num_steps=steps,
            eval_every=max(1, steps // int(s.evals_per_trial)),
            report_x="learning_rate",
        )
    return runs


def noise_config(config, base_learning_rate: float, num_train: int) -> ml_collections.ConfigDict:
    """The engine config of the noise-scale trial: ``noise_scale.batch_size`` at the base rate
    (scaled like steps to target), its steps-to-target budget unless ``noise_scale.num_steps``
    is set, evaluated (and measured) ``noise_scale.num_measurements`` times, the first seed."""
    s, stt = config.noise_scale, config.steps_to_target
    b = int(s.batch_size)
    steps = int(s.num_steps) if s.get("num_steps", 0) else budget_steps(stt, b, num_train)
    return train_config(
        config,
        "noise_scale",
        batch_sizes=(b,),
        learning_rates=(float(base_learning_rate),),
        lr_scaling=stt.lr_scaling,
        base_batch_size=int(stt.base_batch_size),
        warmup_epochs=float(stt.warmup_epochs),
        num_steps=steps,
        eval_every=max(1, steps // int(s.num_measurements)),
        seeds=(int(_tuple(config.seeds)[0]),),
    )


def _check_engine_config(cfg, dataset: data_lib.Dataset) -> None:
    study.validate_config(cfg, dataset.num_train)
    for arch in study.architectures(cfg):
        build_model(study.model_config(cfg, arch), dataset.input_shape, dataset.num_classes)


def engine_configs(config, dataset: data_lib.Dataset) -> dict[str, Any]:
    """Every engine config the chosen studies will run, checked before anything compiles."""
    names = set(_studies(config))
    out: dict[str, Any] = {}
    if "fixed_epochs" in names:
        out["fixed_epochs"] = fixed_epochs_configs(config)
    if names & {"steps_to_target", "noise_scale"}:
        out["steps_to_target"] = steps_to_target_configs(config, dataset.num_train)
    if "noise_scale" in names:  # its rate comes from steps to target; any positive one checks
        rate = config.noise_scale.learning_rate or 1.0
        out["noise_scale"] = {"noise_scale": noise_config(config, rate, dataset.num_train)}
    for runs in out.values():
        for cfg in runs.values():
            _check_engine_config(cfg, dataset)
    return out


def _same_run(cfg, directory: str) -> bool:
    """The directory holds the finished engine run of this very config."""
    if not os.path.exists(os.path.join(directory, "summary.csv")):
        return False
    old = files.read_config(directory)
    new = train.config_to_dict(cfg)
    ignore = set(train.NON_STUDY_KEYS)
    return {k: v for k, v in old.items() if k not in ignore} == {
        k: v for k, v in new.items() if k not in ignore
    }


def run_engine(cfg, directory: str) -> tuple[list[dict], list[dict]]:
    """``train_and_evaluate(cfg, directory)`` unless it already finished there; returns the
    summary rows and the metrics records."""
    if _same_run(cfg, directory):
        logging.info("%s: finished before with this config; reusing its results", directory)
    else:
        train.train_and_evaluate(cfg, directory)
    return files.read_summary(directory), files.read_metrics(directory)


# ------------------------------------------------------------------------- memory and speed


def profile_batch_sizes(
    config,
    dataset: data_lib.Dataset,
    batch_sizes: Sequence[int],
    examples: int = 20000,
    repeats: int = 3,
) -> list[dict]:
    """Per batch size, the compiled memory and the speed of one trial trained at that size.

    The population's training loop (one trial, micro-batch = batch size, so one update per tick)
    is compiled ahead of time; XLA's memory analysis gives its temporary bytes (activations,
    gradients) and peak bytes (arguments + outputs + temporaries - aliased), and the fastest of
    ``repeats`` timed runs of about ``examples`` examples (at least 3 steps) gives examples and
    steps per second.
    """
    cfg = train_config(config, "compute", batch_sizes=tuple(batch_sizes), learning_rates=(1e-3,))
    model = build_model(study.model_config(cfg, ()), dataset.input_shape, dataset.num_classes)
    x, y = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
    options = train.optimizer_options(cfg)
    hparams = population.make_hparams(
        learning_rate=[1e-3],
        batch_size=[1],
        seed=[0],
        weight_decay=[0.0],
        warmup_steps=[0],
        decay_rate=[0.1],
        end_factor=[0.0],
        max_steps=[2**30],
    )
    initial = None  # the state does not depend on the batch size: initialise it once
    rows = []
    for b in batch_sizes:
        spec = population.PopulationSpec(
            model=model,
            optimizer=cfg.optimizer,
            schedule=cfg.schedule,
            microbatch=int(b),
            num_train=dataset.num_train,
            optimizer_options=options,
        )
        hparams = hparams.replace(batch_size=jnp.asarray([b], jnp.int32))
        if initial is None:
            initial = jax.device_get(population.init_population(spec, hparams))
        state = jax.tree.map(jnp.asarray, initial)  # a fresh copy: the loop donates its state
        start = time.perf_counter()
        compiled = population.train_ticks.lower(spec, state, hparams, x, y, jnp.int32(1)).compile()
        compile_s = time.perf_counter() - start
        mem = compiled.memory_analysis()
        state = compiled(state, hparams, x, y, jnp.int32(1))  # warm up
        jax.block_until_ready(state)
        ticks = max(3, math.ceil(examples / b))
        seconds = math.inf
        for _ in range(repeats):  # the fastest repeat: the least disturbed by other processes
            start = time.perf_counter()
            state = compiled(state, hparams, x, y, jnp.int32(ticks))
            jax.block_until_ready(state)
            seconds = min(seconds, time.perf_counter() - start)

        def field(name, mem=mem):
            return int(getattr(mem, name, 0) or 0) if mem is not None else None

        temp, arg, out, alias = (
            field(f"{n}_size_in_bytes") for n in ("temp", "argument", "output", "alias")
        )
        rows.append(
            {
                "batch_size": int(b),
                "temp_bytes": temp,
                "peak_bytes": None if mem is None else arg + out + temp - alias,
                "argument_bytes": arg,
                "examples_per_s": ticks * b / seconds,
                "steps_per_s": ticks / seconds,
                "ms_per_step": 1000 * seconds / ticks,
                "compile_s": compile_s,
            }
        )
        logging.info(
            "compute: batch %d: %.3g examples/s, %.3g ms/step, temp %s bytes",
            b,
            rows[-1]["examples_per_s"],
            rows[-1]["ms_per_step"],
            temp,
        )
    return rows


def _compute_rows(config, dataset, sizes, directory: str) -> list[dict]:
    """The profile of ``sizes``, reused from ``compute.json`` when measured for the same setup."""
    section = config.get("compute", None)
    if section is None or not section.get("enabled", True):
        return []
    chosen = _tuple(section.get("batch_sizes", ()))
    sizes = [b for b in sizes if b in chosen] if chosen else list(sizes)
    if not sizes:
        return []
    engine = train_config(config, "compute", batch_sizes=tuple(sizes), learning_rates=(1e-3,))
    setup = {
        "model": train.config_to_dict(engine.model),
        "optimizer": [engine.optimizer, list(map(list, train.optimizer_options(engine)))],
        "schedule": engine.schedule,
        "data": [dataset.name, dataset.num_train, list(dataset.input_shape)],
        "batch_sizes": list(sizes),
        "examples": int(section.get("examples", 20000)),
        "device": str(jax.devices()[0].device_kind),
    }
    cache = os.path.join(directory, "compute.json")
    if os.path.exists(cache):
        with open(cache) as f:
            saved = json.load(f)
        if saved.get("setup") == train.config_to_dict(setup):
            logging.info("compute: reusing the profile in %s", cache)
            return saved["rows"]
    rows = profile_batch_sizes(config, dataset, sizes, setup["examples"])
    files.write_json(cache, {"setup": setup, "rows": rows})
    files.write_csv(os.path.join(directory, "compute.csv"), rows, COMPUTE_COLUMNS)
    return rows


# ------------------------------------------------------------------------- steps to target


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


def steps_to_target(
    summary: Sequence[Mapping], metrics_rows: Sequence[Mapping], metric: str, target: float
) -> tuple[list[dict], list[dict]]:
    """Per batch size, the fewest steps at which any of its trials first reached the target.

    Returns ``(per_batch_size, per_trial)``. A batch size none of whose trials reached the
    target has ``reached=False`` and no steps; its ``budget_steps`` says how far it was trained.
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
                "learning_rate": row["learning_rate"],
                "base_learning_rate": row.get("base_learning_rate", row["learning_rate"]),
                "status": row.get("status"),
                "reached": hit is not None,
                "steps": hit["step"] if hit else None,
                "epochs": hit["epoch"] if hit else None,
                "budget_steps": row.get("steps"),
                "final_metric": values[-1] if values else None,
                "best_metric": best(values) if values else None,
            }
        )
    per_size = []
    for b in sorted({r["batch_size"] for r in per_trial}):
        trials = [r for r in per_trial if r["batch_size"] == b]
        hits = [r for r in trials if r["reached"]]
        fastest = min(hits, key=lambda r: (r["steps"], r["learning_rate"])) if hits else None
        per_size.append(
            {
                "batch_size": b,
                "reached": fastest is not None,
                "steps": fastest["steps"] if fastest else None,
                "epochs": fastest["epochs"] if fastest else None,
                "examples": fastest["steps"] * b if fastest else None,
                "learning_rate": fastest["learning_rate"] if fastest else None,
                "base_learning_rate": fastest["base_learning_rate"] if fastest else None,
                "trial": fastest["trial"] if fastest else None,
                "lrs_reached": len(hits),
                "lrs_tried": len(trials),
                "budget_steps": max((r["budget_steps"] or 0) for r in trials),
            }
        )
    reached = [r for r in per_size if r["reached"]]
    if reached:
        b0, s0 = reached[0]["batch_size"], reached[0]["steps"]
        for r in per_size:
            r["perfect_scaling_steps"] = s0 * b0 / r["batch_size"]
    return per_size, per_trial


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
    """Spearman's rank correlation (ties get the mean of their ranks)."""
    if len(xs) < 3:
        return None

    def ranks(v):
        v = np.asarray(v, float)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):
            r[v == value] = r[v == value].mean()
        return r

    rx, ry = ranks(xs), ranks(ys)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


# ---------------------------------------------------------------------------------- plots


def _finite(v: Any) -> bool:
    return labels.is_number(v) and math.isfinite(v)


def _mark_failed(ax, xs: Sequence[float], colour, label: str | None) -> None:
    if xs:
        ax.plot(
            xs,
            [0.97] * len(xs),
            "x",
            color=colour,
            ms=9,
            mew=2,
            transform=ax.get_xaxis_transform(),
            clip_on=False,
            label=label,
        )


def plot_fixed_epochs(rows: Sequence[Mapping], y: str, test_y: str, path: str, title: str) -> str:
    """``y`` (solid) and ``test_y`` (dotted) against the batch size, one colour per rule."""
    fig = figures.new_figure()
    ax = fig.add_subplot()
    cycle = colormaps["tab10"].colors
    rules = list(dict.fromkeys(r["rule"] for r in rows))
    for i, rule in enumerate(rules):
        colour = cycle[i % len(cycle)]
        group = sorted((r for r in rows if r["rule"] == rule), key=lambda r: r["batch_size"])
        ok = [r for r in group if r.get("status") != "diverged" and _finite(r.get(y))]
        if ok:
            ax.plot(
                [r["batch_size"] for r in ok],
                [r[y] for r in ok],
                "-o",
                color=colour,
                ms=4,
                label=rule,
            )
            tests = [r for r in ok if _finite(r.get(test_y))]
            ax.plot(
                [r["batch_size"] for r in tests],
                [r[test_y] for r in tests],
                ":",
                color=colour,
                alpha=0.8,
            )
        failed = [r["batch_size"] for r in group if r not in ok]
        _mark_failed(ax, failed, colour, f"{rule}: diverged" if failed else None)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel(f"{y.replace('_', ' ')} (solid), {test_y.replace('_', ' ')} (dotted)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return figures.save_figure(fig, path)


def plot_grid_heatmap(grid_rows: Sequence[Mapping], value: str, path: str, title: str) -> str:
    """``value`` of every (learning rate, batch size) of the grid as a coloured table."""
    sizes = sorted({r["batch_size"] for r in grid_rows})
    rates = sorted({r["learning_rate"] for r in grid_rows})
    table = np.full((len(rates), len(sizes)), np.nan)
    for r in grid_rows:
        if r.get("status") != "diverged" and _finite(r.get(value)):
            table[rates.index(r["learning_rate"]), sizes.index(r["batch_size"])] = r[value]
    fig = figures.new_figure((max(6.0, 0.7 * len(sizes) + 2), max(4.0, 0.5 * len(rates) + 2)))
    ax = fig.add_subplot()
    cmap = colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(table), origin="lower", aspect="auto", cmap=cmap)
    for i in range(len(rates)):
        for j in range(len(sizes)):
            nan = np.isnan(table[i, j])
            text = "diverged" if nan else f"{table[i, j]:.2f}"
            colour = "black" if nan else "white"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(len(sizes)), [str(b) for b in sizes])
    ax.set_yticks(range(len(rates)), [f"{r:.3g}" for r in rates])
    ax.set_xlabel("batch size")
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=value.replace("_", " "))
    return figures.save_figure(fig, path)


def plot_compute(rows: Sequence[Mapping], path: str) -> str:
    """Examples per second and compiled memory against the batch size."""
    fig = figures.new_figure((10.0, 4.5))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    sizes = [r["batch_size"] for r in rows]
    left.plot(sizes, [r["examples_per_s"] for r in rows], "-o", ms=4, label="examples/s")
    left.plot(sizes, [r["steps_per_s"] for r in rows], "-s", ms=4, label="steps/s")
    left.set_yscale("log")
    left.set_title("speed of one trial")
    mem = [r for r in rows if r.get("temp_bytes") is not None]
    right.plot(
        [r["batch_size"] for r in mem],
        [r["temp_bytes"] / 2**20 for r in mem],
        "-o",
        ms=4,
        label="temporaries",
    )
    right.plot(
        [r["batch_size"] for r in mem],
        [r["peak_bytes"] / 2**20 for r in mem],
        "-s",
        ms=4,
        label="peak (args + out + temp)",
    )
    right.set_yscale("log")
    right.set_ylabel("MiB (XLA memory analysis)")
    right.set_title("compiled memory of the training step")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    return figures.save_figure(fig, path)


def plot_steps_to_target(
    per_size: Sequence[Mapping],
    per_trial: Sequence[Mapping],
    fit: Mapping | None,
    path: str,
    title: str,
    noise: Mapping | None = None,
) -> str:
    """Steps to target against the batch size on log-log axes, with the perfect-scaling line.

    Light dots: each rate that reached the target; the line: the fastest rate per batch size;
    red x: no rate reached it. With ``noise`` (``b_simple``, ``b_simple_exact``), vertical lines
    mark the noise scale.
    """
    fig = figures.new_figure()
    ax = fig.add_subplot()
    hits = [r for r in per_trial if r["reached"] and r["steps"]]
    ax.plot(
        [r["batch_size"] for r in hits],
        [r["steps"] for r in hits],
        ".",
        color="grey",
        alpha=0.5,
        label="each learning rate",
    )
    reached = [r for r in per_size if r["reached"] and r["steps"]]
    sizes = [r["batch_size"] for r in reached]
    if reached:
        ax.plot(sizes, [r["steps"] for r in reached], "-o", color="C0", label="fastest rate")
        all_sizes = np.array([r["batch_size"] for r in per_size], float)
        b0, s0 = reached[0]["batch_size"], reached[0]["steps"]
        ax.plot(
            all_sizes,
            s0 * b0 / all_sizes,
            "--",
            color="black",
            alpha=0.6,
            label="perfect scaling (steps x B = const)",
        )
    if fit is not None:
        grid = np.logspace(np.log10(min(sizes)), np.log10(max(sizes)), 100)
        ax.plot(
            grid,
            fit["s_min"] * (1 + fit["b_crit"] / grid),
            "-",
            color="C2",
            alpha=0.7,
            label=f"fit S_min(1 + B_crit/B), B_crit={fit['b_crit']:.3g}",
        )
    failed = [r["batch_size"] for r in per_size if not r["reached"]]
    _mark_failed(ax, failed, "red", "target not reached" if failed else None)
    if noise:
        for key, style, name in (
            ("b_simple", "-.", "B_simple (estimate)"),
            ("b_simple_exact", ":", "B_simple (exact)"),
        ):
            if _finite(noise.get(key)):
                ax.axvline(noise[key], color="C3", ls=style, label=f"{name} = {noise[key]:.3g}")
    ax.set_xscale("log", base=2)
    if reached:
        ax.set_yscale("log")
    else:
        ax.text(
            0.5,
            0.5,
            "no batch size reached the target",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.set_xlabel("batch size")
    ax.set_ylabel("optimizer steps to target")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return figures.save_figure(fig, path)


def plot_noise_along_training(
    rows: Sequence[Mapping], metric: str, target: float, path: str, at_target: Mapping | None
) -> str:
    """B_simple (per measurement, moving average, exact) and the target metric along training."""
    fig = figures.new_figure()
    ax = fig.add_subplot()
    steps = [r["step"] for r in rows]
    for key, style, label in (
        ("b_simple", "o", "estimate (each measurement)"),
        ("b_simple_ema", "-", "estimate (moving average)"),
        ("b_simple_exact", "--", "exact (all per-example gradients)"),
    ):
        pts = [(r["step"], r[key]) for r in rows if _finite(r.get(key)) and r[key] > 0]
        if pts:
            ax.plot(*zip(*pts, strict=True), style, ms=3, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("B_simple = tr(Sigma) / |G|^2")
    if at_target is not None:
        ax.axvline(at_target["step"], color="grey", ls=":", label=f"{metric} reaches {target:g}")
    twin = ax.twinx()
    twin.plot(steps, [r.get(metric) for r in rows], color="C4", alpha=0.5, lw=1)
    twin.set_ylabel(metric.replace("_", " "), color="C4")
    ax.set_title("simple noise scale along training")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    return figures.save_figure(fig, path)


# -------------------------------------------------------------------------------- reports


def _write_report(
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
    files.write_text_atomic(path, "\n".join(lines).rstrip("\n") + "\n")
    return path


def _compute_section(rows: Sequence[Mapping]) -> list[str]:
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


def _engine_section(workdir: str, names: Sequence[str]) -> list[str]:
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


def _merge_compute(rows: list[dict], compute_rows: Sequence[Mapping]) -> None:
    by_size = {r["batch_size"]: r for r in compute_rows}
    for row in rows:
        extra = by_size.get(row["batch_size"], {})
        for key in ("temp_bytes", "peak_bytes", "examples_per_s", "ms_per_step"):
            row[key] = extra.get(key)


# --------------------------------------------------------------------------- fixed epochs


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


def _usable(row: Mapping) -> bool:
    return row.get("status") != "diverged" and _finite(row.get("final_val_accuracy"))


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
        ok = [r for r in at_b if _usable(r)]
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


def _chance(row: Mapping) -> bool:
    """At chance level: final validation accuracy at most 1.5 / classes."""
    classes = row.get("num_classes")
    return (
        _finite(classes)
        and _finite(row.get("final_val_accuracy"))
        and (row["final_val_accuracy"] <= 1.5 / classes)
    )


def describe_fixed_epochs(rows: Sequence[Mapping], learning_rate: float, base: int) -> list[str]:
    """Sentences comparing the measured shape with Mishkin et al. (2016)."""
    out = []

    def series(rule):
        return sorted((r for r in rows if r["rule"] == rule), key=lambda r: r["batch_size"])

    fixed = [r for r in series("fixed") if _usable(r)]
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
    diverged_fixed = [r["batch_size"] for r in series("fixed") if r.get("status") == "diverged"]
    if diverged_fixed:
        out.append(f"  The fixed rate diverged at B={diverged_fixed}.")
    for rule in SCALING_RULES:
        group = series(rule)
        if not group:
            continue
        reference = next((r for r in group if _usable(r)), None)
        if reference is None:
            out.append(f"- **{rule.capitalize()} scaling** diverged at every batch size.")
            continue
        held, broke = [], None
        for r in group:
            if _usable(r) and r["final_val_accuracy"] >= reference["final_val_accuracy"] - 0.03:
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
        elif broke.get("status") == "diverged" or _chance(broke):
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
        out.append(text)
    tuned = series("tuned")
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


def run_fixed_epochs(config, workdir: str, dataset: data_lib.Dataset) -> list[dict]:
    """The fixed-epochs study into ``workdir``; returns its rows (also ``fixed_epochs.csv``)."""
    s = config.fixed_epochs
    os.makedirs(workdir, exist_ok=True)
    runs = {
        name: run_engine(cfg, os.path.join(workdir, name))
        for name, cfg in fixed_epochs_configs(config).items()
    }
    rows, grid_rows = fixed_epochs_rows(runs, float(s.learning_rate))
    sizes = check_batch_sizes(s.batch_sizes, "fixed_epochs.batch_sizes")
    compute_rows = _compute_rows(config, dataset, sizes, workdir)
    _merge_compute(rows, compute_rows)
    columns = FIXED_EPOCHS_COLUMNS + ("temp_bytes", "peak_bytes", "examples_per_s", "ms_per_step")
    files.write_csv(os.path.join(workdir, "fixed_epochs.csv"), rows, columns)
    title = f"at {s.num_epochs:g} epochs"
    plots = [
        plot_fixed_epochs(
            rows,
            "final_val_accuracy",
            "test_accuracy",
            os.path.join(workdir, "plots", "accuracy_vs_batch_size.png"),
            f"accuracy against batch size {title}",
        ),
        plot_fixed_epochs(
            rows,
            "final_val_loss",
            "test_loss",
            os.path.join(workdir, "plots", "loss_vs_batch_size.png"),
            f"loss against batch size {title}",
        ),
        plot_grid_heatmap(
            grid_rows,
            "final_val_accuracy",
            os.path.join(workdir, "plots", "lr_grid_accuracy.png"),
            f"final validation accuracy {title}, learning rate x batch size",
        ),
    ]
    if compute_rows:
        plots.append(plot_compute(compute_rows, os.path.join(workdir, "plots", "compute.png")))
    table_cols = [
        "rule",
        "batch_size",
        "learning_rate",
        "status",
        "steps",
        "epochs",
        "final_val_accuracy",
        "final_val_loss",
        "test_accuracy",
    ]
    intro = [
        f"Every batch size trained for {s.num_epochs:g} epochs ({config.optimizer}, "
        f"`{config.model.name}` on `{config.dataset}`): `fixed` uses the rate "
        f"{s.learning_rate:g} at every batch size, each scaling rule scales it from "
        f"B0={s.base_batch_size}"
        + (f" with {s.warmup_epochs:g} warmup epochs" if s.warmup_epochs else "")
        + ", and `tuned` is the best rate of the grid "
        f"{tuple(float(v) for v in _tuple(s.learning_rates))} per batch size (all rates and "
        f"batch sizes in one population, batch_axis={s.batch_axis!r}). Final validation "
        "metrics are those at the end of the budget (equal epochs); the test metrics are the "
        "engine's, at each trial's lowest validation loss.",
    ]
    _write_report(
        workdir,
        "Batch size at equal epochs (Mishkin et al. 2016)",
        [
            ("Setup", intro),
            (
                "Measured against the published shape",
                describe_fixed_epochs(rows, float(s.learning_rate), int(s.base_batch_size)),
            ),
            ("Results", [markdown.markdown_table(rows, table_cols)]),
            (
                "Memory and speed per batch size",
                _compute_section(compute_rows) + _engine_section(workdir, list(runs)),
            ),
        ],
        [os.path.relpath(p, workdir) for p in plots],
    )
    return rows


# ------------------------------------------------------------------------ steps to target


def _perfect_scaling_end(reached: Sequence[Mapping], tolerance: float = 1.25) -> int:
    """The index of the last reached batch size up to which steps x B stays within
    ``tolerance`` of the smallest batch size's."""
    within = 0
    while within + 1 < len(reached) and (
        reached[within + 1]["steps"] <= tolerance * reached[within + 1]["perfect_scaling_steps"]
    ):
        within += 1
    return within


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
    edges = []
    for r in reached:
        rates = [t["base_learning_rate"] for t in per_trial if t["batch_size"] == r["batch_size"]]
        if len(rates) > 1 and r["base_learning_rate"] in (min(rates), max(rates)):
            edges.append(r["batch_size"])
    if edges:
        out.append(
            f"- The fastest rate lies at an edge of the grid for B={edges}: a rate beyond it "
            "might reach the target in fewer steps."
        )
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
    out.append(
        "- Steps to target: "
        + ", ".join(f"B={b}: {s}" for b, s in zip(sizes, steps, strict=True))
        + "."
    )
    within = _perfect_scaling_end(reached)
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
    k = min(3, len(reached))
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
    if len(reached) > k:
        if large > -0.15:
            verdict = "a plateau: more batch buys no fewer steps, as Shallue et al. found."
        elif large > -0.6:
            verdict = "diminishing returns, as Shallue et al. found."
        else:
            verdict = "still near perfect scaling: no flattening within the range (differs)."
        out.append(
            f"- **Large batches** (B={sizes[-k]}..{sizes[-1]}): slope {large:.2f}; {verdict}"
        )
    if fit is not None:
        note = (
            " The best B_crit lies at the edge of the search: the range shows no clear knee."
            if fit["at_bound"]
            else ""
        )
        out.append(
            f"- Fit S(B) = S_min (1 + B_crit / B) (McCandlish et al.): S_min={fit['s_min']:.3g} "
            f"steps, B_crit={fit['b_crit']:.3g} (RMS error of log S {fit['rms_log_error']:.2f})."
            + note
        )
    return out


def collect_steps_to_target(
    config, workdir: str, dataset: data_lib.Dataset
) -> tuple[list[dict], list[dict], dict | None]:
    """Runs (or reuses) the engine run of every batch size; returns ``(per_size, per_trial,
    fit)``."""
    s = config.steps_to_target
    os.makedirs(workdir, exist_ok=True)
    summary: list[dict] = []
    metrics_rows: list[dict] = []
    offset = 0
    for b, cfg in steps_to_target_configs(config, dataset.num_train).items():
        rows, records = run_engine(cfg, os.path.join(workdir, f"bs_{b:04d}"))
        # Trials are numbered per run; renumber them so that batch sizes do not collide.
        summary += [dict(r, trial=r["trial"] + offset) for r in rows]
        metrics_rows += [dict(r, trial=r["trial"] + offset) for r in records]
        offset += len(rows)
    per_size, per_trial = steps_to_target(summary, metrics_rows, s.metric, float(s.target))
    reached = [r for r in per_size if r["reached"]]
    fit = fit_critical_batch([r["batch_size"] for r in reached], [r["steps"] for r in reached])
    return per_size, per_trial, fit


def run_steps_to_target(
    config, workdir: str, dataset: data_lib.Dataset
) -> tuple[list[dict], list[dict], dict | None]:
    """The steps-to-target study into ``workdir``; returns ``(per_size, per_trial, fit)``."""
    s = config.steps_to_target
    per_size, per_trial, fit = collect_steps_to_target(config, workdir, dataset)
    sizes = check_batch_sizes(s.batch_sizes, "steps_to_target.batch_sizes")
    compute_rows = _compute_rows(config, dataset, sizes, workdir)
    _merge_compute(per_size, compute_rows)
    extra = ("temp_bytes", "peak_bytes", "examples_per_s", "ms_per_step")
    files.write_csv(os.path.join(workdir, "steps_to_target.csv"), per_size, STEPS_COLUMNS + extra)
    files.write_csv(
        os.path.join(workdir, "steps_to_target_trials.csv"), per_trial, STEPS_TRIAL_COLUMNS
    )
    op = ">=" if higher_is_better(s.metric) else "<="
    plots = [
        plot_steps_to_target(
            per_size,
            per_trial,
            fit,
            os.path.join(workdir, "plots", "steps_to_target.png"),
            f"steps to {s.metric} {op} {s.target:g}",
        ),
    ]
    if compute_rows:
        plots.append(plot_compute(compute_rows, os.path.join(workdir, "plots", "compute.png")))
    intro = [
        f"Each batch size trained with the rates {tuple(float(v) for v in s.learning_rates)} "
        f"(scaled by the `{s.lr_scaling}` rule from B0={s.base_batch_size}; vmapped in one "
        f"population per batch size) for a budget of {s.budget_epochs:g} epochs clipped to "
        f"[{s.min_budget_steps}, {s.max_budget_steps}] steps, evaluated about "
        f"{s.evals_per_trial} times. Steps to target: the first evaluation at which "
        f"{s.metric} {op} {s.target:g}, minimised over the rates (so it is exact to one "
        "evaluation interval). A batch size whose rates all miss the target within the budget "
        "is reported as not reached.",
    ]
    table_cols = [
        "batch_size",
        "reached",
        "steps",
        "epochs",
        "examples",
        "learning_rate",
        "lrs_reached",
        "lrs_tried",
        "budget_steps",
        "perfect_scaling_steps",
    ]
    _write_report(
        workdir,
        "Steps to target against batch size (Shallue et al. 2018)",
        [
            ("Setup", intro),
            (
                "Measured against the published shape",
                describe_steps(per_size, fit, s.metric, float(s.target), per_trial),
            ),
            ("Results", [markdown.markdown_table(per_size, table_cols)]),
            (
                "Memory and speed per batch size",
                _compute_section(compute_rows)
                + _engine_section(workdir, [f"bs_{b:04d}" for b in sizes]),
            ),
        ],
        [os.path.relpath(p, workdir) for p in plots],
    )
    return per_size, per_trial, fit


# ---------------------------------------------------------------------------- noise scale


def _noise_trial(config, per_size: Sequence[Mapping], per_trial: Sequence[Mapping]) -> float:
    """The base learning rate (before scaling) of the measured trial."""
    s = config.noise_scale
    if s.learning_rate > 0:
        return float(s.learning_rate)
    row = next(r for r in per_size if r["batch_size"] == s.batch_size)
    if row["reached"]:
        return float(row["base_learning_rate"])
    at_b = [r for r in per_trial if r["batch_size"] == s.batch_size and _finite(r["best_metric"])]
    pick = max if higher_is_better(config.steps_to_target.metric) else min
    return float(pick(at_b, key=lambda r: r["best_metric"])["base_learning_rate"])


def measure_noise_scale(cfg, dataset: data_lib.Dataset, section, seed: int = 0) -> list[dict]:
    """Trains the engine config ``cfg`` (one population) and measures B_simple at every
    evaluation: ``section.num_draws`` two-batch measurements per trial (batch sizes
    ``section.small_batch`` and ``section.big_batch``) and, with ``section.exact``, the exact
    value from all per-example gradients of the training set."""
    n = dataset.num_train
    (plan,) = study.plan_populations(cfg, study.build_trials(cfg), n)
    model = build_model(study.model_config(cfg, ()), dataset.input_shape, dataset.num_classes)
    spec = train.make_spec(cfg, model, plan, n, dataset.num_classes)
    k = len(plan.trials)
    hparams = population.make_hparams(
        learning_rate=[t.learning_rate for t in plan.trials],
        batch_size=[t.batch_size for t in plan.trials],
        seed=[t.seed for t in plan.trials],
        weight_decay=[t.weight_decay for t in plan.trials],
        warmup_steps=list(plan.warmup_steps),
        decay_rate=[float(cfg.decay_rate)] * k,
        end_factor=[float(cfg.end_factor)] * k,
        max_steps=list(plan.max_steps),
    )
    data = train.StudyData.put(dataset, int(cfg.get("train_eval_examples", 2048)))
    state = population.init_population(spec, hparams)
    small, big, draws = int(section.small_batch), int(section.big_batch), int(section.num_draws)
    key = jax.random.PRNGKey(seed)
    rows: list[dict] = []
    tick = 0
    reporter = progress.Progress("noise scale", plan.total_ticks, k, float(cfg.log_every_s))
    reporter.update(0)
    while True:
        params = state.trials.params
        key, sub = jax.random.split(key)
        small_sq, big_sq = noise_scale.measure_population(
            model.apply,
            params,
            data.x_train,
            data.y_train,
            jax.random.split(sub, k),
            small,
            big,
            draws,
        )
        train_loss, _ = population.evaluate(spec, params, data.x_train_eval, data.y_train_eval)
        val_loss, val_acc = population.evaluate(spec, params, data.x_val, data.y_val)
        host = jax.device_get((state.trials.step, small_sq, big_sq, train_loss, val_loss, val_acc))
        steps, small_sq, big_sq, train_loss, val_loss, val_acc = host
        for j, trial in enumerate(plan.trials):
            est = noise_scale.simple_noise_scale(small_sq[j], big_sq[j], small, big)
            row = {
                "trial": trial.index,
                "learning_rate": trial.learning_rate,
                "batch_size": trial.batch_size,
                "step": int(steps[j]),
                "epoch": float(steps[j] * trial.batch_size / n),
                "train_loss": float(train_loss[j]),
                "val_loss": float(val_loss[j]),
                "val_accuracy": float(val_acc[j]),
                "grad_sq": float(est.grad_sq),
                "trace": float(est.trace),
                "b_simple": float(est.b_simple),
            }
            if section.get("exact", True):
                one = jax.tree.map(lambda leaf, j=j: leaf[j], params)
                exact = jax.device_get(
                    noise_scale.exact_noise_scale(model.apply, one, data.x_train, data.y_train)
                )
                row.update(
                    grad_sq_exact=float(exact.grad_sq),
                    trace_exact=float(exact.trace),
                    b_simple_exact=float(exact.b_simple),
                )
            rows.append(row)
        if tick >= plan.total_ticks:
            break
        num = min(plan.eval_ticks, plan.total_ticks - tick)
        state = population.train_ticks(
            spec, state, hparams, data.x_train, data.y_train, jnp.asarray(num, jnp.int32)
        )
        tick = int(state.tick)
        reporter.update(tick)
    for trial in plan.trials:
        series = [r for r in rows if r["trial"] == trial.index]
        ema = noise_scale.ema_noise_scale(
            [r["grad_sq"] for r in series], [r["trace"] for r in series], float(section.ema_decay)
        )
        for r, value in zip(series, ema.b_simple, strict=True):
            r["b_simple_ema"] = float(value)
        if section.get("exact", True):
            ema = noise_scale.ema_noise_scale(
                [r["grad_sq_exact"] for r in series],
                [r["trace_exact"] for r in series],
                float(section.ema_decay),
            )
            for r, value in zip(series, ema.b_simple, strict=True):
                r["b_simple_exact_ema"] = float(value)
    return rows


def _swing(rows: Sequence[Mapping]) -> float:
    key = "b_simple_exact" if all(_finite(r.get("b_simple_exact")) for r in rows) else "b_simple"
    values = [r[key] for r in rows if _finite(r.get(key)) and r[key] > 0]
    pairs = [max(a, b) / min(a, b) for a, b in zip(values, values[1:], strict=False)]
    return max(pairs) if pairs else 1.0


def describe_noise(
    at_target: Mapping | None,
    rows: Sequence[Mapping],
    fit: Mapping | None,
    per_size: Sequence[Mapping],
    metric: str,
    target: float,
) -> list[str]:
    """Sentences comparing B_simple with the steps-to-target curve (McCandlish et al. 2018)."""
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
            f"{_swing(rows):.2g} (the exact value too): one measurement says little."
        )
    exact = [r for r in rows if _finite(r.get("b_simple_exact")) and r["b_simple_exact"] > 0]
    if exact:
        ratios = [r["b_simple"] / r["b_simple_exact"] for r in exact if _finite(r.get("b_simple"))]
        if ratios:
            out.append(
                "- The two-batch estimate against the exact value (all per-example gradients of "
                f"the training set): median ratio {np.median(ratios):.3g}, range "
                f"{min(ratios):.3g}..{max(ratios):.3g} over {len(ratios)} measurements."
            )
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
            if _finite(at_target.get("b_simple_exact_ema"))
            else ""
        )
        + "."
    )
    reached = [r for r in per_size if r["reached"]]
    end = _perfect_scaling_end(reached) if reached else 0
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
        ratio = at_target["b_simple_ema"] / fit["b_crit"]
        same = 1 / 3 <= ratio <= 3
        out.append(
            f"- Critical batch size from the steps-to-target fit: B_crit={fit['b_crit']:.3g}; "
            f"B_simple / B_crit = {ratio:.2g}: "
            + (
                "the same order, as McCandlish et al. predict (B_simple ~ B_crit)."
                if same
                else "not of the same order (beyond a factor 3): this differs."
            )
        )
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


def run_noise_scale(config, workdir: str, dataset: data_lib.Dataset) -> list[dict]:
    """The noise-scale study into ``workdir`` (runs or reuses steps to target beside it)."""
    s, stt = config.noise_scale, config.steps_to_target
    steps_dir = os.path.join(os.path.dirname(workdir), "steps_to_target")
    done = os.path.exists(os.path.join(steps_dir, "steps_to_target.csv")) and all(
        _same_run(cfg, os.path.join(steps_dir, f"bs_{b:04d}"))
        for b, cfg in steps_to_target_configs(config, dataset.num_train).items()
    )
    if done:
        per_size, per_trial, fit = collect_steps_to_target(config, steps_dir, dataset)
    else:  # the whole steps-to-target study, with its own outputs and report
        per_size, per_trial, fit = run_steps_to_target(config, steps_dir, dataset)
    cfg = noise_config(config, _noise_trial(config, per_size, per_trial), dataset.num_train)
    _check_engine_config(cfg, dataset)
    b, steps = int(s.batch_size), int(cfg.num_steps)
    os.makedirs(workdir, exist_ok=True)
    files.write_json(os.path.join(workdir, "config.json"), train.config_to_dict(cfg))
    rows = measure_noise_scale(cfg, dataset, s)
    files.write_csv(
        os.path.join(workdir, "noise_scale.csv"),
        rows,
        ("learning_rate", "batch_size") + NOISE_COLUMNS,
    )
    at_target = first_reaching(rows, stt.metric, float(stt.target))
    noise = at_target and {
        "b_simple": at_target["b_simple_ema"],
        "b_simple_exact": at_target.get("b_simple_exact"),
    }
    op = ">=" if higher_is_better(stt.metric) else "<="
    plots = [
        plot_steps_to_target(
            per_size,
            per_trial,
            fit,
            os.path.join(workdir, "plots", "steps_to_target_and_noise.png"),
            f"steps to {stt.metric} {op} {stt.target:g}, and B_simple at it",
            noise=noise or None,
        ),
        plot_noise_along_training(
            rows,
            stt.metric,
            float(stt.target),
            os.path.join(workdir, "plots", "noise_scale.png"),
            at_target,
        ),
    ]
    rate = rows[0]["learning_rate"]
    intro = [
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
    shown = rows[:: max(1, len(rows) // 12)]
    if rows[-1] not in shown:
        shown.append(rows[-1])
    cols = [
        "step",
        "epoch",
        "val_loss",
        "val_accuracy",
        "b_simple",
        "b_simple_ema",
        "b_simple_exact",
        "b_simple_exact_ema",
    ]
    _write_report(
        workdir,
        "Gradient noise scale and the critical batch size (McCandlish et al. 2018)",
        [
            ("Setup", intro),
            (
                "Measured against the published shape",
                describe_noise(at_target, rows, fit, per_size, stt.metric, float(stt.target)),
            ),
            (
                "Along training (a sample of the measurements)",
                [markdown.markdown_table(shown, [c for c in cols if c in shown[0]])],
            ),
        ],
        [os.path.relpath(p, workdir) for p in plots],
    )
    return rows


# ------------------------------------------------------------------------------- the study


RUNNERS = {
    "fixed_epochs": run_fixed_epochs,
    "steps_to_target": run_steps_to_target,
    "noise_scale": run_noise_scale,
}


def run(config, workdir: str) -> dict[str, str]:
    """Runs ``config.study`` (one of :data:`STUDIES`, or ``all``) into ``workdir/<study>/``.

    Every check runs before anything compiles or touches the workdir; returns study -> report.
    """
    validate_config(config)
    dataset = data_lib.load_dataset(config)
    validate_config(config, dataset.num_train)
    engine_configs(config, dataset)
    reports = {}
    for name in _studies(config):
        directory = os.path.join(workdir, name)
        logging.info("batch-size study %s into %s", name, directory)
        RUNNERS[name](config, directory, dataset)
        reports[name] = os.path.join(directory, REPORT)
    return reports
