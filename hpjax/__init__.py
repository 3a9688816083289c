"""hpjax: hyperparameter studies as vmapped populations of trials in one compiled JAX program.

The Python API (see :mod:`hpjax.api`): :func:`train` your own ``flax.nnx`` model factory on
:func:`from_arrays` data with a built-in or own :class:`Task`; :func:`restore_best` a trial at
its early-stop point.
"""

from hpjax.api import train
from hpjax.data import Dataset, from_arrays
from hpjax.engine.tasks import CLASSIFICATION, REGRESSION, Task
from hpjax.errors import ConfigError
from hpjax.results.checkpoints import restore_best

__all__ = [
    "CLASSIFICATION",
    "REGRESSION",
    "ConfigError",
    "Dataset",
    "Task",
    "from_arrays",
    "restore_best",
    "train",
]
