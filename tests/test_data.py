"""Tests for hpjax.data: sources, splits, the MNIST-1D cache and .npz validation."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from hpjax import data, data_mnist1d
from hpjax.errors import ConfigError
from tests.conftest import ROOT


def make_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(
        {
            "dataset": "mnist1d",
            "npz_path": "",
            "val_fraction": 0.1,
            "train_subset": 0,
            "data_seed": 0,
        }
    )
    cfg.update(overrides)
    return cfg


def rows(x: np.ndarray) -> set[bytes]:
    """Each example as bytes, to compare sets of rows."""
    return {r.tobytes() for r in x.reshape(len(x), -1)}


def assert_well_formed(ds: data.Dataset) -> None:
    for split in ("train", "val", "test"):
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        assert isinstance(x, np.ndarray) and x.dtype == np.float32, split
        assert isinstance(y, np.ndarray) and y.dtype == np.int32, split
        assert x.flags.c_contiguous and y.flags.c_contiguous, split
        assert x.shape == (len(y), *ds.input_shape), split
        assert y.min() >= 0 and y.max() < ds.num_classes, split


@pytest.fixture(scope="module")
def mnist_cache(tmp_path_factory):
    """One MNIST-1D generation for the whole module, cached in a temporary HPJAX_CACHE."""
    cache = tmp_path_factory.mktemp("hpjax_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HPJAX_CACHE", str(cache))
        ds = data.load_dataset(make_config())
    return cache, ds


@pytest.fixture
def mnist(mnist_cache, monkeypatch):
    """Loader for MNIST-1D that reads the module's cache."""
    cache, _ = mnist_cache
    monkeypatch.setenv("HPJAX_CACHE", str(cache))
    return lambda **kw: data.load_dataset(make_config(**kw))


# ---------------------------------------------------------------------------------------------
# MNIST-1D


def test_mnist1d_shapes_dtypes_and_split_sizes(mnist_cache):
    _, ds = mnist_cache
    assert ds.name == "mnist1d"
    assert ds.input_shape == (40,)
    assert ds.num_classes == 10
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (3600, 400, 1000)
    assert ds.num_train == 3600
    assert ds.x_train.shape == (3600, 40)
    assert_well_formed(ds)
    assert set(np.unique(ds.y_train)) == set(range(10))
    # Left as generated: O(1) values, roughly centred.
    assert 0.5 < float(ds.x_train.std()) < 2.0
    assert abs(float(ds.x_train.mean())) < 0.5


def test_mnist1d_val_and_train_disjoint_and_cover_source(mnist_cache):
    _, ds = mnist_cache
    train, val = rows(ds.x_train), rows(ds.x_val)
    assert len(train) == 3600 and len(val) == 400
    assert train.isdisjoint(val)
    assert rows(ds.x_test).isdisjoint(train | val)


def test_mnist1d_split_deterministic_per_seed(mnist):
    a, b, c = mnist(data_seed=3), mnist(data_seed=3), mnist(data_seed=4)
    np.testing.assert_array_equal(a.x_val, b.x_val)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    assert rows(a.x_val) != rows(c.x_val)
    # Same 4000 examples are split either way; the test set does not depend on the seed.
    assert rows(a.x_train) | rows(a.x_val) == rows(c.x_train) | rows(c.x_val)
    np.testing.assert_array_equal(a.x_test, c.x_test)


def test_mnist1d_cache_hit_returns_identical_arrays_without_regenerating(
    mnist_cache, mnist, monkeypatch
):
    cache, first = mnist_cache
    files = [f for f in os.listdir(cache) if f.startswith("mnist1d-") and f.endswith(".npz")]
    assert len(files) == 1
    assert not [f for f in os.listdir(cache) if f.startswith(".tmp")]

    def boom(*args, **kwargs):
        raise AssertionError("make_dataset called despite a cache hit")

    import mnist1d.data

    monkeypatch.setattr(mnist1d.data, "make_dataset", boom)
    second = mnist()
    for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(first, field), getattr(second, field))


