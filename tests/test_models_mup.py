"""μP (model.parametrization='mup') against its definition: Yang et al. 2022, Table 3, relative to
a base width (hpjax/models/mup.py).

At widths 64 and 256 with base_width 64 (width_mult 1 and 4): each layer's role, the empirical
init std of the input, hidden and output weights against the formulas, and each layer's
learning-rate multiplier for Adam and for SGD, read from the model and measured from one
engine step. At the base width μP is the standard parametrisation to the bit (same init, same
trajectory). A vmapped population of several learning rates under μP follows each trial alone.
"""

import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from hpjax.config import default_config, study_identity
from hpjax.engine import optim, population
from hpjax.errors import ConfigError
from hpjax.models import build_model, default_model_config, validate_model_config
from tests.conftest import trial_hparams

BASE = 64
INPUTS, CLASSES = 40, 10
NUM_TRAIN, TICKS = 24, 6


def _model(name: str, width: int, parametrization: str = "mup", **keys):
    width_key = {"mlp": "hidden_units", "cnn": "channels"}[name]
    cfg = {"name": name, width_key: width, "parametrization": parametrization, "base_width": BASE}
    return build_model(ml_collections.ConfigDict(cfg | keys), (INPUTS,), CLASSES)


def _leaves(tree) -> dict[str, object]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {".".join(str(getattr(k, "key", k)) for k in path): v for path, v in flat}


# Table 3, relative to the base width: (init std factor, Adam lr, SGD lr) as functions of m.
DEFINITION = {
    "input": (lambda m: 1.0, lambda m: 1.0, lambda m: m),
    "hidden": (lambda m: 1.0, lambda m: 1 / m, lambda m: 1.0),
    "output": (lambda m: 1 / math.sqrt(m), lambda m: 1 / m, lambda m: 1 / m),
    "vector": (lambda m: 1.0, lambda m: 1.0, lambda m: m),  # biases that grow with the width
    "fixed": (lambda m: 1.0, lambda m: 1.0, lambda m: 1.0),  # the output bias
}
ROLES = {
    "mlp": {
        "hidden.0.kernel": "input",
        "hidden.1.kernel": "hidden",
        "hidden.2.kernel": "hidden",
        "head.kernel": "output",
        "hidden.0.bias": "vector",
        "hidden.1.bias": "vector",
        "hidden.2.bias": "vector",
        "head.bias": "fixed",
    },
    "cnn": {
        "convs.0.kernel": "input",
        "convs.1.kernel": "hidden",
        "convs.2.kernel": "hidden",
        "head.kernel": "output",
        "convs.0.bias": "vector",
        "convs.1.bias": "vector",
        "convs.2.bias": "vector",
        "head.bias": "fixed",
    },
}


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("width", [64, 256])
def test_roles_and_multipliers_follow_table_3(name, width):
    model = _model(name, width)
    m = width / BASE
    assert model.parametrization.roles() == ROLES[name]
    for optimizer, column in (("adam", 1), ("adagrad", 1), ("rmsprop", 1), ("sgd", 2)):
        got = _leaves(model.lr_multipliers(optimizer))
        want = {path: DEFINITION[role][column](m) for path, role in ROLES[name].items()}
        assert got == pytest.approx(want, rel=1e-12), optimizer
    assert _leaves(model.lr_multipliers("momentum")) == _leaves(model.lr_multipliers("sgd"))
    standard = _model(name, width, "standard")
    assert standard.parametrization is None and standard.lr_multipliers("adam") is None


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("width", [64, 256])
def test_init_std_follows_the_formulas(name, width):
    """Standard init is lecun normal, std 1/sqrt(fan_in); μP's output layer std is that over
    sqrt(width_mult). Measured over 8 seeds' draws."""
    model = _model(name, width)
    draws = [_leaves(model.trainable(model.init(jax.random.PRNGKey(s)))) for s in range(8)]
    kernel = 5  # the CNN's default kernel size
    fan_in = {
        "mlp": {"hidden.0.kernel": INPUTS, "hidden.1.kernel": width, "head.kernel": width},
        "cnn": {
            "convs.0.kernel": kernel,
            "convs.1.kernel": kernel * width,
            "head.kernel": 5 * width,  # 40 -> 20 -> 10 -> 5 positions x channels
        },
    }[name]
    for path, fan in fan_in.items():
        values = np.concatenate([np.ravel(d[path]) for d in draws])
        factor = DEFINITION[ROLES[name][path]][0](width / BASE)
        expected = factor / math.sqrt(fan)
        assert np.std(values) == pytest.approx(expected, rel=0.05), path
        assert abs(np.mean(values)) < 0.1 * expected, path
    for path in ROLES[name]:
        if path.endswith("bias"):
            assert not np.any(draws[0][path]), path  # zeros, as standard


