"""Tests of hpjax.optim: schedules against closed forms and optax, optimizers against optax."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hpjax.engine import optim
from hpjax.errors import ConfigError

# (warmup_steps, total_steps, decay_rate, end_factor)
SCHEDULE_CASES = [
    (0, 50, 0.1, 0.0),
    (5, 50, 0.5, 0.2),
    (1, 20, 0.01, 0.5),
    (10, 10, 0.1, 0.1),  # total == warmup: D = 1
    (7, 3, 0.3, 0.0),  # total < warmup
    (0, 1, 0.2, 1.0),
]


def np_unit_schedule(kind, step, total, warmup, decay_rate, end_factor):
    """The documented closed form, in float64 numpy."""
    step = np.asarray(step, np.float64)
    d = max(total - warmup, 1)
    f = np.clip((step - warmup) / d, 0.0, 1.0)
    after = {
        "constant": np.ones_like(f),
        "linear": 1.0 + (end_factor - 1.0) * f,
        "exponential": decay_rate**f,
        "cosine": end_factor + (1.0 - end_factor) * 0.5 * (1.0 + np.cos(np.pi * f)),
    }[kind]
    if warmup > 0:
        return np.where(step < warmup, (step + 1.0) / warmup, after)
    return after


def optax_unit_schedule(kind, total, warmup, decay_rate, end_factor):
    """The same schedule from optax pieces.

    Warmup: ``linear_schedule(1/W, 1, W - 1)`` gives (t + 1) / W for t < W (optax's own
    ``warmup_*`` schedules start at 0 and reach the peak at t = W, i.e. ours shifted by one).
    ``join_schedules`` hands the decay ``step - W``. ``exponential_decay`` keeps decaying past
    ``transition_steps``, so it needs ``end_value=decay_rate`` to clamp like ours.
    """
    d = max(total - warmup, 1)
    decay = {
        "constant": optax.constant_schedule(1.0),
        "linear": optax.linear_schedule(1.0, end_factor, d),
        "exponential": optax.exponential_decay(1.0, d, decay_rate, end_value=decay_rate),
        "cosine": optax.cosine_decay_schedule(1.0, d, alpha=end_factor),
    }[kind]
    if warmup == 0:
        return decay
    ramp = optax.linear_schedule(1.0 / warmup, 1.0, warmup - 1)
    return optax.join_schedules([ramp, decay], [warmup])


def _steps(total, warmup):
    """Every update through warmup, the decay and past its end (one shape: one compile)."""
    steps = np.arange(64)
    assert steps[-1] > max(total, warmup) + 10
    return steps


@pytest.mark.parametrize("kind", optim.SCHEDULES)
@pytest.mark.parametrize("case", SCHEDULE_CASES)
def test_unit_schedule_closed_form(kind, case):
    warmup, total, decay_rate, end_factor = case
    steps = _steps(total, warmup)
    got = optim.unit_schedule(
        kind, steps, total, warmup_steps=warmup, decay_rate=decay_rate, end_factor=end_factor
    )
    want = np_unit_schedule(kind, steps, total, warmup, decay_rate, end_factor)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("kind", optim.SCHEDULES)
@pytest.mark.parametrize("case", SCHEDULE_CASES)
def test_unit_schedule_matches_optax(kind, case):
    warmup, total, decay_rate, end_factor = case
    sched = optax_unit_schedule(kind, total, warmup, decay_rate, end_factor)
    steps = _steps(total, warmup)
    got = optim.unit_schedule(
        kind, steps, total, warmup_steps=warmup, decay_rate=decay_rate, end_factor=end_factor
    )
    want = np.broadcast_to(np.asarray(sched(jnp.asarray(steps))), steps.shape)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("kind", optim.SCHEDULES)
def test_warmup_endpoints_and_end_value(kind):
    total, warmup = 40, 8
    u = lambda s: float(optim.unit_schedule(kind, s, total, warmup_steps=warmup, decay_rate=0.1))
    assert u(0) == pytest.approx(1 / warmup)  # update 0 is never at rate 0
    assert u(warmup - 1) == pytest.approx(1.0)  # the W-th update has the full rate
    assert u(warmup) == pytest.approx(1.0)  # decay starts from 1
    final = {"constant": 1.0, "linear": 0.0, "exponential": 0.1, "cosine": 0.0}[kind]
    assert u(total) == pytest.approx(final, abs=1e-7)
    assert u(10 * total) == pytest.approx(final, abs=1e-7)


def test_unit_schedule_vmap_over_trials():
    totals = jnp.array([10, 30, 100])
    warmups = jnp.array([0, 5, 20])
    rates = jnp.array([0.5, 0.1, 0.01])
    ends = jnp.array([0.0, 0.3, 1.0])
    steps = jnp.arange(120)
    for kind in optim.SCHEDULES:
        per_trial = lambda t, w, r, e, k=kind: optim.unit_schedule(
            k, steps, t, warmup_steps=w, decay_rate=r, end_factor=e
        )
        got = jax.jit(jax.vmap(per_trial))(totals, warmups, rates, ends)
        for i in range(3):
            want = optim.unit_schedule(
                kind,
                steps,
                int(totals[i]),
                warmup_steps=int(warmups[i]),
                decay_rate=float(rates[i]),
                end_factor=float(ends[i]),
            )
            np.testing.assert_allclose(got[i], want, rtol=1e-6, atol=1e-7, err_msg=kind)


def test_learning_rate_is_peak_times_unit():
    peaks = jnp.array([0.1, 0.01, 3.0])
    lr = jax.vmap(lambda p: optim.learning_rate("cosine", 7, p, 20, warmup_steps=3))(peaks)
    u = optim.unit_schedule("cosine", 7, 20, warmup_steps=3)
    np.testing.assert_allclose(lr, peaks * u, rtol=1e-7)
    assert 0.0 < float(u) < 1.0


def test_unknown_kind_and_name():
    with pytest.raises(ConfigError, match="allowed: constant, cosine, exponential, linear"):
        optim.unit_schedule("step", 0, 10)
    with pytest.raises(ConfigError, match="allowed: adagrad, adam, momentum, rmsprop, sgd"):
        optim.direction("adamw")


# ---------------------------------------------------------------- optimizers

OPTAX_REFERENCE = {
    "sgd": lambda lr: optax.sgd(lr),
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "adam": lambda lr: optax.adam(lr),
    "adagrad": lambda lr: optax.adagrad(lr),
    "rmsprop": lambda lr: optax.rmsprop(lr),
}


def _problem():
    """A small least-squares problem with a two-leaf params tree."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=(16, 4)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(16,)), jnp.float32)
    params = {"w": jnp.asarray(rng.normal(size=(4,)), jnp.float32), "b": jnp.float32(0.5)}

    def loss(p):
        return 0.5 * jnp.mean((a @ p["w"] + p["b"] - y) ** 2)

    return params, jax.grad(loss)


