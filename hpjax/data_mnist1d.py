"""MNIST-1D generated offline by the ``mnist1d`` package and cached as an ``.npz`` under
``$HPJAX_CACHE`` (default ``~/.cache/hpjax``), keyed by the package's version and default args,
so that later loads skip the 2-4 s generation and do not import the package."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import tempfile
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

_CACHE_FORMAT = 1  # bump when the cached file layout changes

log = logging.getLogger(__name__)


def cache_dir() -> str:
    """Directory for generated data: ``$HPJAX_CACHE`` if set, else ``~/.cache/hpjax``."""
    return os.path.expanduser(os.environ.get("HPJAX_CACHE") or "~/.cache/hpjax")


def _package_args() -> tuple[Any, dict[str, Any]]:
    import mnist1d.data

    args = mnist1d.data.get_dataset_args()
    return args, dict(vars(args))


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("mnist1d")
    except metadata.PackageNotFoundError:
        return "unknown"


def _key_args() -> dict[str, Any]:
    """The package's default args as the cache key reads them. They are noted in the cache
    directory the first time for each version of mnist1d, so that loading cached data does not
    import it (0.6 s, most of it scipy)."""
    version = _version()
    note = os.path.join(cache_dir(), f"mnist1d-args-{version}.json")
    if version != "unknown":
        try:
            with open(note) as f:
                return json.load(f)
        except (OSError, ValueError):
            pass
    key_args = json.loads(json.dumps(_package_args()[1], default=str))
    if version != "unknown":
        try:
            _write_atomically(note, lambda f: f.write(json.dumps(key_args).encode()))
        except OSError as e:
            log.warning("Could not note MNIST-1D's args at %s (%s)", note, e)
    return key_args


def _cache_path(arg_dict: dict[str, Any]) -> str:
    # The download URL does not affect generated data; leave it out of the key.
    key_src = {k: v for k, v in arg_dict.items() if k != "url"}
    key_src["_version"] = _version()
    key_src["_format"] = _CACHE_FORMAT
    digest = hashlib.sha256(json.dumps(key_src, sort_keys=True, default=str).encode()).hexdigest()
    return os.path.join(cache_dir(), f"mnist1d-{digest[:16]}.npz")


def _read_cache(path: str) -> tuple[np.ndarray, ...] | None:
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = tuple(np.asarray(f[k]) for k in keys)
    except FileNotFoundError:
        return None
    except Exception as e:  # any unreadable cache is regenerated, not fatal
        log.warning("Ignoring unreadable MNIST-1D cache %s (%s); regenerating", path, e)
        return None
    x_train, y_train, x_test, y_test = arrays
    if (
        x_train.ndim != 2
        or x_test.ndim != 2
        or x_train.shape[1:] != x_test.shape[1:]
        or y_train.shape != (len(x_train),)
        or y_test.shape != (len(x_test),)
    ):
        log.warning("Ignoring MNIST-1D cache %s with unexpected shapes; regenerating", path)
        return None
    return arrays


def _write_atomically(path: str, write: Callable[[BinaryIO], Any]) -> None:
    """``write(file)`` into a temporary file in ``path``'s directory, moved onto ``path``."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load() -> tuple[np.ndarray, ...]:
    """MNIST-1D with the package's default args, from the cache or generated (no download)."""
    path = _cache_path(_key_args())
    cached = _read_cache(path)
    if cached is not None:
        return cached

    import mnist1d.data

    args, _ = _package_args()

    # make_dataset reseeds the global `random` and `np.random` generators; restore them so
    # loading data has no side effect on the caller's randomness.
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        raw = mnist1d.data.make_dataset(args)
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
    arrays = {
        "x_train": np.ascontiguousarray(raw["x"], dtype=np.float32),
        "y_train": np.ascontiguousarray(raw["y"], dtype=np.int32),
        "x_test": np.ascontiguousarray(raw["x_test"], dtype=np.float32),
        "y_test": np.ascontiguousarray(raw["y_test"], dtype=np.int32),
    }
    try:
        _write_atomically(path, lambda f: np.savez(f, **arrays))
    except OSError as e:
        log.warning("Could not cache MNIST-1D at %s (%s); continuing without a cache", path, e)
    return arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"]
