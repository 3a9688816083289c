"""Models with state besides their parameters (BatchNorm statistics, dropout streams) and the
per-trial regularisation (dropout rate, label smoothing) and augmentation: each trial of a
population equals that trial trained alone, also resumed after a kill and in a refilled slot,
and restores to its recorded test metrics."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

import hpjax
from hpjax import api
from hpjax import data as data_lib
from hpjax.engine import tasks
from hpjax.errors import ConfigError
from hpjax.models import TrialDropout, build_model, from_factory
from hpjax.results import files
from hpjax.study.run import train_and_evaluate
from tests.conftest import Crash, CrashAtEvaluation, three_class_data

STEPS = dict(num_steps=30, eval_every=10, patience=0, schedule="constant")


class DropoutNet(nnx.Module):
    """A fixed-rate nnx.Dropout and a TrialDropout (the trial's own rate)."""

    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(16, 32, rngs=rngs)
        self.fixed = nnx.Dropout(0.2, rngs=rngs)
        self.searched = TrialDropout(rngs=rngs)
        self.head = nnx.Linear(32, 3, rngs=rngs)

    def __call__(self, x):
        return self.head(self.searched(self.fixed(nnx.relu(self.hidden(x)))))


class NormNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(16, 32, rngs=rngs)
        self.norm = nnx.BatchNorm(32, momentum=0.9, rngs=rngs)
        self.head = nnx.Linear(32, 3, rngs=rngs)

    def __call__(self, x):
        return self.head(nnx.relu(self.norm(self.hidden(x))))


def dropout_net(rngs: nnx.Rngs) -> nnx.Module:
    return DropoutNet(rngs)


def norm_net(rngs: nnx.Rngs) -> nnx.Module:
    return NormNet(rngs)


def shift_and_noise(key, x):
    """MNIST-1D's kind of augmentation: a random circular shift and Gaussian noise."""
    shift_key, noise_key = jax.random.split(key)
    shifted = jnp.roll(x, jax.random.randint(shift_key, (), -2, 3), axis=1)
    return shifted + 0.05 * jax.random.normal(noise_key, x.shape)


@pytest.fixture(scope="module")
def data():
    return three_class_data()


# Each case: the model, the study's axes (several trials in one program) and its data.
CASES = {
    "dropout": (
        dropout_net,
        dict(seeds=(0, 1), dropouts=(0.0, 0.4), label_smoothings=(0.1,), learning_rates=(0.03,)),
    ),
    "batch_norm": (norm_net, dict(batch_sizes=(8, 16), learning_rates=(0.03,))),
}


def _train(factory, data, workdir, **config):
    return hpjax.train(factory, data, str(workdir), verbose=False, **(STEPS | config)).rows


def _curves(workdir) -> dict[int, list[tuple]]:
    curves = files.curves_by_trial(files.read_metrics(str(workdir)))
    return {t: [(r["step"], r["train_loss"], r["val_loss"]) for r in c] for t, c in curves.items()}


def _alone_config(row: dict, config: dict) -> dict:
    """The study of ``row``'s trial alone: every axis of ``config`` at that trial's value."""
    axes = {
        "seeds": "seed",
        "dropouts": "dropout",
        "label_smoothings": "label_smoothing",
        "batch_sizes": "batch_size",
        "learning_rates": "learning_rate",
    }
    alone = dict(config)
    for key, column in axes.items():
        if key in config:
            alone[key] = (row[column],)
    return alone


def _assert_same_trial(alone_curve, curve, alone_row, row):
    assert [c[0] for c in alone_curve] == [c[0] for c in curve]
    np.testing.assert_allclose(
        np.array([c[1:] for c in alone_curve]), np.array([c[1:] for c in curve]), rtol=2e-5
    )
    for key in ("status", "best_step", "steps"):
        assert alone_row[key] == row[key], key
    for key in ("best_val_loss", "test_loss", "test_accuracy"):
        assert alone_row[key] == pytest.approx(row[key], rel=2e-5), key


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_trial_of_a_population_equals_the_trial_alone_and_restores(case, data, tmp_path):
    factory, config = CASES[case]
    if case == "batch_norm":
        data = hpjax.from_arrays(
            data.x_train, data.y_train, data.x_test, data.y_test, augment=shift_and_noise
        )
    together = _train(factory, data, tmp_path / "together", **config)
    assert len(together) >= 2
    curves = _curves(tmp_path / "together")
    for row in together:
        workdir = tmp_path / f"alone{row['trial']}"
        (alone,) = _train(factory, data, workdir, **_alone_config(row, config))
        _assert_same_trial(_curves(workdir)[0], curves[row["trial"]], alone, row)
        restored = hpjax.restore_best(str(tmp_path / "together"), row["trial"], model=factory)
        logits = restored.module(jnp.asarray(data.x_test))  # evaluation mode
        loss = float(tasks.CLASSIFICATION.mean_loss(logits, jnp.asarray(data.y_test)))
        assert loss == pytest.approx(row["test_loss"], rel=1e-5)
    if case == "dropout":  # the rates are columns, and a rate changes the trajectory
        assert {r["dropout"] for r in together} == {0.0, 0.4}
        assert {r["label_smoothing"] for r in together} == {0.1}
        by_rate = {(r["seed"], r["dropout"]): curves[r["trial"]] for r in together}
        assert by_rate[(0, 0.0)][-1][1] != pytest.approx(by_rate[(0, 0.4)][-1][1], rel=1e-3)


@pytest.mark.parametrize("factory", [norm_net, dropout_net], ids=["batch_norm", "dropout"])
def test_killed_and_resumed_with_a_refilled_slot_equals_the_trials_alone(factory, data, tmp_path):
    """Two trials through one slot (the second refills it), killed at the third evaluation
    and resumed: both as when trained alone."""
    config = dict(learning_rates=(0.01, 0.05), batch_size=8, slots=1)
    cfg = api.make_config(factory.__name__, data.name, **(STEPS | config))
    workdir = str(tmp_path / "resumed")
    with pytest.raises(Crash):
        train_and_evaluate(cfg, workdir, model=factory, dataset=data, hooks=[CrashAtEvaluation(3)])
    rows = train_and_evaluate(cfg, workdir, model=factory, dataset=data)
    curves = _curves(workdir)
    for row in rows:
        alone_dir = tmp_path / f"alone{row['trial']}"
        alone_config = dict(learning_rates=(row["learning_rate"],), batch_size=8)
        (alone,) = _train(factory, data, alone_dir, **alone_config)
        _assert_same_trial(_curves(alone_dir)[0], curves[row["trial"]], alone, row)


def test_the_functional_form_trains_batch_statistics_and_evaluates_without_dropout():
    model = from_factory(lambda rngs: nnx.Sequential(NormNet(rngs)), "seq")
    variables = model.init(jax.random.PRNGKey(0))
    assert set(variables) == {"params", "state"} and model.stateful
    assert model.num_params == 16 * 32 + 32 + 2 * 32 + 32 * 3 + 3  # parameters only
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 16))
    _, trained = model.train_apply(variables, x, jax.random.PRNGKey(2), jnp.float32(0.0))
    hidden = x @ variables["params"]["layers"][0]["hidden"]["kernel"]
    hidden = hidden + variables["params"]["layers"][0]["hidden"]["bias"]
    state = trained["state"]["layers"][0]["norm"]
    np.testing.assert_allclose(state["mean"], 0.1 * hidden.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state["var"], 0.9 + 0.1 * hidden.var(0), rtol=1e-5)
    module = model.module(trained)  # evaluation mode: the running statistics
    np.testing.assert_allclose(module(x), model.apply(trained, x), rtol=1e-6)

    net = from_factory(dropout_net, "dropout_net")
    v = net.init(jax.random.PRNGKey(0))
    x = jnp.ones((200, 16))
    same = net.apply(v, x), net.apply(v, x)
    np.testing.assert_array_equal(*same)  # evaluation: no dropout
    a, _ = net.train_apply(v, x, jax.random.PRNGKey(3), jnp.float32(0.5))
    b, _ = net.train_apply(v, x, jax.random.PRNGKey(3), jnp.float32(0.5))
    c, _ = net.train_apply(v, x, jax.random.PRNGKey(4), jnp.float32(0.5))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_trial_dropout_drops_at_its_rate_and_keeps_the_mean():
    layer = TrialDropout(0.3, rngs=nnx.Rngs(0))
    x = jnp.ones((100_000,))
    y = layer(x)
    assert float(jnp.mean(y == 0)) == pytest.approx(0.3, abs=0.01)
    assert float(jnp.max(y)) == pytest.approx(1 / 0.7, rel=1e-6)
    assert float(jnp.mean(y)) == pytest.approx(1.0, abs=0.02)
    np.testing.assert_array_equal(nnx.view(layer, deterministic=True)(x), x)


