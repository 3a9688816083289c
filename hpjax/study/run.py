"""The entry of every study: a config (or a parsed spec) in, a workdir of results out.

``train_and_evaluate(config, workdir)`` parses the config once (:mod:`hpjax.study.spec`), checks
everything before the first compilation and before the workdir is touched, plans the
populations, trains them through the one host loop (:mod:`hpjax.study.loop`), and writes the
report. A user's own model (an ``nnx.Module`` factory), task and data set plug in through its
keyword arguments (see :mod:`hpjax.api`); :func:`train_study` takes a spec already parsed (a
search hands each round's trials this way, in memory).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from flax import nnx

from hpjax import data as data_lib
from hpjax.engine import host_data, hparams, memory, tasks
from hpjax.engine.sharding import TrialSharding
from hpjax.errors import ConfigError, one_line
from hpjax.models import ABSTRACT_KEY, Model, build_model, from_factory
from hpjax.report import study_report
from hpjax.results import files, optuna_shared, optuna_storage, tensorboard
from hpjax.studies import pbt
from hpjax.study import loop, summary, waves
from hpjax.study import spec as spec_lib
from hpjax.study.hooks import UntrainedOutputs
from hpjax.study.populations import (
    PopulationPlan,
    fit_plans,
    plan_populations,
    plan_waves,
    population_spec,
)
from hpjax.study.sections import OutputSpec, StudySpec
from hpjax.study.trials import Trial, varying_keys

ModelFactory = Callable[..., nnx.Module]


def build_models(
    study: StudySpec,
    dataset: data_lib.Dataset,
    model_factory: ModelFactory | None = None,
    architectures: Sequence[tuple] | None = None,
) -> dict[tuple, Model]:
    """Every architecture of the study (or ``architectures``), built (and checked) before
    anything compiles. A factory of your own is called as ``make(rngs, **architecture)``."""
    architectures = study.architectures if architectures is None else architectures
    if model_factory is None:
        return {
            arch: build_model(study.model_config(arch), dataset.input_shape, dataset.num_classes)
            for arch in architectures
        }
    name = str(study.model.get("name", "model"))
    keys = {k for arch in architectures for k, _ in arch}
    if keys:
        _check_factory_keys(model_factory, keys)
    models = {arch: from_factory(model_factory, name, arch) for arch in architectures}
    for built in models.values():
        check_model_fits(built, dataset)
    return models


def check_model_fits(model: Model, dataset: data_lib.Dataset) -> None:
    """The model's input and output shapes against the data's, before anything compiles: one
    line naming the shapes when they do not fit."""
    x = jax.ShapeDtypeStruct((2, *dataset.input_shape), jnp.float32)
    key = ABSTRACT_KEY
    try:
        params = jax.eval_shape(model.init, key)
        out = jax.eval_shape(model.apply, params, x)
        if model.stateful:  # the training mode too (dropout streams, batch statistics)
            jax.eval_shape(model.train_apply, params, x, key, jax.ShapeDtypeStruct((), jnp.float32))
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001 (a user's module fails in many ways)
        raise ConfigError(
            f"model {model.name!r} does not take the data's inputs of shape "
            f"{list(dataset.input_shape)} (per example): {one_line(error)}"
        ) from None
    if dataset.is_classification:
        wanted, what = (2, dataset.num_classes), f"{dataset.num_classes} classes"
    else:
        wanted, what = (2, *dataset.y_train.shape[1:]), "the regression targets"
    out = tasks.model_outputs(out)
    if not isinstance(out, jax.ShapeDtypeStruct):  # a pytree of outputs: the task's to check
        return
    if tuple(out.shape) != wanted:
        raise ConfigError(
            f"model {model.name!r} gives outputs of shape {list(out.shape[1:])} per example, but "
            f"{dataset.name!r} has {what} (shape {list(wanted[1:])}): its last layer must have "
            f"{wanted[-1] if len(wanted) > 1 else 'no'} outputs"
        )


def check_task_fits(model: Model, task: tasks.Task, dataset: data_lib.Dataset) -> None:
    """The task's loss and metrics must give one value per example (``[B]``), or one of the
    batch (``[]``) for ``reduction="mean"``: one line naming the function, how it is called and
    the shape it gave, before the workdir is touched."""
    batch = 3
    x = jax.ShapeDtypeStruct((batch, *dataset.input_shape), jnp.float32)
    y = jax.ShapeDtypeStruct((batch, *dataset.y_train.shape[1:]), dataset.y_train.dtype)
    outputs = jax.eval_shape(model.apply, jax.eval_shape(model.init, ABSTRACT_KEY), x)
    plain = tasks.model_outputs(outputs)
    if not isinstance(plain, jax.ShapeDtypeStruct) and task in tasks.TASKS.values():
        structure = jax.tree_util.tree_structure(plain)
        raise ConfigError(
            f"model {model.name!r} gives its outputs as a pytree ({structure}); the built-in "
            f"task {task.name!r} takes one array: pass task=hpjax.Task(...) whose loss reads them"
        )
    per_example = task.reduction == "per_example"
    wanted = (batch,) if per_example else ()
    for name, fn in task.functions:
        call = f"{name}{tasks.signature(fn)}"
        try:
            given = jax.eval_shape(lambda o, t, i, fn=fn: task.value(fn, o, t, i), outputs, y, x)
            shape = getattr(given, "shape", None)
        except Exception as error:  # noqa: BLE001 (a user's function fails in many ways)
            raise ConfigError(
                f"task {task.name!r}: {call} fails on a batch of {batch}: {one_line(error)}"
            ) from None
        if shape is None or tuple(shape) != wanted:
            what = (
                f"one value per example (shape [{batch}] for a batch of {batch}; a value of the "
                "whole batch needs Task(..., reduction='mean'))"
                if per_example
                else "one value for the batch (a scalar, as reduction='mean' says)"
            )
            raise ConfigError(
                f"task {task.name!r}: {call} must give {what}; it gave shape "
                f"{list(shape) if shape is not None else 'none'}"
            )


def _check_augment(dataset: data_lib.Dataset) -> None:
    """The data's ``augment(key, x)`` must return a batch of ``x``'s shape (one line if not)."""
    if dataset.augment is None:
        return
    x = jax.ShapeDtypeStruct((2, *dataset.input_shape), jnp.float32)
    try:
        out = jax.eval_shape(dataset.augment, ABSTRACT_KEY, x)
    except Exception as error:  # noqa: BLE001 (a user's function fails in many ways)
        raise ConfigError(
            f"augment(key, x) fails on a batch of shape {list(x.shape)}: {one_line(error)}"
        ) from None
    if getattr(out, "shape", None) != x.shape:
        raise ConfigError(
            f"augment(key, x) must return a batch of x's shape {list(x.shape)}; got "
            f"{list(getattr(out, 'shape', ())) or type(out).__name__}"
        )


def check_regularisation(study: StudySpec, models: dict[tuple, Model], task: tasks.Task) -> None:
    """Dropout rates need a model with dropout layers, label smoothing the built-in
    cross-entropy: one line naming the key before anything compiles (a rate would otherwise
    change nothing, or train the cross-entropy in place of a loss of your own)."""
    dropout = [t.dropout for t in study.trials if t.dropout]
    if dropout and not all(m.trial_dropout for m in models.values()):
        raise ConfigError(
            f"dropout={dropout[0]} needs a model with dropout layers: "
            "--config.model.dropout_layers=True for the built-in MLP and CNN, or "
            "hpjax.models.TrialDropout in your own model (its rate is each trial's dropout)"
        )
    smoothing = [t.label_smoothing for t in study.trials if t.label_smoothing]
    if smoothing and not task.classification:
        raise ConfigError(
            f"label_smoothing={smoothing[0]} smooths class labels; task {task.name!r} has none"
        )
    given = [t.label_smoothing for t in study.trials if t.label_smoothing is not None]
    if given and task.loss is not tasks.cross_entropy:  # even 0.0: it would train in place of yours
        raise ConfigError(
            f"label_smoothing={given[0]} smooths the built-in cross-entropy; task "
            f"{task.name!r} has a loss of its own: smooth the labels inside it"
        )


def _warn_duplicates(trials: Sequence[Trial]) -> None:
    """One warning line naming the trials that repeat another's hyperparameters (a value listed
    twice, or a sampled space of few choices): they train again and give the same result."""
    first: dict[Trial, int] = {}
    repeats = []
    for trial in trials:
        same = first.setdefault(dataclasses.replace(trial, index=0), trial.index)
        if same != trial.index:
            repeats.append(f"{trial.index} (= {same})")
    if repeats:
        shown = ", ".join(repeats[:5]) + (
            f" and {len(repeats) - 5} more" if len(repeats) > 5 else ""
        )
        logging.warning(
            "%d trial(s) repeat another's hyperparameters and will train the same again: %s",
            len(repeats),
            shown,
        )


def one_batch_size_per_program(study: StudySpec, models: dict[tuple, Model]) -> StudySpec:
    """With a model whose training differs from evaluation (dropout, batch statistics), each
    batch size trains in a program of its own, its batch one micro-batch: batch statistics are
    then over the whole batch, and a trial draws the masks it draws alone."""
    if not any(m.stateful for m in models.values()) or study.placement.batch_axis == "split":
        return study
    if study.adaptive.batch_choices:
        raise ConfigError(
            "space.batch_size with scheduler='pbt': population-based training moves a member "
            "between batch sizes by accumulating micro-batches, which a model with dropout or "
            "batch normalisation cannot do exactly; search the batch size without PBT"
        )
    placement = dataclasses.replace(study.placement, batch_axis="split")
    return dataclasses.replace(study, placement=placement)


def _model_fingerprint(models: dict[tuple, Model], factory: ModelFactory | None) -> str:
    """A user model's parameter structure (its identity beside its factory's name); "" for
    built-in models, which their config names, and for a sweep of architectures."""
    if factory is None or len(models) != 1:
        return ""
    return next(iter(models.values())).structure


def _check_factory_keys(factory: ModelFactory, keys: set[str]) -> None:
    """The model_grid keys must be keyword arguments of the factory (one line naming both)."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    missing = sorted(keys - set(parameters))
    if missing:
        name = getattr(factory, "__name__", type(factory).__name__)
        raise ConfigError(
            f"model_grid.{missing[0]}: your model factory {name}() takes no argument "
            f"{missing[0]!r}; it takes {', '.join(parameters) or 'nothing'}. Define it as "
            f"{name}(rngs, {', '.join(sorted(keys))}) to sweep its architecture"
        )


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    model: ModelFactory | None = None,
    task: tasks.Task = tasks.CLASSIFICATION,
    dataset: data_lib.Dataset | None = None,
    hooks: Sequence[loop.Hooks] = (),
) -> list[dict]:
    """Runs the study ``config`` into ``workdir``; returns the summary rows.

    ``model`` (a factory ``make(rngs, **architecture) -> nnx.Module``) replaces the built-in
    model, ``dataset`` replaces ``config.dataset``, ``task`` sets the loss, metrics and the
    monitored value. Raises :class:`ConfigError` before compiling anything for a bad config or
    bad data.
    """
    study = spec_lib.parse(config)
    if dataset is None:
        dataset = data_lib.load_dataset(config)
    return train_study(study, workdir, model=model, task=task, dataset=dataset, hooks=hooks)


