"""The grid study (the learning-rate sweep and every study built on it): a config in, a workdir
of results out, through the one runner.

``train_and_evaluate(config, workdir)`` checks everything before the first compilation and before
the workdir is touched, plans the populations, trains them with :func:`hpjax.runner.run_plans`,
and writes the report. A user's own model (an ``nnx.Module`` factory), task and data set plug in
through its keyword arguments (see :mod:`hpjax.api`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import ml_collections
from absl import logging
from flax import nnx

from hpjax import data as data_lib
from hpjax import extension, runner, schedulers, slots
from hpjax import plan as study
from hpjax.config import config_to_dict
from hpjax.engine import tasks
from hpjax.engine.sharding import TrialSharding
from hpjax.errors import ConfigError, config_error
from hpjax.models import Model, build_model, from_factory
from hpjax.report import study_report
from hpjax.results import files, optuna_storage, tensorboard
from hpjax.studies import pbt


def build_models(
    config,
    dataset: data_lib.Dataset,
    model_factory: Callable[[nnx.Rngs], nnx.Module] | None = None,
    architectures: Sequence[tuple] | None = None,
) -> dict[tuple, Model]:
    """Every architecture of the study (or ``architectures``), built (and checked) before
    anything compiles."""
    if model_factory is None:
        return {
            arch: build_model(
                study.model_config(config, arch), dataset.input_shape, dataset.num_classes
            )
            for arch in (study.architectures(config) if architectures is None else architectures)
        }
    if len(study.architectures(config)) > 1:
        raise ConfigError(
            "config.model_grid varies the built-in model's keys; with your own model, make one "
            "study per architecture"
        )
    return {(): from_factory(model_factory, str(config.model.name))}


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    model: Callable[[nnx.Rngs], nnx.Module] | None = None,
    task: tasks.Task = tasks.CLASSIFICATION,
    dataset: data_lib.Dataset | None = None,
    hooks: Sequence[runner.Hooks] = (),
) -> list[dict]:
    """Runs the study ``config`` into ``workdir``; returns the summary rows.

    ``model`` (a factory ``make(rngs) -> nnx.Module``) replaces ``config.model``'s built-in
    model, ``dataset`` replaces ``config.dataset``, ``task`` sets the loss, metrics and the
    monitored value. Raises :class:`ConfigError` before compiling anything for a bad config or
    bad data.
    """
    study.validate_config(config)
    schedulers.validate(config)
    if dataset is None:
        dataset = data_lib.load_dataset(config)
    study.validate_config(config, dataset.num_train)
    trials = study.build_trials(config)
    models = build_models(config, dataset, model)  # every model checked before the workdir
    outputs = chosen_outputs(config)
    sharding = TrialSharding(int(config.get("num_devices", 0)))
    if not sharding.is_writer:  # process 0 alone sees the workdir: no extension elsewhere
        plans = study.plan_populations(config, trials, dataset.num_train)
        return _run(config, workdir, dataset, trials, plans, models, sharding, task, hooks, outputs)
    with files.workdir_lock(workdir):
        waves = extension.waves(workdir, config, trials)
        trials = tuple(t for wave in waves for t in wave)
        plans = extension.plan_waves(config, waves, dataset.num_train)
        earlier = [t.architecture for t in trials if t.architecture not in models]
        models |= build_models(config, dataset, model, tuple(dict.fromkeys(earlier)))
        if "tensorboard" in outputs:
            hooks = [*hooks, tensorboard.TensorBoardHook(workdir, varying_keys(trials))]
        files.prepare_workdir(workdir, config_to_dict(config), extendable=extension.TRIAL_SET_KEYS)
        extension.write_waves(workdir, waves)
        return _run(config, workdir, dataset, trials, plans, models, sharding, task, hooks, outputs)


def _run(
    config, workdir, dataset, trials, plans, models, sharding, task, hooks, outputs
) -> list[dict]:
    """Trains the planned populations and writes the summary and report (process 0)."""
    logging.info(
        "study: %d trials in %d population(s) on %d %s device(s); data %s: %d train, %d val, "
        "%d test",
        len(trials),
        len(plans),
        sharding.num_devices,
        jax.default_backend(),
        dataset.name,
        dataset.num_train,
        len(dataset.y_val),
        len(dataset.y_test),
    )
    data = runner.StudyData.put(dataset, int(config.get("train_eval_examples", 2048)), sharding)
    rows = runner.run_plans(
        config,
        plans,
        models,
        data,
        workdir,
        sharding=sharding,
        task=task,
        hooks=hooks,
        population_run=slots.SlotRun if slots.is_adaptive(config) else runner.PopulationRun,
    )
    if not sharding.is_writer:
        return rows
    if all(r["status"] == "diverged" for r in rows):
        logging.error(
            "every trial diverged (learning rates %s); lower the learning rates",
            sorted({r["learning_rate"] for r in rows}),
        )
    if config.get("scheduler", "none") == "pbt":
        pbt.plot_schedules(workdir, schedulers.Pbt(config).keys)
    if config.get("make_report", True):
        study_report.default_report(workdir, x_hparam=config.get("report_x", "learning_rate"))
    if "tensorboard" in outputs:
        tensorboard.write_study(workdir, varying_keys(trials))
    if "optuna" in outputs:
        optuna_storage.record_study(workdir, str(config.get("optuna_storage", "auto")))
    return rows


def chosen_outputs(config) -> set[str]:
    """Which optional outputs this study writes (``config.tensorboard``,
    ``config.optuna_storage``); asking for one whose extra is missing is a one-line error."""
    out = set()
    board = config.get("tensorboard", "auto")
    if board not in ("auto", "on", "off"):
        raise config_error("tensorboard", board, "is unknown; allowed: auto, on, off")
    if board == "on":
        tensorboard.require()
    if board == "on" or (board == "auto" and tensorboard.available()):
        out.add("tensorboard")
    storage = str(config.get("optuna_storage", "auto"))
    if storage not in ("auto", "off", "sqlite") and "://" not in storage:
        raise config_error(
            "optuna_storage", storage, "is unknown; allowed: auto, off, sqlite or a database URL"
        )
    if storage not in ("auto", "off"):
        optuna_storage.require()
    if storage not in ("auto", "off") or (storage == "auto" and optuna_storage.available()):
        out.add("optuna")
    return out


def varying_keys(trials: Sequence[study.Trial]) -> list[str]:
    """The hyperparameters that differ between the study's trials (names of its runs)."""
    keys = [
        k
        for k in ("learning_rate", "batch_size", "seed", "weight_decay")
        if len({getattr(t, k) for t in trials}) > 1
    ]
    arch = sorted({k for t in trials for k, _ in t.architecture})
    return keys + [k for k in arch if len({t.architecture_dict.get(k) for t in trials}) > 1]
