"""Traced programs kept on disk, so that a study run again skips tracing as well as compiling.

JAX's persistent compilation cache (:mod:`hpjax.runtime`) keeps compiled executables keyed by
the lowered program, so a rerun still traces and lowers every program in Python before it can
look one up. This cache keeps each program of the engine as ``jax.export`` serialises it
(StableHLO, with the structure of its inputs and outputs), under a key of everything that shapes
it:

- hpjax's own source (a digest of every ``.py`` file of the package) and the versions of jax,
  jaxlib, flax and optax;
- the function and its static arguments, described field by field: a built-in model by its
  recipe (its complete, validated keys and shapes), a task, an augmentation or any other
  function by its import path, which must be hpjax's own (its code is in the source digest),
  an optimizer by its name, which must be a built-in or optax's (its version is in the key);
- the structure, shapes, dtypes and weak types of the other arguments;
- the backend, the kind of device, the donated arguments and the compiler options.

A program whose static arguments cannot be described so (a model, a loss or an optimizer factory
of your own: hpjax cannot fingerprint your code), whose arguments live on several devices, or
that ``jax.export`` cannot serialise is traced as before. A program loaded from the cache is the
same StableHLO compiled with the same options, so it computes the same bits
(``tests/test_program_cache.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import os
import pickle
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jaxlib
import numpy as np
import optax
from jax import export

from hpjax.models.model import Model

MAX_BYTES = 2**29  # beyond it the least recently used programs are dropped
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_state: dict[str, Any] = {"directory": "", "source": ""}
_programs: dict[str, tuple[Callable, Any]] = {}  # key -> (compiled call, output structure)
_refused: set[str] = set()  # keys jax.export could not serialise: traced as before
_descriptions: dict[tuple, str] = {}  # static arguments -> describe() of them
_kept_bytes: dict[str, int] = {}  # directory -> the bytes it holds, counted at a first write
counts = {"hits": 0, "loads": 0, "exports": 0}  # in this process: memory, disk, traced


class Uncacheable(Exception):
    """A static argument or an input the key cannot describe."""


def use_directory(directory: str) -> None:
    """Keeps programs in ``directory`` ("" = off; a URL such as ``gs://`` is off too: only a
    local directory); programs already in memory stay."""
    local = directory and "://" not in directory
    _state["directory"] = os.path.expanduser(directory) if local else ""


def directory() -> str:
    return _state["directory"]


def source_digest() -> str:
    """A digest of every ``.py`` file of hpjax (paths and contents), once per process."""
    if not _state["source"]:
        digest = hashlib.sha256()
        for root, dirs, names in os.walk(_PACKAGE):
            dirs.sort()
            for name in sorted(n for n in names if n.endswith(".py")):
                path = os.path.join(root, name)
                digest.update(os.path.relpath(path, _PACKAGE).encode())
                with open(path, "rb") as f:
                    digest.update(f.read())
        _state["source"] = digest.hexdigest()
    return _state["source"]


def versions() -> str:
    """What besides the key's arguments decides a program: the libraries and hpjax's source."""
    libraries = (jax.__version__, jaxlib.__version__, flax.__version__, optax.__version__)
    return " ".join((*libraries, source_digest()))


def describe(value: Any) -> str:
    """A stable description of a static argument, or :class:`Uncacheable`."""
    if value is None or isinstance(value, bool | int | float | str):
        return repr(value)
    if isinstance(value, np.generic):
        return f"{value.dtype}:{value!r}"
    if isinstance(value, tuple | list):
        return "(" + ",".join(describe(v) for v in value) + ")"
    if isinstance(value, dict):
        items = sorted((describe(k), describe(v)) for k, v in value.items())
        return "{" + ",".join(f"{k}:{v}" for k, v in items) + "}"
    if isinstance(value, Model):
        if not value.recipe:
            raise Uncacheable(f"model {value.name!r} is not a built-in")
        return f"Model({value.recipe})"
    if isinstance(value, functools.partial):
        return f"partial({describe(value.func)},{describe(value.args)},{describe(value.keywords)})"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if not type(value).__module__.startswith("hpjax."):  # its code is not in the digest
            raise Uncacheable(f"{type(value).__qualname__} is not hpjax's")
        factory = getattr(value, "optimizer", None)  # an import path: its code is not hashed
        if isinstance(factory, str) and "." in factory and not factory.startswith("optax."):
            raise Uncacheable(f"optimizer factory {factory!r} is not optax's")
        fields = ",".join(
            f"{f.name}={describe(getattr(value, f.name))}" for f in dataclasses.fields(value)
        )
        return f"{type(value).__module__}.{type(value).__qualname__}({fields})"
    if callable(value) and not inspect.ismethod(value):
        module, name = getattr(value, "__module__", "") or "", getattr(value, "__qualname__", "")
        if module.startswith("hpjax.") and name and "<" not in name:
            return f"{module}.{name}"
    raise Uncacheable(f"{type(value).__name__} {value!r}")


def _described(static: tuple[Any, ...]) -> str:
    """:func:`describe` of a call's static arguments, once per distinct tuple of them (they are
    hashable, as ``jax.jit`` needs them to be): a study calls each program many times."""
    if static not in _descriptions:
        _descriptions[static] = describe(static)
    return _descriptions[static]


def _describe_input(leaf: Any) -> str:
    if isinstance(leaf, jax.core.Tracer):
        raise Uncacheable("a call inside a traced function (it is inlined there)")
    if isinstance(leaf, jax.Array):
        if len(leaf.sharding.device_set) > 1:
            raise Uncacheable("an input on several devices")
        return f"{leaf.shape}{leaf.dtype}{'w' if leaf.weak_type else ''}"
    if isinstance(leaf, np.ndarray | np.generic):
        return f"{leaf.shape}{leaf.dtype}"
    raise Uncacheable(f"an input of type {type(leaf).__name__}")


# JAX settings that change what a function traces to (jax.jit's own cache keys on them too)
TRACING_FLAGS = (
    "jax_enable_x64",
    "jax_default_matmul_precision",
    "jax_threefry_partitionable",
    "jax_default_prng_impl",
    "jax_numpy_rank_promotion",
    "jax_numpy_dtype_promotion",
)


def key_of(
    name: str,
    static: Sequence[Any],
    leaves: Sequence[Any],
    in_tree: Any,
    donated: Sequence[int],
    compiler_options: dict[str, Any] | None,
) -> str:
    """The cache key of one call (see the module docstring); :class:`Uncacheable` if none."""
    device = jax.devices()[0]
    parts = [
        versions(),
        name,
        _described(tuple(static)),
        str(in_tree),
        ";".join(_describe_input(leaf) for leaf in leaves),
        f"{jax.default_backend()}:{device.device_kind}",
        repr(tuple(donated)),
        describe(compiler_options or {}),
        ";".join(f"{flag}={getattr(jax.config, flag, None)}" for flag in TRACING_FLAGS),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _as_spec(leaf: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(
        np.shape(leaf), leaf.dtype, weak_type=bool(getattr(leaf, "weak_type", False))
    )


def _runnable(exported: export.Exported, donated: Sequence[int], options) -> Callable:
    return jax.jit(exported.call, donate_argnums=tuple(donated), compiler_options=options)


def _load(path: str, donated: Sequence[int], options) -> tuple[Callable, Any] | None:
    """The runnable program and output structure kept at ``path``; None when it is absent or
    cannot be read (written by another version, cut short, damaged: then it is removed)."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            serialized, out_tree = pickle.load(f)
        return _runnable(export.deserialize(bytearray(serialized)), donated, options), out_tree
    except Exception:  # noqa: BLE001 (a damaged file fails in many ways: trace it again)
        with contextlib.suppress(OSError):
            os.remove(path)
        return None


