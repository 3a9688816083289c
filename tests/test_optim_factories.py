"""Any optax optimizer factory as a study's optimizer (issue 35, first part): a population of
trials of ``optax.lion``, ``optax.adamw``, ``optax.contrib.muon`` or a user's ``optax.chain``
equals each trial trained alone by that optax optimizer in a plain loop written here; the API
takes the factory itself, a study with one resumes after a kill as if uninterrupted, and what
cannot work is refused in one line before compiling."""

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import optuna
import pytest
from flax import nnx

import hpjax
from hpjax import api
from hpjax.engine import population
from hpjax.errors import ConfigError
from hpjax.models import build_model
from hpjax.results import files, optuna_storage
from hpjax.study.run import train_and_evaluate
from tests.conftest import Crash, CrashAtEvaluation, three_class_data, trial_hparams

NUM_TRAIN = 48


def clipped_adam(learning_rate, max_norm: float = 1.0) -> optax.GradientTransformation:
    """A user's chain: Adam on gradients clipped to a global norm."""
    return optax.chain(optax.clip_by_global_norm(max_norm), optax.adam(learning_rate))


def clipped_momentum(learning_rate, max_norm: float = 1.0) -> optax.GradientTransformation:
    """A user's chain whose clip norm matters (Adam's scale invariance hides most of it)."""
    return optax.chain(optax.clip_by_global_norm(max_norm), optax.sgd(learning_rate, 0.9))


FACTORIES = [
    ("optax.lion", {"b1": 0.95}, lambda lr: optax.lion(lr, b1=0.95)),
    ("optax.adamw", {"weight_decay": 0.1}, lambda lr: optax.adamw(lr, weight_decay=0.1)),
    (f"{__name__}.clipped_adam", {"max_norm": 0.05}, lambda lr: clipped_adam(lr, 0.05)),
    # optax >= 0.2.8 (pyproject.toml) has Muon
    ("optax.contrib.muon", {"beta": 0.9}, lambda lr: optax.contrib.muon(lr, beta=0.9)),
]


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(NUM_TRAIN, 6)).astype(np.float32)
    y = np.argmax(x[:, :3] @ rng.normal(size=(3, 3)), axis=1).astype(np.int32)
    keys = {"name": "mlp", "hidden_units": 16, "num_layers": 2, "activation": "tanh"}
    model = build_model(ml_collections.ConfigDict(keys), (6,), 3)
    return model, jnp.asarray(x), jnp.asarray(y)


def _spec(model, name, kwargs, microbatch):
    return population.PopulationSpec(
        model=model,
        optimizer=name,
        schedule="constant",
        microbatch=microbatch,
        num_train=NUM_TRAIN,
        optimizer_options=tuple(sorted(kwargs.items())),
        accumulates=False,
    )


def _train(problem, spec, trials, ticks):
    model, x, y = problem
    hparams = trial_hparams(trials)
    start = population.init_population(spec, hparams)
    kept = jax.device_get(start)  # train_ticks donates the state it is given
    return kept, population.train_ticks(spec, start, hparams, x, y, jnp.int32(ticks))


def _row(tree, j):
    return jax.tree.map(lambda a: np.asarray(a[j]), tree)


def _plain_loop(transformation, params, loss, steps):
    """``steps`` full-batch updates of ``transformation``: optax's own loop, not hpjax's."""
    opt_state = transformation.init(params)
    for _ in range(steps):
        updates, opt_state = transformation.update(jax.grad(loss)(params), opt_state, params)
        params = optax.apply_updates(params, updates)
    return params


@pytest.mark.parametrize("name,kwargs,make", FACTORIES, ids=[f[0] for f in FACTORIES])
def test_a_population_of_a_factory_equals_each_trial_in_a_plain_optax_loop(
    problem, name, kwargs, make
):
    """Full batches (every tick sees the whole training set), so the plain loop sees the same
    gradients; two learning rates and two seeds in one population."""
    model, x, y = problem
    spec = _spec(model, name, kwargs, NUM_TRAIN)
    # Muon's Newton-Schulz iterations amplify the order of a gradient's sums (1e-7) to 2e-6
    atol = 1e-5 if "muon" in name else 1e-6
    trials = [
        {"learning_rate": lr, "seed": seed, "max_steps": 12, "batch_size": NUM_TRAIN}
        for lr in (0.003, 0.03)
        for seed in (0, 1)
    ]
    start, end = _train(problem, spec, trials, 12)

    def loss(params):
        return spec.task.mean_loss(model.apply(params, x), y)

    for j, trial in enumerate(trials):
        params = _plain_loop(make(trial["learning_rate"]), _row(start.trials.params, j), loss, 12)
        jax.tree.map(
            lambda ours, theirs: np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=atol),
            _row(end.trials.params, j),
            params,
        )
    first, last = (jax.tree.leaves(_row(t.trials.params, 0))[0] for t in (start, end))
    assert np.abs(last - first).max() > 1e-3  # it trained


