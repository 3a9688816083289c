"""Measurements through the runner: engine runs (reused when finished), the memory and speed of
one trial per batch size, and the gradient noise scale along training (runner hooks).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from absl import logging

from hpjax import data as data_lib
from hpjax.config import NON_STUDY_KEYS, as_tuple, config_to_dict
from hpjax.engine import noise_scale, population
from hpjax.results import files
from hpjax.studies.batch_size.config import COMPUTE_COLUMNS, compute_section, train_config
from hpjax.study import loop
from hpjax.study import spec as spec_lib
from hpjax.study.run import train_and_evaluate


def same_run(cfg, directory: str) -> bool:
    """The directory holds the finished engine run of this very config."""
    if not os.path.exists(os.path.join(directory, "summary.csv")):
        return False
    old = files.read_config(directory)
    new = config_to_dict(cfg)
    ignore = set(NON_STUDY_KEYS)
    return {k: v for k, v in old.items() if k not in ignore} == {
        k: v for k, v in new.items() if k not in ignore
    }


def run_engine(cfg, directory: str, part: str = "") -> tuple[list[dict], list[dict]]:
    """``train_and_evaluate(cfg, directory)`` unless it already finished there; returns the
    summary rows and the metrics records. ``part`` says where the study is, for the log."""
    if same_run(cfg, directory):
        logging.info("%s: finished before with this config; reusing its results", directory)
    else:
        logging.info("batch-size study: %s, into %s", part or "a run", directory)
        train_and_evaluate(cfg, directory)
    return files.read_summary(directory), files.read_metrics(directory)


class ProfileHook(loop.Hooks):
    """Times a one-trial population's training calls and reads XLA's memory analysis of its
    compiled training loop."""

    def __init__(self):
        self.seconds: list[float] = []
        self.ticks: list[int] = []
        self.memory = None
        self.compile_s = math.nan

    def on_start(self, run, state) -> None:
        d = run.data
        start = time.perf_counter()
        compiled = population.train_ticks.lower(
            run.spec, state, run.rows.hparams, d.x_train, d.y_train, jnp.int32(1)
        ).compile()
        self.compile_s = time.perf_counter() - start
        self.memory = compiled.memory_analysis()

    def on_train(self, run, num_ticks: int, seconds: float) -> None:
        self.ticks.append(num_ticks)
        self.seconds.append(seconds)

    def row(self, batch_size: int) -> dict:
        """The measurement: the fastest timed call (the first one, which compiles, is not)."""
        timed = list(zip(self.ticks[1:], self.seconds[1:], strict=True))
        ticks, seconds = min(timed, key=lambda ts: ts[1] / ts[0])
        mem = self.memory

        def field(name):
            return int(getattr(mem, name, 0) or 0) if mem is not None else None

        temp, arg, out, alias = (
            field(f"{n}_size_in_bytes") for n in ("temp", "argument", "output", "alias")
        )
        return {
            "batch_size": int(batch_size),
            "temp_bytes": temp,
            "peak_bytes": None if mem is None else arg + out + temp - alias,
            "argument_bytes": arg,
            "examples_per_s": ticks * batch_size / seconds,
            "steps_per_s": ticks / seconds,
            "ms_per_step": 1000 * seconds / ticks,
            "compile_s": self.compile_s,
        }


def profile_batch_sizes(
    config,
    dataset: data_lib.Dataset,
    batch_sizes: Sequence[int],
    directory: str,
    examples: int = 20000,
    repeats: int = 3,
) -> list[dict]:
    """Per batch size, the compiled memory and the speed of one trial trained at that size.

    Each batch size trains one trial through the runner (into ``directory/bs_NNNN``, always
    afresh) for ``repeats + 1`` training calls of about ``examples`` examples (at least 3
    steps) each; XLA's memory analysis of the compiled loop gives its temporary bytes
    (activations, gradients) and peak bytes (arguments + outputs + temporaries - aliased), and
    the fastest timed call after the first gives examples and steps per second.
    """
    rows = []
    for b in batch_sizes:
        ticks = max(3, math.ceil(examples / b))
        cfg = train_config(
            config,
            "compute",
            batch_sizes=(int(b),),
            learning_rates=(1e-3,),
            weight_decays=(0.0,),
            num_steps=ticks * (repeats + 1),
            eval_every=ticks,
            patience=0,
            checkpoint_every=0,
            make_report=False,
        )
        run_dir = os.path.join(directory, f"bs_{int(b):04d}")
        if os.path.isdir(run_dir):
            shutil.rmtree(run_dir)
        hook = ProfileHook()
        train_and_evaluate(cfg, run_dir, dataset=dataset, hooks=[hook])
        rows.append(hook.row(int(b)))
        logging.info(
            "compute: batch %d: %.3g examples/s, %.3g ms/step, temp %s bytes",
            b,
            rows[-1]["examples_per_s"],
            rows[-1]["ms_per_step"],
            rows[-1]["temp_bytes"],
        )
    return rows


def measure_compute(config, dataset, sizes, directory: str) -> list[dict]:
    """The profile of ``sizes``, reused from ``compute.json`` when measured for the same setup."""
    section = compute_section(config)
    if section is None or not section.get("enabled", True):
        return []
    chosen = as_tuple(section.get("batch_sizes", ()))
    sizes = [b for b in sizes if b in chosen] if chosen else list(sizes)
    if not sizes:
        return []
    engine = train_config(
        config, "compute", batch_sizes=tuple(sizes), learning_rates=(1e-3,), num_steps=1
    )
    setup = {
        "model": config_to_dict(engine.model),
        "optimizer": [engine.optimizer, list(map(list, spec_lib.parse(engine).optimizer.options))],
        "schedule": engine.schedule,
        "data": [dataset.name, dataset.num_train, list(dataset.input_shape)],
        "batch_sizes": list(sizes),
        "examples": int(section.get("examples", 20000)),
        "device": str(jax.devices()[0].device_kind),
    }
    cache = os.path.join(directory, "compute.json")
    if os.path.exists(cache):
        with open(cache) as f:
            saved = json.load(f)
        if saved.get("setup") == config_to_dict(setup):
            logging.info("compute: reusing the profile in %s", cache)
            return saved["rows"]
    rows = profile_batch_sizes(
        config, dataset, sizes, os.path.join(directory, "compute"), setup["examples"]
    )
    files.write_json(cache, {"setup": setup, "rows": rows})
    files.write_csv(os.path.join(directory, "compute.csv"), rows, COMPUTE_COLUMNS)
    return rows


class NoiseScaleHook(loop.Hooks):
    """Measures B_simple of every evaluated trial at each evaluation of the runner:
    ``section.num_draws`` two-batch measurements (batch sizes ``section.small_batch`` and
    ``section.big_batch``) and, with ``section.exact``, the exact value from all per-example
    gradients of the training set."""

    def __init__(self, section, seed: int = 0):
        self.small, self.big = int(section.small_batch), int(section.big_batch)
        self.draws = int(section.num_draws)
        self.exact = bool(section.get("exact", True))
        self.key = jax.random.PRNGKey(seed)
        self.rows: list[dict] = []

    def on_evaluation(self, run, state, rows) -> None:
        params = state.trials.params
        self.key, sub = jax.random.split(self.key)
        small_sq, big_sq = run.sharding.to_host(
            noise_scale.measure_population(
                run.model.apply,
                params,
                run.data.x_train,
                run.data.y_train,
                jax.random.split(sub, len(run.rows.positions)),
                self.small,
                self.big,
                self.draws,
            )
        )
        evaluated = {row["trial"]: row for row in rows}
        for r, pos in enumerate(run.rows.positions):
            trial = run.plan.trials[pos] if pos >= 0 else None
            if trial is None or trial.index not in evaluated:
                continue
            at = evaluated[trial.index]
            est = noise_scale.simple_noise_scale(small_sq[r], big_sq[r], self.small, self.big)
            row = {
                "trial": trial.index,
                "learning_rate": trial.learning_rate,
                "batch_size": trial.batch_size,
                **{k: at[k] for k in ("step", "epoch", "train_loss", "val_loss", "val_accuracy")},
                "grad_sq": float(est.grad_sq),
                "trace": float(est.trace),
                "b_simple": float(est.b_simple),
            }
            if self.exact:
                one = jax.tree.map(lambda leaf, r=r: leaf[r], params)
                exact = jax.device_get(
                    noise_scale.exact_noise_scale(
                        run.model.apply, one, run.data.x_train, run.data.y_train
                    )
                )
                row.update(
                    grad_sq_exact=float(exact.grad_sq),
                    trace_exact=float(exact.trace),
                    b_simple_exact=float(exact.b_simple),
                )
            self.rows.append(row)


def add_moving_averages(rows: list[dict], decay: float) -> None:
    """Each trial's moving-average B_simple (and of the exact one, when measured), in place."""
    for trial in sorted({r["trial"] for r in rows}):
        series = [r for r in rows if r["trial"] == trial]
        for suffix in ("", "_exact"):
            if f"grad_sq{suffix}" not in series[0]:
                continue
            ema = noise_scale.ema_noise_scale(
                [r[f"grad_sq{suffix}"] for r in series],
                [r[f"trace{suffix}"] for r in series],
                decay,
            )
            for r, value in zip(series, ema.b_simple, strict=True):
                r[f"b_simple{suffix}_ema"] = float(value)


def measure_noise_scale(cfg, dataset: data_lib.Dataset, section, directory: str) -> list[dict]:
    """Trains the engine config ``cfg`` through the runner into ``directory`` (always afresh,
    so every evaluation is measured) and returns B_simple at every evaluation."""
    if os.path.isdir(directory):
        shutil.rmtree(directory)
    hook = NoiseScaleHook(section)
    train_and_evaluate(cfg, directory, dataset=dataset, hooks=[hook])
    add_moving_averages(hook.rows, float(section.ema_decay))
    return hook.rows
