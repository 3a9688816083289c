"""Host-side data loading and validation: a data set as numpy arrays split into train/val/test.

Three sources, none of which downloads anything:

- ``mnist1d``: MNIST-1D generated offline by the ``mnist1d`` package (4000 train / 1000 test,
  40-dim sequences, 10 classes), cached as an ``.npz`` under ``$HPJAX_CACHE`` (default
  ``~/.cache/hpjax``) so that later loads skip the ~2-4 s generation. Values are left as generated
  (the generator already centres them and scales them to unit standard deviation).
- ``digits``: scikit-learn's 8x8 digits (shipped with the package), scaled to [0, 1]; 20% is set
  aside as a test set with a fixed seed, so the test set does not change with ``data_seed``.
- ``npz``: the user's own arrays ``x_train``, ``y_train``, ``x_test``, ``y_test`` and optionally
  ``x_val``, ``y_val``. They are validated (shapes, finite features, integer labels) but NOT
  standardised: scaling the features is the user's responsibility.

When the source has no validation set, ``val_fraction`` of the training set is carved out with a
permutation drawn from ``data_seed``; the test set is never touched, so it stays available for the
final figure. ``train_subset`` > 0 then keeps a random subset of the remaining training examples
(the guide: try RNN choices on a random subset first). Both draws are deterministic given
``data_seed`` and use independent streams, and kept examples stay in source order.

All errors a user can cause are :class:`~hpjax.errors.ConfigError` with a one-line message naming
the config key.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import logging
import numbers
import os
import zipfile
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from hpjax import data_mnist1d
from hpjax.data_checks import (
    as_array,
    check_classes,
    check_features,
    check_input_scale,
    check_labels,
    is_memory_mapped,
    row_blocks,
    setting_count,
    setting_limit,
)
from hpjax.errors import ConfigError

DATASETS = ("mnist1d", "digits", "npz")

_NPZ_REQUIRED = ("x_train", "y_train", "x_test", "y_test")
_NPZ_OPTIONAL = ("x_val", "y_val")
_DIGITS_TEST_FRACTION = 0.2
_DIGITS_TEST_SEED = 0
# Independent random streams derived from data_seed, so changing one draw never shifts another.
_VAL_STREAM = 0
_SUBSET_STREAM = 1

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A data set split into train/val/test as C-contiguous host arrays.

    x arrays are float32 ``[N, *input_shape]``; y arrays are int32 ``[N]`` with labels in
    ``[0, num_classes)``, or, for regression (``num_classes == 0``), float32 ``[N, ...]``.
    Equality is identity (arrays have no single truth value).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    # augment(key, x) -> x: applied to each trial's training micro-batch at every step, inside
    # the compiled program, with a key from the trial's seed and step (None: no augmentation)
    augment: Callable[[Any, Any], Any] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, without the leading example axis."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_train(self) -> int:
        """Number of training examples (after the validation split and any subset)."""
        return int(self.x_train.shape[0])

    @property
    def is_classification(self) -> bool:
        """Integer class labels (else real-valued regression targets)."""
        return self.num_classes > 0

    @functools.cached_property
    def fingerprint(self) -> str:
        """A hash of every array's dtype, shape and bytes: what a workdir records of its data, so
        that a rerun with other data is never answered with the old results."""
        digest = hashlib.sha256()
        for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
            array = getattr(self, name)
            digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
            for block in row_blocks(array):  # a memory-mapped set is read a block at a time
                digest.update(np.ascontiguousarray(block).tobytes())
        if self.augment is not None:
            name = getattr(self.augment, "__qualname__", type(self.augment).__name__)
            digest.update(f"augment:{getattr(self.augment, '__module__', '')}.{name}".encode())
        return digest.hexdigest()[:16]

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, train={len(self.y_train)}, "
            f"val={len(self.y_val)}, test={len(self.y_test)})"
        )


def load_dataset(config: Any) -> Dataset:
    """Load, validate and split the data set that ``config`` names.

    ``config`` needs attributes ``dataset`` (one of :data:`DATASETS`), ``val_fraction`` (in
    (0, 1); used only when the source has no validation set), ``train_subset`` (int, 0 = all
    training examples), ``data_seed`` (int >= 0) and, for ``dataset == 'npz'``, ``npz_path``.
    Raises ConfigError for a bad config value or bad data.
    """
    name = _get(config, "dataset")
    if not isinstance(name, str) or name not in DATASETS:
        raise ConfigError(
            f"config.dataset={name!r} is unknown; allowed: {', '.join(sorted(DATASETS))}"
        )
    val_fraction = _get(config, "val_fraction")
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, numbers.Real)
        or not 0.0 < float(val_fraction) < 1.0
    ):
        raise ConfigError(
            f"config.val_fraction={val_fraction!r} must be a number in the open interval (0, 1)"
        )
    train_subset = _get_int(config, "train_subset")
    if train_subset < 0:
        raise ConfigError(
            f"config.train_subset={train_subset} is negative; use 0 for all training examples "
            "or a positive size"
        )
    data_seed = _get_int(config, "data_seed")
    if data_seed < 0:
        raise ConfigError(f"config.data_seed={data_seed} is negative; use an integer >= 0")

    if name == "mnist1d":
        x_train, y_train, x_test, y_test = data_mnist1d.load()
        x_val = y_val = None
    elif name == "digits":
        x_train, y_train, x_test, y_test = _load_digits()
        x_val = y_val = None
    else:
        x_train, y_train, x_val, y_val, x_test, y_test = _load_npz(_get_npz_path(config))

    where = f"dataset {name!r}" + (f" ({_get_npz_path(config)})" if name == "npz" else "")
    num_classes = check_classes(
        {"y_train": y_train, "y_val": y_val, "y_test": y_test},
        setting_count(getattr(config, "num_classes", 0), "num_classes"),
        where,
    )
    check_input_scale(
        {"x_train": x_train, "x_val": x_val, "x_test": x_test},
        setting_limit(getattr(config, "max_abs_input", 1e6), "max_abs_input"),
        where,
    )

    if x_val is None:
        x_train, y_train, x_val, y_val = _carve_validation(
            x_train, y_train, float(val_fraction), data_seed
        )

    if train_subset > 0:
        available = len(y_train)
        if train_subset > available:
            raise ConfigError(
                f"config.train_subset={train_subset} asks for {train_subset} training examples "
                f"but only {available} are available after the validation split"
            )
        keep = np.sort(
            _rng(data_seed, _SUBSET_STREAM).choice(available, size=train_subset, replace=False)
        )
        x_train, y_train = x_train[keep], y_train[keep]

    return Dataset(
        name=name,
        x_train=_as_x(x_train),
        y_train=_as_y(y_train),
        x_val=_as_x(x_val),
        y_val=_as_y(y_val),
        x_test=_as_x(x_test),
        y_test=_as_y(y_test),
        num_classes=num_classes,
    )


def _carve_validation(x, y, val_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """A random ``val_fraction`` of the training set as the validation set (sorted indices)."""
    n = len(y)
    n_val = int(round(val_fraction * n))
    if not 0 < n_val < n:
        raise ConfigError(
            f"config.val_fraction={val_fraction!r} leaves {n_val} of {n} training examples "
            "for validation; need at least one for each of validation and training"
        )
    perm = _rng(seed, _VAL_STREAM).permutation(n)
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]


def _checked_arrays(arrays: dict, task: str, where: str, source: str) -> dict[str, np.ndarray]:
    """Every array of :func:`from_arrays` checked (shapes, labels, values) and its splits'
    lengths and feature shapes against each other."""
    checked: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        value = as_array(value, key, where)
        if len(value) == 0:
            raise ConfigError(f"{where}: {key} is empty")
        if key.startswith("x"):
            if value.ndim < 2:
                raise ConfigError(f"{where}: {key} has shape {value.shape}; need [N, *input_shape]")
            checked[key] = check_features(value, key, where, source)
        elif task == "classification":
            if value.ndim != 1:
                raise ConfigError(f"{where}: {key} has shape {value.shape}; labels need [N]")
            checked[key] = check_labels(value, key, where, source)
        else:
            checked[key] = check_features(value, key, where, source)
    for split in ("train", "val", "test"):
        if f"x_{split}" in checked and len(checked[f"x_{split}"]) != len(checked[f"y_{split}"]):
            raise ConfigError(
                f"{where}: x_{split} has {len(checked[f'x_{split}'])} rows but y_{split} has "
                f"{len(checked[f'y_{split}'])}"
            )
        if (
            f"x_{split}" in checked
            and checked[f"x_{split}"].shape[1:] != checked["x_train"].shape[1:]
        ):
            raise ConfigError(f"{where}: x_{split} and x_train differ in their feature shape")
    return checked


def from_arrays(
    x_train,
    y_train,
    x_test,
    y_test,
    x_val=None,
    y_val=None,
    *,
    task: str = "classification",
    name: str = "arrays",
    val_fraction: float = 0.1,
    seed: int = 0,
    num_classes: int = 0,
    max_abs_input: float = 1e6,
    augment: Callable[[Any, Any], Any] | None = None,
) -> Dataset:
    """A :class:`Dataset` of your own numpy (or jax) arrays, checked like an ``.npz`` file.

    ``task='classification'``: ``y`` holds integer labels ``[N]`` (``num_classes`` = largest
    label + 1); ``task='regression'``: ``y`` holds real targets ``[N, ...]``. Without
    ``x_val``/``y_val``, a random ``val_fraction`` of the training set becomes the validation
    set (``seed`` picks it). ``num_classes`` and ``max_abs_input`` act as the config keys of the
    same names. ``augment(key, x) -> x`` transforms each training micro-batch ``x``
    (``[B, *input_shape]``) of every trial at every step, inside the compiled program (e.g.
    random shifts and noise); it must keep the shape. Raises :class:`ConfigError` naming the bad
    array.
    """
    if augment is not None and not callable(augment):
        raise ConfigError(f"augment must be a function (key, x) -> x; got {type(augment).__name__}")
    if task not in ("classification", "regression"):
        raise ConfigError(f"task={task!r} is unknown; allowed: classification, regression")
    if (x_val is None) != (y_val is None):
        raise ConfigError("from_arrays: give both x_val and y_val, or neither")
    where, source = "from_arrays", name
    num_classes = setting_count(num_classes, "num_classes")
    max_abs_input = setting_limit(max_abs_input, "max_abs_input")
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    if x_val is not None:
        arrays |= {"x_val": x_val, "y_val": y_val}
    checked = _checked_arrays(arrays, task, where, source)
    where = f"data {name!r}"
    check_input_scale({k: v for k, v in checked.items() if k.startswith("x")}, max_abs_input, where)
    if task == "classification":
        labels = {k: checked.get(k) for k in ("y_train", "y_val", "y_test")}
        num_classes = check_classes(labels, int(num_classes), where)
    x_tr, y_tr = checked["x_train"], checked["y_train"]
    if "x_val" in checked:
        x_v, y_v = checked["x_val"], checked["y_val"]
    elif is_memory_mapped(x_tr):
        raise ConfigError(
            f"{where}: a memory-mapped x_train needs x_val and y_val (carving a random "
            "validation split out of it would read it whole)"
        )
    else:
        x_tr, y_tr, x_v, y_v = _carve_validation(x_tr, y_tr, float(val_fraction), int(seed))
    as_y = _as_y if task == "classification" else _as_x
    return Dataset(
        name=name,
        x_train=_as_x(x_tr),
        y_train=as_y(y_tr),
        x_val=_as_x(x_v),
        y_val=as_y(y_v),
        x_test=_as_x(checked["x_test"]),
        y_test=as_y(checked["y_test"]),
        num_classes=num_classes if task == "classification" else 0,
        augment=augment,
    )


# --------------------------------------------------------------------------------------------
# Config access


def _get(config: Any, key: str) -> Any:
    try:
        return getattr(config, key)
    except (AttributeError, KeyError):
        raise ConfigError(f"config.{key} is missing; the data loader needs it") from None


def _get_int(config: Any, key: str) -> int:
    value = _get(config, key)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"config.{key}={value!r} must be an integer")
    return int(value)


def _get_npz_path(config: Any) -> str:
    path = getattr(config, "npz_path", None)
    if not path:
        raise ConfigError(
            f"config.npz_path={path!r} is empty; config.dataset='npz' needs the path of an .npz "
            "file"
        )
    if not isinstance(path, str | os.PathLike):
        raise ConfigError(f"config.npz_path={path!r} must be a path string")
    return os.fspath(path)


def _rng(data_seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([data_seed, stream])


def _as_x(x: np.ndarray) -> np.ndarray:
    if is_memory_mapped(x) and x.dtype == np.float32 and x.flags.c_contiguous:
        return x  # stays on disk: its batches are gathered on the host (hpjax.engine.host_data)
    return np.ascontiguousarray(x, dtype=np.float32)


def _as_y(y: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(y, dtype=np.int32)


# --------------------------------------------------------------------------------------------
# scikit-learn digits


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (pixels ``[1797, 64]`` in 0..16, labels), read from the file
    scikit-learn ships without importing it (1.1 s of imports against 0.02 s)."""
    package = os.path.dirname(importlib.util.find_spec("sklearn").origin)
    rows = np.loadtxt(os.path.join(package, "datasets", "data", "digits.csv.gz"), delimiter=",")
    return rows[:, :-1], rows[:, -1].astype(int)


