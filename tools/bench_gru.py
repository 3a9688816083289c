"""Benchmark: a vmapped GRU sweep of 8 learning rates on MNIST-1D against the same 8 trials run
one at a time, through the same engine (hpjax.population), and optionally against PyTorch.

Usage:
  python tools/bench_gru.py                      # 1000 steps x 8 rates, the recipe's GRU
  python tools/bench_gru.py --steps 200 --hidden_size 6 --bidirectional   # the paper's GRU
  python tools/bench_gru.py --torch              # also 8 PyTorch GRU trials one after another
  python tools/bench_gru.py --devices 2          # the trial axis sharded over 2 CPU devices

Every mode trains the same model with Adam, batch 100, for ``--steps`` optimizer updates per
trial. Setup (compiling the training program, and compiling and running the initialisation) is
reported apart from run time; throughput is trials x steps per second of run time. PyTorch is
optional (``import torch`` must work; it is not a dependency of hpjax).

``--devices N`` makes N host devices (``--xla_force_host_platform_device_count``) and shards the
vmapped population's trial axis over them, as ``train_and_evaluate`` does with a device mesh;
a trial alone stays on one device.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _devices_flag(argv: list[str]) -> int:
    """``--devices N`` must take effect before JAX starts, so it is read before importing it."""
    for i, arg in enumerate(argv):
        if arg == "--devices" and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith("--devices="):
            return int(arg.split("=", 1)[1])
    return 1


if _devices_flag(sys.argv) > 1:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # host devices; other backends can hang here
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={_devices_flag(sys.argv)}"
    )

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hpjax import data as data_lib  # noqa: E402
from hpjax.engine import population  # noqa: E402
from hpjax.engine.sharding import TrialSharding  # noqa: E402
from hpjax.models import build_model  # noqa: E402


def _hparams(rates: np.ndarray, batch: int, steps: int, seeds: list[int]):
    k = len(rates)
    return population.make_hparams(
        learning_rate=list(rates),
        batch_size=[batch] * k,
        seed=seeds,
        weight_decay=[0.0] * k,
        warmup_steps=[0] * k,
        decay_rate=[0.1] * k,
        end_factor=[0.0] * k,
        max_steps=[steps] * k,
    )


def _timed(fn, *args):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def run_engine(
    spec, hparams, x, y, steps: int, sharding: TrialSharding | None = None, compiled=None
) -> dict:
    """Runs one population for ``steps`` ticks; returns timings, final state and the program.

    The training program is compiled ahead of time (timed apart) unless ``compiled`` is given.
    """
    state, init_s = _timed(population.init_population, spec, hparams)
    if sharding is not None:  # initialised on one device, then sharded (see the report)
        state, hparams = sharding.put_rows((state, hparams))
        x, y = sharding.replicate((x, y))
    n = jnp.int32(steps)
    compile_s = 0.0
    if compiled is None:
        start = time.perf_counter()
        compiled = population.train_ticks.lower(spec, state, hparams, x, y, n).compile()
        compile_s = time.perf_counter() - start
    state, run_s = _timed(compiled, state, hparams, x, y, n)
    return {
        "init_s": init_s,
        "compile_s": compile_s,
        "run_s": run_s,
        "state": state,
        "compiled": compiled,
    }


def run_torch(args, x: np.ndarray, y: np.ndarray, rates: np.ndarray) -> dict:
    """The same trials in PyTorch, one after another (plain loop, Adam, batch-first GRU)."""
    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    xt = torch.tensor(x[..., None])
    yt = torch.tensor(y, dtype=torch.long)
    n, b = len(yt), args.batch_size
    total = 0.0
    for i, rate in enumerate(rates):
        torch.manual_seed(i)
        gru = torch.nn.GRU(
            1,
            args.hidden_size,
            num_layers=args.num_layers,
            batch_first=True,
            bidirectional=args.bidirectional,
        )
        head = torch.nn.Linear(args.hidden_size * (2 if args.bidirectional else 1), 10)
        opt = torch.optim.Adam([*gru.parameters(), *head.parameters()], lr=float(rate))
        h = args.hidden_size
        perm = torch.randperm(n)
        start = time.perf_counter()
        for step in range(args.steps):
            j = (step * b) % (n - b + 1)
            idx = perm[j : j + b]
            out, _ = gru(xt[idx])
            feats = (
                out[:, -1]
                if not args.bidirectional
                else torch.cat([out[:, -1, :h], out[:, 0, h:]], dim=-1)
            )
            loss = torch.nn.functional.cross_entropy(head(feats), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        total += time.perf_counter() - start
    return {"run_s": total, "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="optimizer updates per trial")
    parser.add_argument("--trials", type=int, default=8, help="learning rates in the sweep")
    parser.add_argument("--hidden_size", type=int, default=32)
    parser.add_argument("--num_layers", type=int, default=1)
    parser.add_argument("--bidirectional", action="store_true")
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--torch", action="store_true", help="also time PyTorch (if installed)")
    parser.add_argument("--torch_threads", type=int, default=0, help="0: PyTorch's default")
    parser.add_argument("--skip_sequential", action="store_true")
    parser.add_argument(
        "--devices", type=int, default=1, help="CPU devices to shard the vmapped trials over"
    )
    args = parser.parse_args(argv)

    cfg = ml_collections.ConfigDict(
        {"dataset": "mnist1d", "val_fraction": 0.1, "train_subset": 0, "data_seed": 0}
    )
    dataset = data_lib.load_dataset(cfg)
    model_cfg = ml_collections.ConfigDict(
        {
            "name": "rnn",
            "cell": "gru",
            "hidden_size": args.hidden_size,
            "num_layers": args.num_layers,
            "bidirectional": args.bidirectional,
            "readout": "last",
        }
    )
    model = build_model(model_cfg, dataset.input_shape, dataset.num_classes)
    spec = population.PopulationSpec(
        model=model,
        optimizer="adam",
        schedule="constant",
        microbatch=args.batch_size,
        num_train=dataset.num_train,
    )
    x, y = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
    rates = np.geomspace(1e-3, 3e-2, args.trials).astype(np.float32)
    seeds = list(range(args.trials))
    print(
        f"GRU hidden {args.hidden_size} x {args.num_layers} layer(s)"
        f"{' bidirectional' if args.bidirectional else ''}, {model.num_params} params; MNIST-1D "
        f"{dataset.num_train} train x 40 steps; Adam, batch {args.batch_size}; {args.trials} "
        f"learning rates x {args.steps} steps; JAX {jax.__version__} on "
        f"{jax.devices()[0].platform} ({os.cpu_count()} cores, {jax.device_count()} device(s))"
    )

    rows = []
    sharding = TrialSharding(args.devices) if args.devices > 1 else None
    vm = run_engine(
        spec, _hparams(rates, args.batch_size, args.steps, seeds), x, y, args.steps, sharding
    )
    name = "hpjax vmapped (1 program" + (f", {args.devices} devices)" if sharding else ")")
    rows.append((name, vm["init_s"] + vm["compile_s"], vm["run_s"]))
    if not args.skip_sequential:
        setup, run_total, compiled = 0.0, 0.0, None
        for i in range(args.trials):
            one = run_engine(
                spec,
                _hparams(rates[i : i + 1], args.batch_size, args.steps, seeds[i : i + 1]),
                x,
                y,
                args.steps,
                compiled=compiled,
            )
            compiled = one["compiled"]  # one program of one trial serves all 8
            setup += one["init_s"] + one["compile_s"]
            run_total += one["run_s"]
        rows.append(("hpjax one at a time (same engine)", setup, run_total))
        # Agreement, over a short horizon: over 1000 steps float rounding differences grow
        # chaotically at the larger rates, so the two runs are compared after 20 steps.
        short = 20
        vm_short = run_engine(
            spec,
            _hparams(rates, args.batch_size, short, seeds),
            x,
            y,
            short,
            sharding,
            compiled=vm["compiled"],
        )
        diff = 0.0
        for i in range(args.trials):
            one = run_engine(
                spec,
                _hparams(rates[i : i + 1], args.batch_size, short, seeds[i : i + 1]),
                x,
                y,
                short,
                compiled=compiled,
            )
            for a, b in zip(
                jax.tree.leaves(vm_short["state"].trials.params),
                jax.tree.leaves(one["state"].trials.params),
                strict=True,
            ):
                diff = max(diff, float(np.max(np.abs(np.asarray(a[i]) - np.asarray(b[0])))))
        print(f"max |vmapped - alone| over every parameter after {short} steps: {diff:.2e}")
    if args.torch:
        try:
            torch_result = run_torch(
                args, np.asarray(dataset.x_train), np.asarray(dataset.y_train), rates
            )
            rows.append(
                (
                    f"PyTorch one at a time ({torch_result['threads']} threads)",
                    0.0,
                    torch_result["run_s"],
                )
            )
        except ImportError:
            print("PyTorch is not installed: skipped")

    trial_steps = args.trials * args.steps
    reference = rows[-1][2] if args.torch and len(rows) > 2 else None
    print(f"\n{'mode':40s} {'setup s':>10s} {'run s':>9s} {'trial-steps/s':>14s} {'speedup':>8s}")
    for name, compile_s, run_s in rows:
        speed = f"{reference / run_s:7.1f}x" if reference else ""
        print(f"{name:40s} {compile_s:10.1f} {run_s:9.1f} {trial_steps / run_s:14.0f} {speed:>8s}")
    if reference:
        print(
            "\nvmapped sweep against PyTorch trials one after another: "
            f"{reference / rows[0][2]:.1f}x (run time), "
            f"{reference / (rows[0][1] + rows[0][2]):.1f}x (compile included)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