def _run_ours(name, params, grad_fn, lrs, wd=0.0, n=20, **kw):
    """n updates of direction + apply_update, jitted; lrs(step) gives each update's rate."""

    @jax.jit
    def run(params):
        tx = optim.direction(name, **kw)

        def body(carry, step):
            p, state = carry
            u, state = tx.update(grad_fn(p), state, p)
            return (optim.apply_update(p, u, lrs(step), wd), state), None

        (p, _), _ = jax.lax.scan(body, (params, tx.init(params)), jnp.arange(n))
        return p

    return run(params)


def _run_optax(tx, params, grad_fn, n=20):
    @jax.jit
    def run(params):
        def body(carry, _):
            p, state = carry
            u, state = tx.update(grad_fn(p), state, p)
            return (optax.apply_updates(p, u), state), None

        (p, _), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=n)
        return p

    return run(params)


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-7):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_direction_matches_optax(name):
    params, grad_fn = _problem()
    lr = 0.05
    ours = _run_ours(name, params, grad_fn, lambda s: lr)
    ref = _run_optax(OPTAX_REFERENCE[name](lr), params, grad_fn)
    _assert_trees_close(ours, ref)
    # The run moved: a no-op optimizer would not pass.
    assert not np.allclose(ours["w"], params["w"], atol=1e-3)


