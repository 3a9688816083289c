"""A CNN, an LSTM and a GRU trial inside a vmapped population follow their trajectory alone.

The same property tests/test_population.py checks for the MLP, for the other model families:
convolutions (computed as patches @ kernel on CPU) and scanned recurrent cells (an LSTM; a GRU
over 2 features, read out from its mean state) must not mix trials under ``jax.vmap``. Models
are tiny and run a few ticks, to keep compiling cheap. The CNN's patches are also checked
against ``lax.conv`` (1-D and 2-D, strided) and against the module's own ``nnx.Conv`` path.
"""

import importlib.util
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from hpjax.engine import population
from hpjax.models import build_model
from hpjax.models.cnn import conv_as_matmul
from hpjax.study import spec as study_spec
from tests.conftest import trial_hparams

NUM_TRAIN = 24
TICKS = 6
RTOL, ATOL = 1e-4, 1e-5

MODELS = {
    "cnn": ((10,), {"name": "cnn", "channels": 3, "num_layers": 2, "kernel_size": 3}),
    "lstm": ((7,), {"name": "rnn", "cell": "lstm", "hidden_size": 4}),
    "gru": ((7, 2), {"name": "rnn", "cell": "gru", "hidden_size": 4, "readout": "mean"}),
    # Mixed precision (bf16 matmul inputs, float32 accumulation and state) is a per-trial program
    # like any other: a bf16 trial in a population equals that bf16 trial alone.
    "mlp_bf16": ((6,), {"name": "mlp", "hidden_units": 8, "precision": "bf16"}),
    "cnn_bf16": ((10,), {"name": "cnn", "channels": 3, "num_layers": 2, "precision": "bf16"}),
    "gru_bf16": ((7,), {"name": "rnn", "cell": "gru", "hidden_size": 4, "precision": "bf16"}),
}


def _problem(name: str):
    input_shape, cfg = MODELS[name]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(NUM_TRAIN, *input_shape)).astype(np.float32)
    y = (x.reshape(NUM_TRAIN, -1)[:, :3].argmax(axis=1)).astype(np.int32)
    model = build_model(ml_collections.ConfigDict(cfg), input_shape, 3)
    return model, jnp.asarray(x), jnp.asarray(y)


@pytest.mark.parametrize("name", list(MODELS))
def test_trial_in_population_equals_trial_alone(name):
    model, x, y = _problem(name)
    spec = population.PopulationSpec(
        model=model, optimizer="adam", schedule="constant", microbatch=4, num_train=NUM_TRAIN
    )
    trials = [{"learning_rate": 0.003, "seed": 1}, {"learning_rate": 0.03, "seed": 2}]
    defaults = dict(batch_size=4, learning_rate=0.01)
    both, one = trial_hparams(trials, **defaults), trial_hparams(trials[1:], **defaults)
    start = population.init_population(spec, both)
    # Alone: a population of one, starting from the same initial state as trial 1 (each trial's
    # initial state depends only on its own seed), so only ``init`` of the pair is compiled.
    alone = jax.tree.map(lambda a: a[1:2] if np.ndim(a) else jnp.array(a), start)  # copies
    together = population.train_ticks(spec, start, both, x, y, jnp.int32(TICKS))
    alone = population.train_ticks(spec, alone, one, x, y, jnp.int32(TICKS))
    assert together.trials.step.tolist() == [TICKS, TICKS]
    for a, b in zip(
        jax.tree.leaves(together.trials.params), jax.tree.leaves(alone.trials.params), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a[1]), np.asarray(b[0]), rtol=RTOL, atol=ATOL)
    # The trials differ (different seeds and rates), and training moved the parameters.
    first = [np.asarray(leaf) for leaf in jax.tree.leaves(together.trials.params)]
    assert not all(np.allclose(leaf[0], leaf[1]) for leaf in first)


