"""μP, the maximal update parametrisation, for the built-in MLP and CNN, relative to a base width.

Yang et al. 2022 ("Tensor Programs V", Table 3, the formulation whose output layer is
initialised with variance 1/fan_in^2) scale the initialisation and the learning rate of each layer
by powers of its fan-in and fan-out, so that the best learning rate found on a narrow model stays
best on a wide one. As in the ``mup`` package's base shapes, the rules here are relative to a
model of width ``base_width``: each dimension's *width multiplier* is its size divided by its size
in the base model, so at ``width == base_width`` μP is exactly the standard parametrisation.

Which dimensions grow with the width is found as ``mup`` finds it: by comparing the parameter
shapes of the base model with those of a model twice as wide. A weight (the last axis is its
fan-out, the others its fan-in, as in ``nnx.Linear`` and ``nnx.Conv``) then has a role:

========  ======================  ===============  ===============  ==============
role      fan-in, fan-out         init std         lr, Adam-like    lr, SGD-like
========  ======================  ===============  ===============  ==============
input     fixed, grows            standard         x1               x m
hidden    grows, grows            standard         x 1/m            x1
output    grows, fixed            standard / √m    x 1/m            x 1/m
vector    a bias or norm scale    standard         x1               x m
          that grows
fixed     nothing grows (the      standard         x1               x1
          output layer's bias)
========  ======================  ===============  ===============  ==============

with ``m = width / base_width`` (precisely: the growing dimension's size over its size in the
base model). "Adam-like" are the optimizers that normalise the gradient (adam, adagrad,
rmsprop); "SGD-like" are sgd and momentum. Table 3's "all biases: SGD lr x fan_out" gives the
output layer's bias x1 (its fan-out is the class count, fixed), the others x m. Decoupled weight
decay, applied as ``lr * wd * param``, takes the same multiplier as the learning rate (as the
``mup`` package's MuAdam scales each group's rate). Adam's epsilon is left as it is.

For the MLP (width ``hidden_units``): ``hidden.0`` is the input layer, ``hidden.1..`` hidden
layers, ``head`` the output layer. For the CNN (width ``channels``): ``convs.0`` is the input
layer, ``convs.1..`` hidden layers, ``head`` the output layer; with ``hidden_units > 0`` the
dense layer (its width fixed) reads out from the channels and is the output layer, and the
``head`` after it is ``fixed``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax

from hpjax.errors import ConfigError
from hpjax.models.model import Model

PARAMETRIZATIONS = ("standard", "mup")
# The model keys of μP and their defaults, for the MLP and the CNN: the standard
# parametrisation (base_width is read only under mup). Studies written before these keys
# existed held these values.
DEFAULTS = {"parametrization": "standard", "base_width": 64}
# The width of each built-in model that μP scales (the key ``base_width`` is compared to).
WIDTH_KEYS = {"mlp": "hidden_units", "cnn": "channels"}
ADAM_LIKE = ("adagrad", "adam", "rmsprop")  # they normalise the gradient
SGD_LIKE = ("momentum", "sgd")


@dataclasses.dataclass(frozen=True)
class Layer:
    """One parameter leaf's μP role and the width multipliers of its fan-in and fan-out."""

    path: str  # e.g. "hidden.1.kernel"
    role: str
    fan_in_mult: float
    fan_out_mult: float

    @property
    def init_scale(self) -> float:
        """The factor on the standard initialisation's standard deviation."""
        return 1.0 / math.sqrt(self.fan_in_mult) if self.role == "output" else 1.0

    def lr_multiplier(self, optimizer: str) -> float:
        """The factor on the learning rate (and on ``lr * weight_decay``) for ``optimizer``."""
        if optimizer in ADAM_LIKE:
            return 1.0 / self.fan_in_mult if self.role in ("hidden", "output") else 1.0
        if optimizer in SGD_LIKE:
            if self.role in ("input", "vector"):
                return self.fan_out_mult
            return 1.0 / self.fan_in_mult if self.role == "output" else 1.0
        raise ConfigError(
            f"optimizer {optimizer!r} has no μP learning-rate rule; allowed with "
            f"model.parametrization='mup': {', '.join(sorted(ADAM_LIKE + SGD_LIKE))}"
        )