def _write(path: str, entry: tuple[bytes, Any]) -> None:
    """Writes atomically (a reader sees the whole entry or none), then evicts. A directory that
    cannot be written (read-only, full) only means the program is traced again next time."""
    temporary = ""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(handle, "wb") as f:
            pickle.dump(entry, f)
        os.replace(temporary, path)
    except (OSError, pickle.PicklingError):
        with contextlib.suppress(OSError):
            if temporary:
                os.remove(temporary)
        return
    root = os.path.dirname(os.path.dirname(path))
    if root in _kept_bytes:
        with contextlib.suppress(OSError):  # another process's eviction may have removed it
            _kept_bytes[root] += os.path.getsize(path)
    if root not in _kept_bytes or _kept_bytes[root] > MAX_BYTES:
        _kept_bytes[root] = _evict(root)


def _evict(root: str) -> int:
    """Drops the least recently used programs (by modification time: a load touches its file)
    while the directory holds more than :data:`MAX_BYTES`; returns the bytes it keeps. Run at
    a process's first write and whenever its writes take the total past the limit."""
    stats = []
    for folder in os.scandir(root):
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder.path):
            try:
                stat = entry.stat()
            except OSError:  # removed by another process meanwhile
                continue
            if entry.name.endswith(".program"):
                stats.append((stat.st_mtime, stat.st_size, entry.path))
            elif entry.name.endswith(".tmp") and time.time() - stat.st_mtime > 3600:
                with contextlib.suppress(OSError):  # left by a process that died writing
                    os.remove(entry.path)
    stats.sort(reverse=True)
    total = 0
    for _, size, path in stats:
        if total + size > MAX_BYTES:
            with contextlib.suppress(OSError):
                os.remove(path)
        else:
            total += size
    return total