def train_study(
    study: StudySpec,
    workdir: str,
    *,
    dataset: data_lib.Dataset,
    model: ModelFactory | None = None,
    task: tasks.Task = tasks.CLASSIFICATION,
    hooks: Sequence[loop.Hooks] = (),
) -> list[dict]:
    """Runs the parsed study into ``workdir``; returns the summary rows."""
    spec_lib.check_data(study, dataset.num_train)
    models = build_models(study, dataset, model)  # every model checked before the workdir
    for built in models.values():
        for optimizer in study.optimizers:  # μP has a rule for each optimizer, or a line
            built.lr_multipliers(optimizer.name)
    check_regularisation(study, models, task)
    for built in models.values():
        check_task_fits(built, task, dataset)
    _check_augment(dataset)
    _warn_duplicates(study.trials)
    study = one_batch_size_per_program(study, models)
    sizes = {split: len(getattr(dataset, f"y_{split}")) for split in ("train", "val", "test")}
    study = spec_lib.with_inputs(
        study, dataset.fingerprint, _model_fingerprint(models, model), sizes
    )
    outputs = chosen_outputs(study.outputs)
    sharding = TrialSharding(study.placement.num_devices)
    if not sharding.is_writer:  # process 0 alone sees the workdir: no extension elsewhere
        plans = plan_populations(study, study.trials, dataset.num_train)
        return _run(study, workdir, dataset, plans, models, sharding, task, hooks, outputs)
    with files.workdir_lock(workdir):
        held = waves.waves(
            workdir, study, restart=study.outputs.restart, overwrite=study.outputs.overwrite
        )
        study = study.with_trials(tuple(t for wave in held for t in wave))
        plans = plan_waves(study, held, dataset.num_train)
        earlier = [a for a in study.architectures if a not in models]
        models |= build_models(study, dataset, model, earlier)
        hooks = [*hooks, UntrainedOutputs()]
        if "tensorboard" in outputs:
            board = tensorboard.TensorBoardHook(workdir, varying_keys(study.trials))
            hooks = [*hooks, board]
        files.prepare_workdir(workdir, dict(study.config), extendable=waves.TRIAL_SET_KEYS)
        waves.write_waves(workdir, held)
        return _run(study, workdir, dataset, plans, models, sharding, task, hooks, outputs)