@dataclasses.dataclass(frozen=True)
class Parametrization:
    """μP's per-leaf rules for one model: a static (hashable) part of its :class:`Model`."""

    base_width: int
    width: int
    layers: tuple[Layer, ...]  # in the order of the trainable parameters' leaves
    treedef: Any  # the trainable parameters' tree structure

    @property
    def width_mult(self) -> float:
        return self.width / self.base_width

    def _tree(self, values: list[float]) -> Any:
        return jax.tree.unflatten(self.treedef, values)

    def lr_multipliers(self, optimizer: str) -> Any:
        """A tree like the trainable parameters whose leaves are Python floats: each leaf's
        learning-rate multiplier under ``optimizer``."""
        return self._tree([layer.lr_multiplier(optimizer) for layer in self.layers])

    def init_scales(self) -> Any:
        """A tree like the trainable parameters: each leaf's factor on its initial values."""
        return self._tree([layer.init_scale for layer in self.layers])

    def roles(self) -> dict[str, str]:
        """Each leaf's role by its dotted path, e.g. ``{"hidden.0.kernel": "input", ...}``."""
        return {layer.path: layer.role for layer in self.layers}


def _dotted(path: tuple) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan-in, fan-out) of a weight: the last axis is its output, the others its input."""
    return math.prod(shape[:-1]), shape[-1]


def _layer(path: tuple, shape, base, wider) -> Layer:
    """The role of a leaf from its shape in the model, the base model and one twice as wide."""
    name = _dotted(path)
    if len(shape) <= 1:  # a bias or a normalisation's scale: "vector-like"
        size, base_size = math.prod(shape), math.prod(base)
        grows = math.prod(wider) != base_size
        return Layer(name, "vector" if grows else "fixed", 1.0, size / base_size)
    (fan_in, fan_out), (base_in, base_out) = _fans(shape), _fans(base)
    wider_in, wider_out = _fans(wider)
    role = {
        (False, True): "input",
        (True, True): "hidden",
        (True, False): "output",
        (False, False): "fixed",
    }[(wider_in != base_in, wider_out != base_out)]
    return Layer(name, role, fan_in / base_in, fan_out / base_out)


def parametrization(
    model_params: Any, base_params: Any, wider_params: Any, base_width: int, width: int
) -> Parametrization:
    """μP's rules for a model whose trainable parameters (arrays or shape structs) are
    ``model_params``, given those of the same model at ``base_width`` and at twice it."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(model_params)
    base, wider = jax.tree.leaves(base_params), jax.tree.leaves(wider_params)
    if not len(leaves) == len(base) == len(wider):
        raise ConfigError(
            "model.parametrization='mup' needs the same layers at every width; the model at "
            f"base_width={base_width} has {len(base)} parameter arrays, at width {width} "
            f"{len(leaves)}"
        )
    layers = tuple(
        _layer(path, tuple(leaf.shape), tuple(b.shape), tuple(w.shape))
        for (path, leaf), b, w in zip(leaves, base, wider, strict=True)
    )
    return Parametrization(int(base_width), int(width), layers, treedef)


def with_mup(model: Model, rules: Parametrization) -> Model:
    """``model`` under μP: its output layer initialised with ``rules``'s smaller scale, and
    ``rules`` attached, from which the engine takes each leaf's learning-rate multiplier."""
    scales = rules.init_scales()

    def scaled(param: jax.Array, scale: float) -> jax.Array:
        return param if scale == 1.0 else param * scale

    def init(key: jax.Array) -> Any:
        variables = model.init(key)
        params = jax.tree.map(scaled, model.trainable(variables), scales)
        return model.with_trainable(variables, params)

    return dataclasses.replace(model, init=jax.jit(init), parametrization=rules)
