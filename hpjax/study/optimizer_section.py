"""The optimizer's keys of a study's config: a built-in or an optax factory, its static
options, the schedule, and which of a factory's keywords trials may set."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from typing import Any

from hpjax.config import as_tuple
from hpjax.engine import optim
from hpjax.study.config_reader import Reader, fail, is_real
from hpjax.study.sections import OptimizerSpec

# The static options each optimizer takes from the config (the rest are its per-trial values).
OPTIMIZER_OPTIONS = {
    "momentum": ("momentum", "nesterov"),
    "adam": ("b1", "b2", "eps"),
    "adagrad": ("initial_accumulator_value", "eps"),
    "rmsprop": ("rms_decay", "eps"),
}


def parse_optimizers(read: Reader) -> tuple[OptimizerSpec, tuple[OptimizerSpec, ...]]:
    """The study's optimizer, and every optimizer of ``config.optimizers`` (an axis crossed
    with the others; the first is then the study's optimizer), each checked in one line."""
    names = as_tuple(read.raw("optimizers"))
    if not names:
        return parse_optimizer(read, read.raw("optimizer")), ()
    if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        fail("optimizers", names, "must be distinct optimizer names (adam, optax.lion, ...)")
    keywords = _keywords_by_optimizer(read, names)
    specs = tuple(
        parse_optimizer(read, name, where="optimizers", kwargs=keywords.get(name, {}))
        for name in names
    )
    return specs[0], specs


def parse_optimizer(
    read: Reader, raw: Any, where: str = "optimizer", kwargs: dict | None = None
) -> OptimizerSpec:
    """The optimizer ``raw``, its static options (``kwargs``, else config.optimizer_kwargs)
    and the schedule of a config; ``where`` names it in a message."""
    factory = isinstance(raw, str) and optim.is_factory(raw)
    if not factory and raw not in optim.OPTIMIZERS:
        fail(
            where,
            raw,
            f"is unknown; allowed: {', '.join(optim.OPTIMIZERS)}, or the import path of an "
            "optax optimizer factory (optax.lion, optax.contrib.muon, mypackage.make_optimizer)",
        )
    name = str(raw)
    if kwargs is None:
        kwargs = _optimizer_kwargs(read, name, factory)
    schedule = read.choice("schedule", optim.SCHEDULES)
    momentum = read.number("momentum", 0.0, 1.0, open_high=True)
    b1 = read.number("b1", 0.0, 1.0, open_high=True, meaning="Adam's first-moment decay")
    read.number("b2", 0.0, 1.0, open_high=True, meaning="Adam's second-moment decay")
    eps = read.number("eps", 0.0, meaning="0 = the optimizer's own default")
    read.flag("nesterov")
    read.number("rms_decay", 0.0, 1.0, open_high=True, meaning="RMSProp's decay")
    read.number("initial_accumulator_value", 0.0, meaning="Adagrad's initial sum")
    options = tuple(
        (key, read.raw(key))
        for key in OPTIMIZER_OPTIONS.get(name, ())
        if not (key == "eps" and eps == 0.0)
    )
    defaults = ()
    if factory:
        # built once now: a bad name or keyword is a line
        optim.factory_direction(name, f"config.{where}", **kwargs)
        options = tuple(sorted(kwargs.items()))
        defaults = tuple(
            (key, _number_or_none(kwargs.get(key, default)))
            for key, default in optim.factory_keywords(name).items()
        )
    return OptimizerSpec(
        name=name,
        schedule=schedule,
        options=options,
        first_moment=b1 if name == "adam" else momentum,
        warmup_steps=read.integer("warmup_steps", 0, "steps of linear warmup"),
        warmup_epochs=read.number("warmup_epochs", 0.0, math.inf, open_high=True),
        decay_rate=read.number("decay_rate", 0.0, 1.0, open_low=True),
        end_factor=read.number("end_factor", 0.0, 1.0),
        factory_defaults=defaults,
    )


def _number_or_none(value: Any) -> float | None:
    return float(value) if is_real(value) else None


def _json_object(read: Reader, example: str) -> dict[str, Any]:
    """``config.optimizer_kwargs`` as a dict (one line naming ``example`` if not an object)."""
    text = read.raw("optimizer_kwargs")
    try:
        kwargs = json.loads(text or "{}")
    except (TypeError, json.JSONDecodeError):
        kwargs = None
    if not isinstance(kwargs, dict):
        fail("optimizer_kwargs", text, f"must be a JSON object, e.g. '{example}'")
    return kwargs


