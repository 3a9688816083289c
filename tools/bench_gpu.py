"""Benchmark for an accelerator, in one command: hpjax populations of K trials against PyTorch
trials one after another, MLP and GRU recipes, float32 and bf16.

  python tools/bench_gpu.py                                  # the full table, < 8 minutes
  python tools/bench_gpu.py --population_sizes 1,8 --seconds 1 --torch_seconds 5   # a quick one

It needs only jax, flax, optax, numpy (and torch for the comparison): not ml-collections or
mnist1d, which a GPU machine without a network may lack. The data are random arrays of
MNIST-1D's shapes (4000 training examples of 40 values, 10 classes): the speed of a step does
not depend on the values.

For each model (MLP 40-256-256-10; GRU with 32 units over the 40 steps), precision and
population size K it builds the engine's program (``population.train_ticks``: Adam, batch 100,
K learning rates, with every feature on), reports its compile time, the memory XLA planned for
it (arguments, outputs and temporaries, from ``memory_analysis``; the device's own peak where
the backend reports one) and trial-steps per second of a run of about ``--seconds``. Then the
same recipe in PyTorch on the same device: trials of ``--torch_steps`` steps one after another
(a fresh model and Adam each), for ``--torch_seconds`` per model and precision (bf16 through
``torch.autocast``). Sizes that run out of memory are reported as such; configurations left
when ``--budget_seconds`` is spent are skipped. The table is printed and written as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from hpjax.engine import population  # noqa: E402
from hpjax.models.mlp import MLP  # noqa: E402
from hpjax.models.model import from_factory  # noqa: E402
from hpjax.models.precision import apply_precision  # noqa: E402
from hpjax.models.rnn import RNNClassifier  # noqa: E402

NUM_TRAIN, LENGTH, CLASSES, BATCH = 4000, 40, 10, 100


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population_sizes", default="1,8,64,512,4096")
    parser.add_argument("--models", default="mlp,gru")
    parser.add_argument("--precisions", default="float32,bf16")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed run per configuration")
    parser.add_argument("--torch_seconds", type=float, default=20.0, help="per model, precision")
    parser.add_argument("--torch_steps", type=int, default=500, help="steps of one torch trial")
    parser.add_argument("--budget_seconds", type=float, default=300.0, help="for the jax part")
    parser.add_argument("--out", default="bench_gpu.json")
    return parser.parse_args(argv)


def make_model(name: str, precision: str):
    def make(rngs):
        if name == "mlp":
            module = MLP(
                (LENGTH,), CLASSES, hidden_units=256, num_layers=2, activation="relu", rngs=rngs
            )
        else:
            module = RNNClassifier(
                (LENGTH,),
                CLASSES,
                cell="gru",
                hidden_size=32,
                num_layers=1,
                bidirectional=False,
                readout="last",
                rngs=rngs,
            )
        return apply_precision(module, precision)

    return from_factory(make, f"{name}_{precision}")


def _planned_mib(compiled) -> float:
    stats = compiled.memory_analysis()
    if stats is None:
        return float("nan")
    total = (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )
    return total / 2**20


def _device_peak_mib() -> float:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use", float("nan")) / 2**20


def bench_population(name: str, precision: str, k: int, x, y, seconds: float) -> dict:
    """Compile time, planned memory and trial-steps/s of the engine's program for K trials."""
    spec = population.PopulationSpec(
        model=make_model(name, precision),
        optimizer="adam",
        schedule="constant",
        microbatch=BATCH,
        num_train=NUM_TRAIN,
        accumulates=False,
        divergence_loss=100.0 * float(np.log(CLASSES)),
    )
    rates = np.geomspace(1e-4, 1e-2, k).astype(np.float32)
    hparams = population.make_hparams(rates, BATCH, seed=np.arange(k))
    state = population.init_population(spec, hparams)
    start = time.perf_counter()
    compiled = population.train_ticks.lower(spec, state, hparams, x, y, jnp.int32(1)).compile()
    compile_s = time.perf_counter() - start

    def run(ticks: int, state):
        begin = time.perf_counter()
        state = compiled(state, hparams, x, y, jnp.int32(ticks))
        jax.block_until_ready(state.trials.step)
        return time.perf_counter() - begin, state

    elapsed, state = run(5, state)  # warm up, then size the timed run to about ``seconds``
    elapsed, state = run(20, state)
    ticks = int(np.clip(seconds * 20 / max(elapsed, 1e-6), 20, 200_000))
    elapsed, state = run(ticks, state)
    return {
        "compile_s": compile_s,
        "trial_steps_per_s": k * ticks / elapsed,
        "planned_mib": _planned_mib(compiled),
        "device_peak_mib": _device_peak_mib(),
    }