def test_smoothed_cross_entropy_is_optax_with_smoothed_labels():
    logits = jax.random.normal(jax.random.PRNGKey(0), (5, 4))
    labels = jnp.array([0, 3, 1, 2, 2])
    for alpha in (0.0, 0.1, 0.5):
        targets = optax.smooth_labels(jax.nn.one_hot(labels, 4), alpha)
        expected = optax.softmax_cross_entropy(logits, targets)
        got = tasks.smoothed_cross_entropy(logits, labels, alpha)
        np.testing.assert_allclose(got, expected, rtol=1e-6)


class Sown(nnx.Module):
    def __init__(self, rngs):
        self.dense = nnx.Linear(16, 3, rngs=rngs)
        self.cache = nnx.Cache(jnp.zeros(3))

    def __call__(self, x):
        return self.dense(x)


class NoStream(nnx.Module):
    def __init__(self, rngs):
        self.dense = nnx.Linear(16, 3, rngs=rngs)
        self.drop = nnx.Dropout(0.5)

    def __call__(self, x):
        return self.drop(self.dense(x))


def _bad_shape(key, x):
    return x[:, :4]


@pytest.mark.parametrize(
    "factory, config, augment, match",
    [
        (Sown, {}, None, r"layer cache has a variable of type Cache"),
        (NoStream, {}, None, r"layer drop is an nnx.Dropout without rngs"),
        (norm_net, {"dropouts": (0.0, 0.2)}, None, r"dropout=0.2 needs a model with dropout"),
        (norm_net, {}, _bad_shape, r"augment\(key, x\) must return a batch of x's shape"),
        (norm_net, {"dropouts": (1.0,)}, None, r"dropouts.*numbers in \[0, 1\)"),
    ],
)
def test_what_cannot_train_is_one_line_before_compiling(factory, config, augment, match, data):
    if augment is not None:
        data = hpjax.from_arrays(
            data.x_train, data.y_train, data.x_test, data.y_test, augment=augment
        )
    with pytest.raises(ConfigError, match=match) as error:
        _train(factory, data, "/nonexistent/never/written", **config)
    assert "\n" not in str(error.value)


