"""The noise-scale estimator against the exact value from per-example gradients."""

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from hpjax.engine import noise_scale
from hpjax.models import build_model

N = 24


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 5)).astype(np.float32)
    y = (np.argmax(x[:, :3], axis=1) + (rng.random(N) < 0.3)).astype(np.int32) % 3
    cfg = ml_collections.ConfigDict(
        {"name": "mlp", "hidden_units": 8, "num_layers": 1, "activation": "tanh"}
    )
    model = build_model(cfg, (5,), 3)
    params = model.init(jax.random.PRNGKey(0))
    return model, params, jnp.asarray(x), jnp.asarray(y)


def per_example_grads(model, params, x, y) -> np.ndarray:
    """``[N, P]``: every example's gradient of its own loss, flattened, one at a time."""
    rows = []
    for i in range(x.shape[0]):
        g = jax.grad(
            lambda p, i=i: noise_scale._mean_loss(model.apply, p, x[i : i + 1], y[i : i + 1])
        )(params)
        rows.append(np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(g)]))
    return np.stack(rows).astype(np.float64)


def exact_by_hand(grads: np.ndarray) -> tuple[float, float]:
    full = grads.mean(axis=0)
    return float(full @ full), float(np.mean(np.sum((grads - full) ** 2, axis=1)))


@pytest.mark.parametrize("chunk", [5, 256])
def test_exact_noise_scale_matches_per_example_gradients(problem, chunk):
    model, params, x, y = problem
    grad_sq, trace = exact_by_hand(per_example_grads(model, params, x, y))
    exact = noise_scale.exact_noise_scale(model.apply, params, x, y, chunk=chunk)
    np.testing.assert_allclose(exact.grad_sq, grad_sq, rtol=1e-4)
    np.testing.assert_allclose(exact.trace, trace, rtol=1e-4)
    np.testing.assert_allclose(exact.b_simple, trace / grad_sq, rtol=2e-4)


def test_two_batch_estimator_is_exact_in_expectation(problem):
    """Over every ordered batch drawn with replacement, E|G_B|^2 = |G|^2 + tr(Sigma)/B, and the
    two-batch formulas turn the exact expectations into the exact |G|^2 and tr(Sigma)."""
    model, params, x, y = problem
    grads = per_example_grads(model, params, x[:6], y[:6])
    grad_sq, trace = exact_by_hand(grads)

    def expected_sq_norm(size):
        total = 0.0
        batches = list(itertools.product(range(len(grads)), repeat=size))
        for batch in batches:
            g = grads[list(batch)].mean(axis=0)
            total += g @ g
        return total / len(batches)

    small, big = 1, 3
    e_small, e_big = expected_sq_norm(small), expected_sq_norm(big)
    np.testing.assert_allclose(e_small, grad_sq + trace / small, rtol=1e-10)
    np.testing.assert_allclose(e_big, grad_sq + trace / big, rtol=1e-10)
    est_grad_sq, est_trace = noise_scale.unbiased_estimates(e_small, e_big, small, big)
    np.testing.assert_allclose(est_grad_sq, grad_sq, rtol=1e-9)
    np.testing.assert_allclose(est_trace, trace, rtol=1e-9)
    np.testing.assert_allclose(
        noise_scale.simple_noise_scale(e_small, e_big, small, big).b_simple,
        trace / grad_sq,
        rtol=1e-9,
    )


def test_sampled_estimate_agrees_with_exact_value(problem):
    """4000 random pairs of batches (2 and 8 examples): B_simple within 10% of the exact value.

    A single pair's estimate is noisy (its |G|^2 estimate is often negative); averaging the
    numerator and the denominator over the pairs before dividing brings B_simple within a few
    percent: over 20 seeds its relative error has a standard deviation of 3.5%, so 10% is about
    three of them (the seed is fixed)."""
    model, params, x, y = problem
    exact = noise_scale.exact_noise_scale(model.apply, params, x, y)
    small_sq, big_sq = noise_scale.measure(
        model.apply, params, x, y, jax.random.PRNGKey(1), small=2, big=8, num_draws=4000
    )
    assert small_sq.shape == big_sq.shape == (4000,)
    est = noise_scale.simple_noise_scale(small_sq, big_sq, 2, 8)
    np.testing.assert_allclose(est.b_simple, exact.b_simple, rtol=0.10)
    np.testing.assert_allclose(est.trace, exact.trace, rtol=0.10)
    g, _ = noise_scale.unbiased_estimates(np.asarray(small_sq), np.asarray(big_sq), 2, 8)
    assert np.mean(g < 0) > 0.1  # single estimates are useless on their own


def test_measure_population_vmaps_over_trials(problem):
    model, params, x, y = problem
    other = model.init(jax.random.PRNGKey(5))
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), params, other)
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    small_sq, big_sq = noise_scale.measure_population(
        model.apply, stacked, x, y, keys, small=4, big=12, num_draws=3
    )
    assert small_sq.shape == (2, 3)
    for j, p in enumerate((params, other)):
        s, b = noise_scale.measure(model.apply, p, x, y, keys[j], small=4, big=12, num_draws=3)
        np.testing.assert_allclose(small_sq[j], s, rtol=1e-5)
        np.testing.assert_allclose(big_sq[j], b, rtol=1e-5)


def test_ema_averages_numerator_and_denominator_before_dividing():
    grad_sq = np.array([1.0, 3.0, 2.0])
    trace = np.array([10.0, 10.0, 40.0])
    no_memory = noise_scale.ema_noise_scale(grad_sq, trace, decay=0.0)
    np.testing.assert_allclose(no_memory.b_simple, trace / grad_sq)
    ema = noise_scale.ema_noise_scale(grad_sq, trace, decay=0.5)
    # Bias-corrected: the first point is the first estimate itself.
    assert ema.b_simple[0] == pytest.approx(10.0)
    g = (0.125 * 1 + 0.25 * 3 + 0.5 * 2) / 0.875  # weights 1/8, 1/4, 1/2; they sum to 7/8
    t = (0.125 * 10 + 0.25 * 10 + 0.5 * 40) / 0.875
    assert ema.b_simple[-1] == pytest.approx(t / g)
    # A mean |G|^2 that is not positive cannot be divided by.
    assert noise_scale.simple_noise_scale([10.0], [1.0], 1, 2).b_simple == np.inf


def test_bad_batch_pair_is_refused(problem):
    model, params, x, y = problem
    with pytest.raises(ValueError, match="small < big"):
        noise_scale.unbiased_estimates(1.0, 1.0, 8, 8)
    with pytest.raises(ValueError, match="small < big"):
        noise_scale.measure(model.apply, params, x, y, jax.random.PRNGKey(0), small=8, big=4)
