"""Benchmark: the memory a study plans for a population against what the population takes.

Each case is a real study (``experiments/lr_sweep.py`` on MNIST-1D: K learning rates in one
population, 100 steps, evaluations every 50, a state checkpoint at each) in a fresh process,
and beside it the same study with 2 trials. ``populations.csv`` gives the planned memory
(``hpjax.engine.memory.estimate_trial``, what the study splits populations by) and the measured
peak (the process's peak resident memory on the CPU, the device's peak counter on an
accelerator). The table compares what K trials add over 2: planned against measured, so that
Python, JAX, the data and XLA's compiler (its memory a cost per program, not per trial) cancel.

  python tools/bench_memory.py                      # the default table
  python tools/bench_memory.py --cases mlp:2048:64  # model:width:trials, comma-separated
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CASES = "mlp:64:6000,mlp:256:512,mlp:2048:16,cnn:16:256,cnn:64:64,gru:32:64,gru:128:16"
BASELINE_TRIALS = 2
MODEL_FLAGS = {  # config file, and the key of the width
    "mlp": (None, "hidden_units"),
    "cnn": ("mnist1d_cnn.py", "channels"),
    "gru": ("mnist1d_gru.py", "hidden_size"),
}


def run_study(model: str, width: int, trials: int, workdir: str) -> dict:
    """One study in a fresh process; its population's row of ``populations.csv``."""
    config_file, width_key = MODEL_FLAGS[model]
    rates = ",".join(f"{r:.6g}" for r in np.geomspace(1e-4, 1e-2, trials))
    flags = [
        f"--workdir={workdir}",
        f"--config.model.{width_key}={width}",
        "--config.model.num_layers=2",
        f"--config.learning_rates=({rates},)",
        "--config.weight_decays=(0.0,)",
        "--config.num_steps=100",
        "--config.eval_every=50",
        "--config.checkpoint_every=1",
        "--config.patience=0",
        "--config.make_report=False",
        "--config.tensorboard=off",
        "--config.optuna_storage=off",
    ]
    if config_file:
        flags.insert(0, "--config=" + os.path.join(ROOT, "experiments", "configs", config_file))
    child = subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", "lr_sweep.py"), *flags],
        capture_output=True,
        text=True,
    )
    if child.returncode:
        raise RuntimeError(child.stderr.strip().splitlines()[-1])
    with open(os.path.join(workdir, "populations.csv")) as f:
        (row,) = list(csv.DictReader(f))
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=DEFAULT_CASES, help="model:width:trials,...")
    args = parser.parse_args(argv)
    print(
        f"{'case':<24} {'planned MiB':>12} {'measured MiB':>13} {'planned/measured':>17}",
        flush=True,
    )
    worst, source = 0.0, ""
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as scratch:
        for i, case in enumerate(args.cases.split(",")):
            model, width, trials = case.split(":")
            try:
                rows = [
                    run_study(model, int(width), k, os.path.join(scratch, f"{i}_{k}"))
                    for k in (int(trials), BASELINE_TRIALS)
                ]
            except RuntimeError as error:
                print(f"{case:<24} failed: {error}", flush=True)
                continue
            planned, measured = (
                float(rows[0][key]) - float(rows[1][key])
                for key in ("memory_estimate_mb", "peak_memory_mb")
            )
            source = rows[0]["peak_memory_source"]
            ratio = planned / max(measured, 1e-9)
            worst = max(worst, abs(ratio - 1))
            label = f"{model} {width}x2, K={trials}"
            print(f"{label:<24} {planned:>12.0f} {measured:>13.0f} {ratio:>17.2f}", flush=True)
    print(
        f"largest gap: {100 * worst:.0f}% ({source}: K trials over {BASELINE_TRIALS}, each a "
        "study in a fresh process)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
