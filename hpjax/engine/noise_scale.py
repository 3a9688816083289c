"""The simple gradient noise scale ``B_simple = tr(Sigma) / |G|^2`` (McCandlish et al. 2018).

``G`` is the gradient of the mean training loss over the whole training set and ``Sigma`` the
covariance of the per-example gradients ``g_i`` around it, so ``tr(Sigma) = mean_i |g_i - G|^2``.
For a batch of ``B`` examples drawn uniformly *with replacement*, the batch gradient ``G_B``
satisfies ``E |G_B|^2 = |G|^2 + tr(Sigma) / B`` exactly. Two batch sizes therefore give unbiased
estimates of both quantities (McCandlish et al., arXiv 1812.06162, appendix A.1)::

    |G|^2     ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

The ratio of two single estimates is biased and very noisy, so the numerator and the denominator
are averaged separately over many measurements (a mean here, or an exponential moving average
along training) before dividing.

:func:`gradient_sq_norms` measures ``|G_small|^2`` and ``|G_big|^2`` for one set of parameters;
it is pure and vmaps over a population's trial axis (:func:`measure_population`).
:func:`exact_noise_scale` computes the exact value from every per-example gradient of a data set,
the reference the estimator is tested (and, in the batch-size study, checked) against.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hpjax.engine import tasks
from hpjax.engine.jit import jit

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]


class NoiseScale(NamedTuple):
    """``|G|^2``, ``tr(Sigma)`` and their ratio ``B_simple``."""

    grad_sq: Any
    trace: Any
    b_simple: Any


def _sq_norm(tree) -> jax.Array:
    return sum(jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in jax.tree.leaves(tree))


def _mean_loss(apply: ApplyFn, params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    logits = tasks.model_outputs(apply(params, x))
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def gradient_sq_norms(
    apply: ApplyFn,
    params: Params,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    small: int,
    big: int,
    num_draws: int = 1,
) -> tuple[jax.Array, jax.Array]:
    """``|G_small|^2`` and ``|G_big|^2`` for ``num_draws`` independent draws, each ``[num_draws]``.

    Each draw takes ``big`` indices of ``(x, y)`` uniformly with replacement; the small batch is
    its first ``small`` examples, so one draw costs the gradient of ``big`` examples. The loss is
    the mean softmax cross-entropy the engine trains on.
    """
    if not 0 < small < big:
        raise ValueError(f"need 0 < small < big, got small={small}, big={big}")
    grad = jax.grad(functools.partial(_mean_loss, apply))
    n = x.shape[0]

    def one(draw_key):
        idx = jax.random.randint(draw_key, (big,), 0, n)
        g_small = grad(params, x[idx[:small]], y[idx[:small]])
        g_rest = grad(params, x[idx[small:]], y[idx[small:]])
        g_big = jax.tree.map(lambda s, r: (small * s + (big - small) * r) / big, g_small, g_rest)
        return _sq_norm(g_small), _sq_norm(g_big)

    return jax.lax.map(one, jax.random.split(key, num_draws))


measure = jit(gradient_sq_norms, static_argnames=("apply", "small", "big", "num_draws"))


@jit(static_argnames=("apply", "small", "big", "num_draws"))
def measure_population(
    apply: ApplyFn,
    params: Params,
    x: jax.Array,
    y: jax.Array,
    keys: jax.Array,
    small: int,
    big: int,
    num_draws: int = 1,
) -> tuple[jax.Array, jax.Array]:
    """:func:`gradient_sq_norms` for every trial of a population: ``params`` and ``keys`` carry a
    leading trial axis ``[K]``; the results are ``[K, num_draws]``."""
    per_trial = functools.partial(
        gradient_sq_norms, apply, small=small, big=big, num_draws=num_draws
    )
    return jax.vmap(per_trial, in_axes=(0, None, None, 0))(params, x, y, keys)


def unbiased_estimates(small_sq, big_sq, small: int, big: int) -> tuple[Any, Any]:
    """The unbiased estimates ``(|G|^2, tr(Sigma))`` from one or many pairs of squared norms."""
    if not 0 < small < big:
        raise ValueError(f"need 0 < small < big, got small={small}, big={big}")
    grad_sq = (big * big_sq - small * small_sq) / (big - small)
    trace = (small_sq - big_sq) / (1.0 / small - 1.0 / big)
    return grad_sq, trace


def simple_noise_scale(
    small_sq, big_sq, small: int, big: int, axis: int | None = None
) -> NoiseScale:
    """``B_simple`` from many measurements: estimates averaged over ``axis``, then divided.

    ``axis=None`` averages over every measurement given. A non-positive averaged ``|G|^2`` (the
    gradient is too small for the measurements to resolve) gives ``B_simple = inf``.
    """
    grad_sq, trace = unbiased_estimates(np.asarray(small_sq), np.asarray(big_sq), small, big)
    grad_sq, trace = np.mean(grad_sq, axis=axis), np.mean(trace, axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(grad_sq > 0, trace / grad_sq, np.inf)
    return NoiseScale(grad_sq, trace, ratio)


def ema_noise_scale(grad_sq, trace, decay: float) -> NoiseScale:
    """Bias-corrected exponential moving averages of a series of ``|G|^2`` and ``tr(Sigma)``
    estimates (oldest first), and their ratio at every point of the series."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay}")
    grad_sq, trace = np.asarray(grad_sq, np.float64), np.asarray(trace, np.float64)
    g_avg, t_avg = np.zeros_like(grad_sq), np.zeros_like(trace)
    g = t = 0.0
    for i in range(len(grad_sq)):
        g = decay * g + (1 - decay) * grad_sq[i]
        t = decay * t + (1 - decay) * trace[i]
        correction = 1 - decay ** (i + 1)
        g_avg[i], t_avg[i] = g / correction, t / correction
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(g_avg > 0, t_avg / g_avg, np.inf)
    return NoiseScale(g_avg, t_avg, ratio)


