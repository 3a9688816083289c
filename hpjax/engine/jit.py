"""``jax.jit`` that compiles faster on the CPU and computes the same bits.

XLA:CPU spends most of its compile time in LLVM optimising the loop fusions it generates (the
threefry fusions of parameter initialisation most of all), while a training step spends its
time in matmul kernels of libraries (YNNPACK, Eigen) that LLVM does not compile. LLVM at level
1 instead of 3 compiled the reference recipe's (8 MLPs) initialisation in 0.37 s instead of
0.86 s and its training program in 1.27 s instead of 1.92 s; the programs ran as fast and gave
the same bits, for the GRU and the CNN too (``python tools/bench_compile.py``). On other
backends the defaults stay: their generated kernels are where their time goes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

from hpjax.engine import program_cache

CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


class BackendJit:
    """``jax.jit(fun, **kwargs)``, with :data:`CPU_COMPILER_OPTIONS` when JAX's default backend
    is the CPU (decided at each call, as the backend is only known once JAX has started), and
    through :mod:`hpjax.engine.program_cache` where a call can be cached."""

    def __init__(self, fun: Callable, **kwargs: Any):
        self.default = jax.jit(fun, **kwargs)
        self.cpu = jax.jit(fun, compiler_options=CPU_COMPILER_OPTIONS, **kwargs)
        self.fun = fun
        self.static_argnums = _as_tuple(kwargs.get("static_argnums", ()))
        self.donate_argnums = _as_tuple(kwargs.get("donate_argnums", ()))
        self.cacheable = not set(kwargs) - {"static_argnums", "donate_argnums"}
        functools.update_wrapper(self, fun)

    def _for_backend(self):
        return self.cpu if jax.default_backend() == "cpu" else self.default

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.cacheable and not kwargs:
            options = CPU_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
            cached, result = program_cache.call(
                self.fun, args, self.static_argnums, self.donate_argnums, options
            )
            if cached:
                return result
        return self._for_backend()(*args, **kwargs)

    def lower(self, *args: Any, **kwargs: Any) -> Any:
        return self._for_backend().lower(*args, **kwargs)


def _as_tuple(argnums: int | tuple[int, ...]) -> tuple[int, ...]:
    return (argnums,) if isinstance(argnums, int) else tuple(argnums)


def jit(fun: Callable | None = None, **kwargs: Any) -> Any:
    """:class:`BackendJit` of ``fun``; ``jit(**kwargs)`` alone is a decorator, like ``jax.jit``."""
    if fun is None:
        return functools.partial(BackendJit, **kwargs)
    return BackendJit(fun, **kwargs)