def test_label_smoothing_needs_class_labels(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 16)), rng.normal(size=(60, 3))
    data = hpjax.from_arrays(x[:50], y[:50], x[50:], y[50:], task="regression")
    with pytest.raises(ConfigError, match="label_smoothing=0.1 smooths class labels"):
        _train(norm_net, data, tmp_path, label_smoothings=(0.1,))


def test_built_in_models_take_dropout_batch_norm_and_residual_blocks():
    config = ml_collections.ConfigDict(
        dict(
            name="cnn",
            channels=4,
            num_layers=8,
            residual=True,
            batch_norm=True,
            dropout_layers=True,
        )
    )
    model = build_model(config, (40,), 10)
    assert model.stateful and model.trial_dropout
    variables = model.init(jax.random.PRNGKey(0))
    assert len(variables["state"]["norms"]) == 8
    x = jnp.ones((2, 40))
    assert model.apply(variables, x).shape == (2, 10)
    plain = ml_collections.ConfigDict(dict(name="cnn", channels=4, num_layers=8))
    with pytest.raises(ConfigError, match="residual=True"):
        build_model(plain, (40,), 10)
    mlp = build_model(ml_collections.ConfigDict(dict(name="mlp", dropout_layers=True)), (40,), 10)
    assert mlp.trial_dropout and set(mlp.init(jax.random.PRNGKey(0))["state"]) == set()
    with pytest.raises(ConfigError, match="config.model.batch_norm='yes' must be True or False"):
        build_model(ml_collections.ConfigDict(dict(name="mlp", batch_norm="yes")), (40,), 10)


