"""A model as pure functions of its variables, made from any ``flax.nnx.Module`` factory.

A population of trials needs models as pure functions it can ``jax.vmap`` over a leading trial
axis, so :func:`from_factory` wraps a factory ``make(rngs) -> nnx.Module`` into a :class:`Model`
with

- ``init(key) -> variables``: a pure nested dict of arrays (``nnx.to_pure_dict``; lists of
  layers have integer keys). For a module whose only state is ``nnx.Param`` these are its
  parameters; for one with more (``nnx.BatchStat``, dropout streams, :class:`TrialDropout`) they
  are ``{"params": ..., "state": ...}``, the state being every variable that is neither a
  parameter nor a random stream (batch statistics);
- ``apply(variables, x) -> outputs`` in evaluation mode (running statistics, no dropout),
  ``x`` being ``[B, *input_shape]``;
- ``train_apply(variables, x, key, dropout) -> (outputs, variables)`` in training mode: every
  random stream of the module (``nnx.Dropout``'s, or any ``nnx.Rngs`` it kept) is drawn from
  ``key``, every :class:`TrialDropout` drops at the rate ``dropout``, and the returned variables
  hold the updated batch statistics;
- ``trainable(variables)`` and ``with_trainable(variables, params)``: the parameters the
  optimizer updates, taken out and put back;
- ``module(variables) -> nnx.Module``: a ready-to-use module in evaluation mode, e.g. after
  restoring a checkpoint.

Values a layer sows during a call (``self.sow(nnx.Intermediate, "balance", value)``: a KL term,
a load-balancing loss) are captured (``nnx.capture``), and ``apply`` and ``train_apply`` then
give :class:`SownOutputs` (the outputs, and the sown values as a pure dict) for a task's loss or
metric with a parameter named ``sown`` (:mod:`hpjax.engine.tasks`); a call that sows nothing
gives its outputs as they are.

The graph definition is found once with ``nnx.eval_shape`` (no arrays are allocated), and the
functions rebuild the module from it inside the traced function, so they work under ``jax.jit``
and ``jax.vmap``. Variables of a kind that cannot be carried as a trial's state (values sown
during a call, caches) are refused in one line naming the layer.
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

from hpjax.errors import ConfigError, one_line

# Variables that live for one call only: a trial cannot carry them from step to step.
_PER_CALL = (nnx.Intermediate, nnx.Cache, nnx.Perturbation)
_EVAL_MODE = {"deterministic": True, "use_running_average": True}
_TRAIN_MODE = {"deterministic": False, "use_running_average": False}

# A PRNG key as jax.eval_shape takes it: abstract, so that nothing compiles to make one.
ABSTRACT_KEY = jax.ShapeDtypeStruct((2,), jnp.uint32)


def check_input(x: jax.Array, input_shape: tuple[int, ...], model: str) -> jax.Array:
    """Checks that ``x`` is ``[B, *input_shape]`` and casts it to float32."""
    if x.ndim != len(input_shape) + 1 or tuple(x.shape[1:]) != input_shape:
        raise ConfigError(
            f"model {model!r} was built for inputs of shape [B, *{input_shape}]; got x of shape "
            f"{tuple(x.shape)}"
        )
    return jnp.asarray(x, jnp.float32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SownOutputs:
    """A call's outputs and what its layers sowed (``nnx.Intermediate``), as a pure dict like
    ``{"block": {"balance": (value,)}}`` (a tuple per name: nnx keeps every value sown)."""

    outputs: Any
    sown: dict


def _called(module: nnx.Module, x: jax.Array) -> Any:
    """``module(x)``, with the values its layers sowed during the call beside the outputs."""
    outputs, sown = nnx.capture(module, nnx.Intermediate)(x)
    if not jax.tree.leaves(sown):
        return outputs
    return SownOutputs(outputs, nnx.to_pure_dict(sown))


class DropoutRate(nnx.Variable):
    """The drop probability of a :class:`TrialDropout`: filled by the engine at every call."""


# A trial's state: every variable that is neither trained nor supplied at each call.
_STATE = nnx.Not(nnx.Any(nnx.Param, nnx.RngState, DropoutRate))


class TrialDropout(nnx.Module):
    """Dropout at each trial's own rate: the trial's ``dropout`` hyperparameter, which a study
    can search like the learning rate (all rates in one compiled program).

    Outside a population (``rate`` left at its initial value) it is an ordinary dropout layer;
    :func:`nnx.view` with ``deterministic=True`` (evaluation mode) turns it off.
    """

    def __init__(
        self,
        rate: float = 0.0,
        *,
        deterministic: bool = False,
        rng_collection: str = "dropout",
        rngs: nnx.Rngs,
    ):
        self.rate = DropoutRate(jnp.asarray(rate, jnp.float32))
        self.deterministic = deterministic
        self.rngs = rngs[rng_collection].fork()

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.deterministic:
            return x
        keep = 1.0 - self.rate[...]
        mask = jax.random.bernoulli(self.rngs(), keep, x.shape)
        return jnp.where(mask, x / jnp.maximum(keep, 1e-6), jnp.zeros_like(x))

    def set_view(self, deterministic: bool | None = None):
        if deterministic is not None:
            self.deterministic = deterministic


def _identity(variables: Any) -> Any:
    return variables


def _replace_all(variables: Any, params: Any) -> Any:
    return params


@dataclasses.dataclass(frozen=True)
class Model:
    """A model as pure functions of its variables; see the module docstring."""

    name: str
    init: Callable[[jax.Array], dict]
    apply: Callable[[dict, jax.Array], jax.Array]
    module: Callable[[dict], nnx.Module]
    num_params: int
    structure: str = ""  # a hash of the variable tree (paths and shapes): the model's identity
    train_apply: Callable[..., tuple[jax.Array, dict]] | None = None  # None: ``apply`` trains
    trainable: Callable[[Any], Any] = _identity
    with_trainable: Callable[[Any, Any], Any] = _replace_all
    trial_dropout: bool = False  # has a TrialDropout layer (the ``dropout`` hyperparameter)
    batch_statistics: bool = False  # carries state besides its parameters (nnx.BatchStat, ...)
    # μP's per-layer rules (an hpjax.models.mup.Parametrization); None: the standard one
    parametrization: Any = None
    # a built-in model's complete keys and shapes, which decide its programs ("" for a model of
    # your own): the key of hpjax.engine.program_cache
    recipe: str = ""

    @property
    def stateful(self) -> bool:
        """Whether training differs from evaluation (dropout, batch statistics)."""
        return self.train_apply is not None

    def lr_multipliers(self, optimizer: str) -> Any:
        """Each trainable leaf's learning-rate multiplier under ``optimizer`` (a tree of Python
        floats like the trainable parameters), or None when every leaf takes the rate as is."""
        if self.parametrization is None:
            return None
        return self.parametrization.lr_multipliers(optimizer)


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


def _shapes(state: nnx.State) -> dict[tuple[str, ...], tuple[int, ...]]:
    return {tuple(str(k) for k in path): v.shape for path, v in nnx.to_flat_state(state)}


def _refuse_unknown_state(state: nnx.State, name: str) -> None:
    """One line naming the first variable a trial cannot carry, and its type."""
    for path, variable in nnx.to_flat_state(state):
        layer = ".".join(str(k) for k in path)
        kind = type(variable).__name__
        if isinstance(variable, _PER_CALL):
            why = "holds a value of one call (sown or cached), which a trial cannot carry"
        elif not isinstance(variable.get_value(), jax.Array | jax.ShapeDtypeStruct):
            why = f"holds a {type(variable.get_value()).__name__}, not an array"
        else:
            continue
        raise ConfigError(
            f"model {name!r}: layer {layer} has a variable of type {kind} that {why}; a "
            "population trains nnx.Param, nnx.BatchStat (or other array state) and random "
            "streams (nnx.Rngs, nnx.Dropout, hpjax.models.TrialDropout)"
        )


def _refuse_dropout_without_stream(abstract: nnx.Module, name: str) -> None:
    """An ``nnx.Dropout`` built without ``rngs`` has no stream a population could key per trial
    (Flax would fail inside the compiled step): one line naming the layer and the fix."""
    for path, layer in nnx.iter_modules(abstract):
        if isinstance(layer, nnx.Dropout) and layer.rngs is None and layer.rate > 0:
            where = ".".join(str(k) for k in path) or "the model"
            raise ConfigError(
                f"model {name!r}: layer {where} is an nnx.Dropout without rngs; build it as "
                "nnx.Dropout(rate, rngs=rngs) (each trial then draws its own masks) or use "
                "hpjax.models.TrialDropout(rngs=rngs) to search its rate"
            )


def _abstract(make: Callable[[nnx.Rngs], nnx.Module], name: str) -> nnx.Module:
    try:
        abstract = nnx.eval_shape(lambda: make(nnx.Rngs(0)))
    except ConfigError:
        raise
    except Exception as error:  # a user factory that cannot be built: say so in one line
        raise ConfigError(
            f"model factory {name!r} failed to build a module: {one_line(error)}"
        ) from error
    if not isinstance(abstract, nnx.Module):
        raise ConfigError(
            f"model factory {name!r} must return a flax.nnx.Module; got {type(abstract).__name__}"
        )
    return abstract


def _check_params(params: dict, expected: dict, name: str) -> None:
    flat = {
        tuple(str(k) for k in path): jnp.shape(v)
        for path, v in nnx.traversals.flatten_mapping(params).items()
    }
    if flat != expected:
        missing = sorted(set(expected) - set(flat))
        extra = sorted(set(flat) - set(expected))
        wrong = sorted(k for k in set(flat) & set(expected) if flat[k] != expected[k])
        raise ValueError(
            f"params do not match model {name!r}: missing {missing}, unexpected {extra}, "
            f"wrong shape {[(k, flat[k], expected[k]) for k in wrong]}"
        )


def _filled(abstract: nnx.State, values: dict) -> nnx.State:
    state = jax.tree.map(lambda v: v, abstract)  # a fresh copy to fill in
    nnx.replace_by_pure_dict(state, values)
    return state


def _functional(make: Callable[[nnx.Rngs], nnx.Module], name: str) -> Model:
    abstract = _abstract(make, name)
    graphdef, params, rngs, rates, state = nnx.split(
        abstract, nnx.Param, nnx.RngState, DropoutRate, _STATE
    )
    _refuse_unknown_state(state, name)
    _refuse_dropout_without_stream(abstract, name)
    param_shapes = _shapes(params)
    num_params = sum(math.prod(s) for s in param_shapes.values())
    structure = hashlib.sha256(repr(sorted(param_shapes.items())).encode())
    if not jax.tree.leaves(rngs) and not jax.tree.leaves(rates) and not jax.tree.leaves(state):
        return _pure(make, name, graphdef, params, param_shapes, num_params, structure)
    structure.update(repr(sorted(_shapes(state).items())).encode())
    return _stateful(make, name, (graphdef, params, rngs, rates, state), num_params, structure)


def _pure(make, name, graphdef, abstract_params, param_shapes, num_params, structure) -> Model:
    """A module whose only state is its parameters: the variables are the parameters."""

    def init(key: jax.Array) -> dict:
        return nnx.to_pure_dict(nnx.state(make(nnx.Rngs(params=key)), nnx.Param))

    def module(params: dict) -> nnx.Module:
        _check_params(params, param_shapes, name)
        return nnx.merge(graphdef, _filled(abstract_params, params))

    def apply(params: dict, x: jax.Array) -> Any:
        return _called(module(params), x)

    return _model(name, init, apply, module, num_params, structure)


def _model(name, init, apply, module, num_params, structure, **training) -> Model:
    # jit makes direct (eager) calls fast; nested inside the engine's own jit/vmap it is inlined.
    return Model(
        name=name,
        init=jax.jit(init),
        apply=jax.jit(apply),
        module=module,
        num_params=num_params,
        structure=structure.hexdigest()[:16],
        **training,
    )


def _stream_values(abstract_rngs: nnx.State, key: jax.Array) -> dict:
    """Every random stream's key drawn from ``key`` (one per stream), its count at 0."""
    flat = {}
    for i, (path, variable) in enumerate(nnx.to_flat_state(abstract_rngs)):
        if isinstance(variable, nnx.RngKey):
            flat[path] = jax.random.fold_in(jax.random.wrap_key_data(key), i)
        else:
            flat[path] = jnp.zeros(variable.shape, variable.dtype)
    return nnx.traversals.unflatten_mapping(flat)