def torch_trials(name: str, precision: str, seconds: float, steps: int) -> dict:
    """The recipe in PyTorch, trials one after another on the fastest device torch has."""
    import torch  # optional: not a dependency of hpjax

    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(NUM_TRAIN, LENGTH, device=device)
    y = torch.randint(0, CLASSES, (NUM_TRAIN,), device=device)

    class Gru(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(1, 32, batch_first=True)
            self.head = torch.nn.Linear(32, CLASSES)

        def forward(self, x):
            out, _ = self.gru(x[..., None])
            return self.head(out[:, -1])

    def model():
        if name == "mlp":
            return torch.nn.Sequential(
                torch.nn.Linear(LENGTH, 256),
                torch.nn.ReLU(),
                torch.nn.Linear(256, 256),
                torch.nn.ReLU(),
                torch.nn.Linear(256, CLASSES),
            )
        return Gru()

    done, trials, begin = 0, 0, time.perf_counter()
    while time.perf_counter() - begin < seconds:
        net = model().to(device)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        for _ in range(steps):
            idx = torch.randint(0, NUM_TRAIN, (BATCH,), device=device)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done % 50 == 0 and time.perf_counter() - begin > seconds:
                break
        trials += 1
        if device == "cuda":
            torch.cuda.synchronize()
    return {
        "device": device,
        "trials": trials,
        "trial_steps_per_s": done / (time.perf_counter() - begin),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(NUM_TRAIN, LENGTH)), jnp.float32)
    y = jnp.asarray(rng.integers(0, CLASSES, NUM_TRAIN), jnp.int32)
    device = jax.devices()[0]
    print(
        f"jax {jax.__version__} on {device.platform}: {device.device_kind} ({jax.device_count()})"
    )
    print(f"{'model':5} {'prec':8} {'K':>5} {'compile s':>9} {'trial-steps/s':>14} {'MiB':>9}")
    rows, start = [], time.perf_counter()
    for name in args.models.split(","):
        for precision in args.precisions.split(","):
            for k in (int(s) for s in args.population_sizes.split(",")):
                row = {"model": name, "precision": precision, "K": k}
                if time.perf_counter() - start > args.budget_seconds:
                    row["skipped"] = "time budget"
                else:
                    try:
                        row |= bench_population(name, precision, k, x, y, args.seconds)
                    except Exception as error:  # out of memory: report it, go on
                        if "RESOURCE_EXHAUSTED" not in str(error) and "memory" not in str(error):
                            raise
                        row["skipped"] = "out of memory"
                rows.append(row)
                if "skipped" in row:
                    print(f"{name:5} {precision:8} {k:>5} {row['skipped']}")
                else:
                    print(
                        f"{name:5} {precision:8} {k:>5} {row['compile_s']:>9.1f} "
                        f"{row['trial_steps_per_s']:>14.0f} {row['planned_mib']:>9.1f}"
                    )
    torch_rows = []
    try:
        import torch  # noqa: F401
    except ImportError:
        print("torch: not installed, no comparison")
    else:
        for name in args.models.split(","):
            for precision in args.precisions.split(","):
                result = torch_trials(name, precision, args.torch_seconds, args.torch_steps)
                torch_rows.append({"model": name, "precision": precision} | result)
                print(
                    f"torch {name} {precision} on {result['device']}: {result['trials']} trials, "
                    f"{result['trial_steps_per_s']:.0f} trial-steps/s"
                )
    with open(args.out, "w") as f:
        json.dump(
            {"device": str(device.device_kind), "jax": rows, "torch": torch_rows}, f, indent=1
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
