"""The batch-size studies' config: sections, checks before anything compiles, and the engine
config of every run they make.
"""

from __future__ import annotations

import json
import math
from typing import Any

import ml_collections
import numpy as np

from hpjax import data as data_lib
from hpjax.config import as_tuple
from hpjax.errors import ConfigError
from hpjax.models import build_model
from hpjax.study import spec as spec_lib

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
    "steps_low",
    "steps_high",
    "seeds",
    "seeds_reached",
    "resolution",
    "epochs",
    "examples",
    "learning_rate",
    "momentum",
    "trial",
    "lrs_reached",
    "lrs_tried",
    "budget_steps",
    "perfect_scaling_steps",
)


STEPS_TRIAL_COLUMNS = (
    "batch_size",
    "seed",
    "learning_rate",
    "base_learning_rate",
    "momentum",
    "status",
    "reached",
    "steps",
    "interval",
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


def _fail(key: str, value: Any, why: str) -> None:
    raise ConfigError(f"config.{key}={value!r} {why}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, int | float | np.number) and not isinstance(v, bool)


def check_batch_sizes(value, key: str, num_train: int | None = None) -> tuple[int, ...]:
    """The batch sizes of ``config.<key>``: a non-empty list of distinct positive integers, none
    above ``num_train`` when it is given; else :class:`ConfigError` naming the key."""
    sizes = as_tuple(value)
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
    rates = as_tuple(value)
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


def momenta(section) -> tuple[float, ...]:
    """The momenta a steps-to-target study tunes with the rate; () when it keeps one."""
    return tuple(float(m) for m in as_tuple(section.get("momenta", ())))


def _check_momenta(config, key: str) -> None:
    values = as_tuple(config.steps_to_target.get("momenta", ()))
    if not values:
        return
    if not all(_is_real(m) and 0 <= m < 1 for m in values) or len(set(values)) != len(values):
        _fail(f"{key}.momenta", values, "must hold distinct numbers in [0, 1), or be () for none")
    if config.get("optimizer") != "momentum":
        _fail(
            f"{key}.momenta",
            values,
            f"tunes SGD's momentum: it needs optimizer='momentum', not {config.get('optimizer')!r}",
        )


def studies(config) -> tuple[str, ...]:
    name = config.get("study", "fixed_epochs")
    if name == "all":
        return STUDIES
    if name not in STUDIES:
        _fail("study", name, f"is unknown; allowed: {', '.join(STUDIES)}, all")
    return (name,)


def validate_config(config, num_train: int | None = None) -> None:
    """Every check of the batch-size study's own keys; ``num_train`` adds the data-dependent ones.

    The engine's keys are checked by :func:`engine_configs` through :func:`hpjax.study.spec.parse`.
    """
    for name in studies(config):
        if name not in config:
            _fail(name, None, f"is missing; config.study={config.study!r} needs it")
    names = set(studies(config))
    if "noise_scale" in names:
        names.add("steps_to_target")
    compute = config.get("compute", None)
    if compute is not None and as_tuple(compute.get("batch_sizes", ())):
        check_batch_sizes(compute.batch_sizes, "compute.batch_sizes", num_train)
    if "fixed_epochs" in names:
        s, key = config.fixed_epochs, "fixed_epochs"
        check_batch_sizes(s.batch_sizes, f"{key}.batch_sizes", num_train)
        _check_rates(s.learning_rates, f"{key}.learning_rates")
        _check_rates(s.learning_rate, f"{key}.learning_rate")
        _check_positive(s, "num_epochs", key)
        _check_positive(s, "base_batch_size", key, integer=True)
        _check_positive(s, "eval_every", key, integer=True)
        for rule in as_tuple(s.scalings):
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
        seeds = as_tuple(s.seeds)
        if not seeds or not all(isinstance(v, int) and not isinstance(v, bool) for v in seeds):
            _fail(f"{key}.seeds", s.seeds, "must be a non-empty tuple of integers")
        if not (_is_real(s.resolution) and 0 <= s.resolution < 1):
            _fail(f"{key}.resolution", s.resolution, "must be in [0, 1) (0: evals_per_trial only)")
        _check_momenta(config, key)
    if "noise_scale" in names:
        s, key = config.noise_scale, "noise_scale"
        model = config.get("model", {})
        stateful = [k for k in ("batch_norm", "dropout_layers") if model.get(k, False)]
        if stateful:
            _fail(
                f"model.{stateful[0]}",
                True,
                "is not measured by the noise_scale study: per-example gradients are not "
                "defined where batch statistics or dropout masks tie the examples together",
            )
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


def compute_section(config) -> ml_collections.ConfigDict | None:
    """The ``compute`` section (the profile of time per step against batch size), if any."""
    return config.get("compute", None)


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
    base.setdefault("batch_size", as_tuple(base.get("batch_sizes"))[0])
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
    grid = tuple(sorted(set(as_tuple(s.learning_rates)) | {float(s.learning_rate)}))
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
    for rule in as_tuple(s.scalings):
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
        tuned = {}
        if momenta(s):  # every rate with every momentum and seed, as listed trials
            points = [
                {"learning_rate": float(lr), "momentum": m, "seed": int(seed), "batch_size": b}
                for lr in as_tuple(s.learning_rates)
                for m in momenta(s)
                for seed in as_tuple(s.seeds)
            ]
            tuned = {"trials": json.dumps(points)}
        runs[b] = train_config(
            config,
            f"steps_to_target/bs_{b}",
            batch_sizes=(b,),
            learning_rates=as_tuple(s.learning_rates),
            lr_scaling=s.lr_scaling,
            base_batch_size=int(s.base_batch_size),
            warmup_epochs=float(s.warmup_epochs),
            num_steps=steps,
            eval_every=max(1, steps // int(s.evals_per_trial)),
            eval_growth=float(s.resolution),
            seeds=as_tuple(s.seeds),
            report_x="learning_rate",
            **tuned,
        )
    return runs


def noise_config(
    config, base_learning_rate: float, num_train: int, momentum: float | None = None
) -> ml_collections.ConfigDict:
    """The engine config of the noise-scale trial: ``noise_scale.batch_size`` at the base rate
    (scaled like steps to target) and ``momentum`` (None: the config's), its steps-to-target
    budget unless ``noise_scale.num_steps`` is set, evaluated (and measured)
    ``noise_scale.num_measurements`` times, the first seed."""
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
        seeds=(int(as_tuple(config.seeds)[0]),),
        patience=0,  # measured along the whole budget
        make_report=False,
        **({} if momentum is None else {"momentum": float(momentum)}),
    )


def check_engine_config(cfg, dataset: data_lib.Dataset) -> None:
    parsed = spec_lib.parse(cfg, num_train=dataset.num_train)
    for arch in parsed.architectures:
        build_model(parsed.model_config(arch), dataset.input_shape, dataset.num_classes)


def engine_configs(config, dataset: data_lib.Dataset) -> dict[str, Any]:
    """Every engine config the chosen studies will run, checked before anything compiles."""
    names = set(studies(config))
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
            check_engine_config(cfg, dataset)
    return out
