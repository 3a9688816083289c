"""A model as pure functions of its parameters, made from any ``flax.nnx.Module`` factory.

A population of trials needs models as pure functions it can ``jax.vmap`` over a leading trial
axis, so :func:`from_factory` wraps a factory ``make(rngs) -> nnx.Module`` into a :class:`Model`
with

- ``init(key) -> params``: a pure nested dict of arrays (``nnx.to_pure_dict`` of the module's
  ``nnx.Param`` state; lists of layers have integer keys),
- ``apply(params, x) -> outputs``: ``x`` is ``[B, *input_shape]``,
- ``module(params) -> nnx.Module``: a ready-to-use stateful module, e.g. after restoring a
  checkpoint.

The graph definition is found once with ``nnx.eval_shape`` (no arrays are allocated), and
``apply`` rebuilds the module from it inside the traced function, so both functions work under
``jax.jit`` and ``jax.vmap``. The module's only state must be its parameters (no BatchNorm
statistics, no stored RNG streams).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from hpjax.errors import ConfigError


def check_input(x: jax.Array, input_shape: tuple[int, ...], model: str) -> jax.Array:
    """Checks that ``x`` is ``[B, *input_shape]`` and casts it to float32."""
    if x.ndim != len(input_shape) + 1 or tuple(x.shape[1:]) != input_shape:
        raise ConfigError(
            f"model {model!r} was built for inputs of shape [B, *{input_shape}]; got x of shape "
            f"{tuple(x.shape)}"
        )
    return jnp.asarray(x, jnp.float32)


@dataclasses.dataclass(frozen=True)
class Model:
    """A model as pure functions of its parameters; see the module docstring."""

    name: str
    init: Callable[[jax.Array], dict]
    apply: Callable[[dict, jax.Array], jax.Array]
    module: Callable[[dict], nnx.Module]
    num_params: int
    structure: str = ""  # a hash of the parameter tree (paths and shapes): the model's identity


def from_factory(
    make: Callable[..., nnx.Module],
    name: str = "model",
    architecture: tuple[tuple[str, Any], ...] = (),
) -> Model:
    """The functional form of the modules ``make(rngs, **architecture)`` builds (``rngs`` seeds
    the params; ``architecture`` holds keyword arguments such as a width, swept by a study).

    The same factory and architecture give the same :class:`Model`, so the populations of
    several studies (the rounds of a search) that share their static structure share one
    compilation.
    """
    key = (make, name, tuple(architecture))
    if key not in _MADE:
        bound = make if not architecture else functools.partial(_call, make, dict(architecture))
        _MADE[key] = _functional(bound, name)
    return _MADE[key]


def _call(make: Callable[..., nnx.Module], architecture: dict, rngs: nnx.Rngs) -> nnx.Module:
    return make(rngs, **architecture)


_MADE: dict[tuple, Model] = {}


def _functional(make: Callable[[nnx.Rngs], nnx.Module], name: str) -> Model:
    try:
        abstract = nnx.eval_shape(lambda: make(nnx.Rngs(0)))
    except ConfigError:
        raise
    except Exception as error:  # a user factory that cannot be built: say so in one line
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise ConfigError(
            f"model factory {name!r} failed to build a module: {type(error).__name__}: {first_line}"
        ) from error
    if not isinstance(abstract, nnx.Module):
        raise ConfigError(
            f"model factory {name!r} must return a flax.nnx.Module; got {type(abstract).__name__}"
        )
    graphdef, abstract_params, rest = nnx.split(abstract, nnx.Param, ...)
    if jax.tree.leaves(rest):  # a module with state besides its params breaks the pure form
        raise ConfigError(
            f"model {name!r} has state besides its parameters ({type(abstract).__name__}); "
            "a population trains modules whose only state is nnx.Param"
        )
    flat_abstract = {
        tuple(str(k) for k in path): v.shape for path, v in nnx.to_flat_state(abstract_params)
    }
    num_params = sum(math.prod(s) for s in flat_abstract.values())

    def init(key: jax.Array) -> dict:
        return nnx.to_pure_dict(nnx.state(make(nnx.Rngs(params=key)), nnx.Param))

    def module(params: dict) -> nnx.Module:
        flat = {
            tuple(str(k) for k in path): jnp.shape(v)
            for path, v in nnx.traversals.flatten_mapping(params).items()
        }
        if flat != flat_abstract:
            missing = sorted(set(flat_abstract) - set(flat))
            extra = sorted(set(flat) - set(flat_abstract))
            wrong = sorted(k for k in set(flat) & set(flat_abstract) if flat[k] != flat_abstract[k])
            raise ValueError(
                f"params do not match model {name!r}: missing {missing}, unexpected {extra}, "
                f"wrong shape {[(k, flat[k], flat_abstract[k]) for k in wrong]}"
            )
        state = jax.tree.map(lambda v: v, abstract_params)  # a fresh copy to fill in
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(graphdef, state)

    def apply(params: dict, x: jax.Array) -> jax.Array:
        return module(params)(x)

    # jit makes direct (eager) calls fast; nested inside the engine's own jit/vmap it is inlined.
    structure = hashlib.sha256(repr(sorted(flat_abstract.items())).encode()).hexdigest()[:16]
    return Model(
        name=name,
        init=jax.jit(init),
        apply=jax.jit(apply),
        module=module,
        num_params=num_params,
        structure=structure,
    )
