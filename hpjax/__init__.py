"""hpjax: hyperparameter studies as vmapped populations of trials in one compiled JAX program.

The Python API (see :mod:`hpjax.api`): :func:`train` your own ``flax.nnx`` model factory on
:func:`from_arrays` data (over a space of :func:`loguniform`, :func:`uniform` and :func:`choice`
dimensions, or a grid) and get a :class:`Study` back: its rows, its ``best`` trial, and
``restore(trial)``; :func:`restore_best` restores a trial of any workdir at its early-stop
point. :class:`TrialDropout` is a dropout layer whose rate is each trial's ``dropout``.

These names load on first use, so that ``hpjax.engine`` and the model classes import where only
jax, flax and optax are installed (a GPU machine running ``tools/bench_gpu.py``).
"""

import importlib

_EXPORTS = {
    "train": "hpjax.api",
    "search": "hpjax.api",
    "Study": "hpjax.results.study",
    "loguniform": "hpjax.study.space",
    "uniform": "hpjax.study.space",
    "choice": "hpjax.study.space",
    "Dataset": "hpjax.data",
    "from_arrays": "hpjax.data",
    "CLASSIFICATION": "hpjax.engine.tasks",
    "REGRESSION": "hpjax.engine.tasks",
    "Task": "hpjax.engine.tasks",
    "ConfigError": "hpjax.errors",
    "restore_best": "hpjax.results.checkpoints",
    "replay": "hpjax.studies.replay.run",
    "TrialDropout": "hpjax.models.model",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hpjax' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