def _load_digits() -> tuple[np.ndarray, ...]:
    """8x8 digits scaled to [0, 1], with a fixed-seed 20% test split independent of data_seed."""
    pixels, labels = digits_arrays()
    x = np.asarray(pixels, dtype=np.float32).reshape(-1, 8, 8) / np.float32(16.0)
    y = np.asarray(labels, dtype=np.int32)
    n = len(y)
    n_test = int(round(_DIGITS_TEST_FRACTION * n))
    perm = np.random.default_rng(_DIGITS_TEST_SEED).permutation(n)
    test_idx, train_idx = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


# --------------------------------------------------------------------------------------------
# User .npz files


def _load_npz(path: str) -> tuple[np.ndarray | None, ...]:
    """Read and validate a user .npz; returns x/y for train, val (or None), test."""
    where = f"config.npz_path={path!r}"
    if not os.path.exists(path):
        raise ConfigError(f"{where}: file {path} not found")
    if os.path.isdir(path):
        raise ConfigError(f"{where}: {path} is a directory, not an .npz file")
    required = ", ".join(_NPZ_REQUIRED)
    bad_file = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
    try:
        loaded = np.load(path, allow_pickle=False)
    except bad_file as e:
        raise ConfigError(f"{where}: {path} is not a valid .npz file ({_one_line(e)})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ConfigError(
            f"{where}: {path} is a single .npy array, not an .npz archive with keys {required}"
        )
    arrays: dict[str, np.ndarray] = {}
    with loaded:
        present = set(loaded.files)
        for key in _NPZ_REQUIRED:
            if key not in present:
                raise ConfigError(
                    f"{where}: file {path} has no key {key!r}; required keys: {required} "
                    f"(optional pair: x_val, y_val); found: {', '.join(sorted(present)) or 'none'}"
                )
        has_val = [k in present for k in _NPZ_OPTIONAL]
        if any(has_val) and not all(has_val):
            have, lack = _NPZ_OPTIONAL if has_val[0] else _NPZ_OPTIONAL[::-1]
            raise ConfigError(
                f"{where}: file {path} has key {have!r} but no key {lack!r}; give both "
                "x_val and y_val or neither"
            )
        keys = _NPZ_REQUIRED + (_NPZ_OPTIONAL if all(has_val) else ())
        for key in keys:
            try:
                arrays[key] = np.asarray(loaded[key])
            except bad_file as e:
                raise ConfigError(
                    f"{where}: {path} is not a valid .npz file; key {key!r} is unreadable "
                    f"({_one_line(e)})"
                ) from None

    arrays = _validated_npz_splits(arrays, where, path)
    return (
        arrays["x_train"],
        arrays["y_train"],
        arrays.get("x_val"),
        arrays.get("y_val"),
        arrays["x_test"],
        arrays["y_test"],
    )


