"""Training data that stays on the host (a memory-mapped file, or a set larger than the device's
share): the same micro-batches as the device path, so the same results."""

import os

import jax
import numpy as np
import pytest

import hpjax
from hpjax.engine import host_data, stream
from hpjax.errors import ConfigError
from hpjax.results import files
from hpjax.study.run import train_and_evaluate


def test_the_hosts_indices_are_the_device_loops_micro_batches():
    keys = np.array(jax.random.split(jax.random.PRNGKey(3), 4))
    keys[3] = keys[0]  # two trials of one seed share their permutations
    m, n, num_ticks = 4, 22, 13  # epochs end mid-micro-batch
    orders = host_data.EpochOrders(n)
    for ticks in ([0, 5, 17, 40], [13, 18, 30, 0]):  # staggered; the last row refilled
        ticks = np.array(ticks, np.int32)
        block = orders.indices(keys, ticks, num_ticks, m)
        assert block.shape == (num_ticks, 4, m)
        for t in range(num_ticks):
            at = ticks + t
            expected = stream.microbatch_indices(stream.permutations_at(keys, at, m, n), at, m, n)
            np.testing.assert_array_equal(block[t], expected)


def _memory_mapped(tmp_path, x: np.ndarray) -> np.ndarray:
    path = os.path.join(tmp_path, "x_train.npy")
    np.save(path, x.astype(np.float32))
    return np.load(path, mmap_mode="r")


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=260)
    x = (rng.normal(size=(260, 12)) * 0.5 + y[:, None] * np.linspace(-1, 1, 12)).astype(np.float32)
    return x[:180], y[:180], x[180:220], y[180:220], x[220:], y[220:]


def test_a_memory_mapped_training_set_stays_on_disk_with_the_same_fingerprint(arrays, tmp_path):
    x_tr, y_tr, x_v, y_v, x_te, y_te = arrays
    mapped = _memory_mapped(tmp_path, x_tr)
    data = hpjax.from_arrays(mapped, y_tr, x_te, y_te, x_v, y_v)
    assert isinstance(data.x_train, np.memmap)  # not loaded
    in_memory = hpjax.from_arrays(x_tr, y_tr, x_te, y_te, x_v, y_v)
    assert data.fingerprint == in_memory.fingerprint
    with pytest.raises(ConfigError, match="memory-mapped x_train needs x_val and y_val"):
        hpjax.from_arrays(mapped, y_tr, x_te, y_te)


STUDY = dict(
    learning_rates=(0.01, 0.05),
    seeds=(0, 1),
    batch_sizes=(8, 16),
    num_steps=40,
    eval_every=10,
    patience=2,
    verbose=False,
)


def _model(rngs):
    from flax import nnx

    return nnx.Sequential(nnx.Linear(12, 16, rngs=rngs), nnx.relu, nnx.Linear(16, 3, rngs=rngs))


def test_host_and_device_paths_give_the_same_study(arrays, tmp_path, monkeypatch):
    """Blocks of 3 ticks (a tiny block budget), two batch sizes sharing micro-batches, a queue
    through slots (refills restart a row's stream): equal metrics and summaries."""
    x_tr, y_tr, x_v, y_v, x_te, y_te = arrays
    data = hpjax.from_arrays(_memory_mapped(tmp_path, x_tr), y_tr, x_te, y_te, x_v, y_v)
    monkeypatch.setattr(host_data, "BLOCK_BYTES", 3 * 4 * 16 * (12 * 4 + 4))
    results = {}
    for placement in ("device", "host"):
        workdir = str(tmp_path / placement)
        rows = hpjax.train(_model, data, workdir, train_data=placement, slots=3, **STUDY).rows
        results[placement] = rows, files.read_metrics(workdir)
    (device_rows, device_metrics), (host_rows, host_metrics) = results.values()
    strip = lambda rows: [
        {k: v for k, v in r.items() if k not in ("time", "elapsed_s", "peak_memory_mb")}
        for r in rows
    ]  # noqa: E501,E731
    assert strip(host_metrics) == strip(device_metrics)
    assert strip(host_rows) == strip(device_rows)


def test_auto_keeps_a_memory_mapped_set_on_the_host(arrays, tmp_path, caplog):
    caplog.set_level("INFO")
    x_tr, y_tr, x_v, y_v, x_te, y_te = arrays
    data = hpjax.from_arrays(_memory_mapped(tmp_path, x_tr), y_tr, x_te, y_te, x_v, y_v)
    hpjax.train(_model, data, str(tmp_path / "auto"), **(STUDY | dict(num_steps=10)))
    assert "training data stays on the host" in caplog.text


def test_auto_keeps_a_set_beyond_the_memory_budget_on_the_host(tiny_config, tmp_path, caplog):
    caplog.set_level("INFO")
    tiny_config.memory_fraction = 1e-9  # the training set is more than half of this budget
    tiny_config.max_population = 1
    tiny_config.num_steps = 20
    train_and_evaluate(tiny_config, str(tmp_path / "tiny"))
    assert "training data stays on the host" in caplog.text
