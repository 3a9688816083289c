"""The Python API: train your own Flax NNX model, loss and data as a population of trials.

    import hpjax

    def make_model(rngs, width):  # any flax.nnx.Module; keyword arguments are its architecture
        return MyModel(width, rngs=rngs)

    study = hpjax.train(
        make_model,
        hpjax.from_arrays(x_train, y_train, x_test, y_test, task="regression"),
        "runs/mine",
        space={"learning_rate": hpjax.loguniform(1e-4, 1e-1), "seed": hpjax.choice(0, 1)},
        num_samples=8,
        model_grid={"width": (32, 64)},
    )
    print(study.best["learning_rate"], study.best["test_loss"])
    module = study.best.restore().module

The task (loss, metrics, what early stopping watches) comes from the data set; pass ``task=``
only for a :class:`hpjax.Task` of your own. Every other keyword is a key of
:func:`hpjax.config.default_config` (learning rates, batch sizes, seeds, weight decays,
optimizer and its options, schedule, budget, early stopping, ``scheduler="asha"``, devices...);
the study writes the same workdir as the experiment binaries (``summary.csv``,
``metrics.jsonl``, plots, ``report.md``, a checkpoint of every trial at its early-stop point)
and resumes like them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
from absl import logging as absl_logging
from flax import nnx

from hpjax import data as data_lib
from hpjax import runtime
from hpjax.config import default_config
from hpjax.configs import search as search_config
from hpjax.engine import optim, tasks
from hpjax.errors import ConfigError
from hpjax.results.study import Study
from hpjax.studies.search import run_search
from hpjax.study.run import train_and_evaluate
from hpjax.study.space import Choice, Range

# Defaults for your own model: the guide's starting points, not the MLP study's recipe.
API_DEFAULTS = dict(
    learning_rates=(0.001, 0.003, 0.01, 0.03),
    batch_size=32,
    weight_decays=(0.0,),
    schedule="constant",
    num_steps=2000,
    eval_every=50,
    patience=10,
)
# Keys that name a built-in model or data set: the API takes your own instead.
BUILT_IN_KEYS = ("model", "dataset", "npz_path")


def make_config(model_name: str, dataset_name: str, **overrides: Any) -> ml_collections.ConfigDict:
    """The study config: :func:`default_config` with :data:`API_DEFAULTS` and ``overrides``.

    An unknown key is a :class:`ConfigError` naming it (keys are listed in ``hpjax/config.py``).
    """
    config = default_config()
    unknown = sorted(set(overrides) - set(config.keys()))
    if unknown:
        raise ConfigError(
            f"unknown config key {unknown[0]!r}; the keys are those of "
            "hpjax.config.default_config() (see hpjax/config.py), e.g. learning_rates, "
            "batch_sizes, seeds, optimizer, schedule, num_steps, patience"
        )
    overrides = _optimizers_by_name(overrides)
    for key in BUILT_IN_KEYS:
        if key in overrides:
            raise ConfigError(
                f"config key {key!r} names a built-in model or data set; with the Python API "
                "pass your own model factory and data instead"
            )
    for key, value in {**API_DEFAULTS, **overrides}.items():
        default = config[key]
        if isinstance(default, ml_collections.ConfigDict):
            value = ml_collections.ConfigDict(_as_config_section(key, value))
        try:
            config[key] = value
        except TypeError:  # ml_collections keeps each key's type
            kind = {"int": "an integer", "float": "a number", "tuple": "a tuple"}.get(
                type(default).__name__, f"a {type(default).__name__}"
            )
            example = f" such as ({value!r},)" if isinstance(default, tuple) else ""
            raise ConfigError(
                f"{key}={value!r} is a {type(value).__name__}; it must be {kind}{example} "
                f"(its default is {API_DEFAULTS.get(key, default)!r})"
            ) from None
    config.model = ml_collections.ConfigDict({"name": model_name})
    config.dataset = dataset_name
    return config


def _optimizers_by_name(overrides: dict[str, Any]) -> dict[str, Any]:
    """``optimizers=`` (an axis of optimizers: names, optax factories, partials) as a binary's
    config writes it: their names, and ``optimizer_kwargs`` mapping each partial's factory to
    its keywords."""
    given = overrides.get("optimizers")
    if given is None or isinstance(given, str):
        return _optimizer_by_name(overrides)
    names, keywords = [], {}
    for optimizer in given:
        name, own = optim.factory_name(optimizer) if callable(optimizer) else (optimizer, {})
        names.append(name)
        if own:
            keywords[name] = own
    extra = overrides.get("optimizer_kwargs")
    if isinstance(extra, Mapping):
        keywords |= {k: dict(v) for k, v in extra.items()}
    elif extra:  # a JSON object's text, as in a binary's config (checked by the parser)
        try:
            keywords |= json.loads(extra)
        except (TypeError, ValueError):
            return overrides | {"optimizers": tuple(names)}
    return overrides | {"optimizers": tuple(names), "optimizer_kwargs": json.dumps(keywords)}


def _optimizer_by_name(overrides: dict[str, Any]) -> dict[str, Any]:
    """``optimizer=`` given as an optax factory (``optax.lion``, a ``functools.partial`` of
    one, a function of yours) becomes its import path and ``optimizer_kwargs`` its keywords, as
    a binary's config writes them; ``optimizer_kwargs`` may be a dict."""
    changed: dict[str, Any] = {}
    keywords: dict[str, Any] = {}
    given = overrides.get("optimizer_kwargs")
    if callable(overrides.get("optimizer")):
        changed["optimizer"], keywords = optim.factory_name(overrides["optimizer"])
    if isinstance(given, Mapping):
        keywords = keywords | dict(given)
    elif given is not None:  # a JSON object's text, as in a binary's config
        if keywords:
            raise ConfigError(
                "the optimizer's keywords are given twice: in functools.partial and in "
                "optimizer_kwargs; give them once"
            )
        return overrides | changed
    if keywords or given is not None:
        changed["optimizer_kwargs"] = json.dumps(keywords, sort_keys=True)
    return overrides | changed