@pytest.mark.parametrize(
    "axis,values", [("learning_rate", (0.003, 0.01, 0.03)), ("seed", (0, 1, 2))]
)
def test_a_factory_population_on_mini_batches_equals_each_trial_alone(problem, axis, values):
    model, _, _ = problem
    spec = _spec(model, "optax.lion", {"b1": 0.95}, 8)
    trials = [{axis: v, "max_steps": 18, "batch_size": 8} for v in values]
    _, together = _train(problem, spec, trials, 18)
    for j, trial in enumerate(trials):
        _, alone = _train(problem, spec, [trial], 18)
        for tree in ("params", "opt_state"):
            jax.tree.map(
                lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
                _row(getattr(together.trials, tree), j),
                _row(getattr(alone.trials, tree), 0),
            )


class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(16, 16, rngs=rngs)
        self.head = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        return self.head(nnx.tanh(self.hidden(x)))


def net(rngs: nnx.Rngs) -> nnx.Module:
    return Net(rngs)


@pytest.fixture(scope="module")
def data():
    return three_class_data()


STEPS = dict(num_steps=30, eval_every=10, patience=0, batch_size=8, learning_rates=(1e-3, 1e-2))


def test_the_api_takes_a_factory_or_a_partial_and_resumes_after_a_kill(data, tmp_path):
    lion = functools.partial(optax.lion, b1=0.95)
    cfg = api.make_config("net", data.name, optimizer=lion, **STEPS)
    assert cfg.optimizer == "optax.lion" and json.loads(cfg.optimizer_kwargs) == {"b1": 0.95}
    killed = str(tmp_path / "killed")
    with pytest.raises(Crash):
        train_and_evaluate(cfg, killed, model=net, dataset=data, hooks=[CrashAtEvaluation(2)])
    resumed = train_and_evaluate(cfg, killed, model=net, dataset=data)
    whole = hpjax.train(net, data, str(tmp_path / "whole"), optimizer=lion, verbose=False, **STEPS)
    assert len(resumed) == 2
    for a, b in zip(resumed, whole.rows, strict=True):
        for key in ("learning_rate", "best_val_loss", "test_loss", "test_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), key
    saved = files.read_config(str(tmp_path / "whole"))
    assert saved["optimizer"] == "optax.lion"
    # The same study under Adam ends elsewhere: the factory is what trained.
    adam = hpjax.train(net, data, str(tmp_path / "adam"), verbose=False, **STEPS)
    assert adam.rows[1]["best_val_loss"] != pytest.approx(whole.rows[1]["best_val_loss"], rel=1e-3)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(optimizer="optax.lino"), r"optimizer='optax.lino'.*optax has no 'lino'"),
        (dict(optimizer="nowhere_module.opt"), r"optimizer='nowhere_module.opt'.*no module"),
        (dict(optimizer="optax.scale_by_adam"), r"optimizer='optax.scale_by_adam'.*learning_rate"),
        (dict(optimizer="optax.lion", optimizer_kwargs='{"beta": 1}'), r"optimizer_kwargs.*beta"),
        (dict(optimizer="optax.lion", optimizer_kwargs="b1=0.9"), r"optimizer_kwargs.*JSON object"),
        (
            dict(optimizer="optax.lion", space={"momentum": (0.5, 0.9)}, space_sampler="grid"),
            r"momentum.*optax.lion.*optimizer_kwargs",
        ),
        (
            dict(optimizer=lambda learning_rate: optax.sgd(learning_rate)),
            r"optimizer=.*lambda.*module",
        ),
    ],
)
def test_what_a_factory_cannot_do_is_one_line_before_compiling(overrides, match, data, tmp_path):
    with pytest.raises(ConfigError, match=match) as error:
        hpjax.train(net, data, str(tmp_path / "w"), verbose=False, **(STEPS | overrides))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "w").exists()