def test_mnist1d_noted_args_give_the_packages_cache_key(mnist_cache, monkeypatch):
    """The args noted in the cache directory name the file the package's own args name."""
    cache, _ = mnist_cache
    monkeypatch.setenv("HPJAX_CACHE", str(cache))
    (note,) = cache.glob("mnist1d-args-*.json")
    noted = data_mnist1d._key_args()
    assert noted == json.loads(note.read_text())
    assert data_mnist1d._cache_path(noted) == data_mnist1d._cache_path(
        data_mnist1d._package_args()[1]
    )


def test_mnist1d_cached_load_does_not_import_the_package(mnist_cache):
    cache, first = mnist_cache
    code = (
        "import sys; from hpjax import data; from tests.test_data import make_config; "
        "ds = data.load_dataset(make_config()); "
        "print(int('mnist1d' in sys.modules), int('scipy' in sys.modules), ds.num_train)"
    )
    env = {**os.environ, "HPJAX_CACHE": str(cache)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["0", "0", str(first.num_train)]


def test_mnist1d_corrupt_cache_is_regenerated(tmp_path, monkeypatch):
    import mnist1d.data

    calls = []

    def fake_make_dataset(args):
        calls.append(args)
        rng = np.random.default_rng(0)
        return {
            "x": rng.normal(size=(50, 40)),
            "y": np.arange(50) % 10,
            "x_test": rng.normal(size=(10, 40)),
            "y_test": np.arange(10),
        }

    monkeypatch.setenv("HPJAX_CACHE", str(tmp_path))
    monkeypatch.setattr(mnist1d.data, "make_dataset", fake_make_dataset)
    ds = data.load_dataset(make_config())
    assert len(calls) == 1 and ds.num_train == 45
    (cache_file,) = tmp_path.glob("mnist1d-*.npz")
    cache_file.write_bytes(b"not a zip file")
    again = data.load_dataset(make_config())
    assert len(calls) == 2
    np.testing.assert_array_equal(ds.x_train, again.x_train)
    with np.load(cache_file) as f:  # rewritten with valid contents
        assert f["x_train"].shape == (50, 40)


def test_mnist1d_generation_leaves_global_rng_untouched(tmp_path, monkeypatch):
    import mnist1d.data

    def reseeding_make_dataset(args):
        np.random.seed(args.seed)  # noqa: NPY002 - mimics mnist1d's set_seed
        random.seed(args.seed)
        return {
            "x": np.zeros((20, 40)),
            "y": np.arange(20) % 10,
            "x_test": np.zeros((5, 40)),
            "y_test": np.arange(5),
        }

    monkeypatch.setenv("HPJAX_CACHE", str(tmp_path))
    monkeypatch.setattr(mnist1d.data, "make_dataset", reseeding_make_dataset)
    np.random.seed(123)  # noqa: NPY002
    random.seed(123)
    expected_np, expected_py = np.random.rand(), random.random()  # noqa: NPY002
    np.random.seed(123)  # noqa: NPY002
    random.seed(123)
    data.load_dataset(make_config())
    assert np.random.rand() == expected_np  # noqa: NPY002
    assert random.random() == expected_py


def test_train_subset_size_and_is_subset(mnist):
    full = mnist(data_seed=1)
    sub = mnist(data_seed=1, train_subset=500)
    assert sub.num_train == 500 and sub.x_train.shape == (500, 40)
    assert rows(sub.x_train) <= rows(full.x_train)
    assert len(rows(sub.x_train)) == 500
    # The validation split is made before the subset and does not change.
    np.testing.assert_array_equal(sub.x_val, full.x_val)
    again = mnist(data_seed=1, train_subset=500)
    np.testing.assert_array_equal(sub.x_train, again.x_train)
    other = mnist(data_seed=2, train_subset=500)
    assert rows(other.x_train) != rows(sub.x_train)
    # The whole training set is an allowed subset size.
    assert mnist(data_seed=1, train_subset=3600).num_train == 3600


def test_train_subset_too_large(mnist):
    with pytest.raises(ConfigError) as e:
        mnist(train_subset=3601)
    msg = str(e.value)
    assert "config.train_subset=3601" in msg and "3600" in msg


def test_train_subset_negative(mnist):
    with pytest.raises(ConfigError, match=r"config\.train_subset=-1"):
        mnist(train_subset=-1)


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("num_classes", -3, r"config\.num_classes=-3 must be an integer >= 0"),
        ("num_classes", True, r"config\.num_classes=True must be an integer >= 0"),
        ("max_abs_input", -1.0, r"config\.max_abs_input=-1.0 must be a finite number >= 0"),
    ],
)
def test_data_settings_out_of_range_are_refused(key, value, match):
    with pytest.raises(ConfigError, match=match):
        data.load_dataset(make_config(dataset="digits", **{key: value}))


