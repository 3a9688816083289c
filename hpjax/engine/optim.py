"""Optimizers and learning-rate schedules from per-trial hyperparameters.

The population engine vmaps one trial's step over a trial axis, so every numeric hyperparameter
here (peak rate, total steps, warmup, decay rate, end factor, weight decay, momentum, Adam's b1,
...) may be a traced scalar. Nothing branches in Python on those values: the schedule KIND and the
optimizer NAME are the only static choices (strings), everything else goes through ``jnp.where``.

An update is split in two, so that a per-trial rate never has to live inside optax's state:

- ``direction(name, ...)`` is the learning-rate-free optax transformation (Adam's moment ratio,
  Adagrad's rescaled gradient, ...);
- ``apply_update(params, u, lr, wd)`` takes the descent step ``params - lr * (u + wd * params)``
  with decoupled (AdamW-style, Loshchilov and Hutter 2019) weight decay that, like
  ``optax.adamw``, is multiplied by the full learning rate and applies to every leaf; optional
  static per-leaf multipliers of ``lr`` (μP's per-layer rates) scale both terms.

Any optax optimizer factory, named by its import path (``optax.lion``, ``optax.contrib.muon``,
``mypackage.optimizers.clipped_adam``: a function of ``learning_rate`` and keywords returning an
``optax.GradientTransformation``), takes the same path: its direction is its transformation at
``learning_rate=1``, negated (:func:`factory_direction`), so the per-trial rate, its schedule and
hpjax's weight decay apply as for the built-ins. A factory's own numeric keywords (Lion's ``b1``,
a clip norm) may differ between trials: :func:`factory_keywords` names them, and the engine builds
the transformation inside the vmapped step from each trial's traced values (the idiom of optax
issue 932), so a population over them is one compiled program; :func:`check_traceable` refuses, in
one line before compiling, a keyword the factory branches on in Python. The rest are static.

With a constant ``lr`` and ``wd = 0``, ``direction(name)`` followed by ``apply_update`` equals
``optax.sgd(lr)``, ``optax.sgd(lr, momentum)`` (name ``"momentum"``), ``optax.adam(lr)``,
``optax.adagrad(lr)`` and ``optax.rmsprop(lr)``, default for default; with ``wd > 0`` and
``"adam"`` it equals ``optax.adamw(lr, weight_decay=wd)``.

Schedules. ``step`` is the 0-based number of the optimizer update about to be applied (the same
count optax passes to a schedule). Let W = warmup_steps, D = max(total_steps - W, 1),
s' = step - W and f = clip(s' / D, 0, 1). The multiplier of the peak rate is

- warmup, if W > 0 and step < W: (step + 1) / W, so update 0 already moves (1 / W) and update
  W - 1, the W-th, uses the full rate (Goyal et al. 2017). optax's ``warmup_*`` schedules instead
  start at ``init_value`` (commonly 0) and reach the peak one update later: ours is theirs at
  ``step + 1``;
- after warmup, by kind:

  - ``constant``: 1;
  - ``linear``: 1 + (end_factor - 1) * f;
  - ``exponential``: decay_rate ** f, i.e. the rate has decayed by ``decay_rate`` at the end of
    training and stays there (optax's ``exponential_decay`` keeps decaying past
    ``transition_steps`` unless given ``end_value``);
  - ``cosine``: end_factor + (1 - end_factor) * (1 + cos(pi * f)) / 2.

Steps past ``total_steps`` keep the final value. Step counts are converted to the default float
dtype (float32), exact up to 2**24 updates.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from hpjax.engine.hparams import NAMES as HPARAM_NAMES
from hpjax.errors import ConfigError

OPTIMIZERS = ("adagrad", "adam", "momentum", "rmsprop", "sgd")
# The option of each optimizer that a per-trial "momentum" hyperparameter sets.
FIRST_MOMENT = {"momentum": "momentum", "adam": "b1"}
SCHEDULES = ("constant", "cosine", "exponential", "linear")

# optax's own default eps: 1e-7 for adagrad (scale_by_rss), 1e-8 for adam and rmsprop.
_DEFAULT_EPS = {"adagrad": 1e-7, "adam": 1e-8, "rmsprop": 1e-8}


def _float(x: ArrayLike) -> jax.Array:
    """``x`` as an array of the default float dtype (float32 unless x64 is on)."""
    return jnp.asarray(x, dtype=jnp.result_type(float))


def unit_schedule(
    kind: str,
    step: ArrayLike,
    total_steps: ArrayLike,
    *,
    warmup_steps: ArrayLike = 0,
    decay_rate: ArrayLike = 0.1,
    end_factor: ArrayLike = 0.0,
) -> jax.Array:
    """Multiplier of the peak learning rate for the 0-based update ``step``.

    Warmup is linear, ``(step + 1) / warmup_steps``; then the decay of ``kind`` over
    ``max(total_steps - warmup_steps, 1)`` updates (see the module docstring). Every numeric
    argument may be a traced array; ``kind`` is static.
    """
    if kind not in SCHEDULES:
        raise ConfigError(f"schedule kind {kind!r} is unknown; allowed: {', '.join(SCHEDULES)}")
    step = _float(step)
    warmup = _float(warmup_steps)
    decay_steps = jnp.maximum(_float(total_steps) - warmup, 1.0)
    frac = jnp.clip((step - warmup) / decay_steps, 0.0, 1.0)
    end_factor = _float(end_factor)
    if kind == "constant":
        after = jnp.ones_like(frac)
    elif kind == "linear":
        after = 1.0 + (end_factor - 1.0) * frac
    elif kind == "exponential":
        after = jnp.power(_float(decay_rate), frac)
    else:  # cosine
        after = end_factor + (1.0 - end_factor) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    in_warmup = (warmup > 0) & (step < warmup)
    ramp = (step + 1.0) / jnp.maximum(warmup, 1.0)
    return jnp.where(in_warmup, ramp, after)


def learning_rate(
    kind: str,
    step: ArrayLike,
    peak_lr: ArrayLike,
    total_steps: ArrayLike,
    *,
    warmup_steps: ArrayLike = 0,
    decay_rate: ArrayLike = 0.1,
    end_factor: ArrayLike = 0.0,
) -> jax.Array:
    """The learning rate of update ``step``: ``peak_lr * unit_schedule(...)``."""
    return _float(peak_lr) * unit_schedule(
        kind,
        step,
        total_steps,
        warmup_steps=warmup_steps,
        decay_rate=decay_rate,
        end_factor=end_factor,
    )


def _options(
    name: str,
    *,
    momentum: ArrayLike = 0.9,
    nesterov: bool = False,
    b1: ArrayLike = 0.9,
    b2: ArrayLike = 0.999,
    eps: ArrayLike | None = None,
    initial_accumulator_value: ArrayLike = 0.1,
    rms_decay: ArrayLike = 0.9,
) -> dict[str, Any]:
    """Every option of optimizer ``name`` with optax's defaults filled in; ``eps=None`` takes
    optax's default for that optimizer (1e-7 for adagrad, 1e-8 otherwise)."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"optimizer {name!r} is unknown; allowed: {', '.join(OPTIMIZERS)}")
    return dict(
        momentum=momentum,
        nesterov=nesterov,
        b1=b1,
        b2=b2,
        eps=_DEFAULT_EPS.get(name, 1e-8) if eps is None else eps,
        initial_accumulator_value=initial_accumulator_value,
        rms_decay=rms_decay,
    )


