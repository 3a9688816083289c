"""Tests for hpjax.models: shapes, exact parameter counts, purity under jit/vmap, errors.

Compiling is the cost here, so shapes and parameter counts are checked with ``jax.eval_shape``
(exact, nothing compiled) and the few models that run are small and built once per session.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from hpjax.config import default_config
from hpjax.errors import ConfigError
from hpjax.models.registry import (
    MODEL_NAMES,
    MODELS,
    Model,
    build_model,
    default_model_config,
    validate_model_config,
)

NUM_CLASSES = 10
KEY = jax.random.key(0)
B = 4  # one batch size throughout, so that compiled functions are reused across tests

# Small variants so that compiling stays fast.
SMALL = {
    "mlp": {"hidden_units": 16, "num_layers": 1},
    "cnn": {"channels": 4, "num_layers": 1, "kernel_size": 3},
    "rnn": {"hidden_size": 8},
}


def _cfg(name: str, **overrides) -> ml_collections.ConfigDict:
    # A fresh ConfigDict, so that overrides of another type (for the error tests) are allowed.
    return ml_collections.ConfigDict({**default_model_config(name).to_dict(), **overrides})


def _small(name: str, **overrides) -> ml_collections.ConfigDict:
    return _cfg(name, **{**SMALL[name], **overrides})


@functools.cache
def _built(name: str, input_shape: tuple[int, ...], **overrides) -> Model:
    """A small model built once per session, so its jitted init/apply compile once."""
    return build_model(_small(name, **overrides), input_shape, NUM_CLASSES)


def _count(params: dict) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def _abstract_params(model: Model) -> dict:
    return jax.eval_shape(model.init, KEY)


def _random_params(model: Model, seed: int = 0) -> dict:
    """Random float32 params of the right structure, without compiling ``init``.

    Flax's orthogonal recurrent-kernel init (a QR per kernel) is slow to compile on CPU, so
    tests that only need some valid params use these.
    """
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), jnp.float32),
        _abstract_params(model),
    )


def _abstract_logits(model: Model, batch_shape: tuple[int, ...]) -> jax.ShapeDtypeStruct:
    x = jax.ShapeDtypeStruct(batch_shape, jnp.float32)
    return jax.eval_shape(model.apply, _abstract_params(model), x)


# --- shapes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("input_shape", [(40,), (8, 8)])
def test_default_models_output_shape(name, input_shape):
    model = build_model(default_model_config(name), input_shape, NUM_CLASSES)
    assert isinstance(model, Model) and model.name == name
    params = _abstract_params(model)
    assert model.num_params == _count(params)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    logits = _abstract_logits(model, (5, *input_shape))
    assert (logits.shape, logits.dtype) == ((5, NUM_CLASSES), jnp.float32)


def test_cnn_runs_on_images():
    # 2-D convs; (40,) inputs of every model run in the vmap and module tests below.
    model = _built("cnn", (8, 8))
    params = _random_params(model)
    x = jax.random.normal(jax.random.key(1), (B, 8, 8))
    logits = model.apply(params, x)
    assert (logits.shape, logits.dtype) == ((B, NUM_CLASSES), jnp.float32)
    assert bool(jnp.all(jnp.isfinite(logits)))
    assert not np.allclose(logits[0], logits[1])  # depends on the input


@pytest.mark.parametrize(
    "input_shape, overrides",
    [
        ((41,), {"stride": 2, "pool": "max", "pool_size": 2}),
        ((40,), {"stride": 1, "pool": "avg", "pool_size": 3}),
        ((40,), {"stride": 3, "pool": "none"}),
        ((9, 7), {"stride": 2, "pool": "max", "pool_size": 2, "num_layers": 1}),
        ((8, 8, 3), {"pool": "avg", "hidden_units": 6}),
    ],
)
def test_cnn_variants_output_shape(input_shape, overrides):
    # The head's input width comes from the computed spatial sizes; a wrong size fails to trace.
    model = build_model(_small("cnn", **overrides), input_shape, 3)
    assert _abstract_logits(model, (2, *input_shape)).shape == (2, 3)


@pytest.mark.parametrize("input_shape", [(12,), (12, 3)])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rnn_stacked_bidirectional_mean_shape(input_shape, cell):
    cfg = _small("rnn", cell=cell, num_layers=2, bidirectional=True, readout="mean")
    model = build_model(cfg, input_shape, 4)
    assert _abstract_logits(model, (3, *input_shape)).shape == (3, 4)


def test_apply_rejects_wrong_input_shape():
    model = _built("mlp", (40,))
    with pytest.raises(ConfigError, match=r"\(40,\).*\(2, 39\)"):
        _abstract_logits(model, (2, 39))


# --- exact parameter counts ------------------------------------------------------------------


def test_mlp_param_count():
    model = build_model(_cfg("mlp"), (40,), 10)
    # the default: three hidden layers of 256 (the guide: three layers usually beat two)
    expected = 40 * 256 + 256 + 2 * (256 * 256 + 256) + 256 * 10 + 10
    assert model.num_params == _count(_abstract_params(model)) == expected == 144650


def test_mlp_param_count_flattens_image():
    model = build_model(_cfg("mlp", hidden_units=7, num_layers=3), (8, 8), 5)
    expected = 64 * 7 + 7 + 2 * (7 * 7 + 7) + 7 * 5 + 5
    assert model.num_params == _count(_abstract_params(model)) == expected


def test_cnn_param_count_1d():
    cfg = _cfg("cnn", channels=4, num_layers=2, kernel_size=3, pool="max", hidden_units=8)
    model = build_model(cfg, (40,), 10)
    conv1 = 3 * 1 * 4 + 4
    conv2 = 3 * 4 * 4 + 4
    flat = (40 // 2 // 2) * 4  # SAME convs keep the length, each max-pool halves it
    expected = conv1 + conv2 + (flat * 8 + 8) + (8 * 10 + 10)
    assert model.num_params == _count(_abstract_params(model)) == expected == 486


def test_cnn_param_count_2d_stride_no_pool():
    cfg = _cfg("cnn", channels=3, num_layers=2, kernel_size=3, stride=2, pool="none")
    model = build_model(cfg, (8, 8, 2), 10)
    conv1 = 3 * 3 * 2 * 3 + 3
    conv2 = 3 * 3 * 3 * 3 + 3
    flat = 2 * 2 * 3  # 8 -> 4 -> 2 with stride 2
    assert model.num_params == _count(_abstract_params(model)) == conv1 + conv2 + flat * 10 + 10


def test_default_cnn_param_count():
    model = build_model(default_model_config("cnn"), (40,), 10)
    c, k = 32, 5
    expected = (k * 1 * c + c) + 2 * (k * c * c + c) + (5 * c) * 10 + 10
    assert model.num_params == expected == 12106


def test_lstm_param_count():
    # flax LSTMCell: 4 input kernels without bias, 4 recurrent kernels with bias.
    f, h, c = 3, 5, 10
    model = build_model(_cfg("rnn", cell="lstm", hidden_size=h), (12, f), c)
    expected = 4 * (f * h) + 4 * (h * h + h) + h * c + c
    assert model.num_params == _count(_abstract_params(model)) == expected


def test_gru_param_count():
    # flax GRUCell: one input Linear (F -> 3H, with bias), one recurrent Linear (H -> 3H, no bias).
    f, h, c = 3, 5, 10
    model = build_model(_cfg("rnn", cell="gru", hidden_size=h), (12, f), c)
    expected = 3 * h * (f + 1) + 3 * h * h + h * c + c
    params = _abstract_params(model)
    assert model.num_params == _count(params) == expected
    cell = params["layers"][0]["cell"]
    assert cell["dense_i"]["kernel"].shape == (f, 3 * h)
    assert "bias" not in cell["dense_h"]


def test_default_rnn_param_count():
    model = build_model(default_model_config("rnn"), (40,), 10)
    h = 128
    assert model.num_params == 3 * h * 2 + 3 * h * h + h * 10 + 10 == 51210


def test_stacked_bidirectional_param_count():
    f, h, c = 2, 4, 3
    cfg = _cfg("rnn", cell="gru", hidden_size=h, num_layers=2, bidirectional=True)
    model = build_model(cfg, (6, f), c)

    def gru(fin: int) -> int:
        return 3 * h * (fin + 1) + 3 * h * h

    expected = 2 * gru(f) + 2 * gru(2 * h) + 2 * h * c + c
    assert model.num_params == _count(_abstract_params(model)) == expected


# --- init, purity, vmap ----------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_init_deterministic_per_key_and_differs_across_keys(name):
    model = _built(name, (40,))
    a, b, c = model.init(KEY), model.init(KEY), model.init(jax.random.key(1))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    kernels_a = [v for p, v in jax.tree_util.tree_leaves_with_path(a) if "kernel" in str(p)]
    kernels_c = [v for p, v in jax.tree_util.tree_leaves_with_path(c) if "kernel" in str(p)]
    assert kernels_a
    for ka, kc in zip(kernels_a, kernels_c, strict=True):
        assert not np.allclose(ka, kc)


def test_init_accepts_raw_uint32_key():
    model = _built("mlp", (40,))
    assert _count(jax.eval_shape(model.init, jax.random.PRNGKey(3))) == model.num_params


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_vmap_init_and_apply_match_single_trials(name):
    model = _built(name, (40,))

    @jax.jit  # the engine's pattern, in one program to compile once
    def population(keys, x, xs):
        stacked = jax.vmap(model.init)(keys)
        shared = jax.vmap(model.apply, in_axes=(0, None))(stacked, x)
        return stacked, shared, jax.vmap(model.apply)(stacked, xs)

    keys = jax.random.split(jax.random.key(42), 3)
    x = jax.random.normal(jax.random.key(7), (B, 40))
    xs = jax.random.normal(jax.random.key(8), (3, B, 40))
    stacked, shared, per_trial = population(keys, x, xs)
    assert shared.shape == per_trial.shape == (3, B, NUM_CLASSES)
    assert bool(jnp.all(jnp.isfinite(shared)))
    for i in range(3):
        params_i = model.init(keys[i])
        stacked_i = jax.tree.map(lambda leaf, i=i: leaf[i], stacked)
        jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5), params_i, stacked_i)
        np.testing.assert_allclose(shared[i], model.apply(params_i, x), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(per_trial[i], model.apply(params_i, xs[i]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(shared[0], shared[1])


def test_grad_reaches_every_kernel():
    model = _built("rnn", (7,), cell="lstm", bidirectional=True)
    x = jax.random.normal(jax.random.key(1), (B, 7))
    grads = jax.jit(jax.grad(lambda p: model.apply(p, x).sum()))(_random_params(model))
    kernels = [(p, g) for p, g in jax.tree_util.tree_leaves_with_path(grads) if "kernel" in str(p)]
    assert len(kernels) == 2 * 8 + 1  # two directions x 8 LSTM kernels, and the head
    for path, g in kernels:
        assert float(jnp.abs(g).sum()) > 0, path


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_module_matches_apply(name):
    model = _built(name, (40,))
    params = model.init(KEY)
    module = model.module(params)
    assert isinstance(module, nnx.Module)
    assert type(module) is not nnx.Module
    x = jax.random.normal(jax.random.key(1), (B, 40))
    np.testing.assert_allclose(module(x), model.apply(params, x), rtol=1e-5, atol=1e-6)
    # The module's state is exactly the params, as nnx.Param variables, and nothing else.
    _, param_state, rest = nnx.split(module, nnx.Param, ...)
    assert not jax.tree.leaves(rest)
    jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(param_state), params)


def test_module_does_not_share_state_between_calls():
    model = _built("mlp", (40,))
    p0, p1 = model.init(KEY), model.init(jax.random.key(1))
    m0 = model.module(p0)
    m1 = model.module(p1)
    x = jnp.ones((B, 40))
    np.testing.assert_allclose(m0(x), model.apply(p0, x), rtol=1e-5, atol=1e-6)
    assert not np.allclose(m0(x), m1(x))


def test_apply_accepts_string_layer_keys():
    # A checkpoint restored without a target may turn the integer layer keys into strings.
    model = _built("cnn", (40,))
    params = model.init(KEY)

    def stringify(tree):
        if isinstance(tree, dict):
            return {str(k): stringify(v) for k, v in tree.items()}
        return tree

    strung = stringify(params)
    assert "0" in strung["convs"] and 0 in params["convs"]
    x = jnp.ones((B, 40))
    np.testing.assert_allclose(model.module(strung)(x), model.apply(params, x), rtol=1e-6)


def test_apply_rejects_params_of_another_shape():
    model = _built("mlp", (40,))
    other = build_model(_small("mlp", hidden_units=17), (40,), NUM_CLASSES)
    x = jax.ShapeDtypeStruct((2, 40), jnp.float32)
    with pytest.raises(ValueError, match="wrong shape"):
        jax.eval_shape(model.apply, _abstract_params(other), x)


# --- RNN readouts ----------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bidirectional_doubles_readout_width(cell):
    h = 6
    uni = build_model(_cfg("rnn", cell=cell, hidden_size=h), (10,), NUM_CLASSES)
    bi = build_model(_cfg("rnn", cell=cell, hidden_size=h, bidirectional=True), (10,), NUM_CLASSES)
    assert _abstract_params(uni)["head"]["kernel"].shape == (h, NUM_CLASSES)
    assert _abstract_params(bi)["head"]["kernel"].shape == (2 * h, NUM_CLASSES)
    rnn_params = uni.num_params - (h * NUM_CLASSES + NUM_CLASSES)
    assert bi.num_params == 2 * rnn_params + 2 * h * NUM_CLASSES + NUM_CLASSES


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bidirectional_last_readout_uses_each_directions_final_state(cell):
    # The backward direction's final state is its output at t=0, not at t=T-1.
    h, t = SMALL["rnn"]["hidden_size"], 7
    model = _built("rnn", (t,), cell=cell, bidirectional=True)
    x = jax.random.normal(jax.random.key(1), (B, t))

    def by_hand(params, x):
        module = model.module(params)
        layer = module.layers[0]
        zeros = jnp.zeros((B, h))
        carry = (zeros, zeros) if cell == "lstm" else zeros
        seq = x[..., None]
        fwd, _ = layer.forward_rnn(seq, initial_carry=carry, return_carry=True)
        bwd, _ = layer.backward_rnn(seq, initial_carry=carry, return_carry=True, reverse=True)
        h_f, h_b = (fwd[1], bwd[1]) if cell == "lstm" else (fwd, bwd)  # LSTM carry is (c, h)
        return module.head(jnp.concatenate([h_f, h_b], axis=-1))

    @jax.jit  # one program, to compile once
    def both(params, x):
        return model.apply(params, x), by_hand(params, x)

    got, expected = both(_random_params(model), x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_rnn_mean_readout():
    last = _built("rnn", (40,))
    mean = _built("rnn", (40,), readout="mean")
    params = last.init(KEY)
    x = jax.random.normal(jax.random.key(1), (B, 40))

    @jax.jit  # one program, to compile once
    def both(params, x):
        module = mean.module(params)
        outputs = module.layers[0](x[..., None], initial_carry=jnp.zeros((B, 8)))
        return mean.apply(params, x), module.head(outputs.mean(axis=1))

    got, expected = both(params, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(last.apply(params, x), got)


# --- configs ---------------------------------------------------------------------------------


def test_default_configs():
    assert set(MODELS) == set(MODEL_NAMES) == {"cnn", "mlp", "rnn"}
    mlp = default_model_config("mlp")
    assert (mlp.name, mlp.hidden_units, mlp.num_layers, mlp.activation) == ("mlp", 256, 3, "relu")
    assert mlp.to_dict() == default_config().model.to_dict()  # one table of defaults
    cnn = default_model_config("cnn")
    assert (cnn.name, cnn.num_layers, cnn.stride, cnn.pool_size) == ("cnn", 3, 1, 2)
    rnn = default_model_config("rnn")
    assert (rnn.name, rnn.cell, rnn.num_layers, rnn.readout) == ("rnn", "gru", 1, "last")
    assert rnn.bidirectional is False
    for name in MODEL_NAMES:
        validate_model_config(default_model_config(name), (40,), 10)
        validate_model_config(default_model_config(name), (8, 8), 10)
    mlp.hidden_units = 3  # a fresh copy each time
    assert default_model_config("mlp").hidden_units == 256


def test_missing_keys_take_defaults():
    cfg = ml_collections.ConfigDict({"name": "cnn", "channels": 4, "num_layers": 1})
    model = build_model(cfg, (40,), 10)
    # kernel 5, stride 1, max-pool 2 by default: 40 -> 20, no dense layer
    assert model.num_params == (5 * 4 + 4) + 20 * 4 * 10 + 10


def _raises(cfg, match, input_shape=(40,), num_classes=NUM_CLASSES) -> str:
    with pytest.raises(ConfigError, match=match) as info:
        validate_model_config(cfg, input_shape, num_classes)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=match):
        build_model(cfg, input_shape, num_classes)
    return str(info.value)


def test_unknown_name():
    cfg = ml_collections.ConfigDict({"name": "transformer"})
    msg = _raises(cfg, r"config\.model\.name='transformer' is unknown")
    assert "allowed: cnn, mlp, rnn" in msg
    with pytest.raises(ConfigError, match="allowed: cnn, mlp, rnn"):
        default_model_config("resnet")


def test_missing_name():
    _raises(ml_collections.ConfigDict({"hidden_units": 3}), r"config\.model\.name is missing")


def test_unknown_key():
    msg = _raises(_cfg("mlp", cell="gru"), r"config\.model\.cell is not a key of model 'mlp'")
    assert "hidden_units" in msg


@pytest.mark.parametrize(
    "name, key, value, allowed",
    [
        ("mlp", "activation", "swish", "relu, tanh, gelu, sigmoid, elu, silu"),
        ("cnn", "activation", "leaky", "relu, tanh, gelu, sigmoid, elu, silu"),
        ("cnn", "pool", "min", "max, avg, none"),
        ("rnn", "cell", "vanilla", "lstm, gru"),
        ("rnn", "readout", "first", "last, mean"),
    ],
)
def test_unknown_choice(name, key, value, allowed):
    msg = _raises(_cfg(name, **{key: value}), rf"config\.model\.{key}='{value}' is unknown")
    assert f"allowed: {allowed}" in msg


@pytest.mark.parametrize(
    "name, key, value",
    [
        ("mlp", "hidden_units", 0),
        ("mlp", "hidden_units", -3),
        ("mlp", "num_layers", 0),
        ("cnn", "channels", 0),
        ("cnn", "num_layers", 0),
        ("cnn", "kernel_size", 0),
        ("cnn", "kernel_size", -1),
        ("cnn", "stride", 0),
        ("cnn", "pool_size", 0),
        ("cnn", "hidden_units", -1),
        ("rnn", "hidden_size", 0),
        ("rnn", "hidden_size", -8),
        ("rnn", "num_layers", 0),
        ("mlp", "hidden_units", 2.5),
        ("mlp", "num_layers", True),
    ],
)
def test_bad_sizes(name, key, value):
    minimum = 0 if (name, key) == ("cnn", "hidden_units") else 1
    match = rf"config\.model\.{key}={value!r} must be an integer >= {minimum}"
    _raises(_cfg(name, **{key: value}), match)


def test_cnn_hidden_units_zero_is_allowed():
    validate_model_config(_cfg("cnn", hidden_units=0), (40,), 10)


def test_bidirectional_must_be_bool():
    _raises(_cfg("rnn", bidirectional=1), r"config\.model\.bidirectional=1 must be True or False")


def test_too_deep_cnn_names_the_layer():
    cfg = _cfg("cnn", num_layers=6, pool="max", pool_size=2, stride=1)
    msg = _raises(cfg, r"config\.model\.num_layers=6 is too deep")
    # 40 -> 20 -> 10 -> 5 -> 2 -> 1 -> 0
    assert "after conv layer 6 the sequence has length 0 (< 1)" in msg
    assert "allowed at most 5 layers for input length 40 with stride 1 and pool_size 2" in msg
    validate_model_config(_cfg("cnn", num_layers=5), (40,), 10)  # the limit itself is fine


def test_too_deep_cnn_with_stride_names_the_layer():
    msg = _raises(_cfg("cnn", num_layers=4, stride=2), r"num_layers=4 is too deep")
    # 40 -> 10 -> 2 -> 0 (stride 2 then pool 2 per layer)
    assert "after conv layer 3 the sequence has length 0" in msg
    assert "allowed at most 2 layers" in msg


def test_too_deep_cnn_on_images():
    msg = _raises(_cfg("cnn", num_layers=4), r"num_layers=4 is too deep", input_shape=(8, 8))
    assert "after conv layer 4 the image has size 0x0 (< 1)" in msg
    assert "allowed at most 3 layers for input size 8x8" in msg


def test_cnn_pool_larger_than_input():
    msg = _raises(_cfg("cnn", pool_size=50), r"config\.model\.pool_size=50 is too large")
    assert "after conv layer 1 the sequence has length 0" in msg


@pytest.mark.parametrize("name, input_shape", [("cnn", (2, 8, 8, 1)), ("rnn", (8, 8, 1))])
def test_wrong_input_rank(name, input_shape):
    _raises(_cfg(name), rf"config\.model\.name='{name}' needs input of rank", input_shape)


def test_bad_num_classes():
    _raises(_cfg("mlp"), r"num_classes=0 must be an integer >= 1", num_classes=0)