# ---------------------------------------------------------------------------------------------
# digits


def test_digits_read_from_the_file_equal_scikit_learns_loader():
    from sklearn.datasets import load_digits

    pixels, labels = data.digits_arrays()
    bunch = load_digits()
    np.testing.assert_array_equal(pixels, bunch.data)
    np.testing.assert_array_equal(labels, bunch.target)


def test_digits_shapes_scale_and_determinism():
    ds = data.load_dataset(make_config(dataset="digits", val_fraction=0.1, data_seed=0))
    assert ds.name == "digits"
    assert ds.input_shape == (8, 8)
    assert ds.num_classes == 10
    n_test = round(0.2 * 1797)
    n_val = round(0.1 * (1797 - n_test))
    assert len(ds.y_test) == n_test
    assert len(ds.y_val) == n_val
    assert ds.num_train == 1797 - n_test - n_val
    assert_well_formed(ds)
    assert float(ds.x_train.min()) == 0.0 and float(ds.x_train.max()) == 1.0
    assert rows(ds.x_train).isdisjoint(rows(ds.x_val))

    same = data.load_dataset(make_config(dataset="digits", data_seed=0))
    other = data.load_dataset(make_config(dataset="digits", data_seed=1))
    np.testing.assert_array_equal(ds.x_val, same.x_val)
    np.testing.assert_array_equal(ds.y_train, same.y_train)
    assert not np.array_equal(ds.x_val, other.x_val)
    # The test set is fixed, whatever data_seed says.
    np.testing.assert_array_equal(ds.x_test, other.x_test)
    np.testing.assert_array_equal(ds.y_test, other.y_test)


# ---------------------------------------------------------------------------------------------
# npz


def _arrays(n_train=30, n_val=None, n_test=12, shape=(5,), classes=4, seed=0):
    rng = np.random.default_rng(seed)
    out = {
        "x_train": rng.normal(size=(n_train, *shape)),
        "y_train": np.arange(n_train) % classes,
        "x_test": rng.normal(size=(n_test, *shape)),
        "y_test": np.arange(n_test) % classes,
    }
    if n_val is not None:
        out["x_val"] = rng.normal(size=(n_val, *shape))
        out["y_val"] = np.arange(n_val) % classes
    return out


def _npz(tmp_path, arrays, name="d.npz"):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def test_npz_round_trip_with_val(tmp_path):
    arrays = _arrays(n_val=7, shape=(3, 2))
    ds = data.load_dataset(make_config(dataset="npz", npz_path=_npz(tmp_path, arrays)))
    assert ds.name == "npz" and ds.input_shape == (3, 2) and ds.num_classes == 4
    assert_well_formed(ds)
    for key, value in arrays.items():
        np.testing.assert_array_equal(getattr(ds, key), value.astype(getattr(ds, key).dtype))
    # Not standardised: values are the user's, only cast to float32.
    np.testing.assert_array_equal(ds.x_train, arrays["x_train"].astype(np.float32))


def test_npz_round_trip_without_val_carves_validation(tmp_path):
    arrays = _arrays(n_train=40)
    path = _npz(tmp_path, arrays)
    ds = data.load_dataset(make_config(dataset="npz", npz_path=path, val_fraction=0.25))
    assert (ds.num_train, len(ds.y_val), len(ds.y_test)) == (30, 10, 12)
    assert_well_formed(ds)
    source = rows(arrays["x_train"].astype(np.float32))
    assert rows(ds.x_train).isdisjoint(rows(ds.x_val))
    assert rows(ds.x_train) | rows(ds.x_val) == source
    np.testing.assert_array_equal(ds.x_test, arrays["x_test"].astype(np.float32))