def test_a_binary_study_sweeps_dropout_of_the_built_in_mlp(tiny_config, tmp_path):
    tiny_config.model.dropout_layers = True
    tiny_config.model.batch_norm = True
    tiny_config.dropouts = (0.0, 0.5)
    tiny_config.learning_rates = (0.01,)
    tiny_config.make_report = True
    workdir = str(tmp_path / "study")
    rows = train_and_evaluate(tiny_config, workdir)
    assert [r["dropout"] for r in rows] == [0.0, 0.5]
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["dropouts"] == [0.0, 0.5]
    with open(os.path.join(workdir, "report.md")) as f:
        assert "dropout" in f.read()


def test_pbt_exploit_copies_the_batch_statistics_and_a_refill_resets_them():
    from hpjax.engine import population

    model = from_factory(norm_net, "norm_net")
    spec = population.PopulationSpec(
        model=model, optimizer="adam", schedule="constant", microbatch=4, num_train=8
    )
    hparams = population.make_hparams([0.01, 0.02], 4, seed=[0, 1])
    state = population.init_population(spec, hparams)
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 16))
    state = population.train_ticks(spec, state, hparams, x, jnp.zeros(8, jnp.int32), 3)
    stats = lambda s: np.asarray(s.trials.params["state"]["norm"]["mean"])  # noqa: E731
    trained = stats(state)
    assert not np.allclose(trained[0], trained[1]) and np.abs(trained).sum() > 0
    copied = population.copy_rows(state, jnp.array([0, 0]), jnp.array([False, True]))
    np.testing.assert_array_equal(stats(copied)[1], trained[0])
    fresh = population.restart_rows(spec, copied, hparams, jnp.array([True, False]))
    np.testing.assert_array_equal(stats(fresh)[0], np.zeros(32))


def bias_before_batch_norm(rngs: nnx.Rngs) -> nnx.Module:
    """Issue 34's user model: the first layer's bias feeds a BatchNorm, so its gradient is zero
    but for rounding, and Adam steps it by about the learning rate on that rounding."""
    return nnx.Sequential(
        nnx.Linear(64, 64, rngs=rngs),
        nnx.BatchNorm(64, rngs=rngs),
        nnx.relu,
        nnx.Linear(64, 10, rngs=rngs),
    )


@pytest.mark.parametrize(
    "axes, train_data",
    [
        (dict(learning_rates=(0.01, 0.1), seeds=(0, 1), batch_size=32), "device"),
        (dict(batch_sizes=(16, 32), learning_rates=(0.01, 0.1)), "host"),
    ],
    ids=["rates_x_seeds", "batch_sizes_host_data"],
)
def test_a_batch_norm_population_under_adam_equals_each_trial_alone(axes, train_data, tmp_path):
    """Each trial's curves within 1e-5 of the trial alone (they drifted by 3-7% in 100 steps
    while the rows of a population shared a batched matmul's rounding)."""
    x, y = data_lib.digits_arrays()
    digits = hpjax.from_arrays(x[:1200], y[:1200], x[1500:], y[1500:])
    config = dict(num_steps=60, eval_every=20, patience=0, optimizer="adam", train_data=train_data)
    together = _train(bias_before_batch_norm, digits, tmp_path / "together", **config, **axes)
    assert len(together) == 4
    curves = _curves(tmp_path / "together")
    for row in together:
        workdir = tmp_path / f"alone{row['trial']}"
        alone = _alone_config(row, axes)
        (alone_row,) = _train(bias_before_batch_norm, digits, workdir, **config, **alone)
        alone_curve = np.array([c[1:] for c in _curves(workdir)[0]])
        np.testing.assert_allclose(
            np.array([c[1:] for c in curves[row["trial"]]]), alone_curve, rtol=1e-5
        )
        assert alone_row["test_loss"] == pytest.approx(row["test_loss"], rel=1e-5)
