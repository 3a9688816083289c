"""ASHA's rungs and promotions, PBT's exploit and explore, and the keys' checks."""

import numpy as np
import pytest

from hpjax.config import default_config
from hpjax.errors import ConfigError
from hpjax.study import schedulers, spec


def test_asha_rungs_are_geometric_below_the_budget():
    assert schedulers.Asha(10, 3, 100).rungs == [10, 30, 90]
    assert schedulers.Asha(10, 2, 80).rungs == [10, 20, 40]


def test_asha_keeps_the_top_third_of_those_at_a_rung_so_far():
    asha = schedulers.Asha(10, 3, 100)
    # The first trial at a rung always goes on (nobody to compare with).
    assert asha.judge(0, 10, 0.5) is None
    # A worse one is beyond the 1/3 quantile of {0.5, 0.9}: pruned at rung 10.
    assert asha.judge(1, 10, 0.9) == 10
    # A better one goes on; one at 0.6 among {0.5, 0.9, 0.4, 0.6}: quantile 1/3 = 0.5 -> pruned.
    assert asha.judge(2, 10, 0.4) is None
    assert asha.judge(3, 10, 0.6) == 10
    # Judged once per rung: the same step again records nothing more.
    assert asha.judge(0, 10, 0.5) is None and len(asha.recorded[0]) == 4
    # Trial 2 jumps two rungs at once: recorded at 10 already, now at 30 (first there: goes on).
    assert asha.judge(2, 35, 0.3) is None and asha.recorded[1] == [0.3]
    # A diverged trial (nan) is the worst.
    assert asha.judge(4, 10, float("nan")) == 10
    restored = schedulers.Asha(10, 3, 100)
    restored.load_state(asha.state_dict())
    assert restored.recorded == asha.recorded and restored.passed == asha.passed


def pbt_config(**overrides):
    config = default_config()
    config.scheduler = "pbt"
    config.eval_every = 10
    config.pbt.interval = 20
    config.pbt.fraction = 0.25
    config.pbt.resample_probability = 0.0
    config.space = {"learning_rate": (1e-3, 1.0, "log"), "weight_decay": (0.0, 0.5, "linear")}
    config.num_samples = 8
    for k, v in overrides.items():
        config[k] = v
    return config


def pbt(**overrides) -> schedulers.Pbt:
    return schedulers.Pbt(spec.parse(pbt_config(**overrides)).adaptive)


def test_pbt_bottom_copies_top_and_perturbs_by_the_factors():
    scheduler = pbt()
    values = np.array([0.3, 0.1, 0.9, 0.5, 0.2, 0.8, 0.4, 0.7])
    lr = np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08])
    wd = np.full(8, 0.1)
    columns = {"learning_rate": lr.copy(), "weight_decay": wd.copy()}
    exploits = scheduler.step(values, columns, tick=20, step=20)
    assert sorted(e.trial for e in exploits) == [2, 5]  # the two worst of eight
    for e in exploits:
        assert e.parent in (1, 4)  # the two best
        ratio = columns["learning_rate"][e.trial] / lr[e.parent]
        assert np.isclose(ratio, 0.8) or np.isclose(ratio, 1.25)
        assert e.before["learning_rate"] == lr[e.trial]
    untouched = [0, 1, 3, 4, 6, 7]
    assert np.array_equal(columns["learning_rate"][untouched], lr[untouched])
    assert not scheduler.due(39) and scheduler.due(40)


def test_pbt_resampling_stays_in_the_space_and_state_round_trips():
    scheduler = pbt()
    scheduler.resample_probability = 1.0
    columns = {"learning_rate": np.full(4, 0.01), "weight_decay": np.full(4, 0.1)}
    scheduler.step(np.array([0.1, 0.2, 0.3, 0.4]), columns, tick=20, step=20)
    assert 1e-3 <= columns["learning_rate"][3] <= 1.0
    again = pbt()
    again.load_state(scheduler.state_dict())
    assert again.next_step == scheduler.next_step and len(again.history) == 1
    assert again.rng.random() == scheduler.rng.random()


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("scheduler", "hyperband", "scheduler.*allowed: none, asha, pbt"),
        ("asha.eta", 1.5, r"asha.eta.*\[2, inf\)"),
        ("asha.min_steps", 0, "asha.min_steps"),
        ("pbt.fraction", 0.6, r"pbt.fraction.*\(0, 0.5\]"),
        ("pbt.fraction", 0.0, r"pbt.fraction.*\(0, 0.5\]"),
        ("pbt.interval", 15, "pbt.interval.*multiple of eval_every"),
        ("slots", -1, "slots.*>= 0"),
    ],
)
def test_bad_scheduler_keys_are_named(key, value, message):
    config = pbt_config()
    config.scheduler = "asha" if key.startswith("asha") else config.scheduler
    section, _, name = key.rpartition(".")
    (config[section] if section else config)[name] = value
    with pytest.raises(ConfigError, match=message):
        spec.parse(config)
