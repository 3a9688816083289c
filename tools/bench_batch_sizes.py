"""Benchmark: batch sizes 1..2048 in ONE population against the same trials one at a time.

The 12 powers of two from 1 to 2048 train for the same number of epochs, once as one vmapped
population (micro-batch accumulation with micro-batch gcd = 1, batch_axis 'vmap') and once as
12 separate runs of the same engine, one per batch size (each with its own micro-batch = its
batch size, so one update per tick). Two levels, printed side by side:

- ``engine``: ``population.init_population`` and ``population.train_ticks`` only. The loop is
  compiled ahead of time (``lower().compile()``), so compile time and run time are apart.
- ``study``: ``train_and_evaluate`` end to end (evaluations, checkpoints, summary), with
  evaluations at the same examples seen in both modes. Compile time is the sum of JAX's
  tracing, lowering and backend-compile events (``jax.monitoring``); run time is the rest.

  python tools/bench_batch_sizes.py
  python tools/bench_batch_sizes.py --epochs=5 --levels=engine
  python tools/bench_batch_sizes.py --hidden_units=256 --optimizer=adam

The issue's target: the population costs at most half of the summed time of the 12 runs.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from hpjax import data as data_lib  # noqa: E402
from hpjax.engine import population  # noqa: E402
from hpjax.models import build_model  # noqa: E402
from hpjax.study import spec as spec_lib  # noqa: E402
from hpjax.study.run import train_and_evaluate  # noqa: E402

_EPOCHS = flags.DEFINE_float("epochs", 2.0, "Epochs of every trial.")
_MAX_BATCH = flags.DEFINE_integer("max_batch", 2048, "Largest power of two (from 1).")
_DATASET = flags.DEFINE_string("dataset", "mnist1d", "mnist1d | digits")
_HIDDEN = flags.DEFINE_integer("hidden_units", 128, "MLP width.")
_LAYERS = flags.DEFINE_integer("num_layers", 2, "MLP hidden layers.")
_OPTIMIZER = flags.DEFINE_string("optimizer", "momentum", "Optimizer of every trial.")
_LR = flags.DEFINE_float("learning_rate", 0.01, "Learning rate of every trial.")
_LEVELS = flags.DEFINE_list("levels", ["engine", "study"], "engine and/or study.")


def bench_config() -> ml_collections.ConfigDict:
    """The batch-size study's config, shrunk to the benchmark's single rate and budget."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments", "configs"))
    import batch_size_study  # noqa: PLC0415

    config = batch_size_study.get_config("fixed_epochs")
    config.dataset = _DATASET.value
    config.model.hidden_units = _HIDDEN.value
    config.model.num_layers = _LAYERS.value
    config.optimizer = _OPTIMIZER.value
    config.make_report = False
    config.checkpoint_every = 0
    config.log_every_s = 3600.0
    config.overwrite = True
    return config


class CompileClock:
    """Sums JAX's tracing, lowering and compilation time while active."""

    EVENTS = (
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    )

    def __init__(self):
        self.seconds = 0.0

    def __call__(self, event: str, duration: float, **_) -> None:
        if event in self.EVENTS:
            self.seconds += duration

    def __enter__(self) -> CompileClock:
        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *_) -> None:
        jax.monitoring.unregister_event_duration_listener(self)


def _hparams(sizes, max_steps) -> population.TrialHParams:
    k = len(sizes)
    return population.make_hparams(
        learning_rate=[_LR.value] * k,
        batch_size=list(sizes),
        seed=[0] * k,
        weight_decay=[0.0] * k,
        warmup_steps=[0] * k,
        decay_rate=[0.1] * k,
        end_factor=[0.0] * k,
        max_steps=list(max_steps),
    )