def _validated_npz_splits(
    arrays: dict[str, np.ndarray], where: str, path: str
) -> dict[str, np.ndarray]:
    """Check each split's shapes, row counts and feature shape (against train), then its features
    and labels; returns the checked arrays under the same keys."""
    checked: dict[str, np.ndarray] = {}
    splits = ["train"] + (["val"] if "x_val" in arrays else []) + ["test"]
    feature_shape = None
    for split in splits:
        xk, yk = f"x_{split}", f"y_{split}"
        x, y = arrays[xk], arrays[yk]
        if x.ndim < 2:
            raise ConfigError(
                f"{where}: file {path} key {xk!r} has shape {x.shape}; need [N, *input_shape] "
                "with at least one feature axis"
            )
        if y.ndim != 1:
            raise ConfigError(f"{where}: file {path} key {yk!r} has shape {y.shape}; need [N]")
        if len(x) != len(y):
            raise ConfigError(
                f"{where}: file {path} length mismatch: {xk!r} has {len(x)} rows but {yk!r} "
                f"has {len(y)}"
            )
        if len(x) == 0:
            what = "empty training set" if split == "train" else f"empty {split} set"
            raise ConfigError(f"{where}: file {path} has an {what} ({xk!r} has 0 rows)")
        if feature_shape is None:
            feature_shape = x.shape[1:]
        elif x.shape[1:] != feature_shape:
            raise ConfigError(
                f"{where}: file {path} feature shapes differ: {xk!r} has {x.shape[1:]} but "
                f"'x_train' has {feature_shape}"
            )
        checked[xk] = check_features(x, xk, where, path)
        checked[yk] = check_labels(y, yk, where, path)
    return checked


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