def _run(study, workdir, dataset, plans, models, sharding, task, hooks, outputs) -> list[dict]:
    """Trains the planned populations and writes the summary and report (process 0)."""
    logging.info(
        "study: %d trials in %d population(s) on %d %s device(s); data %s: %d train, %d val, "
        "%d test",
        len(study.trials),
        len(plans),
        sharding.num_devices,
        jax.default_backend(),
        dataset.name,
        dataset.num_train,
        len(dataset.y_val),
        len(dataset.y_test),
    )
    placement = study.placement
    on_host, why = host_data.stays_on_host(
        placement.train_data,
        dataset.x_train,
        placement.memory_fraction,
        sharding.num_devices,
        data_lib.is_memory_mapped(dataset.x_train),
    )
    if on_host:
        logging.info("training data stays on the host (%s): batches gathered there", why)
    data = loop.StudyData.put(dataset, placement.train_eval_examples, sharding, on_host)
    rows = run_plans(study, plans, models, data, workdir, sharding=sharding, task=task, hooks=hooks)
    if not sharding.is_writer:
        return rows
    if all(r["status"] == "diverged" for r in rows):
        logging.error(
            "every trial diverged (learning rates %s); lower the learning rates",
            sorted({r["learning_rate"] for r in rows}),
        )
    if study.adaptive.scheduler == "pbt":
        pbt.plot_schedules(workdir, study.adaptive.pbt_keys)
    if study.outputs.make_report:
        study_report.default_report(workdir, x_hparam=study.outputs.report_x)
    if "tensorboard" in outputs:
        root = tensorboard.write_study(workdir, varying_keys(study.trials))
        logging.info("TensorBoard: %s", tensorboard.how_to_open(root))
    if "optuna" in outputs:
        optuna_storage.record_study(workdir, study.outputs.optuna_storage)
    return rows


