"""The RNN study's own keys and its two stages' configs, parsed and checked before training.

``full_lr_factors`` (the full-data stage's rates, as factors of the best subset rate) and
``full_num_steps`` (its budget; 0 = ``num_steps``) are read only here; every other key is the
ordinary study's (:mod:`hpjax.study.spec`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from hpjax import data as data_lib
from hpjax.errors import ConfigError
from hpjax.models import validate_model_config
from hpjax.report.labels import is_finite_number
from hpjax.study import spec as spec_lib
from hpjax.study.trials import learning_rates

DEFAULT_KEYS = ("cell", "num_layers")


def arch_keys(config: Any) -> tuple[str, ...]:
    """The model keys the study compares: those of ``config.model_grid``, cell and depth first."""
    keys = sorted(k for k, _ in spec_lib.parse(config).source.model_grid)
    return tuple(
        [k for k in DEFAULT_KEYS if k in keys] + [k for k in keys if k not in DEFAULT_KEYS]
    )


def _check_config(config: Any) -> None:
    """Raises ConfigError for what the RNN study needs beyond an ordinary study config."""
    if config.model.get("name") != "rnn":
        raise ConfigError(f"config.model.name={config.model.get('name')!r} must be 'rnn'")
    if not arch_keys(config):
        raise ConfigError(
            "config.model_grid is empty; list the cells and depths to compare, e.g. "
            "model_grid.cell=('lstm', 'gru') and model_grid.num_layers=(1, 2, 3)"
        )
    subset = config.get("train_subset", 0)
    if isinstance(subset, bool) or not isinstance(subset, int) or subset <= 0:
        raise ConfigError(
            f"config.train_subset={subset!r} must be a positive number of training examples for "
            "the RNN study's subset stage"
        )
    factors = tuple(config.get("full_lr_factors", (1.0,)) or ())
    if not factors or not all(is_finite_number(f) and f > 0 for f in factors):
        raise ConfigError(
            f"config.full_lr_factors={factors!r} must be a non-empty tuple of positive numbers"
        )
    steps = config.get("full_num_steps", 0)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(
            f"config.full_num_steps={steps!r} must be an integer >= 0 (0 = config.num_steps)"
        )


def full_config(config: Any, best: Mapping, keys: Sequence[str]) -> ml_collections.ConfigDict:
    """The full-data stage: ``best``'s architecture, every training example, rates near its best."""
    full = ml_collections.ConfigDict(config.to_dict())
    full.train_subset = 0
    for key in keys:
        full.model[key] = best[key]
    full.model_grid = ml_collections.ConfigDict()
    factors = tuple(config.get("full_lr_factors", (1.0,)))
    full.learning_rates = tuple(sorted({float(best["learning_rate"]) * f for f in factors}))
    full.lr_sampling = "grid"
    if config.get("full_num_steps", 0):
        full.num_steps = int(config.full_num_steps)
    full.description = (
        f"RNN study, full-data stage: {', '.join(f'{k}={best[k]}' for k in keys)} retrained on "
        "every training example"
    )
    return full


def validate_rnn_study(config: Any) -> None:
    """Every check of both stages that needs no compilation (the data is loaded once)."""
    _check_config(config)
    parsed = spec_lib.parse(config)
    subset = data_lib.load_dataset(config)  # raises for a subset larger than the data
    spec_lib.check_data(parsed, subset.num_train)
    for arch in parsed.architectures:
        validate_model_config(parsed.model_config(arch), subset.input_shape, subset.num_classes)
    keys = arch_keys(config)
    first = dict(parsed.architectures[0])
    provisional = full_config(
        config,
        {**{k: first[k] for k in keys}, "learning_rate": learning_rates(parsed.source)[0]},
        keys,
    )
    spec_lib.parse(provisional)
