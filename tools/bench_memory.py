"""Benchmark: the memory a population is planned with against what it takes, per model and size.

Each case runs in a fresh process: the MNIST-1D-shaped data (4000 training examples of 40
features, 10 classes, and 1000 validation examples) are made and copied to the device, the
process's resident memory is read (the baseline), then a population of K trials is planned
(``hpjax.engine.memory.estimate_trial``, what the study loop splits populations by), initialised,
trained for some ticks and evaluated as the study loop does. The measured figure is the peak
resident memory (or the device's peak counter on an accelerator) above the baseline.

  python tools/bench_memory.py                      # the default table
  python tools/bench_memory.py --cases mlp:2048:64  # model:width:trials, comma-separated
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_CASES = "mlp:64:10000,mlp:256:512,mlp:2048:16,cnn:16:256,cnn:64:64,gru:32:64,gru:128:16"


def _rss_bytes(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (the peak since the last reset) of this process."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as refs:  # "5": reset the peak resident set
        refs.write("5")


def measure(model: str, width: int, trials: int, ticks: int) -> dict:
    """One case, in this process: planned MiB, and measured MiB while it compiles and runs."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from hpjax.engine import memory, population
    from hpjax.models import build_model
    from hpjax.models.registry import default_model_config

    name = "rnn" if model == "gru" else model
    keys = default_model_config(name)
    keys[{"mlp": "hidden_units", "gru": "hidden_size", "cnn": "channels"}[model]] = width
    keys["num_layers"] = 2
    built = build_model(keys, (40,), 10)
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.normal(size=(4000, 40)).astype(np.float32))
    y = jax.device_put(rng.integers(0, 10, size=4000).astype(np.int32))
    x_val, y_val = x[:1000], y[:1000]
    spec = population.PopulationSpec(
        model=built,
        optimizer="adam",
        schedule="constant",
        microbatch=32,
        num_train=4000,
        accumulates=False,
        rows_per_group=population.rows_per_group(trials, 1),
    )
    jax.block_until_ready((x, y, x_val, y_val))
    planned = memory.estimate_trial(spec, (40,), eval_examples=1000).total * trials
    hparams = population.make_hparams(np.geomspace(1e-4, 1e-2, trials), 32, max_steps=10**6)
    # Compiled first, ahead of time: XLA's compiler works in host memory, freed once it is
    # done, a cost per program and not per trial (on an accelerator not in device memory).
    on_cpu = jax.default_backend() == "cpu"
    before = _rss_bytes("VmRSS")
    shaped = jax.eval_shape(population.init_population.default, spec, hparams)
    ticks_ = jnp.int32(ticks)
    evaluated = jnp.ones((trials,), bool)
    init = population.init_population.lower(spec, hparams).compile()
    train = population.train_ticks.lower(spec, shaped, hparams, x, y, ticks_).compile()
    evaluate = population.evaluate.lower(spec, shaped.trials.params, x_val, y_val).compile()
    loss = jax.ShapeDtypeStruct((trials,), jnp.float32)
    record = population.record_evaluation.lower(spec, shaped, loss, evaluated).compile()
    compile_mib = (_rss_bytes("VmHWM") - before) / 2**20
    if on_cpu:
        _reset_peak()
    baseline, source = (
        (_rss_bytes("VmRSS"), "peak RSS") if on_cpu else memory.peak_memory_bytes()
    )
    state = init(hparams)
    state = train(state, hparams, x, y, ticks_)
    val = evaluate(state.trials.params, x_val, y_val)
    state, _ = record(state, val["loss"], evaluated)
    host = jax.device_get(state)  # what the loop keeps of it (checkpoints, the ended store)
    del host
    jax.block_until_ready(state)
    peak = _rss_bytes("VmHWM") if on_cpu else memory.peak_memory_bytes()[0]
    return {
        "case": f"{model} {width}x2, K={trials}",
        "planned_mib": planned / 2**20,
        "measured_mib": (peak - baseline) / 2**20,
        "compile_mib": compile_mib,
        "source": source,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=DEFAULT_CASES, help="model:width:trials,...")
    parser.add_argument("--ticks", type=int, default=20)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a case, in the child process
    args = parser.parse_args(argv)
    if args.one:
        model, width, trials = args.one.split(":")
        print(json.dumps(measure(model, int(width), int(trials), args.ticks)))
        return 0
    print(
        f"{'case':<24} {'planned MiB':>12} {'measured MiB':>13} {'planned/measured':>17} "
        f"{'compiling MiB':>14}"
    )
    worst = 0.0
    for case in args.cases.split(","):
        child = subprocess.run(
            [sys.executable, __file__, "--one", case, "--ticks", str(args.ticks)],
            capture_output=True,
            text=True,
        )
        if child.returncode:
            print(f"{case:<24} failed: {child.stderr.strip().splitlines()[-1]}")
            continue
        row = json.loads(child.stdout.strip().splitlines()[-1])
        ratio = row["planned_mib"] / max(row["measured_mib"], 1e-9)
        worst = max(worst, abs(ratio - 1))
        print(
            f"{row['case']:<24} {row['planned_mib']:>12.1f} {row['measured_mib']:>13.1f} "
            f"{ratio:>17.2f} {row['compile_mib']:>14.0f}",
            flush=True,
        )
    print(
        f"largest gap: {100 * worst:.0f}% (measured: {row['source']} above the baseline, "
        "while the compiled programs initialise, train and evaluate; compiling: the resident "
        "memory XLA's compiler took, per program and not per trial, before)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
