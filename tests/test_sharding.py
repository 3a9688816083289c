"""The trial axis sharded over several devices (4 CPU devices made by XLA in a subprocess)."""

import csv
import json
import os
import subprocess
import sys
import textwrap

import pytest

from hpjax.engine.sharding import TrialSharding
from hpjax.errors import ConfigError
from tests.conftest import ROOT

SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {root!r})
    from tests.conftest import load_config
    from hpjax.study.run import train_and_evaluate
    import jax
    assert jax.device_count() == 4, jax.devices()
    from hpjax.engine.sharding import TrialSharding
    import numpy as np
    placed = TrialSharding(4).put_rows(np.zeros((8, 3)))
    assert len(placed.sharding.device_set) == 4
    assert placed.addressable_shards[0].data.shape == (2, 3)
    import os
    from hpjax.engine import memory  # the 4 CPU devices share the host's RAM
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert memory.device_memory_bytes() == ram // 4
    results = {{}}
    for name, devices, rates in [("one", 1, {rates}), ("four", 4, {rates})]:
        config = load_config("lr_sweep")
        config.dataset, config.npz_path = "npz", {npz!r}
        config.model.hidden_units, config.model.num_layers = 16, 1
        config.learning_rates = rates
        config.batch_size, config.num_steps, config.eval_every = 16, 60, 10
        config.patience, config.make_report, config.num_devices = 3, False, devices
        config.compact_fraction = {compact}
        rows = train_and_evaluate(config, {workdir!r} + "/" + name)
        results[name] = rows
    print("RESULT" + json.dumps(results))