def test_mup_with_a_factory_is_refused_in_one_line_before_the_workdir(data, tmp_path):
    cfg = hpjax.config.default_config()
    cfg.model.parametrization = "mup"
    cfg.optimizer = "optax.lion"
    cfg.update(num_steps=20, eval_every=10, learning_rates=(1e-3,), batch_size=8)
    with pytest.raises(ConfigError, match="optax.lion.*μP") as error:
        train_and_evaluate(cfg, str(tmp_path / "w"), dataset=data)
    assert "\n" not in str(error.value) and not (tmp_path / "w").exists()


# Per-trial keywords of a factory: each trial's value traced inside the one compiled program.
KEYWORD_AXES = [
    ("optax.lion", {}, "b1", (0.8, 0.95), lambda lr, v: optax.lion(lr, b1=v)),
    (
        "optax.adamw",
        {"weight_decay": 0.1},
        "b2",
        (0.9, 0.999),
        lambda lr, v: optax.adamw(lr, b2=v, weight_decay=0.1),
    ),
    (f"{__name__}.clipped_momentum", {}, "max_norm", (0.02, 0.5), clipped_momentum),
    ("optax.contrib.muon", {}, "beta", (0.8, 0.95), lambda lr, v: optax.contrib.muon(lr, beta=v)),
]


@pytest.mark.parametrize(
    "name,kwargs,key,values,make", KEYWORD_AXES, ids=[f"{a[0]}-{a[2]}" for a in KEYWORD_AXES]
)
def test_a_population_over_rates_and_a_factory_keyword_equals_each_trial_in_a_plain_loop(
    problem, name, kwargs, key, values, make
):
    """2 rates x 2 values of the keyword in one program; each trial against the optax optimizer
    built with its own value, stepped in a loop written here."""
    model, x, y = problem
    spec = dataclasses.replace(_spec(model, name, kwargs, NUM_TRAIN), traced_options=(key,))
    grid = [(lr, v) for lr in (0.003, 0.03) for v in values]
    trials = [{"learning_rate": lr, "max_steps": 12, "batch_size": NUM_TRAIN} for lr, _ in grid]
    hparams = trial_hparams(trials).replace(
        optimizer_values={key: jnp.asarray([v for _, v in grid], jnp.float32)}
    )
    start = population.init_population(spec, hparams)
    kept = jax.device_get(start)
    end = population.train_ticks(spec, start, hparams, x, y, jnp.int32(12))
    atol = 1e-5 if "muon" in name else 1e-6  # parameters of order 0.1-1: matmul rounding

    def loss(params):
        return spec.task.mean_loss(model.apply(params, x), y)

    finals = []
    for j, (lr, value) in enumerate(grid):
        transformation = make(lr, np.float32(value))
        params = _plain_loop(transformation, _row(kept.trials.params, j), loss, 12)
        jax.tree.map(
            lambda ours, theirs: np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=atol),
            _row(end.trials.params, j),
            params,
        )
        finals.append(params)
    # the keyword changed the trajectory: trials of one rate and two values differ
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), finals[0], finals[1])
    assert max(jax.tree.leaves(moved)) > 1e-4


SEARCHED = dict(
    num_steps=30,
    eval_every=10,
    patience=0,
    batch_size=8,
    space={"learning_rate": hpjax.loguniform(1e-3, 1e-2), "b1": hpjax.uniform(0.8, 0.99)},
    num_samples=4,
)