def _problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(NUM_TRAIN, INPUTS)).astype(np.float32)
    y = x[:, :3].argmax(axis=1).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y)


def _spec(model, optimizer: str = "adam"):
    return population.PopulationSpec(
        model=model, optimizer=optimizer, schedule="constant", microbatch=4, num_train=NUM_TRAIN
    )


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_one_engine_step_scales_each_layer_by_its_multiplier(optimizer):
    """From the same parameters and batch, μP's first step moves each leaf by its multiplier
    times the standard step (weight decay included): the engine uses the multipliers."""
    mup_model, standard = _model("mlp", 256), _model("mlp", 256, "standard")
    x, y = _problem()
    hparams = trial_hparams([{"learning_rate": 0.01, "weight_decay": 0.5}], batch_size=4)
    start = population.init_population(_spec(mup_model, optimizer), hparams)
    moved = {}
    for model in (mup_model, standard):
        state = jax.tree.map(jnp.array, start)  # train_ticks donates its state
        after = population.train_ticks(_spec(model, optimizer), state, hparams, x, y, jnp.int32(1))
        before, end = _leaves(start.trials.params), _leaves(after.trials.params)
        moved[model] = {k: np.asarray(end[k]) - np.asarray(before[k]) for k in end}
    multipliers = _leaves(mup_model.lr_multipliers(optimizer))
    for path, step in moved[mup_model].items():
        np.testing.assert_allclose(
            step, multipliers[path] * moved[standard][path], rtol=2e-3, atol=1e-8, err_msg=path
        )
    assert set(multipliers.values()) != {1.0}


