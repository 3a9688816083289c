"""The parser and the trials: every way of naming trials, sampling, scaling rules, populations
and their budgets, and one line naming the key for a bad value."""

import math

import ml_collections
import numpy as np
import pytest

from hpjax.errors import ConfigError
from hpjax.study import populations, space, spec, trials
from tests.conftest import load_config


@pytest.fixture
def config():
    config = load_config("lr_sweep")
    config.learning_rates = (0.01, 0.1)
    config.seeds = (0, 1)
    config.num_steps = 100
    return config


def test_grid_is_the_cartesian_product_in_order(config):
    config.batch_sizes = (16, 32)
    made = spec.parse(config).trials
    assert len(made) == 2 * 2 * 2
    assert [(t.learning_rate, t.batch_size, t.seed) for t in made[:4]] == [
        (0.01, 16, 0),
        (0.01, 16, 1),
        (0.01, 32, 0),
        (0.01, 32, 1),
    ]
    assert [t.index for t in made] == list(range(8))


def test_log_uniform_and_quasi_random_rates_lie_in_range_and_are_reproducible(config):
    config.lr_range = (1e-4, 1e-1)
    config.num_lr_samples = 64
    for sampling in ("log_uniform", "quasi_random"):
        config.lr_sampling = sampling
        rates = trials.learning_rates(spec.parse(config).source)
        assert rates == trials.learning_rates(spec.parse(config).source) and len(rates) == 64
        logs = np.log10(rates)
        assert logs.min() >= -4 and logs.max() <= -1
        # both cover the log range: every decade holds about a third of the samples
        counts = np.histogram(logs, bins=3, range=(-4, -1))[0]
        assert counts.min() >= 10, counts


def test_sampled_rates_are_the_one_space_sampler(config):
    """lr_sampling is sugar: its rates are the points of a one-dimensional space."""
    config.lr_range = (1e-4, 1e-1)
    config.num_lr_samples = 16
    config.sampling_seed = 3
    dimension = space.Dimension("learning_rate", 1e-4, 1e-1, "log")
    for sampling, sampler in (("log_uniform", "random"), ("quasi_random", "quasi_random")):
        config.lr_sampling = sampling
        drawn = [p["learning_rate"] for p in space.sample([dimension], sampler, 16, 3)]
        assert trials.learning_rates(spec.parse(config).source) == tuple(drawn)
        # the old generator of log_uniform (numpy's uniform draws) gives the same rates
        if sampling == "log_uniform":
            unit = np.random.default_rng(3).random(16)
            np.testing.assert_allclose(drawn, 1e-4 * (1e-1 / 1e-4) ** unit, rtol=1e-12)


def test_scaling_rules(config):
    config.base_batch_size = 32
    for rule, factor in (("fixed", 1.0), ("linear", 4.0), ("sqrt", 2.0)):
        config.lr_scaling = rule
        source = spec.parse(config).source
        assert trials.scaled_learning_rate(source, 0.01, 128) == pytest.approx(0.01 * factor)
    config.lr_scaling = "cubic"
    with pytest.raises(ConfigError, match="allowed: fixed, linear, sqrt"):
        spec.parse(config)


def test_model_grid_gives_one_population_per_architecture(config):
    config.model_grid = ml_collections.ConfigDict({"hidden_units": (8, 16), "num_layers": (1, 2)})
    study = spec.parse(config)
    made = study.trials
    plans = populations.plan_populations(study, made, 1000)
    assert len(made) == 4 * 4 and len(plans) == 4
    assert {tuple(sorted(p.architecture.items())) for p in plans} == {
        (("hidden_units", u), ("num_layers", n)) for u in (8, 16) for n in (1, 2)
    }
    assert study.model_config(made[-1].architecture)["hidden_units"] == 16


