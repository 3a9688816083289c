"""What data must satisfy before anything trains: real finite features of a sane scale, integer
labels, at least two classes, and no class the training set never shows. Every failure is a
:class:`~hpjax.errors.ConfigError` naming the array, so it reads as a data problem, not a
learning-rate one."""

from __future__ import annotations

import logging
import math
import mmap
import numbers
from typing import Any

import numpy as np

from hpjax.errors import ConfigError

log = logging.getLogger("hpjax.data")


def setting_count(value: Any, key: str) -> int:
    """``value`` as an integer >= 0 (``config.num_classes``; booleans are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ConfigError(f"config.{key}={value!r} must be an integer >= 0 (0: found in the data)")
    return int(value)


def setting_limit(value: Any, key: str) -> float:
    """``value`` as a finite number >= 0 (``config.max_abs_input``; 0 turns the check off)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ConfigError(f"config.{key}={value!r} must be a finite number >= 0 (0: no check)")
    return float(value)


# Rows of an array read at a time where it may be memory-mapped: checks and hashes stream.
ROWS_PER_READ = 8192


def is_memory_mapped(x: Any) -> bool:
    """Whether ``x`` is (a view of) a memory-mapped file: ``np.load(..., mmap_mode="r")``."""
    while x is not None:
        if isinstance(x, np.memmap | mmap.mmap):
            return True
        x = getattr(x, "base", None)
    return False


def row_blocks(x: np.ndarray):
    """``x`` in blocks of rows, so that a memory-mapped array is never read whole at once."""
    for start in range(0, max(len(x), 1), ROWS_PER_READ):
        yield np.asarray(x[start : start + ROWS_PER_READ])


def as_array(value: Any, key: str, where: str) -> np.ndarray:
    """``value`` as a numpy array; None, a ragged list or a non-numeric object is refused. A
    memory-mapped array stays one (nothing is read)."""
    if value is None:
        raise ConfigError(f"{where}: {key} is None; give an array")
    if isinstance(value, np.memmap):
        return value
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as error:
        raise ConfigError(
            f"{where}: {key} is not an array ({str(error).splitlines()[0][:120]}); ragged "
            "lists cannot be stacked"
        ) from None
    if array.ndim == 0 or array.dtype == object:
        raise ConfigError(
            f"{where}: {key} is not an array of numbers (a {type(value).__name__} of dtype "
            f"{array.dtype}, shape {array.shape})"
        )
    return array


def check_classes(labels: dict[str, np.ndarray | None], num_classes: int, where: str) -> int:
    """The number of classes: ``num_classes`` when given (> 0), else found in the training
    labels, with a log line. Fewer than two classes, labels beyond the classes, and labels of
    the validation or test set that the training set never shows are data errors."""
    train = np.unique(labels["y_train"])
    if len(train) < 2:
        raise ConfigError(
            f"{where}: y_train holds a single class (label {int(train[0])}); a classifier needs "
            "at least two"
        )
    found = int(train.max()) + 1
    if num_classes > 0:
        for key, y in labels.items():
            if y is not None and int(y.max()) >= num_classes:
                raise ConfigError(
                    f"{where}: {key} holds label {int(y.max())}, beyond config.num_classes="
                    f"{num_classes} (labels must be in [0, {num_classes}))"
                )
        return num_classes
    if found > 100 and found > 4 * len(train):
        raise ConfigError(
            f"{where}: the labels of y_train run up to {found - 1} but only {len(train)} distinct "
            f"values appear, which would make {found} classes; relabel them 0..{len(train) - 1} "
            "or set config.num_classes"
        )
    for key, y in labels.items():
        if y is None or key == "y_train":
            continue
        unseen = np.setdiff1d(np.unique(y), train)
        if len(unseen):
            raise ConfigError(
                f"{where}: {key} holds label(s) {', '.join(map(str, unseen[:5].tolist()))} that "
                "y_train never shows; a trial cannot learn a class it is never trained on"
            )
    log.info("%s: %d classes, found in the training labels", where, found)
    return found


def check_input_scale(inputs: dict[str, np.ndarray | None], limit: float, where: str) -> None:
    """Inputs of a magnitude no first layer survives are a data error, not a learning-rate one
    (``limit`` <= 0 turns the check off; ``config.max_abs_input``)."""
    if limit <= 0:
        return
    for key, x in inputs.items():
        if x is None:
            continue
        peak = max(float(np.max(np.abs(block), initial=0.0)) for block in row_blocks(x))
        if peak > limit:
            raise ConfigError(
                f"{where}: {key} reaches |x| = {peak:.3g}, beyond config.max_abs_input={limit:g}; "
                "standardise the inputs (e.g. (x - mean) / std) or raise the limit"
            )


def check_features(x: np.ndarray, key: str, where: str, path: str) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise ConfigError(
            f"{where}: file {path} key {key!r} has dtype {x.dtype}; need real numbers"
        )
    if is_memory_mapped(x) and x.dtype != np.float32:
        raise ConfigError(
            f"{where}: memory-mapped {key} has dtype {x.dtype}; save it as float32 "
            "(x.astype(np.float32)) so that it can stay on disk"
        )
    bad = sum(int(block.size - np.count_nonzero(np.isfinite(block))) for block in row_blocks(x))
    if bad:
        raise ConfigError(
            f"{where}: file {path} key {key!r} has {bad} non-finite feature values (NaN or inf)"
        )
    if is_memory_mapped(x):
        return x
    x32 = x.astype(np.float32)
    if not np.all(np.isfinite(x32)):
        raise ConfigError(
            f"{where}: file {path} key {key!r} has feature values beyond the float32 range"
        )
    return x32


def check_labels(y: np.ndarray, key: str, where: str, path: str) -> np.ndarray:
    rule = "labels must be integers in [0, num_classes)"
    if y.dtype.kind in "iu":
        yi = y
    elif y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ConfigError(f"{where}: file {path} key {key!r} has non-integer labels; {rule}")
        yi = y.astype(np.int64)
    else:
        raise ConfigError(
            f"{where}: file {path} key {key!r} has non-integer labels of dtype {y.dtype}; {rule}"
        )
    lo, hi = int(yi.min()), int(yi.max())
    if lo < 0:
        raise ConfigError(
            f"{where}: file {path} key {key!r} has negative labels (min {lo}); {rule}"
        )
    if hi >= np.iinfo(np.int32).max:
        raise ConfigError(f"{where}: file {path} key {key!r} has label {hi}, too large; {rule}")
    return yi.astype(np.int32)