@pytest.mark.parametrize("name, optimizer", [("mlp", "adam"), ("cnn", "momentum")])
def test_mup_at_the_base_width_is_standard_to_the_bit(name, optimizer):
    mup_model, standard = _model(name, BASE), _model(name, BASE, "standard")
    assert mup_model is not standard
    x, y = _problem()
    trials = [{"learning_rate": 0.003, "seed": 1}, {"learning_rate": 0.03, "seed": 2}]
    hparams = trial_hparams(trials, batch_size=4, weight_decay=0.1)
    ends = []
    for model in (mup_model, standard):
        start = population.init_population(_spec(model, optimizer), hparams)
        ends.append((jax.tree.map(np.asarray, start), None))
        end = population.train_ticks(_spec(model, optimizer), start, hparams, x, y, jnp.int32(8))
        ends[-1] = (ends[-1][0], jax.tree.map(np.asarray, end.trials.params))
    for a, b in zip(jax.tree.leaves(ends[0]), jax.tree.leaves(ends[1]), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_population_of_rates_under_mup_follows_each_trial_alone(optimizer):
    """Several learning rates of one μP model (width 256, base 64) vmapped in one population:
    each trial ends where it ends trained alone (tests/test_population_with_models.py's check)."""
    model = _model("mlp", 256, num_layers=2)
    x, y = _problem()
    rates = (0.001, 0.01, 0.1) if optimizer == "adam" else (0.01, 0.1, 0.3)
    trials = [{"learning_rate": r, "seed": 7} for r in rates]
    hparams = trial_hparams(trials, batch_size=4, weight_decay=0.1)
    spec = _spec(model, optimizer)
    start = population.init_population(spec, hparams)
    starts = [jax.tree.map(lambda a, i=i: a[i : i + 1] if np.ndim(a) else jnp.array(a), start)
              for i in range(len(rates))]  # fmt: skip
    together = population.train_ticks(spec, start, hparams, x, y, jnp.int32(TICKS))
    assert together.trials.step.tolist() == [TICKS] * len(rates)
    for i, alone_start in enumerate(starts):
        one = trial_hparams(trials[i : i + 1], batch_size=4, weight_decay=0.1)
        alone = population.train_ticks(spec, alone_start, one, x, y, jnp.int32(TICKS))
        for a, b in zip(
            jax.tree.leaves(together.trials.params),
            jax.tree.leaves(alone.trials.params),
            strict=True,
        ):
            np.testing.assert_allclose(np.asarray(a[i]), np.asarray(b[0]), rtol=1e-4, atol=1e-5)
    final = [np.asarray(leaf) for leaf in jax.tree.leaves(together.trials.params)]
    assert not all(np.allclose(leaf[0], leaf[2]) for leaf in final)  # the rates differ


def test_apply_update_multiplies_rate_and_decay_per_leaf():
    params = {"a": jnp.full(3, 2.0), "b": jnp.full(2, 2.0)}
    u = {"a": jnp.ones(3), "b": jnp.ones(2)}
    out = optim.apply_update(params, u, 0.1, 0.5, {"a": 1.0, "b": 0.25})
    np.testing.assert_allclose(out["a"], 2.0 - 0.1 * (1.0 + 0.5 * 2.0))
    np.testing.assert_allclose(out["b"], 2.0 - 0.025 * (1.0 + 0.5 * 2.0))
    plain = optim.apply_update(params, u, 0.1, 0.5)
    np.testing.assert_array_equal(plain["a"], out["a"])


# --- config ----------------------------------------------------------------------------------


def _refused(cfg: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        validate_model_config(ml_collections.ConfigDict(cfg), (INPUTS,), CLASSES)
    assert "\n" not in str(info.value)


def test_config_keys_are_checked_before_anything_is_built():
    for name in ("mlp", "cnn"):
        cfg = default_model_config(name)
        assert (cfg.parametrization, cfg.base_width) == ("standard", 64)
        _refused(
            {"name": name, "parametrization": "mu"},
            r"config\.model\.parametrization='mu' is unknown; allowed: standard, mup",
        )
        _refused({"name": name, "base_width": 0}, r"config\.model\.base_width=0 must be")
    _refused(
        {"name": "rnn", "parametrization": "mup"},
        r"config\.model\.parametrization='mup' is not available for model 'rnn'; allowed: "
        r"standard \(μP is implemented for cnn, mlp\)",
    )
    rnn = build_model(ml_collections.ConfigDict({"name": "rnn"}), (INPUTS,), CLASSES)
    same = ml_collections.ConfigDict({"name": "rnn", "parametrization": "standard"})
    assert build_model(same, (INPUTS,), CLASSES) is rnn


def test_a_study_written_before_the_keys_keeps_its_identity():
    new = json.loads(json.dumps(default_config().to_dict(), default=list))
    old = json.loads(json.dumps(new))
    for key in ("parametrization", "base_width"):
        del old["model"][key]
    assert study_identity(old) == study_identity(new)
    mup = json.loads(json.dumps(new))
    mup["model"]["parametrization"] = "mup"
    assert study_identity(mup) != study_identity(old)
    rnn = {"model": {"name": "rnn", "cell": "gru"}}
    assert study_identity(rnn)["model"] == rnn["model"]
