"""The experiment programs as the installed ``hpjax`` command: a wheel in a fresh virtual
environment runs a study from an empty directory, with the configs inside the package."""

import glob
import os
import shutil
import site
import subprocess
import sys

from hpjax import programs
from tests.conftest import ROOT

TINY = [
    "--config.dataset=digits",
    "--config.model.hidden_units=8",
    "--config.model.num_layers=1",
    "--config.learning_rates=(0.01,0.1)",
    "--config.num_steps=40",
    "--config.eval_every=20",
]


def test_every_program_has_its_config_in_the_package():
    for program in programs.PROGRAMS.values():
        assert os.path.isfile(os.path.join(programs.CONFIGS, program.config))
        assert os.path.isfile(os.path.join(ROOT, "experiments", "configs", program.config))


def test_the_wheel_in_a_fresh_venv_runs_a_study_through_the_command(tmp_path):
    dist, venv, empty = tmp_path / "dist", tmp_path / "venv", tmp_path / "empty"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    source = tmp_path / "source"  # a copy: building writes build/ beside the sources
    shutil.copytree(
        os.path.join(ROOT, "hpjax"),
        source / "hpjax",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = glob.glob(str(dist / "hpjax-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    # the dependencies (jax, flax, ...) from this environment; hpjax itself from the wheel
    (own_site,) = glob.glob(str(venv / "lib" / "python*" / "site-packages"))
    with open(os.path.join(own_site, "dependencies.pth"), "w") as f:
        f.write("\n".join(site.getsitepackages()) + "\n")
    empty.mkdir()
    where = subprocess.run(
        [python, "-c", "import hpjax, hpjax.configs; print(hpjax.__file__)"],
        capture_output=True,
        text=True,
        cwd=empty,
        env=env,
    )
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr[-2000:]
    done = subprocess.run(
        [str(venv / "bin" / "hpjax"), "lr-sweep", "--workdir=study", *TINY],
        capture_output=True,
        text=True,
        cwd=empty,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("best trial") and (empty / "study" / "summary.csv").exists()
    helped = subprocess.run(
        [str(venv / "bin" / "hpjax"), "search", "--help"], capture_output=True, text=True, env=env
    )
    assert helped.returncode == 0 and "--config.search.sampler='optuna_tpe'" in helped.stdout