def test_a_study_searching_lions_b1_resumes_after_a_kill_and_names_b1_everywhere(data, tmp_path):
    cfg = api.make_config("net", data.name, optimizer=optax.lion, **SEARCHED)
    killed = str(tmp_path / "killed")
    with pytest.raises(Crash):
        train_and_evaluate(cfg, killed, model=net, dataset=data, hooks=[CrashAtEvaluation(2)])
    resumed = train_and_evaluate(cfg, killed, model=net, dataset=data)
    whole = hpjax.train(
        net, data, str(tmp_path / "whole"), optimizer=optax.lion, verbose=False, **SEARCHED
    )
    b1s = [r["b1"] for r in whole.rows]
    assert len(set(b1s)) == 4 and all(0.8 <= b <= 0.99 for b in b1s)
    for a, b in zip(resumed, whole.rows, strict=True):
        for key in ("learning_rate", "b1", "best_val_loss", "test_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), key
    summary = files.read_summary(str(tmp_path / "whole"))
    assert [r["b1"] for r in summary] == b1s  # exact in summary.csv: a trial can be rerun
    # each trial alone, with its b1 as a static keyword, ends where it ended in the population
    for row in whole.rows[:2]:
        alone = hpjax.train(
            net,
            data,
            str(tmp_path / f"alone{row['trial']}"),
            optimizer=functools.partial(optax.lion, b1=row["b1"]),
            verbose=False,
            **(
                SEARCHED
                | {"space": {}, "num_samples": 0, "learning_rates": (row["learning_rate"],)}
            ),
        )
        assert alone.rows[0]["best_val_loss"] == pytest.approx(row["best_val_loss"], rel=1e-5)


def test_pbt_over_lions_b1_and_the_rate_replays_every_member_alone(tiny_config, tmp_path):
    from hpjax.studies import pbt

    config = tiny_config
    config.optimizer = "optax.lion"
    config.num_steps, config.patience = 60, 0
    config.scheduler = "pbt"
    config.space = {"learning_rate": (1e-4, 3e-3, "log"), "b1": (0.8, 0.99, "linear")}
    config.num_samples = 4
    config.pbt.interval = 20
    config.pbt.resample_probability = 0.0
    workdir = str(tmp_path / "pbt_lion")
    rows = train_and_evaluate(config, workdir)
    lineage = files.read_csv(str(tmp_path / "pbt_lion" / "lineage.csv"))
    assert {"before_b1", "after_b1"} <= set(lineage[0])
    assert any(e["after_b1"] != e["before_b1"] for e in lineage)
    assert all("b1_at_best" in r for r in rows)
    for member in range(4):
        for r in pbt.replay(workdir, member):
            assert r["replayed_val_loss"] == pytest.approx(r["recorded_val_loss"], rel=1e-6)


@pytest.mark.parametrize(
    "optimizer,space,match",
    [
        ("optax.contrib.muon", {"ns_steps": (3, 5)}, r"muon's keyword 'ns_steps' cannot differ"),
        ("optax.adamw", {"nesterov": (0, 1)}, r"adamw's keyword 'nesterov' cannot differ"),
        ("optax.lion", {"mu_dtype": (1.0, 2.0)}, r"mu_dtype.*cannot differ"),
        ("optax.lion", {"beta": (0.5, 0.9)}, r"space.beta.*not searchable.*b1, b2"),
    ],
)
def test_a_keyword_the_factory_needs_fixed_is_refused_in_one_line(
    optimizer, space, match, data, tmp_path
):
    steps = STEPS | {"space": space, "space_sampler": "grid", "learning_rates": (1e-3,)}
    with pytest.raises(ConfigError, match=match) as error:
        hpjax.train(net, data, str(tmp_path / "w"), optimizer=optimizer, verbose=False, **steps)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "w").exists()


def test_a_search_proposes_lions_b1_and_each_trial_trains_with_its_own(data, tmp_path):
    rows = hpjax.search(
        net,
        data,
        str(tmp_path / "search"),
        space={"learning_rate": hpjax.loguniform(1e-3, 1e-2), "b1": hpjax.uniform(0.8, 0.99)},
        num_trials=4,
        population=2,
        sampler="optuna_random",
        optimizer=optax.lion,
        verbose=False,
        **{k: v for k, v in STEPS.items() if k != "learning_rates"},
    )
    assert len(rows) == 4 and len({r["b1"] for r in rows}) == 4
    assert all(r["weight_decay"] == 0.0 for r in rows)  # the space given, not the default's
    assert all(0.8 <= r["b1"] <= 0.99 for r in rows)
    row = rows[-1]  # its b1 is what trained it: the same trial with b1 as a fixed keyword
    alone = hpjax.train(
        net,
        data,
        str(tmp_path / "alone"),
        optimizer=functools.partial(optax.lion, b1=row["b1"]),
        verbose=False,
        **(STEPS | {"learning_rates": (row["learning_rate"],)}),
    )
    assert alone.rows[0]["best_val_loss"] == pytest.approx(row["best_val_loss"], rel=1e-5)


def test_the_report_plots_against_a_searched_factory_keyword(data, tmp_path):
    workdir = str(tmp_path / "b1")
    hpjax.train(net, data, workdir, optimizer=optax.lion, verbose=False, report_x="b1", **SEARCHED)
    assert os.path.exists(os.path.join(workdir, "plots", "b1_vs_best_val_loss.png"))
    assert "b1 vs best val loss" in open(os.path.join(workdir, "report.md")).read()
    # Optuna's export has b1 as the range it was drawn from, not 4 categories
    storage = optuna_storage.journal(os.path.join(workdir, "optuna.log"))
    (name,) = optuna.get_all_study_names(storage)
    (trial, *_) = optuna.load_study(study_name=name, storage=storage).trials
    assert isinstance(trial.distributions["b1"], optuna.distributions.FloatDistribution)
