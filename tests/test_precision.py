"""Mixed precision: bf16 matmul inputs, float32 results, state and gradients."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from hpjax.errors import ConfigError
from hpjax.models import build_model
from hpjax.models import precision as prec


def _round_bf16(a: np.ndarray) -> np.ndarray:
    return np.asarray(jnp.asarray(a, jnp.float32).astype(jnp.bfloat16), np.float64)


def test_to_bf16_rounds_as_xla_converts():
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.normal(size=1000) * 10.0 ** rng.integers(-30, 30, size=1000),
            [0.0, -0.0, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-45, 1.00390625, 1.01171875],
        ]
    ).astype(np.float32)
    ours = np.asarray(jax.jit(prec.to_bf16)(jnp.asarray(x)))
    xla = np.asarray(jnp.asarray(x).astype(jnp.bfloat16))
    np.testing.assert_array_equal(ours.view(np.uint16), xla.view(np.uint16))
    assert np.isnan(np.asarray(prec.to_bf16(jnp.float32(np.nan)), np.float32))


def test_bf16_matmul_and_its_gradients_use_rounded_inputs():
    """Forward and both backward matmuls equal float64 products of bf16-rounded operands."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(2, 5, 7)).astype(np.float32)
    b = rng.normal(size=(7, 3)).astype(np.float32)
    cotangent = rng.normal(size=(2, 5, 3)).astype(np.float32)
    out, vjp = jax.vjp(prec.bf16_matmul, jnp.asarray(a), jnp.asarray(b))
    grad_a, grad_b = vjp(jnp.asarray(cotangent))
    ra, rb, rc = _round_bf16(a), _round_bf16(b), _round_bf16(cotangent)
    assert out.dtype == grad_a.dtype == grad_b.dtype == jnp.float32
    np.testing.assert_allclose(out, ra @ rb, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad_a, rc @ rb.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        grad_b, ra.reshape(-1, 7).T @ rc.reshape(-1, 3), rtol=1e-5, atol=1e-5
    )
    # Not the float32 product: the rounding is real.
    assert np.abs(np.asarray(out) - a.astype(np.float64) @ b).max() > 1e-4


@pytest.mark.parametrize(
    "cfg",
    [
        {"name": "mlp", "hidden_units": 16},
        {"name": "cnn", "channels": 4, "num_layers": 2},
        {"name": "rnn", "cell": "gru", "hidden_size": 4},
    ],
    ids=["mlp", "cnn", "gru"],
)
def test_bf16_model_is_close_to_float32_but_not_equal(cfg):
    x = jnp.asarray(np.random.default_rng(2).normal(size=(8, 12)), jnp.float32)
    outputs, grads = {}, {}
    for precision in prec.PRECISIONS:
        model = build_model(ml_collections.ConfigDict({**cfg, "precision": precision}), (12,), 5)
        params = model.init(jax.random.PRNGKey(0))  # the same float32 parameters
        outputs[precision] = model.apply(params, x)
        grads[precision] = jax.grad(lambda p, m=model: jnp.sum(m.apply(p, x) ** 2))(params)
    assert outputs["bf16"].dtype == jnp.float32
    diff = np.abs(np.asarray(outputs["bf16"] - outputs["float32"])).max()
    assert 1e-5 < diff < 0.05 * np.abs(np.asarray(outputs["float32"])).max()
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads["bf16"]))


def test_unknown_precision_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"config.model.precision='fp16'.*float32, bf16"):
        build_model(ml_collections.ConfigDict({"name": "mlp", "precision": "fp16"}), (4,), 2)
