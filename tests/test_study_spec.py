"""Parse once: every key in one table of defaults, typed sections, one line for a bad value."""

import math

import ml_collections
import pytest

from hpjax.api import make_config
from hpjax.config import default_config
from hpjax.engine import optim
from hpjax.errors import ConfigError
from hpjax.models.registry import default_model_config
from hpjax.study import spec


def _flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in config.items():
        keys.add(prefix + key)
        if isinstance(value, ml_collections.ConfigDict):
            keys |= _flat_keys(value, f"{prefix}{key}.")
    return keys


def test_every_key_the_parser_reads_has_its_default_in_the_one_table(monkeypatch):
    read = []
    original = spec._Reader.raw

    def recording(self, key):
        read.append(key)
        return original(self, key)

    monkeypatch.setattr(spec._Reader, "raw", recording)
    config = default_config()
    config.scheduler = "pbt"  # reads the PBT keys too
    config.space = {"learning_rate": (1e-3, 1e-1, "log")}
    config.num_samples = 4
    spec.parse(config)
    missing = sorted(set(read) - _flat_keys(default_config()))
    assert not missing and {"b1", "b2", "eps", "eval_batch_size", "pbt.interval"} <= set(read)


def test_a_config_without_a_key_takes_the_tables_default():
    """A hand-made config (or an older config.json) missing keys parses to the defaults."""
    bare = ml_collections.ConfigDict({"learning_rates": (0.1,), "model": {"name": "mlp"}})
    parsed = spec.parse(bare)
    full = spec.parse(default_config())
    assert parsed.placement == full.placement  # batch_axis 'auto' as in the table, not 'vmap'
    assert parsed.budget == full.budget and parsed.adaptive.scheduler == "none"
    assert default_config().model.to_dict() == default_model_config("mlp").to_dict()


def test_optimizer_options_reach_the_spec_and_the_api_accepts_them():
    config = make_config("m", "d", optimizer="adam", b1=0.8, b2=0.99, eps=1e-6, eval_batch_size=64)
    parsed = spec.parse(config)
    assert parsed.optimizer.options == (("b1", 0.8), ("b2", 0.99), ("eps", 1e-6))
    assert parsed.optimizer.first_moment == 0.8 and parsed.budget.eval_batch_size == 64
    config.optimizer, config.eps = "adagrad", 0.0  # 0 = optax's own default: not passed
    assert spec.parse(config).optimizer.options == (("initial_accumulator_value", 0.1),)
    config.optimizer, config.nesterov = "momentum", True
    assert spec.parse(config).optimizer.options == (("momentum", 0.9), ("nesterov", True))


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("learning_rates", (True,), "must hold positive finite numbers"),
        ("num_steps", 0, "must be positive"),
        ("patience", True, "must be an integer"),
        ("b1", 1.0, r"config\.b1=1\.0 must be in \[0, 1\)"),
        ("eps", -1.0, r"config\.eps=-1\.0 must be in \[0, inf\]"),
        ("tensorboard", "yes", "allowed: auto, on, off"),
        ("optuna_storage", "mysql", "allowed: auto, off, sqlite or a database URL"),
        ("eval_batch_size", 0, r"config\.eval_batch_size=0 must be an integer >= 1"),
    ],
)
def test_bad_values_are_named_in_one_line(key, value, message):
    config = default_config()
    config[key] = value
    with pytest.raises(ConfigError, match=message) as error:
        spec.parse(config)
    assert "\n" not in str(error.value)


def test_the_spec_is_frozen_and_carries_the_config_json():
    config = default_config()
    parsed = spec.parse(config)
    with pytest.raises(AttributeError):
        parsed.budget.patience = 3  # type: ignore[misc]
    assert parsed.config["learning_rates"] == list(config.learning_rates)
    assert parsed.model_config((("hidden_units", 16),))["hidden_units"] == 16
    assert parsed.model["hidden_units"] == 256


# --------------------------------------------------- optimizer and schedule keys (engine/optim)


def _config(**overrides):
    config = default_config()
    config.update(dict(optimizer="adam", schedule="cosine", warmup_steps=10, decay_rate=0.1))
    config.update(dict(end_factor=0.0, weight_decays=(0.0, 1e-4), momentum=0.9))
    for key, value in overrides.items():
        config[key] = value
    return config


def test_valid_optimizer_and_schedule_keys_pass():
    spec.parse(_config())
    for name in optim.OPTIMIZERS:
        for kind in optim.SCHEDULES:
            spec.parse(_config(optimizer=name, schedule=kind))
    spec.parse(
        _config(warmup_steps=0, decay_rate=1.0, end_factor=1.0, momentum=0.0, weight_decays=(0,))
    )


@pytest.mark.parametrize(
    "key, value, needle",
    [
        (
            "optimizer",
            "adamw",
            "config.optimizer='adamw' is unknown; allowed: adagrad, adam, momentum, rmsprop, sgd",
        ),
        (
            "schedule",
            "step",
            "config.schedule='step' is unknown; allowed: constant, cosine, exponential, linear",
        ),
        ("warmup_steps", -1, "config.warmup_steps=-1 must be an integer >= 0"),
        ("decay_rate", 0.0, "config.decay_rate=0.0 must be in (0, 1]"),
        ("decay_rate", 1.5, "config.decay_rate=1.5 must be in (0, 1]"),
        ("decay_rate", math.nan, "config.decay_rate=nan"),
        ("end_factor", -0.1, "config.end_factor=-0.1 must be in [0, 1]"),
        ("end_factor", 1.01, "config.end_factor=1.01 must be in [0, 1]"),
        ("weight_decays", (0.1, -1e-4), "config.weight_decays=(0.1, -0.0001) must be"),
        ("weight_decays", (math.inf,), "finite numbers >= 0"),
        ("weight_decays", (math.nan,), "config.weight_decays=(nan,)"),
        ("weight_decays", (), "non-empty"),
        ("momentum", 1.0, "config.momentum=1.0 must be in [0, 1)"),
        ("momentum", -0.5, "config.momentum=-0.5 must be in [0, 1)"),
    ],
)
def test_bad_optimizer_and_schedule_keys_are_named(key, value, needle):
    with pytest.raises(ConfigError) as info:
        spec.parse(_config(**{key: value}))
    message = str(info.value)
    assert needle in message
    assert "\n" not in message
