"""Benchmark: the reference recipe end to end, hpjax against PyTorch trial after trial.

The recipe: MNIST-1D, MLP 40-256-256-10, Adam at 8 learning rates, batch 100, 8000 steps, an
evaluation on the validation set every 500 steps, no early stopping. hpjax runs it as one
population through ``experiments/lr_sweep.py`` (process start to ``summary.csv``); PyTorch runs
the same 8 trials one after another in one process (start to its last evaluation), each trial
reading its own shuffled epochs. Each side runs in float32 and in bf16 (hpjax:
``--config.precision=bf16``; PyTorch: CPU ``torch.autocast`` to bfloat16). The ratios are wall
times measured one after another in one run.

hpjax runs four times per precision, each into a fresh workdir: on one CPU device (the default)
and with ``--config.cpu_devices=0`` (a device per core), each first with an empty compilation
cache (cold: a first run) and then again with the cache the first run filled (warm: a rerun of
the same shapes, e.g. with other rates or seeds). PyTorch has no compilation to cache. "ratio
default" is PyTorch's time over hpjax's first run with the binaries' defaults; "ratio best" over
hpjax's fastest of the four.

  python tools/bench_recipe.py                 # float32 and bf16, both sides (~5 minutes here)
  python tools/bench_recipe.py --steps 1000 --precisions float32
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATES = (0.0003, 0.0006, 0.0012, 0.0025, 0.005, 0.01, 0.02, 0.04)

TORCH_RECIPE = """
import sys, time
start = time.perf_counter()
import numpy as np, torch, ml_collections
sys.path.insert(0, {root!r})
from hpjax import data
steps, eval_every, precision = {steps}, {eval_every}, {precision!r}
ds = data.load_dataset(ml_collections.ConfigDict(
    dict(dataset="mnist1d", val_fraction=0.1, train_subset=0, data_seed=0)))
x, y = torch.tensor(ds.x_train), torch.tensor(ds.y_train, dtype=torch.long)
xv, yv = torch.tensor(ds.x_val), torch.tensor(ds.y_val, dtype=torch.long)
for trial, lr in enumerate({rates!r}):
    torch.manual_seed(trial)
    net = torch.nn.Sequential(torch.nn.Linear(40, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                              torch.nn.ReLU(), torch.nn.Linear(256, 10))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    order = torch.randperm(len(x))
    pos = 0
    for step in range(steps):
        if pos + 100 > len(x):
            order, pos = torch.randperm(len(x)), 0
        idx = order[pos:pos + 100]
        pos += 100
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % eval_every == 0:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                 enabled=precision == "bf16"):
                val = torch.nn.functional.cross_entropy(net(xv), yv).item()
print(f"torch done in {{time.perf_counter() - start:.1f}} s; last val loss {{val:.4f}}")
"""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--eval_every", type=int, default=500)
    parser.add_argument("--precisions", default="float32,bf16")
    parser.add_argument("--skip_torch", action="store_true")
    return parser.parse_args(argv)


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} failed:\n{result.stderr[-3000:]}")
    return elapsed


def hpjax_seconds(steps: int, eval_every: int, precision: str, cache: str, cores: bool) -> float:
    with tempfile.TemporaryDirectory() as workdir:
        return timed(
            [
                sys.executable,
                "experiments/lr_sweep.py",
                f"--workdir={workdir}/run",
                "--config.model.hidden_units=256",
                "--config.model.num_layers=2",
                "--config.schedule=constant",
                "--config.weight_decays=(0.0,)",
                f"--config.learning_rates={RATES}",
                f"--config.num_steps={steps}",
                f"--config.eval_every={eval_every}",
                "--config.patience=0",
                f"--config.precision={precision}",
                f"--config.compilation_cache={cache}",
                f"--config.cpu_devices={0 if cores else 1}",
            ]
        )


def torch_seconds(steps: int, eval_every: int, precision: str) -> float:
    code = TORCH_RECIPE.format(
        root=ROOT, steps=steps, eval_every=eval_every, precision=precision, rates=RATES
    )
    return timed([sys.executable, "-c", code])


def main(argv=None) -> int:
    args = parse_args(argv)
    print(f"recipe: MLP 40-256-256-10, Adam, 8 rates x {args.steps} steps, batch 100")
    print(
        f"{'precision':9} {'hpjax 1 device cold/warm s':>27} {'hpjax a device per core':>24} "
        f"{'torch s':>8} {'ratio default':>14} {'ratio best':>11}"
    )
    for precision in args.precisions.split(","):
        seconds = {}
        for cores in (False, True):
            with tempfile.TemporaryDirectory() as cache:
                for run in ("cold", "warm"):
                    seconds[cores, run] = hpjax_seconds(
                        args.steps, args.eval_every, precision, cache, cores
                    )
        line = (
            f"{precision:9} {seconds[False, 'cold']:>13.1f} / {seconds[False, 'warm']:<11.1f} "
            f"{seconds[True, 'cold']:>11.1f} / {seconds[True, 'warm']:<10.1f}"
        )
        if args.skip_torch:
            print(line)
            continue
        theirs = torch_seconds(args.steps, args.eval_every, precision)
        best = min(seconds.values())
        default = seconds[False, "cold"]  # the binaries' defaults, a first run
        print(f"{line} {theirs:>8.1f} {theirs / default:>13.2f}x {theirs / best:>10.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
