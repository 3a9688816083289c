"""The Python API: train your own Flax NNX model, loss and data as a population of trials.

    import hpjax

    def make_model(rngs):  # any flax.nnx.Module whose only state is its parameters
        return MyModel(rngs=rngs)

    rows = hpjax.train(
        make_model,
        hpjax.from_arrays(x_train, y_train, x_test, y_test, task="regression"),
        "runs/mine",
        task="regression",
        learning_rates=(1e-3, 3e-3, 1e-2),
        seeds=(0, 1),
    )
    best = hpjax.restore_best("runs/mine", trial=0, model=make_model)

Every keyword is a key of :func:`hpjax.config.default_config` (learning rates, batch sizes,
seeds, weight decays, optimizer, schedule, budget, early stopping, devices...); the study writes
the same workdir as the experiment binaries (``summary.csv``, ``metrics.jsonl``, plots,
``report.md``, a checkpoint of every trial at its early-stop point) and resumes like them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ml_collections
from flax import nnx

from hpjax import data as data_lib
from hpjax.config import default_config
from hpjax.engine import tasks
from hpjax.errors import ConfigError
from hpjax.study.run import train_and_evaluate

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


def make_config(model_name: str, dataset_name: str, **overrides: Any) -> ml_collections.ConfigDict:
    """The study config: :func:`default_config` with :data:`API_DEFAULTS` and ``overrides``.

    An unknown key is a :class:`ConfigError` naming it (keys are listed in ``hpjax/config.py``).
    """
    config = default_config()
    known = set(config.keys())
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(
            f"unknown config key {unknown[0]!r}; the keys are those of "
            "hpjax.config.default_config() (see hpjax/config.py), e.g. learning_rates, "
            "batch_sizes, seeds, optimizer, schedule, num_steps, patience"
        )
    for key in ("model", "model_grid", "dataset", "npz_path"):
        if key in overrides:
            raise ConfigError(
                f"config key {key!r} names a built-in model or data set; with the Python API "
                "pass your own model factory and data instead"
            )
    for key, value in {**API_DEFAULTS, **overrides}.items():
        config[key] = value
    config.model = ml_collections.ConfigDict({"name": model_name})
    config.dataset = dataset_name
    return config


def train(
    model: Callable[[nnx.Rngs], nnx.Module],
    data: data_lib.Dataset,
    workdir: str,
    *,
    task: str | tasks.Task = "classification",
    monitor: str | None = None,
    **config: Any,
) -> list[dict]:
    """Trains ``model`` (a factory ``make(rngs) -> nnx.Module``) on ``data`` as populations of
    trials, one per combination of the hyperparameters in ``config``; returns the summary rows.

    ``task`` is ``"classification"`` (softmax cross-entropy, accuracy), ``"regression"`` (mean
    squared error, mean absolute error) or a :class:`hpjax.Task` of your own; ``monitor`` names
    the lower-is-better value early stopping watches (``"loss"`` by default, or a metric).
    """
    chosen = tasks.get_task(task)
    if monitor is not None:
        chosen = chosen.with_monitor(monitor)
    if not isinstance(data, data_lib.Dataset):
        raise ConfigError(
            f"data must be an hpjax Dataset (hpjax.from_arrays(...)); got {type(data).__name__}"
        )
    if chosen.classification != data.is_classification:
        raise ConfigError(
            f"task {chosen.name!r} does not fit data {data.name!r} made for "
            f"{'classification' if data.is_classification else 'regression'}; pass the same "
            "task to from_arrays and train"
        )
    name = getattr(model, "__name__", type(model).__name__)
    cfg = make_config(name, data.name, **config)
    return train_and_evaluate(cfg, workdir, model=model, task=chosen, dataset=data)
