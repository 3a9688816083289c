"""A CNN, an LSTM and a GRU trial inside a vmapped population follow their trajectory alone.

The same property tests/test_population.py checks for the MLP, for the other model families:
convolutions (computed as patches @ kernel on CPU) and scanned recurrent cells (one LSTM; a
bidirectional GRU over 2 features) must not mix trials under ``jax.vmap``. Models are tiny and
run a few ticks, to keep compiling cheap; the 2-D patches are checked against ``lax.conv``.
"""

import importlib.util
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from hpjax import population, study
from hpjax.models import build_model, conv_as_matmul

NUM_TRAIN = 24
TICKS = 6
RTOL, ATOL = 1e-4, 1e-5

MODELS = {
    "cnn": ((10,), {"name": "cnn", "channels": 3, "num_layers": 2, "kernel_size": 3}),
    "lstm": ((7,), {"name": "rnn", "cell": "lstm", "hidden_size": 4}),
    "gru": (
        (7, 2),
        {"name": "rnn", "cell": "gru", "hidden_size": 4, "bidirectional": True, "readout": "mean"},
    ),
}


def _problem(name: str):
    input_shape, cfg = MODELS[name]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(NUM_TRAIN, *input_shape)).astype(np.float32)
    y = (x.reshape(NUM_TRAIN, -1)[:, :3].argmax(axis=1)).astype(np.int32)
    model = build_model(ml_collections.ConfigDict(cfg), input_shape, 3)
    return model, jnp.asarray(x), jnp.asarray(y)


def _train(model, x, y, trials: list[dict]):
    defaults = dict(
        learning_rate=0.01,
        batch_size=4,
        seed=0,
        weight_decay=0.0,
        warmup_steps=0,
        decay_rate=0.1,
        end_factor=0.0,
        max_steps=1000,
    )
    hparams = population.make_hparams(
        **{k: [t.get(k, v) for t in trials] for k, v in defaults.items()}
    )
    spec = population.PopulationSpec(
        model=model, optimizer="adam", schedule="constant", microbatch=4, num_train=NUM_TRAIN
    )
    state = population.init_population(spec, hparams)
    return population.train_ticks(spec, state, hparams, x, y, jnp.int32(TICKS))


@pytest.mark.parametrize("name", list(MODELS))
def test_trial_in_population_equals_trial_alone(name):
    model, x, y = _problem(name)
    trials = [{"learning_rate": 0.003, "seed": 1}, {"learning_rate": 0.03, "seed": 2}]
    together = _train(model, x, y, trials)
    alone = _train(model, x, y, trials[1:])
    assert together.trials.step.tolist() == [TICKS, TICKS]
    for a, b in zip(
        jax.tree.leaves(together.trials.params), jax.tree.leaves(alone.trials.params), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a[1]), np.asarray(b[0]), rtol=RTOL, atol=ATOL)
    # The trials differ (different seeds and rates), and training moved the parameters.
    first = [np.asarray(leaf) for leaf in jax.tree.leaves(together.trials.params)]
    assert not all(np.allclose(leaf[0], leaf[1]) for leaf in first)


@pytest.mark.parametrize(
    "shape, in_channels, kernel, stride",
    [((40,), 1, 5, 1), ((41,), 2, 4, 3), ((7, 9), 3, 2, 2)],
)
def test_conv_as_matmul_equals_lax_conv(shape, in_channels, kernel, stride):
    rank = len(shape)
    conv = nnx.Conv(
        in_channels,
        4,
        kernel_size=(kernel,) * rank,
        strides=(stride,) * rank,
        padding="SAME",
        rngs=nnx.Rngs(0),
    )
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, *shape, in_channels)), jnp.float32)
    np.testing.assert_allclose(conv_as_matmul(conv, x), conv(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("recipe", ["mnist1d_mlp", "mnist1d_cnn", "mnist1d_gru", "mnist1d_lstm"])
@pytest.mark.parametrize("variant", [None, "quick"])
def test_recipes_are_valid_studies(recipe, variant):
    """Each MNIST-1D recipe (and its quick variant) passes every check that needs no compiling."""
    path = os.path.join(os.path.dirname(__file__), "..", "experiments", "configs", f"{recipe}.py")
    spec = importlib.util.spec_from_file_location(f"config_{recipe}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(variant)
    study.validate_config(config, 3600)
    model = build_model(config.model, (40,), 10)
    assert model.name == recipe.split("_")[1].replace("gru", "rnn").replace("lstm", "rnn")