def _static(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def _optimizer_kwargs(read: Reader, name: str, factory: bool) -> dict[str, Any]:
    """The static keywords of an optax factory: ``config.optimizer_kwargs``, a JSON object."""
    kwargs = _json_object(read, '{"b1": 0.95}')
    if kwargs and not factory:
        fail(
            "optimizer_kwargs",
            read.raw("optimizer_kwargs"),
            f"is for an optax factory as config.optimizer; the built-in {name!r} takes its "
            "options from their own keys (config.b1, config.momentum, config.eps, ...)",
        )
    return _static(kwargs)


def _keywords_by_optimizer(read: Reader, names: tuple[str, ...]) -> dict[str, dict]:
    """With several optimizers, ``config.optimizer_kwargs`` maps each factory among them to
    its static keywords."""
    given = _json_object(read, '{"optax.lion": {"b1": 0.95}}')
    factories = [n for n in names if optim.is_factory(n)]
    for name, kwargs in given.items():
        if name not in factories or not isinstance(kwargs, dict):
            fail(
                "optimizer_kwargs",
                read.raw("optimizer_kwargs"),
                "must map each optax factory of config.optimizers to its keywords, e.g. "
                f'\'{{"optax.lion": {{"b1": 0.95}}}}\'; factories: '
                f"{', '.join(factories) or 'none'}",
            )
    return {name: _static(kwargs) for name, kwargs in given.items()}


def check_optimizer_axes(optimizers: Sequence[OptimizerSpec], trials: Sequence[Any]) -> None:
    """Each trial's optimizer-specific values against its optimizer (the study's, or the one of
    ``optimizers`` it names): see :func:`check_factory_axes`; a factory keyword a trial sets
    must be one of its own optimizer."""
    by_name = {o.name: o for o in optimizers}
    groups: dict[str, list] = {}
    for trial in trials:
        groups.setdefault(trial.optimizer or optimizers[0].name, []).append(trial)
    for name, group in groups.items():
        optimizer = by_name[name]
        for trial in group:
            for key, value in trial.optimizer_values:
                if key not in optimizer.factory_keys:
                    owners = [o.name for o in optimizers if key in o.factory_keys]
                    fail(
                        key,
                        value,
                        f"is a keyword of {', '.join(owners)}, not of {name}, which trial "
                        f"{trial.index} trains with: vary it in a study of {owners[0]} alone, "
                        "or give it in config.trials to that optimizer's trials only",
                    )
        check_factory_axes(optimizer, group)


def check_factory_axes(optimizer: OptimizerSpec, trials: Sequence[Any]) -> None:
    """An optax factory's keywords that trials set are traced per-trial values: each must be
    one the factory takes as an array, and trials that leave it out need a number to take
    (config.optimizer_kwargs or the factory's default). hpjax's per-trial momentum is the
    built-ins' own: refused."""
    if not optim.is_factory(optimizer.name):
        return
    for trial in trials:
        if trial.momentum is not None:
            fail(
                "momentum",
                trial.momentum,
                f"is a per-trial value of the built-in optimizers (momentum, adam); for "
                f"{optimizer.name} search its own keyword (e.g. b1) or set it in "
                "config.optimizer_kwargs",
            )
    examples = {}
    for trial in trials:
        for key, value in trial.optimizer_values:
            examples.setdefault(key, value)
    defaults = dict(optimizer.factory_defaults)
    for key in sorted(examples):
        if defaults[key] is None and any(key not in dict(t.optimizer_values) for t in trials):
            fail(
                key,
                examples[key],
                f"is set by some trials only, and {optimizer.name} has no number to give the "
                f"others: give every trial a {key}, or a default in config.optimizer_kwargs",
            )
        try:
            _check_traceable(optimizer.name, optimizer.options, key, examples[key])
        except TypeError:  # a keyword's value is not hashable: checked without the cache
            _check_traceable.__wrapped__(optimizer.name, optimizer.options, key, examples[key])


@functools.lru_cache(maxsize=256)
def _check_traceable(name: str, options: tuple, key: str, example: float) -> None:
    """:func:`hpjax.engine.optim.check_traceable`, once per factory, keywords and key (a
    search checks each batch of proposals)."""
    optim.check_traceable(name, dict(options), {key: example})
