"""The built-in models by name: their configs, defaults and checks, and :func:`build_model`.

Every mistake in ``config.model`` is a :class:`~hpjax.errors.ConfigError` with a one-line message
naming the key, raised by :func:`validate_model_config` before anything is built.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
from flax import nnx

from hpjax.errors import ConfigError
from hpjax.models import mup
from hpjax.models.cnn import CNN, POOLS, cnn_spatial_sizes
from hpjax.models.mlp import ACTIVATIONS, MLP
from hpjax.models.model import ABSTRACT_KEY, Model, from_factory
from hpjax.models.precision import PRECISIONS, apply_precision
from hpjax.models.rnn import CELLS, READOUTS, RNNClassifier

MODEL_NAMES = ("cnn", "mlp", "rnn")


def _mlp_from_config(
    keys: Mapping[str, Any], input_shape: tuple[int, ...], num_classes: int, rngs: nnx.Rngs
) -> MLP:
    return MLP(
        input_shape,
        num_classes,
        hidden_units=int(keys["hidden_units"]),
        num_layers=int(keys["num_layers"]),
        activation=str(keys["activation"]),
        rngs=rngs,
        dropout=bool(keys["dropout_layers"]),
        batch_norm=bool(keys["batch_norm"]),
    )


def _cnn_from_config(
    keys: Mapping[str, Any], input_shape: tuple[int, ...], num_classes: int, rngs: nnx.Rngs
) -> CNN:
    return CNN(
        input_shape,
        num_classes,
        channels=int(keys["channels"]),
        num_layers=int(keys["num_layers"]),
        kernel_size=int(keys["kernel_size"]),
        stride=int(keys["stride"]),
        pool=str(keys["pool"]),
        pool_size=int(keys["pool_size"]),
        hidden_units=int(keys["hidden_units"]),
        activation=str(keys["activation"]),
        rngs=rngs,
        dropout=bool(keys["dropout_layers"]),
        batch_norm=bool(keys["batch_norm"]),
        residual=bool(keys["residual"]),
    )


def _rnn_from_config(
    keys: Mapping[str, Any], input_shape: tuple[int, ...], num_classes: int, rngs: nnx.Rngs
) -> RNNClassifier:
    return RNNClassifier(
        input_shape,
        num_classes,
        cell=str(keys["cell"]),
        hidden_size=int(keys["hidden_size"]),
        num_layers=int(keys["num_layers"]),
        bidirectional=bool(keys["bidirectional"]),
        readout=str(keys["readout"]),
        rngs=rngs,
    )


# name -> builder(model_cfg (completed with defaults), input_shape, num_classes, rngs) -> module
MODELS: dict[str, Callable[..., nnx.Module]] = {
    "cnn": _cnn_from_config,
    "mlp": _mlp_from_config,
    "rnn": _rnn_from_config,
}

_DEFAULTS: dict[str, dict[str, Any]] = {
    # The guide: three layers usually beat two.
    # dropout_layers: TrialDropout after each hidden layer (its rate: each trial's `dropout`);
    # batch_norm: batch normalisation before each activation (over each trial's batch).
    "mlp": {
        "hidden_units": 256,
        "num_layers": 3,
        "activation": "relu",
        "dropout_layers": False,
        "batch_norm": False,
        **mup.DEFAULTS,
    },
    # In the spirit of the MNIST-1D paper's CNN (3 conv layers, ~5k params, 94% test accuracy):
    # 3 x (conv k=5, 32 channels, max-pool 2) takes length 40 to 5 x 32 features, ~12k params.
    "cnn": {
        "channels": 32,
        "num_layers": 3,
        "kernel_size": 5,
        "stride": 1,
        "pool": "max",
        "pool_size": 2,
        "hidden_units": 0,
        "activation": "relu",
        "dropout_layers": False,
        "batch_norm": False,
        "residual": False,  # layers 2.. as residual blocks at the first layer's size: deep nets
        **mup.DEFAULTS,
    },
    "rnn": {
        "cell": "gru",
        "hidden_size": 128,
        "num_layers": 1,
        "bidirectional": False,
        "readout": "last",
    },
}


def default_model_config(name: str) -> ml_collections.ConfigDict:
    """Sensible defaults for model ``name``; a fresh ConfigDict the caller may override."""
    if name not in MODEL_NAMES:
        raise ConfigError(
            f"config.model.name={name!r} is unknown; allowed: {', '.join(MODEL_NAMES)}"
        )
    return ml_collections.ConfigDict({"name": name, **_DEFAULTS[name]})


def _as_dict(model_cfg: Any) -> dict[str, Any]:
    if isinstance(model_cfg, ml_collections.ConfigDict | ml_collections.FrozenConfigDict):
        return dict(model_cfg.items())
    if isinstance(model_cfg, dict):
        return dict(model_cfg)
    raise ConfigError(f"config.model must be a ConfigDict; got {type(model_cfg).__name__}")


def _resolved(model_cfg: Any) -> dict[str, Any]:
    """``model_cfg`` as a plain dict, missing keys filled from the model's defaults (validation
    is separate)."""
    given = _as_dict(model_cfg)
    if "name" not in given:
        raise ConfigError(f"config.model.name is missing; allowed: {', '.join(MODEL_NAMES)}")
    name = given["name"]
    if not isinstance(name, str) or name not in MODEL_NAMES:
        raise ConfigError(
            f"config.model.name={name!r} is unknown; allowed: {', '.join(MODEL_NAMES)}"
        )
    if name not in mup.WIDTH_KEYS and "parametrization" in given:
        if given["parametrization"] != "standard":
            raise ConfigError(
                f"config.model.parametrization={given['parametrization']!r} is not available "
                f"for model {name!r}; allowed: standard (μP is implemented for "
                f"{', '.join(sorted(mup.WIDTH_KEYS))})"
            )
        given.pop("parametrization")  # the only parametrisation it has
    unknown = sorted(set(given) - set(_DEFAULTS[name]) - {"name", "precision"})
    if unknown:
        raise ConfigError(
            f"config.model.{unknown[0]} is not a key of model {name!r}; allowed keys: "
            f"{', '.join(['name', *sorted(_DEFAULTS[name]), 'precision'])}"
        )
    return {**_DEFAULTS[name], **given}


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_int(keys: Mapping[str, Any], key: str, minimum: int, note: str = "") -> int:
    value = keys[key]
    if not _is_int(value) or value < minimum:
        raise ConfigError(f"config.model.{key}={value!r} must be an integer >= {minimum}{note}")
    return int(value)


def _check_choice(keys: Mapping[str, Any], key: str, allowed: Sequence[str]) -> str:
    value = keys[key]
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(f"config.model.{key}={value!r} is unknown; allowed: {', '.join(allowed)}")
    return value


def _check_bools(keys: Mapping[str, Any], names: Sequence[str]) -> None:
    for key in names:
        if not isinstance(keys[key], bool):
            raise ConfigError(f"config.model.{key}={keys[key]!r} must be True or False")


def _fmt_size(spatial: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in spatial)


def _check_cnn_depth(keys: Mapping[str, Any], input_shape: tuple[int, ...]) -> None:
    """Raises a ConfigError naming the first conv layer whose output has a spatial size < 1."""
    num_layers, stride = keys["num_layers"], keys["stride"]
    pool, pool_size = keys["pool"], keys["pool_size"]
    sizes = cnn_spatial_sizes(
        input_shape, num_layers, stride, pool, pool_size, bool(keys.get("residual"))
    )
    bad = next((i for i, s in enumerate(sizes) if min(s) < 1), None)
    if bad is None:
        return
    allowed = bad - 1
    if len(input_shape) == 1:
        what, got, source = "sequence", f"length {sizes[bad][0]}", f"input length {input_shape[0]}"
    else:
        what, got = "image", f"size {_fmt_size(sizes[bad])}"
        source = f"input size {_fmt_size(sizes[0])}"
    if allowed == 0:
        raise ConfigError(
            f"config.model.pool_size={pool_size} is too large: after conv layer 1 the {what} has "
            f"{got} (< 1) for {source} with stride {stride}; no conv layer fits"
        )
    raise ConfigError(
        f"config.model.num_layers={num_layers} is too deep: after conv layer {bad} the {what} "
        f"has {got} (< 1); allowed at most {allowed} layers for {source} with stride {stride} "
        f"and pool_size {pool_size}"
        + (
            ""
            if keys.get("residual")
            else "; or set --config.model.residual=True (only the first layer pools)"
        )
    )


def validate_model_config(model_cfg: Any, input_shape: tuple[int, ...], num_classes: int) -> None:
    """Raises ConfigError (one line, naming ``config.model.KEY``) for any bad model setting.

    Missing keys take the model's defaults; keys that do not belong to the model are errors (a
    typo would otherwise be silently ignored by every trial of a study).
    """
    keys = _resolved(model_cfg)
    name = keys["name"]
    shape = tuple(input_shape)
    if not shape or not all(_is_int(d) and d >= 1 for d in shape):
        raise ConfigError(f"input_shape={shape!r} must be a non-empty tuple of positive integers")
    if not _is_int(num_classes) or num_classes < 1:
        raise ConfigError(f"num_classes={num_classes!r} must be an integer >= 1")

    if "precision" in keys:
        _check_choice(keys, "precision", PRECISIONS)
    if name in mup.WIDTH_KEYS:
        _check_choice(keys, "parametrization", mup.PARAMETRIZATIONS)
        _check_int(keys, "base_width", 1, " (the width at which μP equals the standard one)")
    if name == "mlp":
        _check_int(keys, "hidden_units", 1)
        _check_int(keys, "num_layers", 1, " (the number of hidden layers)")
        _check_choice(keys, "activation", tuple(ACTIVATIONS))
        _check_bools(keys, ("dropout_layers", "batch_norm"))
    elif name == "cnn":
        if len(shape) > 3:
            raise ConfigError(
                f"config.model.name='cnn' needs input of rank 1 (L,), 2 (H, W) or 3 (H, W, C); "
                f"got input_shape={shape}"
            )
        _check_int(keys, "channels", 1)
        _check_int(keys, "num_layers", 1, " (the number of conv layers)")
        _check_int(keys, "kernel_size", 1)
        _check_int(keys, "stride", 1)
        _check_choice(keys, "pool", POOLS)
        _check_int(keys, "pool_size", 1)
        _check_int(keys, "hidden_units", 0, " (0 = no dense layer before the output)")
        _check_choice(keys, "activation", tuple(ACTIVATIONS))
        _check_bools(keys, ("dropout_layers", "batch_norm", "residual"))
        _check_cnn_depth(keys, shape)
    else:  # rnn
        if len(shape) > 2:
            raise ConfigError(
                f"config.model.name='rnn' needs input of rank 1 (T,) or 2 (T, F); "
                f"got input_shape={shape}"
            )
        _check_choice(keys, "cell", CELLS)
        _check_int(keys, "hidden_size", 1)
        _check_int(keys, "num_layers", 1, " (the number of stacked layers)")
        _check_bools(keys, ("bidirectional",))
        _check_choice(keys, "readout", READOUTS)


def _built(keys: dict[str, Any], shape: tuple[int, ...], num_classes: int) -> Model:
    """The model of validated, complete ``keys``, built once per architecture (equal specs
    then share compilations)."""
    key = (json.dumps(keys, sort_keys=True, default=list), shape, num_classes)
    if key in _BUILT:
        return _BUILT[key]
    if keys.get("parametrization") == "mup":
        model = _mup_model(keys, shape, num_classes)
    else:
        builder, precision = MODELS[keys["name"]], keys.get("precision", "float32")
        model = from_factory(
            lambda rngs: apply_precision(builder(keys, shape, num_classes, rngs), precision),
            keys["name"],
        )
    _BUILT[key] = dataclasses.replace(model, recipe=repr(key))
    return _BUILT[key]


def _mup_model(keys: dict[str, Any], shape: tuple[int, ...], num_classes: int) -> Model:
    """The standard model of ``keys`` under μP, relative to the same model at base_width; the
    one twice as wide shows which dimensions grow with the width (as the mup package's base
    shapes do)."""
    width_key, base = mup.WIDTH_KEYS[keys["name"]], int(keys["base_width"])

    def standard(width: int) -> Model:
        return _built(keys | {"parametrization": "standard", width_key: width}, shape, num_classes)

    model = standard(int(keys[width_key]))
    rules = mup.parametrization(
        _param_shapes(model),
        _param_shapes(standard(base)),
        _param_shapes(standard(2 * base)),
        base_width=base,
        width=int(keys[width_key]),
    )
    return mup.with_mup(model, rules)


def _param_shapes(model: Model) -> Any:
    """The shapes of ``model``'s trainable parameters (nothing is allocated)."""
    return jax.eval_shape(lambda key: model.trainable(model.init(key)), ABSTRACT_KEY)


def build_model(model_cfg: Any, input_shape: tuple[int, ...], num_classes: int) -> Model:
    """Validates ``model_cfg`` and returns the built-in model's pure ``init``/``apply`` (under
    μP, with its per-layer rules: :mod:`hpjax.models.mup`)."""
    validate_model_config(model_cfg, input_shape, num_classes)
    keys = _resolved(model_cfg)
    return _built(keys, tuple(int(d) for d in input_shape), int(num_classes))


_BUILT: dict[tuple, Model] = {}