def test_npz_classes_come_from_the_training_labels_or_the_config(tmp_path):
    arrays = _arrays(n_val=6, classes=3)
    arrays["y_train"] = arrays["y_train"].astype(np.float64)  # integral floats are labels
    ds = data.load_dataset(make_config(dataset="npz", npz_path=_npz(tmp_path, arrays)))
    assert ds.num_classes == 3 and ds.y_train.dtype == np.int32
    arrays["y_test"][0] = 6  # a class the training set never shows
    path = _npz(tmp_path, arrays)
    with pytest.raises(ConfigError, match="y_test holds label.s. 6 that y_train never shows"):
        data.load_dataset(make_config(dataset="npz", npz_path=path))
    ds = data.load_dataset(make_config(dataset="npz", npz_path=path, num_classes=7))
    assert ds.num_classes == 7
    with pytest.raises(ConfigError, match=r"y_test holds label 6, beyond config.num_classes=5"):
        data.load_dataset(make_config(dataset="npz", npz_path=path, num_classes=5))


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: a["y_train"].fill(2), "y_train holds a single class .label 2."),
        (lambda a: a["y_train"].__setitem__(0, 100000), "would make 100001 classes"),
        (lambda a: a["x_val"].__setitem__((0, 0), 1e30), r"x_val reaches \|x\| = 1e\+30"),
    ],
)
def test_npz_data_wrong_in_meaning_is_a_data_error(tmp_path, change, match):
    arrays = _arrays(n_val=6, classes=3)
    change(arrays)
    assert match and re.search(match, _npz_error(tmp_path, arrays))


def _npz_error(tmp_path, arrays=None, path=None, **overrides) -> str:
    if path is None:
        path = _npz(tmp_path, arrays)
    cfg = make_config(dataset="npz", npz_path=path, **overrides)
    with pytest.raises(ConfigError) as e:
        data.load_dataset(cfg)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_npz_missing_path():
    with pytest.raises(ConfigError, match=r"config\.npz_path=''.*empty"):
        data.load_dataset(make_config(dataset="npz", npz_path=""))


def test_npz_file_not_found(tmp_path):
    path = str(tmp_path / "nope.npz")
    msg = _npz_error(tmp_path, path=path)
    assert "config.npz_path=" in msg and path in msg and "not found" in msg


def test_npz_corrupt_file(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"this is not a zip archive at all")
    msg = _npz_error(tmp_path, path=str(path))
    assert "config.npz_path=" in msg and str(path) in msg and "not a valid .npz" in msg