def is_factory(name: str) -> bool:
    """True when ``name`` is the import path of an optax optimizer factory, not a built-in."""
    return "." in name


def resolve_factory(
    name: str, where: str = "config.optimizer"
) -> Callable[..., optax.GradientTransformation]:
    """The function the dotted path ``name`` names, checked to take a ``learning_rate``;
    ``where`` is the key a message names."""
    module_name, attributes = name, []
    while True:
        try:
            target: Any = importlib.import_module(module_name)
            break
        except ModuleNotFoundError as error:
            missing = error.name or ""
            if not module_name.startswith(missing) or "." not in module_name:
                raise ConfigError(
                    f"{where}={name!r}: no module {missing!r} "
                    f"(a built-in, {', '.join(OPTIMIZERS)}, or the import path of an optax "
                    "optimizer factory, e.g. optax.lion)"
                ) from None
            module_name, _, last = module_name.rpartition(".")
            attributes.insert(0, last)
    for attribute in attributes:
        if not hasattr(target, attribute):
            raise ConfigError(f"{where}={name!r}: {target.__name__} has no {attribute!r}")
        target = getattr(target, attribute)
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        raise ConfigError(f"{where}={name!r} is not a function") from None
    if "learning_rate" not in parameters and not any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    ):
        raise ConfigError(
            f"{where}={name!r} takes no learning_rate: hpjax sets each trial's rate "
            "(and its schedule) through it; name an optimizer factory such as optax.lion"
        )
    return target


