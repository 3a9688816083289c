"""A 1-D or 2-D convolutional classifier whose convolutions run as patches @ kernel."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from hpjax.models.mlp import ACTIVATIONS
from hpjax.models.model import TrialDropout, check_input
from hpjax.models.precision import matmul

POOLS = ("max", "avg", "none")


def cnn_spatial_sizes(
    input_shape: Sequence[int],
    num_layers: int,
    stride: int,
    pool: str,
    pool_size: int,
    residual: bool = False,
) -> list[tuple[int, ...]]:
    """Spatial size after each conv layer (SAME conv with ``stride``, then VALID pooling).

    Element 0 is the input's spatial size, element ``i`` the size after conv layer ``i``. In a
    residual network only the first layer strides and pools; the blocks keep its size.
    """
    spatial = tuple(int(d) for d in input_shape)
    if len(spatial) == 3:  # (H, W, C): channels are not spatial
        spatial = spatial[:2]
    sizes = [spatial]
    for layer in range(num_layers):
        if residual and layer > 0:
            sizes.append(spatial)
            continue
        spatial = tuple(-(-n // stride) for n in spatial)  # SAME padding: ceil(n / stride)
        if pool != "none":
            spatial = tuple(n // pool_size for n in spatial)  # VALID pooling: floor(n / p)
        sizes.append(spatial)
    return sizes


def conv_as_matmul(conv: nnx.Conv, x: jax.Array, precision: str = "float32") -> jax.Array:
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
    y = matmul(patches, kernel.reshape(-1, kernel.shape[-1]), precision)
    return y + conv.bias[...] if conv.bias is not None else y


class CNN(nnx.Module):
    """Convolutional classifier: ``num_layers`` x (conv, activation, pool), optional dense, logits.

    Input rank 1 ``(L,)`` is a 1-channel sequence (1-D convs), rank 2 ``(H, W)`` a 1-channel image
    and rank 3 ``(H, W, C)`` a C-channel image (2-D convs). Convs use SAME padding, pools are
    non-overlapping (window = stride = ``pool_size``, VALID padding).

    Options: ``batch_norm`` normalises each conv's (and the dense layer's) output before the
    activation; ``dropout`` adds a :class:`TrialDropout` (each trial's rate) after every
    activation; ``residual`` makes layers 2.. residual blocks ``x + act(norm(conv(x)))`` at the
    first layer's size (only the first strides and pools), so a network can be deep.
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
        dropout: bool = False,
        batch_norm: bool = False,
        residual: bool = False,
    ):
        self.input_shape = tuple(int(d) for d in input_shape)
        self.activation = activation
        self.pool = pool
        self.residual = residual
        self.matmul_precision = "float32"  # set by precision.apply_precision
        rank = 1 if len(self.input_shape) == 1 else 2
        self.pool_window = (pool_size,) * rank
        in_channels = self.input_shape[2] if len(self.input_shape) == 3 else 1
        convs = []
        for layer in range(num_layers):
            convs.append(
                nnx.Conv(
                    in_channels,
                    channels,
                    kernel_size=(kernel_size,) * rank,
                    strides=(1 if residual and layer > 0 else stride,) * rank,
                    padding="SAME",
                    use_bias=not batch_norm,  # the BatchNorm's bias (see the MLP)
                    rngs=rngs,
                )
            )
            in_channels = channels
        self.convs = nnx.List(convs)
        sizes = cnn_spatial_sizes(self.input_shape, num_layers, stride, pool, pool_size, residual)
        features = math.prod(sizes[-1]) * channels
        if hidden_units > 0:
            self.dense = nnx.Linear(features, hidden_units, use_bias=not batch_norm, rngs=rngs)
            features = hidden_units
        else:
            self.dense = None
        layers = num_layers + (hidden_units > 0)
        norms = [nnx.BatchNorm(channels, rngs=rngs) for _ in range(num_layers)]
        if hidden_units > 0:
            norms.append(nnx.BatchNorm(hidden_units, rngs=rngs))
        self.norms = nnx.List(norms if batch_norm else [])
        self.drops = nnx.List([TrialDropout(rngs=rngs) for _ in range(layers)] if dropout else [])
        self.head = nnx.Linear(features, num_classes, rngs=rngs)

    def _after(self, i: int, x: jax.Array) -> jax.Array:
        """Layer ``i``'s normalisation (if any), activation and dropout (if any)."""
        if self.norms:
            x = self.norms[i](x)
        x = ACTIVATIONS[self.activation](x)
        return self.drops[i](x) if self.drops else x

    def __call__(self, x: jax.Array) -> jax.Array:
        x = check_input(x, self.input_shape, "cnn")
        if len(self.input_shape) < 3:
            x = x[..., None]  # add the single input channel
        as_matmul = jax.default_backend() == "cpu"
        for i, conv in enumerate(self.convs):
            h = self._after(
                i, conv_as_matmul(conv, x, self.matmul_precision) if as_matmul else conv(x)
            )
            if self.residual and i > 0:
                x = x + h
                continue
            x = h
            if self.pool == "max":
                x = nnx.max_pool(x, self.pool_window, strides=self.pool_window, padding="VALID")
            elif self.pool == "avg":
                x = nnx.avg_pool(x, self.pool_window, strides=self.pool_window, padding="VALID")
        x = x.reshape(x.shape[0], -1)
        if self.dense is not None:
            x = self._after(len(self.convs), self.dense(x))
        return self.head(x)