def chosen_outputs(outputs: OutputSpec) -> set[str]:
    """Which optional outputs this study writes (``tensorboard``, ``optuna_storage``); asking
    for one whose extra is missing is a one-line error."""
    out = set()
    if outputs.tensorboard == "on":
        tensorboard.require()
    if outputs.tensorboard == "on" or (outputs.tensorboard == "auto" and tensorboard.available()):
        out.add("tensorboard")
    storage = outputs.optuna_storage
    if storage not in ("auto", "off"):
        optuna_storage.require()
        optuna_shared.check_reachable(storage)
    if storage not in ("auto", "off") or (storage == "auto" and optuna_storage.available()):
        out.add("optuna")
    return out


def _measure(run: loop.PopulationRun, rows: list[dict], estimate: float, start: float, earlier):
    """The population's row of populations.csv, its measurements put into its summary rows;
    a population that finished in an earlier run keeps that run's measurements."""
    if run.restored and earlier is not None:
        old_rows = {r["trial"]: r for r in earlier["rows"]}
        for row in rows:
            for key in ("memory_estimate_mb", "peak_memory_mb"):
                row[key] = old_rows.get(row["trial"], {}).get(key)
        return earlier["population"]
    peak, source = memory.peak_memory_bytes()
    for row in rows:
        row["memory_estimate_mb"] = round(estimate, 3)
        row["peak_memory_mb"] = round(peak / 2**20, 1)  # a measurement, not a result
    plan = run.plan
    return {
        "population": plan.index,
        "trials": len(plan.trials),
        "microbatch": plan.microbatch,
        "architecture": json.dumps(plan.architecture),
        "memory_estimate_mb": estimate,
        "peak_memory_mb": peak / 2**20,
        "peak_memory_source": source,
        "wall_s": round(time.perf_counter() - start, 2),
    } | run.stats