@pytest.mark.parametrize(
    "name, ours_kw, ref",
    [
        ("momentum", dict(momentum=0.6), lambda lr: optax.sgd(lr, momentum=0.6)),
        (
            "momentum",
            dict(momentum=0.8, nesterov=True),
            lambda lr: optax.sgd(lr, momentum=0.8, nesterov=True),
        ),
        ("adam", dict(b1=0.7, b2=0.95, eps=1e-3), lambda lr: optax.adam(lr, 0.7, 0.95, 1e-3)),
        ("adam", dict(nesterov=True), lambda lr: optax.nadam(lr)),
        (
            "adagrad",
            dict(initial_accumulator_value=1.0, eps=1e-2),
            lambda lr: optax.adagrad(lr, initial_accumulator_value=1.0, eps=1e-2),
        ),
        ("rmsprop", dict(rms_decay=0.5, eps=1e-2), lambda lr: optax.rmsprop(lr, 0.5, 1e-2)),
    ],
    ids=["momentum", "nesterov", "adam", "nadam", "adagrad", "rmsprop"],
)
def test_direction_hyperparameters_match_optax(name, ours_kw, ref):
    params, grad_fn = _problem()
    ours = _run_ours(name, params, grad_fn, lambda s: 0.05, **ours_kw)
    _assert_trees_close(ours, _run_optax(ref(0.05), params, grad_fn))
    default = _run_ours(name, params, grad_fn, lambda s: 0.05)
    assert not np.allclose(ours["w"], default["w"], rtol=1e-4)  # the values were used


def test_default_hyperparameters_equal_optax_defaults():
    sig = inspect.signature(optim._options).parameters

    def default(fn, arg):
        return inspect.signature(fn).parameters[arg].default

    assert sig["b1"].default == default(optax.adam, "b1")
    assert sig["b2"].default == default(optax.adam, "b2")
    assert sig["initial_accumulator_value"].default == default(
        optax.adagrad, "initial_accumulator_value"
    )
    assert sig["rms_decay"].default == default(optax.rmsprop, "decay")
    assert optim._DEFAULT_EPS["adam"] == default(optax.adam, "eps")
    assert optim._DEFAULT_EPS["adagrad"] == default(optax.adagrad, "eps")
    assert optim._DEFAULT_EPS["rmsprop"] == default(optax.rmsprop, "eps")


def test_scheduled_rate_matches_optax_schedule():
    """Our step count is optax's: update k uses schedule(k), from k = 0."""
    params, grad_fn = _problem()
    peak, total, warmup = 0.1, 20, 4
    ours = _run_ours(
        "adam",
        params,
        grad_fn,
        lambda s: optim.learning_rate("linear", s, peak, total, warmup_steps=warmup),
    )
    sched = lambda c: peak * optax_unit_schedule("linear", total, warmup, 0.1, 0.0)(c)
    _assert_trees_close(ours, _run_optax(optax.adam(sched), params, grad_fn))


def test_adam_weight_decay_matches_adamw():
    params, grad_fn = _problem()
    lr, wd = 0.05, 0.3
    ours = _run_ours("adam", params, grad_fn, lambda s: lr, wd=wd)
    ref = _run_optax(optax.adamw(lr, weight_decay=wd), params, grad_fn)
    _assert_trees_close(ours, ref)
    # (test_weight_decay_is_decoupled fails if the decay were dropped)


def test_weight_decay_is_decoupled():
    """With zero gradients Adam's direction is 0, so params shrink by (1 - lr * wd) per update."""
    params = {"w": jnp.array([1.0, -2.0, 4.0])}
    lr, wd, n = 0.1, 0.5, 5
    out = _run_ours("adam", params, lambda p: jax.tree.map(jnp.zeros_like, p), lambda s: lr, wd, n)
    np.testing.assert_allclose(out["w"], params["w"] * (1 - lr * wd) ** n, rtol=1e-6)


