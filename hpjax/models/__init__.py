"""Built-in Flax NNX models (MLP, CNN, LSTM/GRU) and how a user's own module plugs in.

Every population trains a :class:`Model`: pure ``init``/``apply`` functions of a parameter
pytree. :func:`build_model` makes one of a built-in model from ``config.model``;
:func:`from_factory` makes one of any ``flax.nnx.Module`` factory ``make(rngs)``.

The config-driven names (``build_model`` and its helpers, which need ml-collections) load on
first use, so that the engine imports without ml-collections.
"""

import importlib

from hpjax.models.model import ABSTRACT_KEY, Model, TrialDropout, from_factory

_REGISTRY = ("build_model", "default_model_config", "validate_model_config")
__all__ = [
    "ABSTRACT_KEY",
    "Model",
    "TrialDropout",
    "build_model",
    "default_model_config",
    "from_factory",
    "validate_model_config",
]


def __getattr__(name: str):
    if name not in _REGISTRY:
        raise AttributeError(f"module 'hpjax.models' has no attribute {name!r}")
    return getattr(importlib.import_module("hpjax.models.registry"), name)