def test_npz_truncated_file(tmp_path):
    good = _npz(tmp_path, _arrays(n_train=200), name="good.npz")
    blob = open(good, "rb").read()
    path = tmp_path / "truncated.npz"
    path.write_bytes(blob[: len(blob) // 2])
    msg = _npz_error(tmp_path, path=str(path))
    assert str(path) in msg and "not a valid .npz" in msg


def test_npz_corrupt_member(tmp_path):
    good = _npz(tmp_path, _arrays(n_train=200), name="good.npz")
    blob = bytearray(open(good, "rb").read())
    blob[200:260] = b"\xff" * 60  # inside x_train's data: the zip directory still reads
    path = tmp_path / "crc.npz"
    path.write_bytes(bytes(blob))
    msg = _npz_error(tmp_path, path=str(path))
    assert str(path) in msg and "not a valid .npz" in msg and "'x_train'" in msg


def test_npz_single_npy_is_rejected(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((3, 2)))
    msg = _npz_error(tmp_path, path=str(path))
    assert str(path) in msg and "not an .npz archive" in msg


@pytest.mark.parametrize("key", ["x_train", "y_train", "x_test", "y_test"])
def test_npz_missing_key(tmp_path, key):
    arrays = _arrays()
    del arrays[key]
    msg = _npz_error(tmp_path, arrays)
    assert f"no key '{key}'" in msg
    assert "required keys: x_train, y_train, x_test, y_test" in msg
    assert "config.npz_path=" in msg


@pytest.mark.parametrize("present,absent", [("x_val", "y_val"), ("y_val", "x_val")])
def test_npz_val_pair_incomplete(tmp_path, present, absent):
    arrays = _arrays(n_val=5)
    del arrays[absent]
    msg = _npz_error(tmp_path, arrays)
    assert f"has key '{present}' but no key '{absent}'" in msg


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_npz_length_mismatch(tmp_path, split):
    arrays = _arrays(n_val=6)
    arrays[f"y_{split}"] = arrays[f"y_{split}"][:-1]
    msg = _npz_error(tmp_path, arrays)
    assert "length mismatch" in msg and f"'x_{split}'" in msg and f"'y_{split}'" in msg


@pytest.mark.parametrize("split", ["val", "test"])
def test_npz_feature_shapes_differ(tmp_path, split):
    arrays = _arrays(n_val=6, shape=(5,))
    n = len(arrays[f"x_{split}"])
    arrays[f"x_{split}"] = np.zeros((n, 6))
    msg = _npz_error(tmp_path, arrays)
    assert "feature shapes differ" in msg and f"'x_{split}' has (6,)" in msg and "(5,)" in msg


def test_npz_non_integer_labels(tmp_path):
    arrays = _arrays()
    arrays["y_train"] = arrays["y_train"] + 0.5
    msg = _npz_error(tmp_path, arrays)
    assert "'y_train'" in msg and "non-integer labels" in msg


def test_npz_string_labels(tmp_path):
    arrays = _arrays()
    arrays["y_test"] = np.array(["a"] * len(arrays["y_test"]))
    msg = _npz_error(tmp_path, arrays)
    assert "'y_test'" in msg and "non-integer labels" in msg


def test_npz_negative_labels(tmp_path):
    arrays = _arrays(n_val=4)
    arrays["y_val"][2] = -1
    msg = _npz_error(tmp_path, arrays)
    assert "'y_val'" in msg and "negative labels" in msg


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_npz_non_finite_features(tmp_path, bad):
    arrays = _arrays()
    arrays["x_test"][3, 1] = bad
    arrays["x_test"][4, 0] = bad
    msg = _npz_error(tmp_path, arrays)
    assert "'x_test'" in msg and "2 non-finite" in msg


def test_npz_empty_training_set(tmp_path):
    arrays = _arrays(n_train=0)
    msg = _npz_error(tmp_path, arrays)
    assert "empty training set" in msg and "'x_train'" in msg


def test_npz_features_need_an_example_axis(tmp_path):
    arrays = _arrays()
    arrays["x_train"] = arrays["x_train"][:, 0]
    msg = _npz_error(tmp_path, arrays)
    assert "'x_train'" in msg and "[N, *input_shape]" in msg


def test_npz_val_fraction_leaving_no_training_examples(tmp_path):
    arrays = _arrays(n_train=2, classes=2)
    msg = _npz_error(tmp_path, arrays, val_fraction=0.9)
    assert "config.val_fraction=0.9" in msg


# ---------------------------------------------------------------------------------------------
# config values


def test_unknown_dataset_lists_allowed():
    with pytest.raises(ConfigError) as e:
        data.load_dataset(make_config(dataset="foo"))
    assert str(e.value) == "config.dataset='foo' is unknown; allowed: digits, mnist1d, npz"


@pytest.mark.parametrize("val_fraction", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_val_fraction_outside_open_interval(val_fraction):
    with pytest.raises(ConfigError, match=r"config\.val_fraction=.*\(0, 1\)"):
        data.load_dataset(make_config(dataset="digits", val_fraction=val_fraction))


def test_negative_data_seed():
    with pytest.raises(ConfigError, match=r"config\.data_seed=-1"):
        data.load_dataset(make_config(dataset="digits", data_seed=-1))


def test_missing_config_key():
    cfg = make_config(dataset="digits")
    del cfg["data_seed"]
    with pytest.raises(ConfigError, match=r"config\.data_seed is missing"):
        data.load_dataset(cfg)


def test_repr_is_short():
    ds = data.load_dataset(make_config(dataset="digits"))
    assert repr(ds).startswith("Dataset(name='digits', input_shape=(8, 8), num_classes=10")
    assert len(repr(ds)) < 200
