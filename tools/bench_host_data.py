"""Benchmark: training data on the host (a memory-mapped file) against data on the device.

A population of MLPs (40-256-256-10, Adam, batch 100) trains on a synthetic MNIST-1D-shaped set
of ``--examples`` rows saved as float32 ``.npy`` and opened with ``mmap_mode="r"``. The device
path puts the set on the device and gathers inside the compiled loop
(``population.train_ticks``); the host path gathers each block of micro-batches on the host
with numpy and prefetches it in a thread (``host_data.HostBatches``). Both are compiled first,
then timed over the same ticks, alternating repeats so that a noisy neighbour slows both alike.
A third run trains the same blocks gathered beforehand (nothing left for the host to do): the
host path's excess over it is the time the device waited for the host (the target is at most a
tenth). Printed: seconds per path, their ratio, that idle share, and whether the two paths'
parameters agree bit for bit.

  python tools/bench_host_data.py                     # K = 16, 1,000 ticks, 200,000 examples
  python tools/bench_host_data.py --examples 50000 --ticks 200 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from hpjax.engine import host_data, population  # noqa: E402
from hpjax.engine.sharding import TrialSharding  # noqa: E402
from hpjax.models import build_model  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population_size", type=int, default=16)
    parser.add_argument("--examples", type=int, default=200_000)
    parser.add_argument("--ticks", type=int, default=1000)
    parser.add_argument("--eval_every", type=int, default=100, help="ticks per training call")
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args(argv)


def memory_mapped_set(directory: str, examples: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(examples, 40)).astype(np.float32)
    path = os.path.join(directory, "x.npy")
    np.save(path, x)
    del x
    return np.load(path, mmap_mode="r"), rng.integers(0, 10, size=examples).astype(np.int32)


def main(argv=None) -> None:
    args = parse_args(argv)
    k, m = args.population_size, args.batch_size
    model = build_model(
        ml_collections.ConfigDict({"name": "mlp", "hidden_units": 256, "num_layers": 2}), (40,), 10
    )
    with tempfile.TemporaryDirectory() as directory:
        x, y = memory_mapped_set(directory, args.examples)
        spec = population.PopulationSpec(
            model=model,
            optimizer="adam",
            schedule="constant",
            microbatch=m,
            num_train=args.examples,
            accumulates=False,
        )
        hparams = population.make_hparams(
            np.geomspace(1e-4, 1e-2, k), m, seed=np.arange(k), max_steps=10**9
        )
        sharding = TrialSharding()
        on_device = (jnp.asarray(x), jnp.asarray(y))
        batches = host_data.HostBatches(x, y, m, sharding)

        def device_run() -> population.PopulationState:
            state = population.init_population(spec, hparams)
            for _ in range(args.ticks // args.eval_every):
                calls = jnp.asarray(args.eval_every, jnp.int32)
                state = population.train_ticks(spec, state, hparams, *on_device, calls)
                jax.block_until_ready(state)  # an evaluation would wait here too
            return state

        def host_run() -> population.PopulationState:
            state = population.init_population(spec, hparams)
            for _ in range(args.ticks // args.eval_every):
                state = batches.train(spec, state, hparams, args.eval_every)
                jax.block_until_ready(state)
            return state

        device_state, host_state = device_run(), host_run()  # compile both
        same = all(
            np.array_equal(a, b)
            for a, b in zip(
                jax.tree.leaves(jax.device_get(device_state.trials.params)),
                jax.tree.leaves(jax.device_get(host_state.trials.params)),
                strict=True,
            )
        )
        # The device's own share: the same blocks, gathered beforehand, trained back to back.
        keys = np.asarray(device_state.trials.data_key)
        blocks = [
            batches._gather(keys, np.full(k, start, np.int32), args.eval_every)
            for start in range(0, args.ticks, args.eval_every)
        ]

        def blocks_run() -> population.PopulationState:
            state = population.init_population(spec, hparams)
            for xs, ys in blocks:
                state = population.train_batches(spec, state, hparams, xs, ys)
                jax.block_until_ready(state)
            return state

        blocks_run()
        times = {"device": [], "host": [], "blocks": []}
        for _ in range(args.repeats):
            for name, run in (("device", device_run), ("host", host_run), ("blocks", blocks_run)):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        batches.close()
    device_s, host_s, blocks_s = (min(times[k]) for k in ("device", "host", "blocks"))
    idle = max(0.0, 1 - blocks_s / host_s)
    print(
        f"{jax.devices()[0].device_kind} ({jax.default_backend()}), K={k}, batch {m}, "
        f"{args.ticks} ticks, {args.examples} examples ({args.examples * 160 / 2**20:.0f} MiB, "
        f"memory-mapped), block budget {host_data.BLOCK_BYTES / 2**20:.0f} MiB"
    )
    print(
        f"  device data: {device_s:.2f} s   host data: {host_s:.2f} s   "
        f"host/device {host_s / device_s:.2f}"
    )
    print(
        f"  the same blocks gathered beforehand: {blocks_s:.2f} s, so the host path's device "
        f"waited {idle:.1%} of its time for the host (target <= 10%)"
    )
    print(f"  final parameters identical on both paths: {same}")


if __name__ == "__main__":
    main()
