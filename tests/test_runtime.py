"""Process-wide settings from the config (hpjax/runtime.py): CPU devices and the compilation
cache, applied by the binaries before JAX starts."""

import csv
import os

import ml_collections
import pytest

from hpjax import runtime
from hpjax.errors import ConfigError
from hpjax.study.spec import parse_process
from tests.test_cli import TINY, run_binary


@pytest.mark.parametrize("value", [-1, 1.5, True, "2"])
def test_bad_cpu_devices_name_the_key(value):
    config = ml_collections.ConfigDict({"cpu_devices": value, "compilation_cache": ""})
    with pytest.raises(ConfigError, match=r"config\.cpu_devices=.* must be an integer >= 0"):
        runtime.configure(parse_process(config))


def test_cpu_devices_after_jax_started_is_refused_in_one_line():
    import jax

    jax.devices()  # this test process has started JAX's backend
    config = ml_collections.ConfigDict({"cpu_devices": 2, "compilation_cache": ""})
    with pytest.raises(ConfigError, match="already started its backend"):
        runtime.configure(parse_process(config))


def _summary(workdir) -> list[dict]:
    with open(os.path.join(workdir, "summary.csv")) as f:
        return list(csv.DictReader(f))


def test_two_cpu_devices_and_a_cached_rerun_give_the_same_study(tmp_path):
    """The binary splits the CPU into 2 devices (the log says so) and fills the cache; a second
    study of the same shapes, run from the cache, gives the same summary. Every program is
    cached, however fast it compiled (JAX's own variable, which hpjax leaves to the user)."""
    env = dict(os.environ, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")

    cache = tmp_path / "cache"
    flags = [
        "--config.cpu_devices=2",
        f"--config.compilation_cache={cache}",
        "--config.learning_rates=(0.01,0.1)",
    ]
    first = run_binary(f"--workdir={tmp_path / 'a'}", *TINY, *flags, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "on 2 cpu device(s)" in first.stderr
    assert len(os.listdir(cache)) > 0
    second = run_binary(f"--workdir={tmp_path / 'b'}", *TINY, *flags, env=env)
    assert second.returncode == 0, second.stderr[-2000:]
    skip = {"peak_memory_mb"}  # the process peak RSS: smaller without compiling
    strip = [{k: v for k, v in row.items() if k not in skip} for row in _summary(tmp_path / "a")]
    again = [{k: v for k, v in row.items() if k not in skip} for row in _summary(tmp_path / "b")]
    assert strip == again
