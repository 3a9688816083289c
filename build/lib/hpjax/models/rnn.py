"""A stacked (optionally bidirectional) LSTM or GRU classifier over sequences."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from hpjax.models.model import check_input

CELLS = ("lstm", "gru")
READOUTS = ("last", "mean")


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
        x = check_input(x, self.input_shape, "rnn")
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