def _earlier_measurements(workdir: str) -> dict[int, dict]:
    """The populations.csv rows (and summary rows) of populations finished by an earlier run."""
    try:
        written = files.read_summary(workdir)
        populations = files.read_csv(os.path.join(workdir, "populations.csv"), key="population")
    except (OSError, ValueError):
        return {}
    return {
        int(p["population"]): {
            "population": p,
            "rows": [r for r in written if r.get("population") == p["population"]],
        }
        for p in populations
    }


def run_plans(
    study: StudySpec,
    plans: list[PopulationPlan],
    models: dict[tuple, Model],
    data: loop.StudyData,
    workdir: str,
    *,
    sharding: TrialSharding,
    task: tasks.Task = tasks.CLASSIFICATION,
    hooks: Sequence[loop.Hooks] = (),
) -> list[dict]:
    """Fits the plans to memory, trains them in turn and writes ``summary.csv`` and
    ``populations.csv`` (process 0); returns the summary rows sorted by trial."""
    dataset = data.dataset
    specs = [
        population_spec(
            study,
            models[p.trials[0].architecture],
            p,
            num_train=dataset.num_train,
            num_classes=dataset.num_classes,
            task=task,
            augment=dataset.augment,
            num_devices=sharding.num_devices,
        )
        for p in plans
    ]
    plans, estimates = fit_plans(
        plans,
        specs,
        dataset.input_shape,
        target_shape=dataset.y_train.shape[1:],
        target_dtype=str(dataset.y_train.dtype),
        num_devices=sharding.num_devices,
        memory_fraction=study.placement.memory_fraction,
        max_population=study.placement.max_population,
        slots=study.adaptive.slots,
        eval_examples=max(
            len(dataset.x_val),
            len(dataset.x_test),
            min(study.placement.train_eval_examples, dataset.num_train),
        ),
    )
    rows: list[dict] = []
    populations: list[dict] = []
    lines = 0
    measured = _earlier_measurements(workdir) if sharding.is_writer else {}
    if sharding.is_writer:
        files.JsonlWriter(os.path.join(workdir, "metrics.jsonl")).keep_intact_lines()
    for plan, estimate in zip(plans, estimates, strict=True):
        start = time.perf_counter()
        run = loop.PopulationRun(
            study,
            plan,
            models[plan.trials[0].architecture],
            data,
            workdir,
            label=f"population {plan.index + 1}/{len(plans)} ({len(plan.trials)} trials)",
            sharding=sharding,
            task=task,
            hooks=hooks,
        )
        plan_rows, lines = run.run(lines)
        populations.append(_measure(run, plan_rows, estimate, start, measured.get(plan.index)))
        rows.extend(plan_rows)
    rows.sort(key=lambda r: r["trial"])
    if sharding.is_writer:
        columns = summary.summary_columns(task)
        extra = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in columns]
        factory_keys = {k for o in study.optimizers for k in o.factory_keys}
        exact = {*hparams.SEARCHABLE, *factory_keys, "base_learning_rate"}
        exact |= {f"{k}_at_best" for k in exact}
        path = os.path.join(workdir, "summary.csv")
        files.write_csv(path, rows, columns + tuple(extra), exact=exact)
        population_columns = list(dict.fromkeys(k for p in populations for k in p))
        files.write_csv(os.path.join(workdir, "populations.csv"), populations, population_columns)
    return rows
