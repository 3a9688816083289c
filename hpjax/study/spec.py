"""Parse once: a study's ``ConfigDict`` becomes a frozen, typed :class:`StudySpec`.

This module is the one reader of the config below the binaries. It takes every key of
:func:`hpjax.config.default_config` (the one table of defaults), checks each once, and names the
key in one line when a value is wrong, before anything compiles or touches the workdir. What it
returns is plain frozen dataclasses: the trials, the optimizer and schedule, the budget and early
stopping, placement, the adaptive scheduler, and the outputs. Everything below (populations, the
host loop, schedulers, the engine, results) takes these typed values.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from hpjax.config import as_tuple, config_to_dict
from hpjax.engine import host_data
from hpjax.engine import hparams as hparams_lib
from hpjax.errors import config_error
from hpjax.models.precision import PRECISIONS
from hpjax.study import space as space_lib
from hpjax.study import trials as trials_lib
from hpjax.study.config_reader import Reader as _Reader
from hpjax.study.config_reader import fail as _fail
from hpjax.study.config_reader import is_int as _is_int
from hpjax.study.config_reader import is_real as _is_real
from hpjax.study.optimizer_section import check_optimizer_axes, parse_optimizers
from hpjax.study.populations import batch_groups
from hpjax.study.sections import (
    AdaptiveSpec,
    BudgetSpec,
    OutputSpec,
    PlacementSpec,
    ProcessSpec,
    ReplaySpec,
    StudySpec,
)

BATCH_AXES = ("auto", "split", "vmap")
SCHEDULERS = ("none", "asha", "pbt")
OUTPUT_SWITCHES = ("auto", "on", "off")
PBT_DEFAULT_KEYS = ("learning_rate", "weight_decay")


def with_points(study: StudySpec, points: Sequence[Mapping[str, Any]]) -> StudySpec:
    """The same study over the trials ``points`` (a search's proposals), handed in memory;
    its config records them as ``trials`` (config.json)."""
    listed = [dict(p) for p in points]
    source = dataclasses.replace(study.source, explicit=tuple(listed))
    config = dict(study.config) | {"trials": json.dumps(listed, sort_keys=True)}
    trials = trials_lib.build_trials(source)
    check_optimizer_axes(study.optimizers, trials)
    return dataclasses.replace(study, trials=trials, source=source, config=config)


def with_inputs(
    study: StudySpec, data: str, model: str, sizes: dict[str, int] | None = None
) -> StudySpec:
    """The study with the fingerprints of its data and (a user's) model in its config, which
    config.json records: a rerun with other data or another model under the same name then
    differs from the workdir's study, and is refused instead of answered with old results.
    ``sizes`` (examples per split) tell the reports how noisy a validation loss is."""
    config = dict(study.config) | {"data_fingerprint": data, "model_fingerprint": model}
    if sizes is not None:
        config["data_sizes"] = dict(sizes)
    return dataclasses.replace(study, config=config)


def parse_process(config: ml_collections.ConfigDict) -> ProcessSpec:
    """The process keys of ``config``, checked (the binaries read them before JAX starts)."""
    read = _Reader(config)
    return ProcessSpec(
        cpu_devices=read.integer("cpu_devices", 0, "0 = one per core"),
        compilation_cache=str(read.raw("compilation_cache") or ""),
        distributed=read.flag("distributed"),
        coordinator_address=str(read.raw("coordinator_address") or ""),
        num_processes=read.integer("num_processes", 0, "0 = found by JAX"),
        process_id=read.integer("process_id", -1, "-1 = found by JAX"),
    )


def parse_replay(config: ml_collections.ConfigDict) -> ReplaySpec:
    """``config.replay``, checked; with ``run`` the study must be dense (its trials are cut by
    neither a scheduler, slots nor a budget), refused before anything trains."""
    read = _Reader(config)
    spec = ReplaySpec(
        run=read.flag("replay.run"),
        schedulers=str(read.raw("replay.schedulers") or ""),
        orders=read.integer("replay.orders", 1, "arrival orders per seed"),
        slots=read.integer("replay.slots", 1, "trials training at once"),
        seed=read.integer("replay.seed"),
    )
    if spec.run:
        for key, dense in (("scheduler", "none"), ("slots", 0), ("budget_trial_steps", 0)):
            if read.raw(key) != dense:
                _fail(
                    key,
                    read.raw(key),
                    f"must be {dense!r} with replay.run=True: a replay needs a dense study, "
                    "every trial trained to its own end",
                )
    return spec


def parse(config: ml_collections.ConfigDict, *, num_train: int | None = None) -> StudySpec:
    """The typed study of ``config``; :class:`ConfigError` names the first bad key.

    ``num_train`` (the training set's size) adds the checks that need the data.
    """
    read = _Reader(config)
    optimizer, choices = parse_optimizers(read)
    budget = _budget(read)
    placement = _placement(read)
    factory_keys = tuple(dict.fromkeys(k for o in choices or (optimizer,) for k in o.factory_keys))
    source = _trial_source(read, factory_keys, tuple(o.name for o in choices))
    _refuse_lists_beside_trials(source)
    trials = trials_lib.build_trials(source)
    check_optimizer_axes(choices or (optimizer,), trials)
    adaptive = _adaptive(read, budget, placement, source)
    model = read.section("model")
    spec = StudySpec(
        trials=trials,
        model=model,
        optimizer=optimizer,
        budget=budget,
        placement=placement,
        adaptive=adaptive,
        outputs=_outputs(read, model, source),
        source=source,
        config=config_to_dict(config),
        optimizer_choices=choices,
    )
    if num_train is not None:
        check_data(spec, num_train)
    return spec


def check_data(spec: StudySpec, num_train: int) -> None:
    """The checks that need the training set's size: batch sizes and warmup against it."""
    sizes = sorted({t.batch_size for t in spec.trials})
    key = spec.source.batch_size_key
    for size in sizes:
        if size > num_train:
            _fail(key, size, f"is larger than the training set ({num_train} examples)")
    warmup = spec.optimizer.warmup_steps
    if warmup > 0 and not spec.optimizer.warmup_epochs > 0:
        for size in sizes:
            steps = spec.budget.max_steps(size, num_train)
            if warmup >= steps:
                _fail(
                    "warmup_steps",
                    warmup,
                    f"is not below the budget of {steps} steps (batch size {size}): the rate "
                    "would never reach its peak",
                )


def _budget(read: _Reader) -> BudgetSpec:
    steps = read.raw("num_steps")
    epochs = read.number("num_epochs", 0.0, math.inf, open_high=True)
    if not _is_int(steps) or (steps <= 0 and epochs <= 0):
        _fail("num_steps", steps, "must be positive (or set config.num_epochs > 0)")
    return BudgetSpec(
        num_steps=int(steps),
        num_epochs=epochs,
        eval_every=read.integer("eval_every", 1, "steps between evaluations"),
        patience=read.integer("patience", 0, "evaluations without improvement; 0 = never stop"),
        min_delta=read.number("min_delta", 0.0, math.inf, open_high=True),
        min_steps=read.integer("min_steps", 0, "steps before early stopping may stop a trial"),
        checkpoint_every=read.integer(
            "checkpoint_every", 0, "evaluations between state checkpoints; 0 = at the end"
        ),
        divergence_factor=read.number(
            "divergence_factor",
            0.0,
            math.inf,
            open_low=True,
            open_high=True,
            meaning="x ln(classes): a batch loss above diverges",
        ),
        eval_batch_size=read.integer("eval_batch_size", 1, "examples per evaluation batch"),
        eval_growth=_eval_growth(read),
    )


def _eval_growth(read: _Reader) -> float:
    growth = read.number("eval_growth", 0.0, 1.0, open_high=True)
    if growth > 0 and read.raw("patience") > 0:
        _fail(
            "eval_growth",
            growth,
            "needs patience=0: patience counts evaluations, which eval_growth spaces unevenly",
        )
    return growth


def _placement(read: _Reader) -> PlacementSpec:
    return PlacementSpec(
        num_devices=read.integer("num_devices", 0, "devices to shard over; 0 = all"),
        batch_axis=read.choice("batch_axis", BATCH_AXES),
        max_accumulation=read.integer("max_accumulation", 1, "micro-batches per batch"),
        compact_fraction=read.number(
            "compact_fraction",
            0.0,
            1.0,
            open_high=True,
            meaning="share of training rows that triggers compaction",
        ),
        max_population=read.integer("max_population", 0, "trials per program; 0 = no limit"),
        memory_fraction=read.number(
            "memory_fraction",
            0.0,
            1.0,
            open_low=True,
            meaning="share of device memory a population may use",
        ),
        train_eval_examples=read.integer(
            "train_eval_examples", 1, "training examples to measure the training loss"
        ),
        precision=read.choice("precision", PRECISIONS),
        train_data=read.choice("train_data", host_data.PLACEMENTS),
    )


def _unit_interval(read: _Reader, key: str) -> tuple[float, ...]:
    values = as_tuple(read.raw(key))
    if not values or not all(_is_real(v) and 0 <= v < 1 for v in values):
        _fail(key, values, "must be a non-empty tuple of numbers in [0, 1)")
    return tuple(float(v) for v in values)


def _refuse_lists_beside_trials(source: trials_lib.TrialSource) -> None:
    """``trials`` names every trial as it is: a list of several values beside it (seeds, batch
    sizes, weight decays, ``model_grid``) would be dropped, so it is refused in one line. The
    learning rates' list, whose default holds several, is what ``trials`` replaces."""
    if not source.explicit:
        return
    for key, values in [
        ("model_grid", trials_lib.architectures(source)),
        ("seeds", source.seeds),
        (source.batch_size_key, source.batch_sizes),
        ("weight_decays", source.weight_decays),
        ("dropouts", source.dropouts),
        ("label_smoothings", source.label_smoothings),
    ]:
        if len(values) > 1:
            shown = dict(source.model_grid) if key == "model_grid" else values
            _fail(
                key,
                shown,
                "lists several values beside trials, which names every trial as it is: give "
                "each trial its own values in trials (model.KEY for the architecture)",
            )


def _positive_ints(key: str, values: tuple) -> tuple[int, ...]:
    for value in values:
        if not _is_int(value) or value <= 0:
            _fail(key, values if len(values) != 1 else values[0], "must hold positive integers")
    return tuple(int(v) for v in values)


def _explicit_trials(read: _Reader) -> tuple[dict, ...]:
    """``config.trials``: a JSON list of trial objects (none when empty)."""
    text = read.raw("trials") or ""
    if not isinstance(text, str):
        _fail("trials", text, "must be a JSON string of a list of trials")
    if text:
        try:
            listed = json.loads(text)
        except json.JSONDecodeError as error:
            raise config_error("trials", text[:80], f"is not JSON ({error})") from None
        if (
            not isinstance(listed, list)
            or not listed
            or not all(isinstance(d, dict) for d in listed)
        ):
            _fail("trials", text[:80], "must be a JSON list of trial objects")
        return tuple(listed)
    return ()


def _trial_source(
    read: _Reader, optimizer_keys: tuple[str, ...], optimizers: tuple[str, ...]
) -> trials_lib.TrialSource:
    """Every way the config names trials, read and checked (built by :mod:`.trials`);
    ``optimizer_keys``: the optax factories' keywords a trial (or the space) may set;
    ``optimizers``: the optimizer axis (config.optimizers)."""
    explicit = _explicit_trials(read)
    seeds = as_tuple(read.raw("seeds"))
    if not seeds:
        _fail("seeds", seeds, "is empty; list at least one seed")
    for seed in seeds:
        if not _is_int(seed) or seed < 0:
            _fail("seeds", seeds, "must hold non-negative integers")
    sizes = as_tuple(read.raw("batch_sizes"))
    key = "batch_sizes"
    if not sizes:
        sizes, key = (read.raw("batch_size"),), "batch_size"
    decays = as_tuple(read.raw("weight_decays"))
    if not decays or not all(_is_real(w) and math.isfinite(w) and w >= 0 for w in decays):
        _fail("weight_decays", decays, "must be a non-empty tuple of finite numbers >= 0")
    regularisation = {key: _unit_interval(read, key) for key in ("dropouts", "label_smoothings")}
    rates = as_tuple(read.raw("learning_rates"))
    sampling = read.choice("lr_sampling", trials_lib.LR_SAMPLINGS)
    if sampling == "grid":
        if not rates:
            _fail("learning_rates", rates, "is empty; list at least one learning rate")
        if not all(_is_real(r) and math.isfinite(r) and r > 0 for r in rates):
            _fail("learning_rates", rates, "must hold positive finite numbers")
    count = 0
    lr_range = (1e-4, 1e-1)
    if sampling != "grid":
        count = read.integer("num_lr_samples", 1, f"rates drawn with lr_sampling={sampling!r}")
        lr_range = tuple(as_tuple(read.raw("lr_range")))
        if not (
            len(lr_range) == 2
            and all(_is_real(v) for v in lr_range)
            and 0 < lr_range[0] < lr_range[1]
            and math.isfinite(lr_range[1])
        ):
            _fail("lr_range", lr_range, "must be (low, high) with 0 < low < high")
    scaling = read.choice("lr_scaling", trials_lib.LR_SCALINGS)
    base = read.raw("base_batch_size")
    if scaling != "fixed" and (not _is_int(base) or base <= 0):
        _fail("base_batch_size", base, f"must be a positive integer with lr_scaling={scaling!r}")
    space = read.section("space")
    sampler = read.choice("space_sampler", space_lib.SAMPLERS)
    grid = read.section("model_grid")
    for name in sorted(grid):
        if name == "name" or not as_tuple(grid[name]):
            _fail(f"model_grid.{name}", grid[name], "must be a non-empty list of model values")
    return trials_lib.TrialSource(
        learning_rates=tuple(float(r) for r in rates),
        lr_sampling=sampling,
        lr_range=(float(lr_range[0]), float(lr_range[1])),
        num_lr_samples=count,
        sampling_seed=read.integer("sampling_seed", 0),
        seeds=tuple(int(s) for s in seeds),
        batch_sizes=_positive_ints(key, sizes),
        batch_size_key=key,
        weight_decays=tuple(float(w) for w in decays),
        **regularisation,
        lr_scaling=scaling,
        base_batch_size=int(base) if _is_int(base) else 0,
        explicit=explicit,
        dimensions=tuple(space_lib.parse_space(space, extra_keys=optimizer_keys)),
        space_sampler=sampler,
        num_samples=read.raw("num_samples"),
        model_grid=tuple((k, tuple(as_tuple(grid[k]))) for k in sorted(grid)),
        optimizer_keys=optimizer_keys,
        optimizers=optimizers,
    )


def _adaptive(
    read: _Reader, budget: BudgetSpec, placement: PlacementSpec, source: trials_lib.TrialSource
) -> AdaptiveSpec:
    name = read.choice("scheduler", SCHEDULERS)
    slots = read.integer("slots", 0, "rows of the program; 0 = a row per trial")
    spend = read.integer("budget_trial_steps", 0, "0 = no study budget")
    eta = read.number("asha.eta", 2.0, math.inf, open_high=True, meaning="the reduction factor")
    rung = read.integer("asha.min_steps", 1, "the first rung, in steps")
    fraction = read.number("pbt.fraction", 0.0, 0.5, open_low=True)
    resample = read.number("pbt.resample_probability", 0.0, 1.0)
    interval = read.integer("pbt.interval", 1, "steps between exploit/explore rounds")
    dimensions = source.dimensions
    keys = tuple(d.key for d in dimensions if d.key != "seed") or PBT_DEFAULT_KEYS
    if budget.eval_growth > 0 and (name == "pbt" or slots):
        _fail(
            "eval_growth",
            budget.eval_growth,
            "counts steps from the start of the program: it needs a row per trial (slots=0) "
            "and no PBT",
        )
    if name == "pbt":
        if interval % budget.eval_every:
            _fail(
                "pbt.interval", interval, f"must be a multiple of eval_every ({budget.eval_every})"
            )
        if slots:
            _fail("slots", slots, "must be 0 with scheduler='pbt' (a slot per member)")
        if len(set(source.batch_sizes)) > 1:
            _fail(
                "batch_sizes",
                source.batch_sizes,
                "must hold one size with scheduler='pbt' (search space.batch_size instead)",
            )
        _check_pbt_batch_sizes(dimensions, placement)
    return AdaptiveSpec(
        scheduler=name,
        slots=slots,
        budget_trial_steps=spend,
        asha_min_steps=rung,
        asha_eta=eta,
        pbt_interval=interval,
        pbt_fraction=fraction,
        pbt_resample_probability=resample,
        pbt_seed=read.integer("pbt.seed", 0),
        pbt_keys=keys,
        dimensions=dimensions,
    )


def _check_pbt_batch_sizes(dimensions, placement: PlacementSpec) -> None:
    """PBT moves a member's batch size between the choices of ``space.batch_size``: all in one
    compiled program, each a divisor of the largest (every member ends its batch at each
    evaluation)."""
    dim = next((d for d in dimensions if d.key == "batch_size"), None)
    if dim is None:
        return
    if dim.is_range:
        _fail(
            "space.batch_size", (dim.low, dim.high), "must be a tuple of sizes with scheduler='pbt'"
        )
    sizes = sorted(int(b) for b in dim.choices)
    if any(sizes[-1] % b for b in sizes):
        _fail("space.batch_size", tuple(sizes), "must hold sizes that each divide the largest")
    groups = batch_groups(sizes, placement.batch_axis, placement.max_accumulation)
    if len(set(groups.values())) > 1:
        _fail(
            "space.batch_size",
            tuple(sizes),
            "spans several compiled programs; PBT needs one: set batch_axis='vmap' or raise "
            "max_accumulation",
        )


def _outputs(read: _Reader, model: Mapping, source: trials_lib.TrialSource) -> OutputSpec:
    x = read.raw("report_x")
    model_keys = (set(model) | {k for k, _ in source.model_grid}) - {"name"}
    allowed = (*REPORT_X, *source.optimizer_keys, *sorted(model_keys))
    if x not in allowed:
        _fail("report_x", x, f"is not a hyperparameter of the study; allowed: {', '.join(allowed)}")
    storage = str(read.raw("optuna_storage"))
    if storage not in ("auto", "off", "sqlite") and "://" not in storage:
        _fail("optuna_storage", storage, "is unknown; allowed: auto, off, sqlite or a database URL")
    return OutputSpec(
        restart=read.flag("restart"),
        overwrite=read.flag("overwrite"),
        log_every_s=read.number("log_every_s", 0.0, math.inf, open_high=True),
        make_report=read.flag("make_report"),
        tensorboard=read.choice("tensorboard", OUTPUT_SWITCHES),
        optuna_storage=storage,
        report_x=str(x),
    )


# The axes a report may plot results against.
REPORT_X = (*hparams_lib.SUMMARY, "base_learning_rate")
