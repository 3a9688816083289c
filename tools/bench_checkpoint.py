"""Benchmark: the cost of checkpointing and of frozen (stopped) trials in the default study.

  python tools/bench_checkpoint.py                 # checkpoint seconds per save
  python tools/bench_checkpoint.py --compaction    # also the default study with and without
                                                   # compaction of stopped trials (2 runs)

Checkpoint figures time ``hpjax.checkpoint`` on the default study's population (state
checkpoints wait for the asynchronous save to finish). The compaction figure runs the default
study twice, side by side in one process: ``compact_fraction=0`` (stopped trials stay frozen in
the program and keep costing compute) against the default 0.5.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

from hpjax import data as data_lib
from hpjax.config import default_config  # noqa: E402
from hpjax.engine import (
    population,  # noqa: E402
    tasks,  # noqa: E402
)
from hpjax.models import build_model  # noqa: E402
from hpjax.results import checkpoints as checkpoint  # noqa: E402
from hpjax.study import populations, spec  # noqa: E402
from hpjax.study.run import train_and_evaluate  # noqa: E402


def checkpoint_costs(repeats: int) -> None:
    config = default_config()
    dataset = data_lib.load_dataset(config)
    model = build_model(config.model, dataset.input_shape, dataset.num_classes)
    study = spec.parse(config)
    plan = populations.plan_populations(study, study.trials, dataset.num_train)[0]
    pop_spec = populations.population_spec(
        study,
        model,
        plan,
        num_train=dataset.num_train,
        num_classes=dataset.num_classes,
        task=tasks.CLASSIFICATION,
    )
    state = jax.device_get(population.init_population(pop_spec, plan.hparams()))
    size = sum(np.asarray(x).nbytes for x in jax.tree.leaves(state)) / 2**20
    with tempfile.TemporaryDirectory() as workdir:
        saver = checkpoint.StateCheckpoints(workdir, 0)
        times = []
        for i in range(repeats):
            start = time.perf_counter()
            saver.save(i + 1, state, {"metrics_lines": 0})
            saver.manager.wait_until_finished()
            times.append(time.perf_counter() - start)
        saver.close()
        rows = [{"trial": t.index, "best_step": 0} for t in plan.trials]
        start = time.perf_counter()
        checkpoint.save_best(workdir, state.best_params, rows, {})
        best_s = time.perf_counter() - start
    print(
        f"state checkpoint of {len(plan.trials)} trials ({size:.1f} MiB): "
        f"{np.median(times):.3f} s per save (median of {repeats}, waited to the end)"
    )
    print(
        f"best checkpoints of {len(plan.trials)} trials: {best_s:.3f} s "
        f"({best_s / len(plan.trials):.3f} s per trial)"
    )


def compaction_cost() -> None:
    config = default_config()
    config.make_report = False
    results = {}
    for fraction in (0.0, 0.5):
        config.compact_fraction = fraction
        with tempfile.TemporaryDirectory() as workdir:
            start = time.perf_counter()
            rows = train_and_evaluate(config, workdir)
            results[fraction] = (time.perf_counter() - start, rows)
    off, on = results[0.0], results[0.5]
    useful = sum(r["steps"] for r in on[1])
    paid = len(on[1]) * max(r["steps"] for r in on[1])
    print(
        f"default study: {useful} trial-steps of training in {paid} ticks x trials "
        f"without compaction ({100 * useful / paid:.0f}% useful)"
    )
    print(
        f"default study wall time: {off[0]:.1f} s with frozen trials kept, {on[0]:.1f} s "
        f"with compaction (x{off[0] / on[0]:.2f})"
    )
    same = all(a["best_step"] == b["best_step"] for a, b in zip(off[1], on[1], strict=True))
    print(f"same early-stop points with and without compaction: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compaction", action="store_true")
    args = parser.parse_args()
    logging.set_verbosity(logging.WARNING)
    checkpoint_costs(args.repeats)
    if args.compaction:
        compaction_cost()


if __name__ == "__main__":
    main()
