"""Flax NNX classifiers (MLP, CNN, RNN) and a name registry, exposed in a pure functional form.

A population of trials needs models as pure functions it can ``jax.vmap`` over a leading trial
axis, so :func:`build_model` wraps each NNX module into a :class:`Model` with

- ``init(key) -> params``: a pure nested dict of float32 arrays (``nnx.to_pure_dict`` of the
  module's ``nnx.Param`` state; lists of layers have integer keys),
- ``apply(params, x) -> logits``: ``x`` is ``[B, *input_shape]``, logits are ``[B, num_classes]``
  float32,
- ``module(params) -> nnx.Module``: a ready-to-use stateful module, e.g. after restoring a
  checkpoint.

The graph definition is found once with ``nnx.eval_shape`` (no arrays are allocated), and
``apply`` rebuilds the module from it inside the traced function, so both functions work under
``jax.jit`` and ``jax.vmap``. The models have no BatchNorm, no Dropout and no stored RNG streams:
their only state is their parameters.

Every mistake in ``config.model`` is a :class:`~hpjax.errors.ConfigError` with a one-line message
naming the key, raised by :func:`validate_model_config` before anything is built.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from hpjax.errors import ConfigError

MODEL_NAMES = ("cnn", "mlp", "rnn")
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nnx.relu,
    "tanh": jnp.tanh,
    "gelu": nnx.gelu,
    "sigmoid": nnx.sigmoid,
    "elu": nnx.elu,
    "silu": nnx.silu,
}
POOLS = ("max", "avg", "none")
CELLS = ("lstm", "gru")
READOUTS = ("last", "mean")


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------


def _check_input(x: jax.Array, input_shape: tuple[int, ...], model: str) -> jax.Array:
    """Checks that ``x`` is ``[B, *input_shape]`` and casts it to float32."""
    if x.ndim != len(input_shape) + 1 or tuple(x.shape[1:]) != input_shape:
        raise ConfigError(
            f"model {model!r} was built for inputs of shape [B, *{input_shape}]; got x of shape "
            f"{tuple(x.shape)}"
        )
    return jnp.asarray(x, jnp.float32)


class MLP(nnx.Module):
    """Multi-layer perceptron on the flattened input: ``num_layers`` hidden layers, then logits."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        hidden_units: int,
        num_layers: int,
        activation: str,
        rngs: nnx.Rngs,
    ):
        self.input_shape = tuple(int(d) for d in input_shape)
        self.activation = activation
        widths = [math.prod(self.input_shape)] + [hidden_units] * num_layers
        self.hidden = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:], strict=True)]
        )
        self.head = nnx.Linear(widths[-1], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = _check_input(x, self.input_shape, "mlp")
        x = x.reshape(x.shape[0], -1)
        act = ACTIVATIONS[self.activation]
        for layer in self.hidden:
            x = act(layer(x))
        return self.head(x)


def cnn_spatial_sizes(
    input_shape: Sequence[int], num_layers: int, stride: int, pool: str, pool_size: int
) -> list[tuple[int, ...]]:
    """Spatial size after each conv layer (SAME conv with ``stride``, then VALID pooling).

    Element 0 is the input's spatial size, element ``i`` the size after conv layer ``i``.
    """
    spatial = tuple(int(d) for d in input_shape)
    if len(spatial) == 3:  # (H, W, C): channels are not spatial
        spatial = spatial[:2]
    sizes = [spatial]
    for _ in range(num_layers):
        spatial = tuple(-(-n // stride) for n in spatial)  # SAME padding: ceil(n / stride)
        if pool != "none":
            spatial = tuple(n // pool_size for n in spatial)  # VALID pooling: floor(n / p)
        sizes.append(spatial)
    return sizes


def conv_as_matmul(conv: nnx.Conv, x: jax.Array) -> jax.Array:
    """``conv(x)`` for a SAME-padded, undilated ``nnx.Conv``, computed as patches @ kernel.

    XLA:CPU runs a convolution inside a loop (the engine's ``fori_loop`` over ticks) an order of
    magnitude slower than the same convolution outside one (jax issue 12868; measured here: 50 ms
    against 3.5 ms per step of the default MNIST-1D CNN). Gathering the k (or kh x kw) shifted
    copies of the input and multiplying by the flattened kernel computes the same
    cross-correlation with one matmul, which stays fast inside loops and under ``vmap``.
    """
    kernel, stride = conv.kernel[...], conv.strides
    rank = kernel.ndim - 2
    strides = (stride,) * rank if isinstance(stride, int) else tuple(stride)
    pads, outs = [], []
    for n, k, s in zip(x.shape[1 : 1 + rank], kernel.shape[:rank], strides, strict=True):
        out = -(-n // s)  # SAME padding: ceil(n / s), padded as lax.conv pads it
        total = max((out - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
        outs.append(out)
    x = jnp.pad(x, [(0, 0), *pads, (0, 0)])
    shifted = []
    for offsets in itertools.product(*(range(k) for k in kernel.shape[:rank])):
        index = tuple(
            slice(o, o + (n - 1) * s + 1, s) for o, n, s in zip(offsets, outs, strides, strict=True)
        )
        shifted.append(x[(slice(None), *index)])
    patches = jnp.stack(shifted, axis=-2)  # [B, *out, prod(kernel spatial), C_in]
    patches = patches.reshape(*patches.shape[:-2], -1)
    y = patches @ kernel.reshape(-1, kernel.shape[-1])
    return y + conv.bias[...] if conv.bias is not None else y


class CNN(nnx.Module):
    """Convolutional classifier: ``num_layers`` x (conv, activation, pool), optional dense, logits.

    Input rank 1 ``(L,)`` is a 1-channel sequence (1-D convs), rank 2 ``(H, W)`` a 1-channel image
    and rank 3 ``(H, W, C)`` a C-channel image (2-D convs). Convs use SAME padding, pools are
    non-overlapping (window = stride = ``pool_size``, VALID padding).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        channels: int,
        num_layers: int,
        kernel_size: int,
        stride: int,
        pool: str,
        pool_size: int,
        hidden_units: int,
        activation: str,
        rngs: nnx.Rngs,
    ):
        self.input_shape = tuple(int(d) for d in input_shape)
        self.activation = activation
        self.pool = pool
        rank = 1 if len(self.input_shape) == 1 else 2
        self.pool_window = (pool_size,) * rank
        in_channels = self.input_shape[2] if len(self.input_shape) == 3 else 1
        convs = []
        for _ in range(num_layers):
            convs.append(
                nnx.Conv(
                    in_channels,
                    channels,
                    kernel_size=(kernel_size,) * rank,
                    strides=(stride,) * rank,
                    padding="SAME",
                    rngs=rngs,
                )
            )
            in_channels = channels
        self.convs = nnx.List(convs)
        final = cnn_spatial_sizes(self.input_shape, num_layers, stride, pool, pool_size)[-1]
        features = math.prod(final) * channels
        if hidden_units > 0:
            self.dense = nnx.Linear(features, hidden_units, rngs=rngs)
            features = hidden_units
        else:
            self.dense = None
        self.head = nnx.Linear(features, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = _check_input(x, self.input_shape, "cnn")
        if len(self.input_shape) < 3:
            x = x[..., None]  # add the single input channel
        act = ACTIVATIONS[self.activation]
        as_matmul = jax.default_backend() == "cpu"
        for conv in self.convs:
            x = act(conv_as_matmul(conv, x) if as_matmul else conv(x))
            if self.pool == "max":
                x = nnx.max_pool(x, self.pool_window, strides=self.pool_window, padding="VALID")
            elif self.pool == "avg":
                x = nnx.avg_pool(x, self.pool_window, strides=self.pool_window, padding="VALID")
        x = x.reshape(x.shape[0], -1)
        if self.dense is not None:
            x = act(self.dense(x))
        return self.head(x)


class RNNClassifier(nnx.Module):
    """Stacked (optionally bidirectional) LSTM or GRU over time, then a linear readout.

    Input rank 1 ``(T,)`` is T steps of one feature, rank 2 ``(T, F)`` T steps of F features.
    ``readout='last'`` classifies from each direction's final output (the forward RNN's output at
    step T-1 and, if bidirectional, the backward RNN's output at step 0, which has read the whole
    sequence); ``readout='mean'`` from the mean output over time. The carries start at zero.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        cell: str,
        hidden_size: int,
        num_layers: int,
        bidirectional: bool,
        readout: str,
        rngs: nnx.Rngs,
    ):
        self.input_shape = tuple(int(d) for d in input_shape)
        self.cell = cell
        self.hidden_size = hidden_size
        self.bidirectional = bool(bidirectional)
        self.readout = readout
        cell_cls = {"lstm": nnx.LSTMCell, "gru": nnx.GRUCell}[cell]
        directions = 2 if self.bidirectional else 1

        def rnn(in_features: int) -> nnx.RNN:
            # rngs=False: no stored RNG stream, so parameters are the only state; the carry is
            # passed in explicitly as zeros.
            return nnx.RNN(cell_cls(in_features, hidden_size, rngs=rngs), rngs=False)

        in_features = self.input_shape[1] if len(self.input_shape) == 2 else 1
        layers = []
        for _ in range(num_layers):
            if self.bidirectional:
                layers.append(nnx.Bidirectional(rnn(in_features), rnn(in_features), rngs=False))
            else:
                layers.append(rnn(in_features))
            in_features = directions * hidden_size
        self.layers = nnx.List(layers)
        self.head = nnx.Linear(directions * hidden_size, num_classes, rngs=rngs)

    def _zero_carry(self, batch: int) -> Any:
        h = jnp.zeros((batch, self.hidden_size), jnp.float32)
        return (h, h) if self.cell == "lstm" else h  # LSTM carry is (c, h)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = _check_input(x, self.input_shape, "rnn")
        if len(self.input_shape) == 1:
            x = x[..., None]  # [B, T] -> [B, T, 1]
        carry = self._zero_carry(x.shape[0])
        for layer in self.layers:
            if self.bidirectional:
                x = layer(x, initial_carry=(carry, carry))
            else:
                x = layer(x, initial_carry=carry)
        if self.readout == "mean":
            features = x.mean(axis=1)
        elif self.bidirectional:
            h = self.hidden_size
            features = jnp.concatenate([x[:, -1, :h], x[:, 0, h:]], axis=-1)
        else:
            features = x[:, -1]
        return self.head(features)


# ---------------------------------------------------------------------------------------------
# Registry, configs and validation
# ---------------------------------------------------------------------------------------------


def _mlp_from_config(
    cfg: Any, input_shape: tuple[int, ...], num_classes: int, rngs: nnx.Rngs
) -> MLP:
    return MLP(
        input_shape,
        num_classes,
        hidden_units=int(cfg.hidden_units),
        num_layers=int(cfg.num_layers),
        activation=str(cfg.activation),
        rngs=rngs,
    )


def _cnn_from_config(
    cfg: Any, input_shape: tuple[int, ...], num_classes: int, rngs: nnx.Rngs
) -> CNN:
    return CNN(
        input_shape,
        num_classes,
        channels=int(cfg.channels),
        num_layers=int(cfg.num_layers),
        kernel_size=int(cfg.kernel_size),
        stride=int(cfg.stride),
        pool=str(cfg.pool),
        pool_size=int(cfg.pool_size),
        hidden_units=int(cfg.hidden_units),
        activation=str(cfg.activation),
        rngs=rngs,
    )


def _rnn_from_config(
    cfg: Any, input_shape: tuple[int, ...], num_classes: int, rngs: nnx.Rngs
) -> RNNClassifier:
    return RNNClassifier(
        input_shape,
        num_classes,
        cell=str(cfg.cell),
        hidden_size=int(cfg.hidden_size),
        num_layers=int(cfg.num_layers),
        bidirectional=bool(cfg.bidirectional),
        readout=str(cfg.readout),
        rngs=rngs,
    )


# name -> builder(model_cfg (completed with defaults), input_shape, num_classes, rngs) -> module
MODELS: dict[str, Callable[..., nnx.Module]] = {
    "cnn": _cnn_from_config,
    "mlp": _mlp_from_config,
    "rnn": _rnn_from_config,
}

_DEFAULTS: dict[str, dict[str, Any]] = {
    "mlp": {"hidden_units": 256, "num_layers": 2, "activation": "relu"},
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


def _resolved(model_cfg: Any) -> ml_collections.ConfigDict:
    """``model_cfg`` with missing keys filled from the model's defaults (validation is separate)."""
    given = _as_dict(model_cfg)
    if "name" not in given:
        raise ConfigError(f"config.model.name is missing; allowed: {', '.join(MODEL_NAMES)}")
    name = given["name"]
    if not isinstance(name, str) or name not in MODEL_NAMES:
        raise ConfigError(
            f"config.model.name={name!r} is unknown; allowed: {', '.join(MODEL_NAMES)}"
        )
    unknown = sorted(set(given) - set(_DEFAULTS[name]) - {"name"})
    if unknown:
        raise ConfigError(
            f"config.model.{unknown[0]} is not a key of model {name!r}; allowed keys: "
            f"{', '.join(['name', *sorted(_DEFAULTS[name])])}"
        )
    return ml_collections.ConfigDict({**_DEFAULTS[name], **given})


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_int(cfg: Any, key: str, minimum: int, note: str = "") -> int:
    value = cfg[key]
    if not _is_int(value) or value < minimum:
        raise ConfigError(f"config.model.{key}={value!r} must be an integer >= {minimum}{note}")
    return int(value)


def _check_choice(cfg: Any, key: str, allowed: Sequence[str]) -> str:
    value = cfg[key]
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(f"config.model.{key}={value!r} is unknown; allowed: {', '.join(allowed)}")
    return value


def _fmt_size(spatial: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in spatial)


def _check_cnn_depth(cfg: Any, input_shape: tuple[int, ...]) -> None:
    """Raises a ConfigError naming the first conv layer whose output has a spatial size < 1."""
    num_layers, stride, pool, pool_size = cfg.num_layers, cfg.stride, cfg.pool, cfg.pool_size
    sizes = cnn_spatial_sizes(input_shape, num_layers, stride, pool, pool_size)
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
    )


def validate_model_config(model_cfg: Any, input_shape: tuple[int, ...], num_classes: int) -> None:
    """Raises ConfigError (one line, naming ``config.model.KEY``) for any bad model setting.

    Missing keys take the model's defaults; keys that do not belong to the model are errors (a
    typo would otherwise be silently ignored by every trial of a study).
    """
    cfg = _resolved(model_cfg)
    name = cfg.name
    shape = tuple(input_shape)
    if not shape or not all(_is_int(d) and d >= 1 for d in shape):
        raise ConfigError(f"input_shape={shape!r} must be a non-empty tuple of positive integers")
    if not _is_int(num_classes) or num_classes < 1:
        raise ConfigError(f"num_classes={num_classes!r} must be an integer >= 1")

    if name == "mlp":
        _check_int(cfg, "hidden_units", 1)
        _check_int(cfg, "num_layers", 1, " (the number of hidden layers)")
        _check_choice(cfg, "activation", tuple(ACTIVATIONS))
    elif name == "cnn":
        if len(shape) > 3:
            raise ConfigError(
                f"config.model.name='cnn' needs input of rank 1 (L,), 2 (H, W) or 3 (H, W, C); "
                f"got input_shape={shape}"
            )
        _check_int(cfg, "channels", 1)
        _check_int(cfg, "num_layers", 1, " (the number of conv layers)")
        _check_int(cfg, "kernel_size", 1)
        _check_int(cfg, "stride", 1)
        _check_choice(cfg, "pool", POOLS)
        _check_int(cfg, "pool_size", 1)
        _check_int(cfg, "hidden_units", 0, " (0 = no dense layer before the output)")
        _check_choice(cfg, "activation", tuple(ACTIVATIONS))
        _check_cnn_depth(cfg, shape)
    else:  # rnn
        if len(shape) > 2:
            raise ConfigError(
                f"config.model.name='rnn' needs input of rank 1 (T,) or 2 (T, F); "
                f"got input_shape={shape}"
            )
        _check_choice(cfg, "cell", CELLS)
        _check_int(cfg, "hidden_size", 1)
        _check_int(cfg, "num_layers", 1, " (the number of stacked layers)")
        if not isinstance(cfg.bidirectional, bool):
            raise ConfigError(
                f"config.model.bidirectional={cfg.bidirectional!r} must be True or False"
            )
        _check_choice(cfg, "readout", READOUTS)


# ---------------------------------------------------------------------------------------------
# The functional form
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Model:
    """A model as pure functions of its parameters; see the module docstring."""

    name: str
    init: Callable[[jax.Array], dict]
    apply: Callable[[dict, jax.Array], jax.Array]
    module: Callable[[dict], nnx.Module]
    num_params: int


def build_model(model_cfg: Any, input_shape: tuple[int, ...], num_classes: int) -> Model:
    """Validates ``model_cfg`` and returns the model's pure ``init``/``apply`` functions."""
    validate_model_config(model_cfg, input_shape, num_classes)
    cfg = _resolved(model_cfg)
    shape = tuple(int(d) for d in input_shape)
    builder = MODELS[cfg.name]

    def make(rngs: nnx.Rngs) -> nnx.Module:
        return builder(cfg, shape, int(num_classes), rngs)

    abstract = nnx.eval_shape(lambda: make(nnx.Rngs(0)))
    graphdef, abstract_params, rest = nnx.split(abstract, nnx.Param, ...)
    if jax.tree.leaves(rest):  # a module with state besides its params breaks the pure form
        raise RuntimeError(f"model {cfg.name!r} has non-parameter state: {rest}")
    flat_abstract = {
        tuple(str(k) for k in path): v.shape for path, v in nnx.to_flat_state(abstract_params)
    }
    num_params = sum(math.prod(s) for s in flat_abstract.values())

    def init(key: jax.Array) -> dict:
        return nnx.to_pure_dict(nnx.state(make(nnx.Rngs(params=key)), nnx.Param))

    def module(params: dict) -> nnx.Module:
        flat = {
            tuple(str(k) for k in path): jnp.shape(v)
            for path, v in nnx.traversals.flatten_mapping(params).items()
        }
        if flat != flat_abstract:
            missing = sorted(set(flat_abstract) - set(flat))
            extra = sorted(set(flat) - set(flat_abstract))
            wrong = sorted(k for k in set(flat) & set(flat_abstract) if flat[k] != flat_abstract[k])
            raise ValueError(
                f"params do not match model {cfg.name!r}: missing {missing}, unexpected {extra}, "
                f"wrong shape {[(k, flat[k], flat_abstract[k]) for k in wrong]}"
            )
        state = jax.tree.map(lambda v: v, abstract_params)  # a fresh copy to fill in
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(graphdef, state)

    def apply(params: dict, x: jax.Array) -> jax.Array:
        return module(params)(x)

    # jit makes direct (eager) calls fast; nested inside the engine's own jit/vmap it is inlined.
    return Model(
        name=cfg.name,
        init=jax.jit(init),
        apply=jax.jit(apply),
        module=module,
        num_params=num_params,
    )
