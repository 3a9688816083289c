"""Process-wide settings from the config (hpjax/runtime.py): CPU devices and the compilation
cache, applied by the binaries before JAX starts."""

import csv
import os
import subprocess
import sys

import ml_collections
import pytest

from hpjax import runtime
from hpjax.errors import ConfigError
from hpjax.study.spec import parse_process
from tests.conftest import ROOT
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


API_SCRIPT = """
import sys
import jax
import numpy as np
from flax import nnx
import hpjax

x = np.random.default_rng(0).normal(size=(96, 4)).astype("float32")
y = (x[:, 0] > 0).astype("int32")
data = hpjax.from_arrays(x[:64], y[:64], x[64:], y[64:])
hpjax.train(lambda rngs: nnx.Linear(4, 2, rngs=rngs), data, sys.argv[1], learning_rates=(0.1,),
            num_steps=20, eval_every=10, batch_size=16, make_report=False, tensorboard="off",
            optuna_storage="off", compilation_cache=sys.argv[2], verbose=False)
print("cache dir:", jax.config.jax_compilation_cache_dir)
"""


@pytest.mark.parametrize("own", [False, True])
def test_the_api_fills_the_compilation_cache_unless_the_user_chose_one(tmp_path, own):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    # the user's own cache keeps JAX's own threshold (1 s) unless they lower it: lowered here so
    # that the tiny study's programs, compiled in well under a second, are written
    own_cache = {"JAX_COMPILATION_CACHE_DIR": str(theirs)}
    env = os.environ | (
        own_cache | {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"} if own else {}
    )
    out = subprocess.run(
        [sys.executable, "-c", API_SCRIPT, str(tmp_path / "w"), str(ours)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    used, unused = (theirs, ours) if own else (ours, theirs)
    assert f"cache dir: {used}" in out.stdout
    assert used.is_dir() and any(used.iterdir())  # the study's programs were written there
    assert not unused.exists()
