"""The cache of traced programs (issue 37): a program loaded from disk computes the same bits
as the one traced by jax.jit; any change of what shapes a program (hpjax's source, a library
version, the model, a static option, a shape) is a miss; a model of your own is not cached."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hpjax.engine import population, program_cache
from hpjax.models import build_model, from_factory
from hpjax.models.registry import default_model_config
from tests.conftest import three_class_data, trial_hparams


def user_linear(rngs: nnx.Rngs) -> nnx.Module:
    return nnx.Linear(16, 3, rngs=rngs)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache directory, and nothing in this process's memory of programs."""
    monkeypatch.setattr(program_cache, "_programs", {})
    monkeypatch.setattr(program_cache, "_refused", set())
    monkeypatch.setattr(program_cache, "counts", dict.fromkeys(program_cache.counts, 0))
    monkeypatch.setitem(program_cache._state, "directory", str(tmp_path / "programs"))
    return tmp_path / "programs"


def _spec(patience=0, hidden_units=8):
    data = three_class_data()
    keys = default_model_config("mlp")
    keys.update(hidden_units=hidden_units, num_layers=1)
    model = build_model(keys, data.input_shape, data.num_classes)
    spec = population.PopulationSpec(
        model=model,
        optimizer="adam",
        schedule="cosine",
        microbatch=8,
        num_train=len(data.x_train),
        patience=patience,
        accumulates=False,
    )
    return spec, data


def _train(spec, data, rates=(0.01, 0.1)):
    hparams = trial_hparams([{"learning_rate": r, "batch_size": 8, "max_steps": 30} for r in rates])
    state = population.init_population(spec, hparams)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    state = population.train_ticks(spec, state, hparams, x, y, jnp.int32(30))
    x_val, y_val = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    return state, population.evaluate(spec, state.trials.params, x_val, y_val)


def _assert_same_bits(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_a_cached_program_computes_the_same_bits_as_the_traced_one(cache, monkeypatch):
    spec, data = _spec()
    monkeypatch.setitem(program_cache._state, "directory", "")
    traced = _train(spec, data)  # plain jax.jit
    monkeypatch.setitem(program_cache._state, "directory", str(cache))
    exported = _train(spec, data)  # traced, exported, written, run from the export
    assert program_cache.counts["exports"] >= 3  # init, training, evaluation
    program_cache._programs.clear()  # as a new process: read from disk
    loaded = _train(spec, data)
    assert program_cache.counts["loads"] == program_cache.counts["exports"]
    _assert_same_bits(exported, traced)
    _assert_same_bits(loaded, traced)
    again = _train(spec, data, rates=(0.003, 0.3))  # other values, same shapes: in memory
    assert program_cache.counts["hits"] >= 3
    assert not np.array_equal(again[1]["loss"], loaded[1]["loss"])


def _key(spec, trials=2):
    hparams = trial_hparams([{"learning_rate": 0.1}] * trials)
    leaves, tree = jax.tree.flatten((hparams,))
    return program_cache.key_of("init_population", [spec], leaves, tree, (), None)


def test_what_shapes_a_program_changes_its_key(cache, monkeypatch):
    spec, _ = _spec()
    base = _key(spec)
    assert _key(spec) == base
    assert _key(spec, trials=3) != base  # a shape
    assert _key(_spec(patience=2)[0]) != base  # a static option
    assert _key(_spec(hidden_units=16)[0]) != base  # the model
    assert _key(dataclasses.replace(spec, optimizer="sgd")) != base
    monkeypatch.setitem(program_cache._state, "source", "another hpjax")
    assert _key(spec) != base  # hpjax's source
    monkeypatch.setitem(program_cache._state, "source", "")
    assert _key(spec) == base
    monkeypatch.setattr(jax, "__version__", "0.0.0")
    assert _key(spec) != base  # a library's version


def test_hpjax_source_digest_reads_every_module():
    digest = program_cache.source_digest()
    assert len(digest) == 64 and digest == program_cache.source_digest()


def test_a_model_of_your_own_is_traced_as_before(cache):
    spec, data = _spec()
    spec = dataclasses.replace(spec, model=from_factory(user_linear, "user_linear"))
    with pytest.raises(program_cache.Uncacheable, match="not a built-in"):
        program_cache.describe(spec)
    hparams = trial_hparams([{"learning_rate": 0.1}])
    population.init_population(spec, hparams)
    assert program_cache.counts["exports"] == 0 and not cache.exists()


def test_an_optimizer_factory_of_your_own_is_traced_as_before():
    spec, _ = _spec()
    assert "optax.lion" in program_cache.describe(dataclasses.replace(spec, optimizer="optax.lion"))
    mine = dataclasses.replace(spec, optimizer="tests.test_optim_factories.clipped_adam")
    with pytest.raises(program_cache.Uncacheable, match="not optax's"):
        program_cache.describe(mine)


def test_a_lambda_in_a_static_argument_is_not_described():
    with pytest.raises(program_cache.Uncacheable):
        program_cache.describe(lambda x: x)
    assert program_cache.describe(np.float32(0.5)) == "float32:np.float32(0.5)"


def test_the_least_recently_used_programs_go_first_past_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(program_cache, "_kept_bytes", {})
    paths = [tmp_path / f"{k:02x}" / f"{k:02x}.program" for k in range(4)]
    for age, path in enumerate(paths):
        program_cache._write(str(path), (b"x" * 1000, None))
        os.utime(path, (1000 + age, 1000 + age))  # the first written is the least recently used
    monkeypatch.setattr(program_cache, "MAX_BYTES", 3500)
    program_cache._write(str(tmp_path / "ff" / "ff.program"), (b"x" * 1000, None))
    assert [p.exists() for p in paths] == [False, False, True, True]
    assert (tmp_path / "ff" / "ff.program").exists()


@dataclasses.dataclass(frozen=True)
class ScaledLoss:
    """A callable dataclass of your own: its code is not in hpjax's digest."""

    weight: float

    def __call__(self, outputs, targets):
        return self.weight * outputs


def test_your_own_dataclasses_and_bound_methods_are_not_described():
    with pytest.raises(program_cache.Uncacheable, match="not hpjax's"):
        program_cache.describe(ScaledLoss(0.5))
    spec, _ = _spec()
    with pytest.raises(program_cache.Uncacheable):
        program_cache.describe(spec.task.with_monitor)


def test_a_tracing_flag_changes_the_key():
    spec, _ = _spec()
    base = _key(spec)
    with jax.default_matmul_precision("highest"):
        assert _key(spec) != base


def test_a_damaged_program_file_is_traced_again(cache):
    spec, data = _spec()
    first = _train(spec, data)
    exported = program_cache.counts["exports"]
    for path in cache.rglob("*.program"):
        path.write_bytes(b"not a program")
    program_cache._programs.clear()
    again = _train(spec, data)
    assert program_cache.counts["exports"] == 2 * exported
    _assert_same_bits(first, again)