def factory_direction(
    name: str, where: str = "config.optimizer", **options: Any
) -> optax.GradientTransformation:
    """The learning-rate-free part of the optax factory ``name`` with keywords ``options``:
    its transformation at ``learning_rate=1``, negated (optax's updates are descent steps
    ``-lr * u``; a direction is ``u``). A bad keyword is a :class:`ConfigError`."""
    make = resolve_factory(name, where)
    try:
        transformation = make(learning_rate=1.0, **options)
    except TypeError as error:
        raise ConfigError(f"config.optimizer_kwargs for {name}: {error}") from None
    if not isinstance(transformation, optax.GradientTransformation):
        raise ConfigError(
            f"config.optimizer={name!r} returned a {type(transformation).__name__}, not an "
            "optax.GradientTransformation"
        )
    return optax.chain(transformation, optax.scale(-1.0))


def factory_name(factory: Callable[..., Any]) -> tuple[str, dict[str, Any]]:
    """The import path hpjax records for an optimizer factory given as a function or a
    ``functools.partial`` of one (whose keywords it returns beside), checked to import back to
    the same function: ``optax.lion`` for optax's own."""
    keywords: dict[str, Any] = {}
    while isinstance(factory, functools.partial):
        if factory.args:
            raise ConfigError(
                "optimizer=functools.partial(...) with positional arguments: give them as "
                "keywords, e.g. functools.partial(optax.lion, b1=0.95)"
            )
        keywords = dict(factory.keywords) | keywords
        factory = factory.func
    base = getattr(factory, "__name__", "")
    candidates = [f"optax.{base}", f"optax.contrib.{base}"]
    candidates.append(
        f"{getattr(factory, '__module__', '')}.{getattr(factory, '__qualname__', '')}"
    )
    for candidate in candidates:
        try:
            if resolve_factory(candidate) is factory:
                return candidate, keywords
        except ConfigError:
            continue
    raise ConfigError(
        f"optimizer={factory!r} cannot be imported by its name, which config.json records "
        "(a lambda or a function inside a function): define it at the top level of a module"
    )


def factory_keywords(name: str) -> dict[str, Any]:
    """The keywords of the factory ``name`` a trial may set, each with the factory's default
    (``inspect.Parameter.empty`` where it has none): every named keyword but ``learning_rate``
    and the names of hpjax's own hyperparameters (``weight_decay``, ``momentum``,
    ``decay_rate``, ...), which keep hpjax's meaning; those stay static keywords."""
    parameters = inspect.signature(resolve_factory(name)).parameters.values()
    return {
        p.name: p.default
        for p in parameters
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in HPARAM_NAMES
    }


def check_traceable(name: str, static: dict[str, Any], varying: dict[str, float]) -> None:
    """Each keyword in ``varying`` (keyword -> an example value) of factory ``name`` can be a
    traced per-trial value: its transformation is built, initialised and applied to a small
    parameter tree under ``jax.eval_shape`` with that one keyword traced. A factory that needs
    it as a Python value (an ``if``, a loop count, a dtype) is a :class:`ConfigError` naming it."""
    make = resolve_factory(name)
    params = {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))}
    for key, example in varying.items():

        def one_step(value, key=key):
            transformation = make(learning_rate=1.0, **(static | {key: value}))
            state = transformation.init(params)
            return transformation.update(params, state, params)

        try:
            jax.eval_shape(one_step, jnp.asarray(example, jnp.float32))
        except Exception as error:  # noqa: BLE001 (what a factory raises on a tracer is its own)
            lines = str(error).strip().splitlines()
            reason = lines[0][:160] if lines else type(error).__name__
            raise ConfigError(
                f"{name}'s keyword {key!r} cannot differ between trials: the factory needs it "
                f"as a fixed Python value ({type(error).__name__}: {reason}); it must stay "
                "fixed across the population: give it once in config.optimizer_kwargs"
            ) from None


# Each built-in optimizer is an optax factory, with hpjax's names of its options (``_options``)
# mapped to the factory's keywords; the factory's other keywords keep their defaults.
BUILT_IN_FACTORIES: dict[str, tuple[str, dict[str, str]]] = {
    "adagrad": (
        "optax.adagrad",
        {"initial_accumulator_value": "initial_accumulator_value", "eps": "eps"},
    ),
    "adam": ("optax.adam", {"b1": "b1", "b2": "b2", "eps": "eps", "nesterov": "nesterov"}),
    "momentum": ("optax.sgd", {"momentum": "momentum", "nesterov": "nesterov"}),
    "rmsprop": ("optax.rmsprop", {"rms_decay": "decay", "eps": "eps"}),
    "sgd": ("optax.sgd", {}),
}


def built_in_factory(name: str, **options: Any) -> tuple[str, dict[str, Any]]:
    """The optax factory of the built-in optimizer ``name`` and its keywords from hpjax's
    ``options`` (defaults filled in by :func:`_options`): ``adam`` is ``optax.adam``,
    ``momentum`` is ``optax.sgd`` with ``momentum``, and so on."""
    o = _options(name, **options)
    factory, keywords = BUILT_IN_FACTORIES[name]
    return factory, {keyword: o[option] for option, keyword in keywords.items()}