""")


def run_on_four_devices(npz, workdir, rates, compact=0.5):
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    code = SCRIPT.format(root=ROOT, npz=npz, workdir=str(workdir), rates=rates, compact=compact)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT") :]), done.stderr


def test_six_trials_on_four_devices_equal_one_device_and_report_six(tiny_npz, tmp_path):
    rates = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
    results, log = run_on_four_devices(tiny_npz, tmp_path, rates)
    one, four = results["one"], results["four"]
    assert [r["trial"] for r in four] == list(range(6))  # padded to 8 rows, 6 reported
    with open(tmp_path / "four" / "summary.csv") as f:
        assert len(f.readlines()) == 1 + 6
    for a, b in zip(one, four, strict=True):
        assert (a["status"], a["best_step"], a["steps"]) == (
            b["status"],
            b["best_step"],
            b["steps"],
        )
        for key in ("best_val_loss", "test_loss", "final_train_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key
    with open(tmp_path / "four" / "metrics.jsonl") as f:
        trials = {json.loads(line)["trial"] for line in f}
    assert trials == set(range(6))


def test_more_devices_than_present_is_refused():
    with pytest.raises(ConfigError, match=r"config.num_devices=99 is more than the 1 cpu"):
        TrialSharding(99)
    with pytest.raises(ConfigError, match="must be >= 0"):
        TrialSharding(-1)


def test_rows_are_padded_to_a_multiple_of_the_devices():
    sharding = TrialSharding(1)
    assert [sharding.padded_size(n) for n in (1, 6, 7)] == [1, 6, 7]
    sharding.num_devices = 4  # the arithmetic alone
    assert [sharding.padded_size(n) for n in (1, 4, 6, 9)] == [4, 4, 8, 12]


def test_two_processes_with_jax_distributed_equal_one_process(tiny_npz, tiny_config, tmp_path):
    """Multi-host on one machine: 2 processes x 2 CPU devices; only process 0 writes."""
    import socket

    from hpjax.study.run import train_and_evaluate

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu"
    )
    flags = [
        f"--workdir={tmp_path / 'multi'}",
        "--config.dataset=npz",
        f"--config.npz_path={tiny_npz}",
        "--config.model.hidden_units=16",
        "--config.model.num_layers=1",
        "--config.schedule=constant",
        "--config.weight_decays=(0.0,)",
        "--config.learning_rates=(0.003,0.03,0.3)",
        "--config.batch_size=16",
        "--config.num_steps=60",
        "--config.eval_every=10",
        "--config.patience=3",
        "--config.make_report=False",
        "--config.distributed=True",
        f"--config.coordinator_address=localhost:{port}",
        "--config.num_processes=2",
    ]
    binary = os.path.join(ROOT, "experiments", "lr_sweep.py")
    processes = [
        subprocess.Popen(
            [sys.executable, binary, *flags, f"--config.process_id={i}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in processes]
    for p, (_, err) in zip(processes, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "best trial" in outputs[0][0] and "best trial" not in outputs[1][0]
    with open(tmp_path / "multi" / "summary.csv") as f:
        multi = list(__import__("csv").DictReader(f))
    tiny_config.num_steps = 60
    single = train_and_evaluate(tiny_config, str(tmp_path / "single"))
    assert len(multi) == 3
    for a, b in zip(single, multi, strict=True):
        assert (a["status"], str(a["best_step"])) == (b["status"], b["best_step"])
        assert float(b["best_val_loss"]) == pytest.approx(a["best_val_loss"], rel=1e-4)


def _two_process_flags(tiny_npz, workdir, port, num_steps):
    return [
        f"--workdir={workdir}",
        "--config.dataset=npz",
        f"--config.npz_path={tiny_npz}",
        "--config.model.hidden_units=16",
        "--config.model.num_layers=1",
        "--config.schedule=constant",
        "--config.weight_decays=(0.0,)",
        "--config.learning_rates=(0.003,0.03,0.3)",
        "--config.batch_size=16",
        f"--config.num_steps={num_steps}",
        "--config.eval_every=10",
        "--config.patience=0",
        "--config.checkpoint_every=1",
        "--config.make_report=False",
        "--config.distributed=True",
        f"--config.coordinator_address=localhost:{port}",
        "--config.num_processes=2",
    ]


def _start_two(flags):
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu"
    )
    binary = os.path.join(ROOT, "experiments", "lr_sweep.py")
    return [
        subprocess.Popen(
            [sys.executable, binary, *flags, f"--config.process_id={i}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_killed_and_resumed_equal_one_uninterrupted_process(
    tiny_npz, tiny_config, tmp_path
):
    """Multi-host resume: process 0 saves the state and, on the rerun, restores and broadcasts
    it to the other process."""
    from hpjax.study.run import train_and_evaluate

    workdir = tmp_path / "multi"
    state = workdir / "state" / "population_0"
    _kill_two_at_a_checkpoint(_two_process_flags(tiny_npz, workdir, _free_port(), 600), state)
    outputs = _run_two(_two_process_flags(tiny_npz, workdir, _free_port(), 600))
    assert "resuming at tick" in outputs[0][1] + outputs[1][1]
    with open(workdir / "summary.csv") as f:
        multi = list(__import__("csv").DictReader(f))
    tiny_config.num_steps = 600
    tiny_config.patience = 0
    tiny_config.checkpoint_every = 1
    single = train_and_evaluate(tiny_config, str(tmp_path / "single"))
    for a, b in zip(single, multi, strict=True):
        assert (a["status"], str(a["best_step"]), str(a["steps"])) == (
            b["status"],
            b["best_step"],
            b["steps"],
        )
        assert float(b["best_val_loss"]) == pytest.approx(a["best_val_loss"], rel=1e-4)
    with open(workdir / "metrics.jsonl") as f:
        lines = f.read().splitlines()
    assert len(lines) == 3 * (600 // 10 + 1)  # every evaluation once: none lost, none repeated


def _run_two(flags) -> list[tuple[str, str]]:
    processes = _start_two(flags)
    outputs = [p.communicate(timeout=300) for p in processes]
    for p, (_, err) in zip(processes, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return outputs


def _kill_two_at_a_checkpoint(flags, state) -> None:
    """Starts two processes and SIGKILLs both once a state checkpoint is committed."""
    import signal
    import time

    processes = _start_two(flags)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and all(p.poll() is None for p in processes):
        if state.is_dir() and any(
            (state / s / "commit_success.txt").exists() for s in os.listdir(state) if s.isdigit()
        ):
            break
        time.sleep(0.05)
    for p in processes:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert [s for s in os.listdir(state) if s.isdigit()], "no state checkpoint before the kill"


def test_an_adaptive_study_of_two_processes_killed_and_resumed_ends_as_uninterrupted(
    tiny_npz, tmp_path
):
    """ASHA through 2 slots of a program sharded over 2 processes x 2 CPU devices: killed at a
    checkpoint and resumed, it gives the summary and metrics of the same study uninterrupted
    (the one resume path: rows, ended trials, layout and rungs restored and broadcast)."""
    adaptive = [
        "--config.learning_rates=(0.001,0.003,0.01,0.03,0.1,0.3)",
        "--config.slots=2",
        "--config.scheduler=asha",
        "--config.asha.min_steps=40",
        "--config.asha.eta=2.0",
        "--config.tensorboard=off",
        "--config.optuna_storage=off",
    ]

    def flags(workdir):
        base = _two_process_flags(tiny_npz, workdir, _free_port(), 160)
        return [f for f in base if not f.startswith("--config.learning_rates=")] + adaptive

    _run_two(flags(tmp_path / "uninterrupted"))
    resumed = tmp_path / "resumed"
    _kill_two_at_a_checkpoint(flags(resumed), resumed / "state" / "population_0")
    outputs = _run_two(flags(resumed))
    assert "resuming at tick" in outputs[0][1] + outputs[1][1]
    drop = ("peak_memory_mb", "memory_estimate_mb")
    rows = []
    for workdir in (tmp_path / "uninterrupted", resumed):
        with open(workdir / "summary.csv") as f:
            rows.append([{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)])
    assert rows[0] == rows[1] and len(rows[0]) == 6
    assert {r["status"] for r in rows[0]} >= {"pruned"}
    workdirs = (tmp_path / "uninterrupted", resumed)
    metrics = [(w / "metrics.jsonl").read_text().splitlines() for w in workdirs]
    strip = lambda line: {
        k: v for k, v in json.loads(line).items() if k not in ("elapsed_s", "time")
    }  # noqa: E731
    assert [strip(m) for m in metrics[0]] == [strip(m) for m in metrics[1]]