def test_apply_update_keeps_dtype():
    params = {"w": jnp.ones(3, jnp.bfloat16)}
    out = optim.apply_update(params, {"w": jnp.ones(3, jnp.float32)}, jnp.float32(0.5), 0.0)
    assert out["w"].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out["w"], np.float32), 0.5)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_vmapped_trials_equal_each_alone(name):
    """Per-trial traced lr, weight decay, momentum and b1: each trial equals its own run."""
    params, grad_fn = _problem()
    lrs, wds, moms = [0.01, 0.05, 0.2], [0.0, 0.1, 0.01], [0.5, 0.9, 0.0]
    # (the unbatched per-trial program is also checked against optax, with constants, above)
    n = 20

    def train(lr, wd, mom):
        tx = optim.direction(name, momentum=mom, b1=mom)
        state = tx.init(params)

        def body(carry, step):
            p, s = carry
            u, s = tx.update(grad_fn(p), s, p)
            rate = optim.learning_rate("cosine", step, lr, n, warmup_steps=3)
            return (optim.apply_update(p, u, rate, wd), s), None

        (p, _), _ = jax.lax.scan(body, (params, state), jnp.arange(n))
        return p

    hps = (jnp.array(lrs), jnp.array(wds), jnp.array(moms))
    batched = jax.jit(jax.vmap(train))(*hps)
    alone = jax.jit(train)
    for i in range(3):
        _assert_trees_close(
            jax.tree.map(lambda x, i=i: x[i], batched), alone(lrs[i], wds[i], moms[i])
        )
    # Trials differ: the vmap did not broadcast one trial.
    assert not np.allclose(batched["w"][0], batched["w"][2], atol=1e-4)


@pytest.mark.parametrize(
    "name, options",
    [(name, {}) for name in optim.OPTIMIZERS]
    + [
        ("momentum", dict(momentum=0.6, nesterov=True)),
        ("adam", dict(b1=0.7, b2=0.95, eps=1e-3, nesterov=True)),
        ("adagrad", dict(initial_accumulator_value=1.0, eps=1e-2)),
        ("rmsprop", dict(rms_decay=0.5, eps=1e-2)),
        # a built-in's optax factory, named by its import path, takes the same fast path
        ("optax.adam", dict(b1=0.7, eps=1e-3)),
        ("optax.sgd", dict(momentum=0.6, nesterov=True)),
        ("optax.sgd", {}),
        ("optax.adagrad", dict(eps=1e-2)),
        ("optax.rmsprop", dict(decay=0.5)),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={v[k]}" for k in v) or "defaults",
)
def test_direction_of_state_is_the_direction_update_returns(name, options):
    """The engine steps parameters from the (selected) new optimizer state: the direction it
    computes from that state is the one optax's update returned, bit for bit."""
    rng = np.random.default_rng(3)
    params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
    tx = optim.direction(name, **options)
    state = tx.init(params)
    for _ in range(4):
        grads = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
        updates, state = tx.update(grads, state, params)
        ours = optim.direction_of_state(name, grads, state, **options)
        np.testing.assert_array_equal(ours["w"], updates["w"])
    assert not np.array_equal(updates["w"], grads["w"]) or name.endswith("sgd") and not options


@pytest.mark.parametrize(
    "name, options",
    [("optax.lion", {}), ("optax.adamw", {}), ("optax.adam", dict(eps_root=1e-8))],
    ids=str,
)
def test_direction_of_state_is_none_for_other_factories(name, options):
    """A factory that is not a built-in's, or a built-in's with a keyword the built-in does not
    name, has no direction from its state: the engine keeps what its update returned."""
    params = {"w": jnp.ones((2, 2))}
    tx = optim.direction(name, **options)
    _, state = tx.update(params, tx.init(params), params)
    assert optim.direction_of_state(name, params, state, **options) is None


def test_built_ins_are_their_optax_factories():
    """One mechanism: a built-in's transformation is its optax factory's, with hpjax's names of
    the options mapped to the factory's keywords."""
    assert optim.built_in_factory("adam", b1=0.8) == (
        "optax.adam",
        dict(b1=0.8, b2=0.999, eps=1e-8, nesterov=False),
    )
    assert optim.built_in_factory("rmsprop", rms_decay=0.5)[1] == dict(decay=0.5, eps=1e-8)
    assert optim.built_in_factory("sgd", momentum=0.5) == ("optax.sgd", {})
    params = {"w": jnp.arange(4.0)}
    for name in optim.OPTIMIZERS:
        factory, keywords = optim.built_in_factory(name)
        ours, theirs = optim.direction(name), optim.direction(factory, **keywords)
        assert jax.tree.structure(ours.init(params)) == jax.tree.structure(theirs.init(params))