def _stateful(make, name, parts, num_params, structure) -> Model:
    """A module with batch statistics or random streams: ``{"params", "state"}``, a training
    mode and an evaluation mode."""
    graphdef, abstract_params, abstract_rngs, abstract_rates, abstract_state = parts
    param_shapes = _shapes(abstract_params)
    rate_paths = [path for path, _ in nnx.to_flat_state(abstract_rates)]

    def init(key: jax.Array) -> dict:
        made = make(nnx.Rngs(key, params=key))  # parameters as a pure module's: same key
        return {
            "params": nnx.to_pure_dict(nnx.state(made, nnx.Param)),
            "state": nnx.to_pure_dict(nnx.state(made, _STATE)),
        }

    def merged(variables: dict, key: jax.Array, dropout: jax.Array) -> nnx.Module:
        _check_params(variables["params"], param_shapes, name)
        rates = nnx.traversals.unflatten_mapping(
            {path: jnp.asarray(dropout, jnp.float32) for path in rate_paths}
        )
        return nnx.merge(
            graphdef,
            _filled(abstract_params, variables["params"]),
            _filled(abstract_rngs, _stream_values(abstract_rngs, key)),
            _filled(abstract_rates, rates),
            _filled(abstract_state, variables["state"]),
        )

    def module(variables: dict) -> nnx.Module:
        made = merged(variables, jax.random.PRNGKey(0), jnp.zeros((), jnp.float32))
        return nnx.view(made, raise_if_not_found=False, **_EVAL_MODE)

    def apply(variables: dict, x: jax.Array) -> Any:
        return _called(module(variables), x)

    def train_apply(variables: dict, x: jax.Array, key: jax.Array, dropout: jax.Array):
        training = nnx.view(
            merged(variables, key, dropout), raise_if_not_found=False, **_TRAIN_MODE
        )
        outputs = _called(training, x)
        state = nnx.state(training, _STATE)
        return outputs, {"params": variables["params"], "state": nnx.to_pure_dict(state)}

    return _model(
        name,
        init,
        apply,
        module,
        num_params,
        structure,
        train_apply=train_apply,
        trainable=_take_params,
        with_trainable=_put_params,
        trial_dropout=bool(rate_paths),
        batch_statistics=bool(jax.tree.leaves(abstract_state)),
    )


def _take_params(variables: dict) -> dict:
    return variables["params"]


def _put_params(variables: dict, params: dict) -> dict:
    return {"params": params, "state": variables["state"]}