def engine_run(config, dataset, sizes) -> dict:
    """Init, AOT compile and run of one population holding ``sizes``; seconds of each."""
    n = dataset.num_train
    model = build_model(config.model, dataset.input_shape, dataset.num_classes)
    microbatch = math.gcd(*sizes)
    max_steps = [int(_EPOCHS.value * n // b) for b in sizes]
    ticks = max(s * b // microbatch for s, b in zip(max_steps, sizes, strict=True))
    spec = population.PopulationSpec(
        model=model,
        optimizer=config.optimizer,
        schedule=config.schedule,
        microbatch=microbatch,
        num_train=n,
        optimizer_options=spec_lib.parse(config).optimizer.options,
    )
    hparams = _hparams(sizes, max_steps)
    x, y = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
    start = time.perf_counter()
    state = jax.block_until_ready(population.init_population(spec, hparams))
    init_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = population.train_ticks.lower(spec, state, hparams, x, y, jnp.int32(ticks)).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    state = jax.block_until_ready(compiled(state, hparams, x, y, jnp.int32(ticks)))
    run_s = time.perf_counter() - start
    steps = [int(s) for s in state.trials.step]
    assert steps == max_steps, (steps, max_steps)
    mem = compiled.memory_analysis()
    return {
        "init_s": init_s,
        "compile_s": compile_s,
        "run_s": run_s,
        "ticks": ticks,
        "temp_bytes": getattr(mem, "temp_size_in_bytes", None) if mem else None,
    }


def study_run(config, sizes, workdir: str, eval_every: int) -> dict:
    """``train_and_evaluate`` of one population holding ``sizes``; compile and total seconds."""
    cfg = config.train_config(
        config,
        "bench",
        batch_sizes=tuple(sizes),
        learning_rates=(_LR.value,),
        num_epochs=_EPOCHS.value,
        eval_every=eval_every,
    )
    start = time.perf_counter()
    with CompileClock() as clock:
        train_and_evaluate(cfg, workdir)
    total = time.perf_counter() - start
    return {"compile_s": clock.seconds, "total_s": total, "run_s": total - clock.seconds}


def _row(label: str, together: float, alone: float) -> str:
    ratio = together / alone if alone > 0 else math.inf
    return f"  {label:<28} {together:10.2f} {alone:12.2f} {ratio:9.2f}"


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    config = bench_config()
    dataset = data_lib.load_dataset(config)
    sizes = [2**i for i in range(int(math.log2(_MAX_BATCH.value)) + 1)]
    spec_lib.parse(
        config.train_config(
            config,
            "bench",
            batch_sizes=tuple(sizes),
            learning_rates=(_LR.value,),
            num_epochs=1.0,
            eval_every=1,
        ),
        num_train=dataset.num_train,
    )
    print(
        f"batch sizes {sizes[0]}..{sizes[-1]} ({len(sizes)}), {_EPOCHS.value:g} epochs of "
        f"{dataset.num_train} examples, mlp {_LAYERS.value}x{_HIDDEN.value}, {config.optimizer}, "
        f"on {jax.devices()[0].platform} ({jax.device_count()} device(s), "
        f"{os.cpu_count()} CPU cores)"
    )
    header = f"  {'seconds':<28} {'population':>10} {'sum of solo':>12} {'ratio':>9}"
    if "engine" in _LEVELS.value:
        pop = engine_run(config, dataset, sizes)
        solo = {b: engine_run(config, dataset, [b]) for b in sizes}
        total = {k: sum(r[k] for r in solo.values()) for k in ("init_s", "compile_s", "run_s")}
        print("\nengine level (init_population + AOT-compiled train_ticks):")
        print(header)
        print(_row("init (incl. its compile)", pop["init_s"], total["init_s"]))
        print(_row("compile train loop", pop["compile_s"], total["compile_s"]))
        print(_row("run train loop", pop["run_s"], total["run_s"]))
        print(_row("total", sum(pop[k] for k in total), sum(total.values())))
        print(
            f"  population: {pop['ticks']} ticks of micro-batch 1 for 12 trials; "
            f"temp {pop['temp_bytes']} bytes"
        )
        print(
            "  solo runs, seconds (compile / run):  "
            + ", ".join(f"B={b}: {r['compile_s']:.1f}/{r['run_s']:.2f}" for b, r in solo.items())
        )
    if "study" in _LEVELS.value:
        with tempfile.TemporaryDirectory() as tmp:
            pop = study_run(config, sizes, os.path.join(tmp, "population"), eval_every=1)
            largest = sizes[-1]
            solo = {
                b: study_run(config, [b], os.path.join(tmp, f"bs_{b}"), eval_every=largest // b)
                for b in sizes
            }
        total = {k: sum(r[k] for r in solo.values()) for k in ("compile_s", "run_s", "total_s")}
        print(
            "\nstudy level (train_and_evaluate end to end, evaluations every "
            f"{largest} examples in both):"
        )
        print(header)
        print(_row("compile (trace+lower+XLA)", pop["compile_s"], total["compile_s"]))
        print(_row("run (everything else)", pop["run_s"], total["run_s"]))
        print(_row("total", pop["total_s"], total["total_s"]))
        target = "met" if pop["total_s"] <= 0.5 * total["total_s"] else "NOT met"
        print(f"  target (population <= half of the summed solo time, end to end): {target}")


if __name__ == "__main__":
    app.run(main)