def call(
    fun: Callable,
    args: tuple[Any, ...],
    static_argnums: Sequence[int],
    donate_argnums: Sequence[int],
    compiler_options: dict[str, Any] | None,
) -> tuple[bool, Any]:
    """``(True, fun(*args))`` through the cache, or ``(False, None)`` when this call cannot be
    cached (the caller then runs its own ``jax.jit``)."""
    if not _state["directory"]:
        return False, None
    static = [args[i] for i in static_argnums]
    dynamic = tuple(a for i, a in enumerate(args) if i not in static_argnums)
    positions = [i for i in range(len(args)) if i not in static_argnums]
    leaves, in_tree = jax.tree.flatten(dynamic)
    donated, start = [], 0
    for position, arg in zip(positions, dynamic, strict=True):
        count = len(jax.tree.leaves(arg))
        if position in donate_argnums:
            donated.extend(range(start, start + count))
        start += count
    name = f"{fun.__module__}.{fun.__qualname__}"
    try:
        key = key_of(name, static, leaves, in_tree, donated, compiler_options)
    except Uncacheable:
        return False, None
    if key in _refused:
        return False, None
    if key in _programs:
        counts["hits"] += 1
    else:
        path = os.path.join(_state["directory"], key[:2], key + ".program")
        loaded = _load(path, donated, compiler_options)
        if loaded is None:
            traced = _export(fun, args, static_argnums, in_tree, leaves)
            if traced is None:
                _refused.add(key)
                return False, None
            exported, serialized, out_tree = traced
            _write(path, (serialized, out_tree))
            counts["exports"] += 1
            loaded = _runnable(exported, donated, compiler_options), out_tree
        else:
            counts["loads"] += 1
            with contextlib.suppress(OSError):
                os.utime(path)  # recently used
        _programs[key] = loaded
    runnable, out_tree = _programs[key]
    return True, jax.tree.unflatten(out_tree, runnable(*leaves))


def _export(fun, args, static_argnums, in_tree, leaves) -> tuple[Any, bytes, Any] | None:
    """The program traced once: exported, serialised, and its output structure; None if
    ``jax.export`` cannot export or serialise it (a host callback, an effect)."""
    out_tree: list[Any] = []

    def flat(*flat_leaves):
        dynamic = iter(jax.tree.unflatten(in_tree, flat_leaves))
        full = [args[i] if i in static_argnums else next(dynamic) for i in range(len(args))]
        out_leaves, tree = jax.tree.flatten(fun(*full))
        out_tree.append(tree)
        return out_leaves

    try:
        exported = export.export(jax.jit(flat))(*(_as_spec(leaf) for leaf in leaves))
        return exported, bytes(exported.serialize()), out_tree[0]
    except Exception:  # noqa: BLE001 (what jax.export cannot serialise: trace it every run)
        return None