@pytest.mark.parametrize(
    "shape, in_channels, kernel, stride", [((41,), 2, 4, 3), ((7, 9), 3, 2, 2), ((40,), 1, 5, 1)]
)
def test_conv_as_matmul_equals_lax_conv(shape, in_channels, kernel, stride):
    """The CNN's CPU path computes exactly nnx.Conv's SAME-padded strided cross-correlation."""
    rank = len(shape)
    rng = np.random.default_rng(1)
    conv = types.SimpleNamespace(  # what conv_as_matmul reads of an nnx.Conv
        kernel=jnp.asarray(rng.normal(size=(kernel,) * rank + (in_channels, 4)), jnp.float32),
        bias=jnp.asarray(rng.normal(size=(4,)), jnp.float32),
        strides=(stride,) * rank,
    )
    x = jnp.asarray(rng.normal(size=(2, *shape, in_channels)), jnp.float32)
    spec = "NWC" if rank == 1 else "NHWC"
    expected = jax.lax.conv_general_dilated(
        x,
        conv.kernel,
        conv.strides,
        "SAME",
        dimension_numbers=(spec, "WIO" if rank == 1 else "HWIO", spec),
    )
    np.testing.assert_allclose(conv_as_matmul(conv, x), expected + conv.bias, rtol=1e-5, atol=1e-5)


def test_cnn_apply_matches_nnx_conv_path():
    """The whole CNN on CPU equals the same module run through nnx.Conv's own call."""
    model = build_model(ml_collections.ConfigDict(MODELS["cnn"][1]), MODELS["cnn"][0], 3)
    params = model.init(jax.random.key(0))
    module = model.module(params)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, *MODELS["cnn"][0])), jnp.float32)
    h = x[..., None]
    for conv in module.convs:
        h = nnx.max_pool(nnx.relu(conv(h)), (2,), strides=(2,), padding="VALID")
    expected = module.head(h.reshape(h.shape[0], -1))
    np.testing.assert_allclose(model.apply(params, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("recipe", ["mnist1d_mlp", "mnist1d_cnn", "mnist1d_gru", "mnist1d_lstm"])
@pytest.mark.parametrize("variant", [None, "quick"])
def test_recipes_are_valid_studies(recipe, variant):
    """Each MNIST-1D recipe (and its quick variant) passes every check that needs no compiling."""
    path = os.path.join(os.path.dirname(__file__), "..", "experiments", "configs", f"{recipe}.py")
    spec = importlib.util.spec_from_file_location(f"config_{recipe}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(variant)
    study_spec.parse(config, num_train=3600)
    model = build_model(config.model, (40,), 10)
    assert model.name == recipe.split("_")[1].replace("gru", "rnn").replace("lstm", "rnn")


INIT_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import jax, ml_collections, numpy as np
from hpjax.engine import population
from hpjax.models import build_model
from tests.conftest import trial_hparams
cfg = dict(name="rnn", cell="lstm", hidden_size=32, num_layers=2, bidirectional=True)
model = build_model(ml_collections.ConfigDict(cfg), (5,), 3)
spec = population.PopulationSpec(model=model, optimizer="adam", schedule="constant",
                                 microbatch=4, num_train=8)
state = population.init_population(spec, trial_hparams([dict(seed=s) for s in range(8)]))
params = jax.device_get(state.trials.params)
for seed in (0, 7):
    alone = jax.device_get(model.init(jax.random.split(jax.random.PRNGKey(seed))[0]))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(alone), strict=True):
        assert np.array_equal(a[seed], b), seed
print("INIT OK")
"""


def test_sixteen_orthogonal_initialisers_per_trial_initialise_without_hanging():
    """8 bidirectional 2-layer LSTMs have 16 orthogonal recurrent kernels each: initialised as a
    vmap, their batched QR decompositions deadlocked XLA:CPU on two cores. Run in a subprocess
    so that a regression fails here instead of hanging the suite; the values equal each trial's
    own initialisation."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, "-c", INIT_SCRIPT.format(root=root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "INIT OK" in done.stdout, done.stderr[-2000:]


@pytest.mark.parametrize("name", ["gru", "cnn"])
def test_cpu_compiler_options_compute_the_same_bits_as_xla_defaults(name):
    """The engine compiles with LLVM at level 1 on the CPU (hpjax/engine/jit.py): the trained
    parameters must be bit for bit those of XLA's default level."""
    model, x, y = _problem(name)
    spec = population.PopulationSpec(
        model=model, optimizer="adam", schedule="constant", microbatch=4, num_train=NUM_TRAIN
    )
    hparams = trial_hparams([dict(learning_rate=r, batch_size=4) for r in (0.01, 0.1)])
    outs = []
    for program in (population.train_ticks.cpu, population.train_ticks.default):
        state = population.init_population(spec, hparams)
        outs.append(jax.device_get(program(spec, state, hparams, x, y, jnp.int32(TICKS))))
    for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1]), strict=True):
        assert np.array_equal(a, b)
