"""A multilayer perceptron classifier: flattened inputs, ``num_layers`` hidden layers, each
optionally with batch normalisation and dropout at the trial's rate."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from hpjax.models.model import TrialDropout, check_input

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nnx.relu,
    "tanh": jnp.tanh,
    "gelu": nnx.gelu,
    "sigmoid": nnx.sigmoid,
    "elu": nnx.elu,
    "silu": nnx.silu,
}


class MLP(nnx.Module):
    """Multi-layer perceptron on the flattened input: ``num_layers`` hidden layers, then logits.

    A hidden layer is dense, then batch normalisation (``batch_norm``), the activation, then
    dropout (``dropout``: a :class:`TrialDropout`, whose rate is each trial's ``dropout``).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        hidden_units: int,
        num_layers: int,
        activation: str,
        rngs: nnx.Rngs,
        dropout: bool = False,
        batch_norm: bool = False,
    ):
        self.input_shape = tuple(int(d) for d in input_shape)
        self.activation = activation
        widths = [math.prod(self.input_shape)] + [hidden_units] * num_layers
        self.hidden = nnx.List(
            [
                # a bias before a BatchNorm is the norm's to give: a bias of the layer would have
                # a gradient of rounding alone, which Adam turns into steps of the learning rate
                nnx.Linear(a, b, use_bias=not batch_norm, rngs=rngs)
                for a, b in zip(widths[:-1], widths[1:], strict=True)
            ]
        )
        self.norms = nnx.List(
            [nnx.BatchNorm(hidden_units, rngs=rngs) for _ in range(num_layers)]
            if batch_norm
            else []
        )
        self.drops = nnx.List(
            [TrialDropout(rngs=rngs) for _ in range(num_layers)] if dropout else []
        )
        self.head = nnx.Linear(widths[-1], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = check_input(x, self.input_shape, "mlp")
        x = x.reshape(x.shape[0], -1)
        act = ACTIVATIONS[self.activation]
        for i, layer in enumerate(self.hidden):
            x = layer(x)
            if self.norms:
                x = self.norms[i](x)
            x = act(x)
            if self.drops:
                x = self.drops[i](x)
        return self.head(x)
