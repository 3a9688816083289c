"""Benchmark: a K-trial vmapped sweep against the same K trials one at a time, same engine.

  python tools/bench_sweep.py                      # the MNIST-1D reference recipe, 8 rates
  python tools/bench_sweep.py --steps 2000         # shorter
  python tools/bench_sweep.py --population_sizes 1,8,64,512 --steps 500   # scaling table

Both sides run ``hpjax.population.train_ticks`` in chunks of ``--eval_every`` steps, as a study
does, without the evaluations; compile time is measured apart from run time. Achieved GFLOP/s
uses XLA's own count of one population step, next to a float32 matmul measured in the same run.
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


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8000, help="optimizer steps per trial")
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--hidden_units", type=int, default=256)
    parser.add_argument("--num_layers", type=int, default=2)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--num_trials", type=int, default=8, help="K of the side-by-side run")
    parser.add_argument("--eval_every", type=int, default=500, help="steps per compiled call")
    parser.add_argument(
        "--population_sizes",
        default="",
        help="comma-separated K values: print a scaling table instead",
    )
    parser.add_argument("--skip_solo", action="store_true", help="time only the population")
    return parser.parse_args(argv)


def matmul_gflops(size: int = 1024, repeats: int = 20) -> float:
    """float32 matmul throughput of this machine's default device."""
    a = jnp.ones((size, size), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        out = f(a)
    out.block_until_ready()
    return repeats * 2 * size**3 / (time.perf_counter() - start) / 1e9


class Bench:
    """One population of ``num_trials`` learning rates, log-spaced around 0.01."""

    def __init__(self, args, num_trials: int, dataset: data_lib.Dataset):
        cfg = ml_collections.ConfigDict(
            {
                "name": "mlp",
                "hidden_units": args.hidden_units,
                "num_layers": args.num_layers,
                "activation": "relu",
            }
        )
        self.model = build_model(cfg, dataset.input_shape, dataset.num_classes)
        self.spec = population.PopulationSpec(
            model=self.model,
            optimizer=args.optimizer,
            schedule="constant",
            microbatch=args.batch_size,
            num_train=dataset.num_train,
        )
        rates = np.geomspace(3e-4, 4e-2, num_trials) if num_trials > 1 else [0.003]
        k = num_trials
        self.hparams = population.make_hparams(
            learning_rate=rates,
            batch_size=[args.batch_size] * k,
            seed=list(range(k)),
            weight_decay=[0.0] * k,
            warmup_steps=[0] * k,
            decay_rate=[0.1] * k,
            end_factor=[0.0] * k,
            max_steps=[args.steps] * k,
        )
        self.x = jnp.asarray(dataset.x_train)
        self.y = jnp.asarray(dataset.y_train)
        self.args = args

    def step_flops(self) -> float:
        """XLA's flop count of one tick of the population (one step of every trial)."""
        state = population.init_population(self.spec, self.hparams)
        idx = jnp.zeros((self.hparams.num_trials, self.spec.microbatch), jnp.int32)

        def one_tick(state, hparams, x, y):
            step = jax.vmap(
                lambda h, t, s, xb, yb: population.micro_step(self.spec, h, t, s, xb, yb)
            )
            return step(hparams, state.trials, state.early_stop.stopped, x[idx], y[idx])

        compiled = jax.jit(one_tick).lower(state, self.hparams, self.x, self.y).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        return float(cost.get("flops", float("nan")))

    def run(self) -> dict:
        """Compile time, run time and peak memory of the whole budget."""
        args = self.args
        start = time.perf_counter()
        state = population.init_population(self.spec, self.hparams)
        jax.block_until_ready(state)
        init_s = time.perf_counter() - start
        lowered = population.train_ticks.lower(
            self.spec, state, self.hparams, self.x, self.y, jnp.int32(args.eval_every)
        )
        start = time.perf_counter()
        compiled = lowered.compile()
        compile_s = time.perf_counter() - start
        memory = compiled.memory_analysis()
        start = time.perf_counter()
        done = 0
        while done < args.steps:
            n = min(args.eval_every, args.steps - done)
            state = population.train_ticks(
                self.spec, state, self.hparams, self.x, self.y, jnp.int32(n)
            )
            done += n
        jax.block_until_ready(state)
        run_s = time.perf_counter() - start
        peak = None
        stats = jax.local_devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            peak = stats["peak_bytes_in_use"]
        elif memory is not None:
            peak = (
                memory.argument_size_in_bytes
                + memory.output_size_in_bytes
                + memory.temp_size_in_bytes
                - memory.alias_size_in_bytes
            )
        assert int(state.trials.step.min()) == args.steps
        return {"init_s": init_s, "compile_s": compile_s, "run_s": run_s, "peak_bytes": peak}


def main(argv=None) -> None:
    args = parse_args(argv)
    dataset = data_lib.load_dataset(
        ml_collections.ConfigDict(
            {
                "dataset": "mnist1d",
                "npz_path": "",
                "val_fraction": 0.1,
                "train_subset": 0,
                "data_seed": 0,
            }
        )
    )
    device = jax.devices()[0]
    print(
        f"device: {device.device_kind} x {jax.device_count()} ({jax.default_backend()}); "
        f"MLP 40-{'-'.join([str(args.hidden_units)] * args.num_layers)}-10, "
        f"{args.optimizer}, batch {args.batch_size}, {args.steps} steps per trial"
    )
    peak = matmul_gflops()
    print(f"float32 matmul 1024x1024: {peak:.1f} GFLOP/s")

    if args.population_sizes:
        print(
            f"{'K':>5} {'compile s':>10} {'run s':>8} {'trial-steps/s':>14} "
            f"{'vs K=1':>7} {'GFLOP/s':>8} {'peak MiB':>9}"
        )
        base = None
        for k in (int(v) for v in args.population_sizes.split(",")):
            bench = Bench(args, k, dataset)
            flops = bench.step_flops()
            r = bench.run()
            rate = k * args.steps / r["run_s"]
            base = base or rate
            mib = r["peak_bytes"] / 2**20 if r["peak_bytes"] else float("nan")
            print(
                f"{k:>5} {r['compile_s']:>10.2f} {r['run_s']:>8.2f} {rate:>14.0f} "
                f"{rate / base:>7.1f} {flops * args.steps / r['run_s'] / 1e9:>8.1f} "
                f"{mib:>9.1f}"
            )
        return

    k = args.num_trials
    bench = Bench(args, k, dataset)
    flops = bench.step_flops()
    together = bench.run()
    gflops = flops * args.steps / together["run_s"] / 1e9
    print(
        f"population of {k}: compile {together['compile_s']:.2f} s (+ init "
        f"{together['init_s']:.2f} s), run {together['run_s']:.2f} s, "
        f"{k * args.steps / together['run_s']:.0f} trial-steps/s, {gflops:.1f} GFLOP/s "
        f"({100 * gflops / peak:.0f}% of the matmul)"
    )
    if args.skip_solo:
        return
    solo_compile = solo_run = 0.0
    for j in range(k):
        one = Bench(args, 1, dataset)
        one.hparams = jax.tree.map(lambda a, j=j: a[j : j + 1], bench.hparams)
        r = one.run()
        solo_compile += r["compile_s"] + r["init_s"]
        solo_run += r["run_s"]
    print(
        f"{k} trials one at a time: compile {solo_compile:.2f} s, run {solo_run:.2f} s, "
        f"{k * args.steps / solo_run:.0f} trial-steps/s"
    )
    print(
        f"speed-up of the population: {solo_run / together['run_s']:.2f}x run time, "
        f"{(solo_run + solo_compile) / (together['run_s'] + together['compile_s']):.2f}x "
        "including compilation"
    )


if __name__ == "__main__":
    main()