def test_a_space_is_crossed_with_model_grid_and_every_list_it_does_not_hold(config):
    """A binary's config: model_grid.hidden_units and batch_sizes beside a space of rates and
    decays (every trial was at 256 units and the first batch size)."""
    config.model_grid = ml_collections.ConfigDict({"hidden_units": (8, 64)})
    config.batch_sizes = (16, 32)
    config.space = ml_collections.ConfigDict(
        {"learning_rate": (1e-3, 1e-1, "log"), "weight_decay": (0.0, 0.5)}
    )
    config.space_sampler = "random"
    config.num_samples = 3
    made = spec.parse(config).trials
    cells = {(t.architecture_dict["hidden_units"], t.batch_size, t.seed) for t in made}
    assert len(made) == 2 * 3 * 2 * 2 and len(cells) == 2 * 2 * 2
    assert len({(t.learning_rate, t.weight_decay) for t in made}) == 3
    # the architecture outermost, then the space's points, then the lists, seeds inner
    assert [t.architecture_dict["hidden_units"] for t in made] == [8] * 12 + [64] * 12
    assert [(t.batch_size, t.seed) for t in made[:4]] == [(16, 0), (16, 1), (32, 0), (32, 1)]
    plans = populations.plan_populations(spec.parse(config), made, 1000)
    assert {p.architecture["hidden_units"] for p in plans} == {8, 64}


def test_batch_groups():
    powers = [2**i for i in range(12)]
    assert populations.batch_groups(powers, "vmap", 8) == dict.fromkeys(powers, 0)
    assert len(set(populations.batch_groups(powers, "split", 8).values())) == 12
    auto = populations.batch_groups(powers, "auto", 8)
    assert [auto[b] for b in powers] == [0] * 4 + [1] * 4 + [2] * 4
    assert populations.batch_groups([3, 32, 96], "auto", 8) == {3: 0, 32: 1, 96: 1}


def test_budget_in_epochs_and_steps_per_batch_size(config):
    config.batch_sizes = (10, 30)
    config.batch_axis = "vmap"
    config.seeds = (0,)
    config.learning_rates = (0.1,)
    config.num_epochs = 2.5
    study = spec.parse(config)
    (plan,) = populations.plan_populations(study, study.trials, 1000)
    assert plan.microbatch == 10
    assert plan.max_steps == (250, 83)  # floor(2.5 * 1000 / b)
    assert plan.total_ticks == 250
    config.num_epochs = 0.0
    config.eval_every = 5
    study = spec.parse(config)
    (plan,) = populations.plan_populations(study, study.trials, 1000)
    assert plan.max_steps == (100, 100) and plan.total_ticks == 300
    # windows are eval_every steps of the sizes' gcd (10): each row is evaluated at its own
    # steps 5, 10, ..., as alone, so batch 30 (3 ticks a step) at every third window
    assert plan.evaluates_by_row and plan.eval_ticks == 5
    budget = np.array(plan.max_steps)
    before = (np.array([5, 1]), np.array([False, False]))
    after = (np.array([10, 3]), np.array([False, False]))
    assert plan.due(before, after, budget, 5).tolist() == [True, False]
    after = (np.array([10, 5]), np.array([False, False]))
    assert plan.due(before, after, budget, 5).tolist() == [True, True]


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("seeds", (), "config.seeds=() is empty"),
        ("seeds", (-1,), "non-negative integers"),
        ("batch_size", 0, "config.batch_size=0 must hold positive integers"),
        ("batch_sizes", (32, -2), "config.batch_sizes=(32, -2) must hold positive integers"),
        ("lr_sampling", "sobol", "allowed: grid, log_uniform, quasi_random"),
        ("batch_axis", "pmap", "allowed: auto, split, vmap"),
        ("num_steps", 0, "config.num_steps=0 must be positive"),
        ("eval_every", 0, "config.eval_every=0"),
    ],
)
def test_bad_values_name_the_key(config, key, value, message):
    config[key] = value
    with pytest.raises(ConfigError) as error:
        spec.parse(config, num_train=1000)
    assert message in str(error.value)


def test_batch_size_above_the_training_set(config):
    config.batch_sizes = (64, 2048)
    with pytest.raises(ConfigError, match="2048 is larger than the training set"):
        spec.parse(config, num_train=1000)
    assert math.isfinite(trials.learning_rates(spec.parse(config).source)[0])
