"""Search spaces: what each sampler draws, and one line naming the key for a bad space."""

import math

import ml_collections
import numpy as np
import pytest

from hpjax.config import default_config
from hpjax.errors import ConfigError
from hpjax.study import populations, space, spec


def dims(**entries):
    return space.parse_space(ml_collections.ConfigDict(entries))


def test_quasi_random_points_cover_a_log_range_evenly():
    (lr,) = dims(learning_rate=(1e-4, 1e-1, "log"))
    points = [p["learning_rate"] for p in space.sample([lr], "quasi_random", 64, seed=0)]
    assert len(points) == 64 and all(1e-4 <= p <= 1e-1 for p in points)
    decades = np.histogram(np.log10(points), bins=[-4, -3, -2, -1])[0]
    assert list(decades) == [21, 22, 21] or max(decades) - min(decades) <= 2


def test_every_dimension_takes_its_type_and_scale():
    d = dims(
        learning_rate=(1e-3, 1.0, "log"),
        warmup_steps=(0, 100, "linear"),
        batch_size=(32, 64, 128),
        end_factor=(0.0, 0.5, "linear"),
        momentum=(0.8, 0.99, "linear"),
    )
    for sampler in ("random", "quasi_random"):
        for p in space.sample(d, sampler, 40, seed=3):
            assert isinstance(p["warmup_steps"], int) and 0 <= p["warmup_steps"] <= 100
            assert p["batch_size"] in (32, 64, 128)
            assert 0.0 <= p["end_factor"] <= 0.5
            assert 0.8 <= p["momentum"] <= 0.99
    chosen = {p["batch_size"] for p in space.sample(d, "quasi_random", 16, seed=0)}
    assert chosen == {32, 64, 128}


def test_grid_is_the_product_of_choices():
    d = dims(learning_rate=(0.1, 0.01), weight_decay=(0.0, 1.0, 2.0))
    points = space.sample(d, "grid", 0, seed=0)
    assert len(points) == 6 and {"learning_rate": 0.01, "weight_decay": 2.0} in points


def test_a_config_space_becomes_trials_with_their_schedule_values():
    config = default_config()
    config.space = {"learning_rate": (1e-3, 1e-1, "log"), "warmup_steps": (0, 50, "linear")}
    config.num_samples = 5
    config.seeds = (0, 1)
    study = spec.parse(config)
    trials = study.trials
    assert len(trials) == 10 and [t.index for t in trials] == list(range(10))
    assert {t.seed for t in trials} == {0, 1}
    (population,) = populations.plan_populations(study, trials, num_train=1000)
    assert list(population.warmup_steps) == [t.warmup_steps for t in trials]
    hparams = population.hparams()
    assert np.allclose(hparams.learning_rate, [t.learning_rate for t in trials])


@pytest.mark.parametrize(
    "entries,sampler,message",
    [
        ({"learning_rate": (0.1, 0.01, "log")}, "random", "space.learning_rate.*reversed"),
        ({"learning_rate": (0.0, 0.1, "log")}, "random", "space.learning_rate.*non-positive"),
        ({"momentum_x": (0.1, 0.9, "linear")}, "random", "space.momentum_x.*not searchable"),
        ({"learning_rate": (1e-3, 1e-1, "log")}, "grid", "space.learning_rate.*cannot be gridded"),
        ({"learning_rate": (1e-3, 1e-1, "log")}, "sobol", "space_sampler.*allowed: grid"),
        ({"learning_rate": ()}, "random", "space.learning_rate.*needs"),
    ],
)
def test_a_bad_space_names_the_key(entries, sampler, message):
    with pytest.raises(ConfigError, match=message):
        space.sample(dims(**entries), sampler, 4, seed=0)


def test_log_dimension_maps_unit_interval_exactly():
    (d,) = dims(learning_rate=(1e-4, 1e-2, "log"))
    assert math.isclose(d.at(0.5), 1e-3)
