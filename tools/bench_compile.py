"""Benchmark: compile time and speed of the engine's programs, XLA's defaults against the CPU
compiler options hpjax uses (``hpjax/engine/jit.py``), side by side in one run.

For each model (the MNIST-1D recipes' MLP 40-256-256-10, GRU 32 and CNN), a population of 8
trials (Adam, batch 100): the initialisation program and the training program are compiled
with both settings; each training program then runs ``--steps`` ticks twice (the faster run is
kept), and the two final states are compared bit for bit.

  python tools/bench_compile.py
  python tools/bench_compile.py --models mlp --steps 500
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from hpjax import data as data_lib  # noqa: E402
from hpjax.engine import population  # noqa: E402
from hpjax.models import build_model  # noqa: E402

MODELS = {
    "mlp": {"name": "mlp", "hidden_units": 256, "num_layers": 2},
    "gru": {"name": "rnn", "cell": "gru", "hidden_size": 32, "readout": "last"},
    "cnn": {"name": "cnn"},
}


def timed(fn, *args):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def measure(name: str, dataset, steps: int, trials: int) -> list[tuple]:
    model = build_model(ml_collections.ConfigDict(MODELS[name]), dataset.input_shape, 10)
    spec = population.PopulationSpec(
        model=model,
        optimizer="adam",
        schedule="constant",
        microbatch=100,
        num_train=dataset.num_train,
    )
    rates = np.geomspace(1e-4, 1e-2, trials).astype(np.float32)
    hparams = population.make_hparams(learning_rate=rates, batch_size=100, max_steps=2**30)
    x, y = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
    ticks = jnp.int32(steps)
    rows, finals = [], []
    for label in ("XLA defaults", "hpjax CPU options"):
        init = population.init_population.default
        train = population.train_ticks.default
        if label != "XLA defaults":
            init, train = population.init_population.cpu, population.train_ticks.cpu
        _, init_s = timed(lambda program=init: program.lower(spec, hparams).compile())
        fresh = jax.device_get(init(spec, hparams))
        start = time.perf_counter()
        compiled = train.lower(spec, jax.tree.map(jnp.asarray, fresh), hparams, x, y, ticks)
        compiled = compiled.compile()
        train_s = time.perf_counter() - start
        best = np.inf
        for _ in range(2):
            final, run_s = timed(compiled, jax.tree.map(jnp.asarray, fresh), hparams, x, y, ticks)
            best = min(best, run_s)
        finals.append(jax.device_get(final))
        rows.append([name, label, init_s, train_s, trials * steps / best])
    same = all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(finals[0]), jax.tree.leaves(finals[1]), strict=True)
    )
    return [(*row, same) for row in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,gru,cnn")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args(argv)
    dataset = data_lib.load_dataset(
        ml_collections.ConfigDict(
            {"dataset": "mnist1d", "val_fraction": 0.1, "train_subset": 0, "data_seed": 0}
        )
    )
    print(
        f"{args.trials} trials, Adam, batch 100, {args.steps} ticks; JAX {jax.__version__} on "
        f"{jax.default_backend()} ({os.cpu_count()} cores)"
    )
    header = ("model", "compiled with", "init compile s", "train compile s", "trial-steps/s")
    print(f"{header[0]:<6} {header[1]:<18} {header[2]:>15} {header[3]:>16} {header[4]:>14}  bits")
    for name in args.models.split(","):
        for model, label, init_s, train_s, speed, same in measure(
            name, dataset, args.steps, args.trials
        ):
            print(
                f"{model:<6} {label:<18} {init_s:>15.2f} {train_s:>16.2f} {speed:>14.0f}  "
                f"{'same' if same else 'DIFFER'}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
