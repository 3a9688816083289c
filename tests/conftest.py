"""Shared test fixtures: a tiny data set on disk and the experiment configs."""

import importlib.util
import os
import subprocess
import sys
import tempfile

import jax
import numpy as np
import pytest

from hpjax.engine import population
from hpjax.study import loop

TRIAL_DEFAULTS = dict(
    learning_rate=0.05,
    batch_size=8,
    seed=0,
    weight_decay=0.0,
    warmup_steps=0,
    decay_rate=0.1,
    end_factor=0.0,
    max_steps=1000,
    momentum=0.9,
)


def trial_hparams(trials: list[dict], **defaults) -> population.TrialHParams:
    """Per-trial hyperparameter arrays from a list of overrides of ``TRIAL_DEFAULTS``."""
    base = TRIAL_DEFAULTS | defaults
    return population.make_hparams(**{k: [t.get(k, v) for t in trials] for k, v in base.items()})


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Each test module's compiled programs are dropped when it ends. XLA:CPU maps every
    program's code into memory; one pytest process holding the ~thousands of programs of the
    whole suite hit the kernel's limit of memory maps (vm.max_map_count, 65530 here) and
    segfaulted inside the compiler, late in the run (a study runs a few dozen programs)."""
    yield
    jax.clear_caches()


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, variant: str | None = None):
    """``get_config(variant)`` of ``experiments/configs/<name>.py``."""
    path = os.path.join(ROOT, "experiments", "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def run_experiment(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python experiments/<script> ARGS`` in a fresh interpreter on the CPU, its output
    captured. The tests' studies are tiny: compiled without LLVM's optimisations (faster)."""
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_tiny_npz(path: str, num_train: int = 240, seed: int = 0) -> str:
    """A separable 4-class problem with 8 features, with validation and test splits."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(8, 4))

    def split(n):
        x = rng.normal(size=(n, 8)).astype(np.float32)
        return x, np.argmax(x @ w + 0.3 * rng.normal(size=(n, 4)), axis=1).astype(np.int32)

    x_train, y_train = split(num_train)
    x_val, y_val = split(80)
    x_test, y_test = split(100)
    np.savez(
        path,
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        x_test=x_test,
        y_test=y_test,
    )
    return path


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server: ``HPJAX_POSTGRES_URL`` (``.ci/run`` starts a throwaway one), else
    a throwaway cluster started here with ``tools/postgres_throwaway.sh`` and stopped at the end.
    Without PostgreSQL on the machine the tests that need it fail, naming why."""
    url = os.environ.get("HPJAX_POSTGRES_URL")
    if url:
        yield url
        return
    script = os.path.join(
        os.path.dirname(os.path.dirname(__file__)), "tools", "postgres_throwaway.sh"
    )
    directory = tempfile.mkdtemp(prefix="hpjax-pg-")
    started = subprocess.run(
        ["bash", script, "start", directory], capture_output=True, text=True, check=False
    )
    if started.returncode:
        subprocess.run(["bash", script, "stop", directory], check=False)
        pytest.fail(f"no PostgreSQL server could be started: {started.stderr.strip()[-300:]}")
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run(["bash", script, "stop", directory], check=False)


@pytest.fixture
def private_postgres(tmp_path):
    """A PostgreSQL server of this test alone, to restart or halt: ``(url, control)``, where
    ``control("restart")`` and ``control("halt")`` run ``tools/postgres_throwaway.sh``."""
    script = os.path.join(
        os.path.dirname(os.path.dirname(__file__)), "tools", "postgres_throwaway.sh"
    )
    directory = tempfile.mkdtemp(prefix="hpjax-pg-")

    def control(action: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", script, action, directory], capture_output=True, text=True, check=False
        )

    started = control("start")
    if started.returncode:
        control("stop")
        pytest.fail(f"no PostgreSQL server could be started: {started.stderr.strip()[-300:]}")
    try:
        yield started.stdout.strip(), control
    finally:
        control("stop")


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory) -> str:
    return write_tiny_npz(str(tmp_path_factory.mktemp("data") / "tiny.npz"))


@pytest.fixture
def tiny_config(tiny_npz):
    """The learning-rate sweep's config, shrunk to a few seconds on the tiny data set."""
    return make_tiny_config(tiny_npz)


def make_tiny_config(tiny_npz: str):
    """:func:`tiny_config`'s body, for fixtures of a wider scope."""
    config = load_config("lr_sweep")
    config.dataset = "npz"
    config.npz_path = tiny_npz
    config.model.hidden_units = 16
    config.model.num_layers = 1
    config.schedule = "constant"
    config.weight_decays = (0.0,)
    config.learning_rates = (0.003, 0.03, 0.3)
    config.batch_size = 16
    config.num_steps = 120
    config.eval_every = 10
    config.patience = 3
    config.checkpoint_every = 2
    config.make_report = False
    config.log_every_s = 0.0
    return config


class Crash(Exception):
    """What :class:`CrashAtEvaluation` raises: a study cut off as a kill would cut it."""


class CrashAtEvaluation(loop.Hooks):
    """Raises :class:`Crash` at the ``count``-th evaluation of a population that trains (the
    first one is before any training; a population resumed as finished evaluates none)."""

    def __init__(self, count: int):
        self.left = count

    def on_evaluation(self, run, state, rows):
        self.left -= 1
        if self.left == 0:
            raise Crash


def three_class_data():
    """150 examples of 16 features in 3 separable classes (120 train, 30 test): a tiny data set
    for studies of your own model."""
    import hpjax

    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, size=150)
    x = rng.normal(size=(150, 16)) * 0.5 + y[:, None] * np.linspace(-1, 1, 16)
    return hpjax.from_arrays(x[:120], y[:120], x[120:], y[120:])