def _as_config_section(key: str, value: Any) -> dict:
    """A mapping given for a section (``space``, ``model_grid``): hpjax's space helpers become
    the config's tuples."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a dict of name -> values; got {type(value).__name__}")
    return {
        name: item.as_config() if isinstance(item, Range | Choice) else item
        for name, item in value.items()
    }


def train(
    model: Callable[..., nnx.Module],
    data: data_lib.Dataset,
    workdir: str,
    *,
    task: str | tasks.Task | None = None,
    monitor: str | None = None,
    verbose: bool = True,
    **config: Any,
) -> Study:
    """Trains ``model`` (a factory ``make(rngs, **architecture) -> nnx.Module``) on ``data`` as
    populations of trials, one per combination (or sample) of the hyperparameters in
    ``config``; returns the finished :class:`Study`.

    The task is the data set's (softmax cross-entropy and accuracy for classification, mean
    squared and absolute error for regression) unless ``task`` is a :class:`hpjax.Task` of your
    own; ``monitor`` names the lower-is-better value early stopping watches (``"loss"`` by
    default, or a metric). Progress (populations, ticks, time left, the best value so far) is
    logged to stderr unless ``verbose=False``.
    """
    _check_inputs(model, data, workdir)
    chosen = _task_for(data, task, monitor)
    name = getattr(model, "__name__", type(model).__name__)
    cfg = make_config(name, data.name, **config)
    runtime.use_compilation_cache(cfg.compilation_cache)  # as the binaries: reruns load programs
    with _progress_to_stderr(verbose):
        rows = train_and_evaluate(cfg, workdir, model=model, task=chosen, dataset=data)
    return Study(str(workdir), tuple(rows), chosen.monitor, model)


def _check_inputs(model: Any, data: Any, workdir: Any) -> None:
    if not callable(model):
        raise ConfigError(
            f"model must be a factory make(rngs, **architecture) -> nnx.Module; got "
            f"{type(model).__name__}"
        )
    if not isinstance(workdir, str | os.PathLike):
        raise ConfigError(f"workdir must be a path (str); got {type(workdir).__name__}")
    if not isinstance(data, data_lib.Dataset):
        raise ConfigError(
            f"data must be an hpjax Dataset (hpjax.from_arrays(...)); got {type(data).__name__}"
        )


def _task_for(data: data_lib.Dataset, task, monitor: str | None) -> tasks.Task:
    made_for = "classification" if data.is_classification else "regression"
    chosen = tasks.get_task(made_for if task is None else task)
    if monitor is not None:
        chosen = chosen.with_monitor(monitor)
    if chosen.classification != data.is_classification:
        raise ConfigError(
            f"task {chosen.name!r} does not fit data {data.name!r} made for {made_for}; leave "
            "out task= (the data set's is used) or pass a task for the same kind of targets"
        )
    return chosen


def search(
    model: Callable[..., nnx.Module],
    data: data_lib.Dataset,
    workdir: str,
    *,
    space: Mapping[str, Any],
    num_trials: int = 32,
    population: int = 8,
    sampler: str = "optuna_tpe",
    storage: str = "auto",
    study_name: str = "search",
    options: Mapping[str, Any] | None = None,
    task: str | tasks.Task | None = None,
    monitor: str | None = None,
    verbose: bool = True,
    **config: Any,
) -> list[dict]:
    """Optuna's ``sampler`` proposing ``population`` trials of ``model`` at a time over ``space``
    (``hpjax.loguniform``/``uniform``/``choice``), each round trained as one program, until the
    study holds ``num_trials``; returns a row per trial this call trained.

    With ``storage="postgresql://..."`` and one ``study_name``, every process that calls this
    (or runs ``experiments/search.py``) is a worker of one search. ``options`` sets the search
    section's other keys (``seed``, ``objectives``, ``heartbeat_s``, ``grace_s``,
    ``max_retry``: ``hpjax/configs/search.py``). Other keywords are study config keys, as for
    :func:`train`.
    """
    _check_inputs(model, data, workdir)
    chosen = _task_for(data, task, monitor)
    name = getattr(model, "__name__", type(model).__name__)
    cfg = make_config(name, data.name, **config)
    cfg.optuna_storage = storage
    section = search_config.get_config("tpe").search
    section.update(
        sampler=sampler,
        num_trials=num_trials,
        population=population,
        study_name=study_name,
    )
    # replaced, not updated: ConfigDict.update merges a section into the default space, which
    # would search the default's keys (weight decay) beside the ones given
    section.space = ml_collections.ConfigDict(_as_config_section("space", space))
    unknown = sorted(set(options or {}) - set(section.keys()))
    if unknown:
        raise ConfigError(
            f"options key {unknown[0]!r} is not a search setting; allowed: "
            + ", ".join(sorted(set(section.keys()) - {"space"}))
        )
    section.update(dict(options or {}))
    cfg.search = section
    runtime.use_compilation_cache(cfg.compilation_cache)
    with _progress_to_stderr(verbose):
        return run_search(cfg, str(workdir), model=model, task=chosen, dataset=data)


@contextlib.contextmanager
def _progress_to_stderr(verbose: bool):
    """hpjax's INFO lines (absl's logger) on stderr for the call, as a binary shows them;
    outside a binary absl would drop them. The logger's level is restored afterwards."""
    logger = absl_logging.get_absl_logger()
    if not verbose or absl_logging.get_absl_handler() in logging.getLogger().handlers:
        yield  # quiet, or absl's own handler already prints them (run under app.run)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("hpjax: %(message)s"))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # once, even where the root logger has a handler of its own
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