@jit(static_argnames=("apply", "chunk"))
def exact_noise_scale(
    apply: ApplyFn, params: Params, x: jax.Array, y: jax.Array, chunk: int = 256
) -> NoiseScale:
    """The exact ``|G|^2``, ``tr(Sigma) = mean_i |g_i - G|^2`` and ``B_simple`` on ``(x, y)``.

    Per-example gradients are computed ``chunk`` at a time (two passes: ``G`` first, then the
    deviations, which keeps ``tr(Sigma)`` accurate when it is small against ``|G|^2``).
    """
    n = x.shape[0]
    chunk = min(chunk, n)
    num_chunks = -(-n // chunk)
    pad = num_chunks * chunk - n
    xs = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape((num_chunks, chunk) + x.shape[1:])
    ys = jnp.pad(y, (0, pad)).reshape(num_chunks, chunk)
    ws = (jnp.arange(num_chunks * chunk) < n).reshape(num_chunks, chunk).astype(jnp.float32)

    loss = functools.partial(_mean_loss, apply)

    def example_grad(xi, yi):
        return jax.grad(loss)(params, xi[None], yi[None])

    per_example = jax.vmap(example_grad)

    def grad_sum(total, batch):
        xb, yb, wb = batch
        grads = per_example(xb, yb)
        summed = jax.tree.map(lambda g: jnp.tensordot(wb, g, axes=1), grads)
        return jax.tree.map(jnp.add, total, summed), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    total, _ = jax.lax.scan(grad_sum, zeros, (xs, ys, ws))
    mean_grad = jax.tree.map(lambda g: g / n, total)

    def deviation(acc, batch):
        xb, yb, wb = batch
        grads = per_example(xb, yb)
        sq = sum(
            jnp.sum(jnp.square(g - m[None]).reshape(chunk, -1), axis=1)
            for g, m in zip(jax.tree.leaves(grads), jax.tree.leaves(mean_grad), strict=True)
        )
        return acc + jnp.sum(wb * sq), None

    dev, _ = jax.lax.scan(deviation, jnp.zeros((), jnp.float32), (xs, ys, ws))
    grad_sq = _sq_norm(mean_grad)
    trace = dev / n
    return NoiseScale(grad_sq, trace, trace / grad_sq)