def direction(name: str, **options: Any) -> optax.GradientTransformation:
    """The learning-rate-free part of optimizer ``name``, as an optax transformation: an optax
    factory's (:func:`factory_direction`), a built-in's through its factory
    (:func:`built_in_factory`), so there is one mechanism. Numeric options may be traced; build
    the transformation inside the per-trial function and call its ``init`` there too.
    """
    if is_factory(name):
        return factory_direction(name, **options)
    factory, keywords = built_in_factory(name, **options)
    return factory_direction(factory, **keywords)


def _as_built_in(name: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The built-in whose factory ``name`` with keywords ``options`` is, with hpjax's names of
    the options; None for any other factory or a keyword the built-in does not name."""
    if not is_factory(name):
        return name, options
    options = {k: v for k, v in options.items() if not (k == "momentum" and v is None)}
    for built_in, (factory, keywords) in BUILT_IN_FACTORIES.items():
        if factory != name or ("momentum" in options) != (built_in == "momentum"):
            continue
        if not set(options) <= set(keywords.values()):
            return None
        hpjax_name = {keyword: option for option, keyword in keywords.items()}
        return built_in, {hpjax_name[k]: v for k, v in options.items()}
    return None


def direction_of_state(name: str, grads: Any, new_state: Any, **options: Any) -> Any | None:
    """The direction ``direction(name, ...).update(grads, state)`` returns, computed from the
    state that update returned (``new_state``) and the same ``grads``, with optax's formulas:
    for the built-ins and for their factories given only the keywords a built-in names
    (``optax.adam`` with ``b1``), else None.

    Why: the population engine selects each trial's new optimizer state (frozen trials keep the
    old one) and then steps the parameters from the selected state. The parameter update then
    reads the state just written instead of recomputing it from the old state, which would make
    XLA keep a copy of every moment buffer on each step.
    """
    known = _as_built_in(name, options)
    if known is None:
        return None
    name, options = known
    o = _options(name, **options)  # Adagrad's and RMSProp's other options are in the state
    momentum, nesterov, b1, b2, eps = (o[k] for k in ("momentum", "nesterov", "b1", "b2", "eps"))
    state = new_state[0][0]  # chain(factory's chain(its scaling, learning rate), negation)
    if name == "sgd":
        return grads
    if name == "momentum":
        if nesterov:
            return jax.tree.map(lambda g, t: g + momentum * t, grads, state.trace)
        return state.trace
    if name == "adam":
        count = state.count
        if nesterov:
            mu_hat = jax.tree.map(
                lambda m, g: b1 * m + (1 - b1) * g,
                optax.tree.bias_correction(state.mu, b1, optax.safe_increment(count)),
                optax.tree.bias_correction(grads, b1, count),
            )
        else:
            mu_hat = optax.tree.bias_correction(state.mu, b1, count)
        nu_hat = optax.tree.bias_correction(state.nu, b2, count)
        return jax.tree.map(lambda m, v: m / (jnp.sqrt(v + 0.0) + eps), mu_hat, nu_hat)
    if name == "adagrad":
        scale = jax.tree.map(
            lambda t: jnp.where(t > 0, jax.lax.rsqrt(t + eps), 0.0), state.sum_of_squares
        )
        return optax.tree.mul(scale, grads)
    return jax.tree.map(lambda n, g: jax.lax.rsqrt(n + eps) * g, state.nu, grads)


def apply_update(
    params: Any,
    direction_updates: Any,
    lr: ArrayLike,
    weight_decay: ArrayLike,
    multipliers: Any = None,
) -> Any:
    """``params - lr * (u + weight_decay * params)``, leaf by leaf, in each leaf's dtype.

    A descent step with decoupled weight decay on every leaf (``optax.adamw``'s default, no mask).
    ``multipliers`` (a tree like ``params`` of static Python floats, e.g. μP's per-layer rates:
    :meth:`hpjax.models.Model.lr_multipliers`) scales each leaf's ``lr``, and so its
    ``lr * weight_decay`` too; a leaf whose multiplier is 1, and every leaf when it is None,
    steps exactly as without it.
    """

    def leaf(p: jax.Array, u: jax.Array, m: float = 1.0) -> jax.Array:
        p = jnp.asarray(p)
        rate = lr if m == 1.0 else lr * m
        return jnp.asarray(p - rate * (u + weight_decay * p)).astype(p.dtype)

    if multipliers is None:
        return jax.tree.map(leaf, params, direction_updates)
    return jax.tree.map(leaf, params, direction_updates, multipliers)
