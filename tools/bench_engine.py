"""Benchmark: the engine against the plainest loop of the same math, side by side in one run.

The minimal loop: ``jax.vmap`` over trials of a ``lax.scan`` over steps, each trial drawing its
own random batch (with replacement) of the MNIST-1D training set, optax's ``scale_by_adam``,
plain SGD-style update with the trial's rate; no masks, no early stopping, no divergence check,
no micro-batch accumulation, no data stream. The engine trains the same recipe (MLP
40-256-256-10, Adam, batch 100) through ``population.train_ticks`` with everything on. Both are
compiled first and then timed over the same number of steps, alternating repeats so that a
noisy neighbour slows both alike; the ratio is the engine's share of the minimal loop's speed.

  python tools/bench_engine.py                    # K = 8, 32 and 128, 1000 steps (13 min)
  python tools/bench_engine.py --population_sizes 8 --steps 500 --repeats 2
  python tools/bench_engine.py --batch_norm --rows_per_group 0,1 --steps 500
  python tools/bench_engine.py --model gru --hidden_units 32 --population_sizes 8,64,512
  python tools/bench_engine.py --model cnn --hidden_units 16 --num_layers 3 --batch_size 32 \
      --population_sizes 512 --steps 100 --rows_per_group 0,16,32,64

``--model gru`` (a GRU of ``hidden_units`` over MNIST-1D's 40 steps) and ``--model cnn`` (the
built-in CNN, ``hidden_units`` channels per layer) answer whether a population of many rows is
slower per trial-step than smaller groups for models whose per-trial working set is larger;
``--rows_per_group`` times the engine with its rows in groups of each size (one column each).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from hpjax import data as data_lib  # noqa: E402
from hpjax.engine import population  # noqa: E402
from hpjax.models import build_model  # noqa: E402
from hpjax.models.registry import default_model_config  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population_sizes", default="8,32,128")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--model", choices=("mlp", "gru", "cnn"), default="mlp")
    parser.add_argument("--hidden_units", type=int, default=256, help="units, or CNN channels")
    parser.add_argument("--num_layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--batch_norm",
        action="store_true",
        help="the MLP or CNN with batch normalisation (the engine then trains rows one at a "
        "time on one CPU device; --rows_per_group 0,1 times all rows at once against that)",
    )
    parser.add_argument(
        "--rows_per_group",
        default="0",
        help="the engine's largest group of rows (0: all rows "
        "at once); a list times each, e.g. 0,16,32,64",
    )
    parser.add_argument(
        "--optimizers",
        default="adam",
        help="the engine's optimizers, timed side by side: built-in names or optax factories' "
        "import paths, e.g. adam,optax.adam",
    )
    return parser.parse_args(argv)


def minimal_loop(model, x_train, y_train, batch_size: int, steps: int):
    """The plainest vmapped training loop of the recipe; returns ``run(variables, keys, lrs)``.
    A model with batch statistics trains them in its training mode as the engine does."""
    adam = optax.scale_by_adam()

    def train_one(variables, key, lr):
        def step(carry, _):
            variables, opt_state, key = carry
            key, sub, dropout_key = jax.random.split(key, 3)
            idx = jax.random.randint(sub, (batch_size,), 0, x_train.shape[0])

            def loss_fn(p):
                full = model.with_trainable(variables, p)
                if model.stateful:
                    logits, full = model.train_apply(full, x_train[idx], dropout_key, 0.0)
                else:
                    logits = model.apply(full, x_train[idx])
                loss = optax.softmax_cross_entropy_with_integer_labels(logits, y_train[idx])
                return loss.mean(), full

            (loss, variables), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                model.trainable(variables)
            )
            updates, opt_state = adam.update(grads, opt_state)
            params = jax.tree.map(lambda p, u: p - lr * u, model.trainable(variables), updates)
            return (model.with_trainable(variables, params), opt_state, key), loss

        start = adam.init(model.trainable(variables))
        (variables, _, _), losses = jax.lax.scan(step, (variables, start, key), None, length=steps)
        return variables, losses[-1]

    return jax.jit(jax.vmap(train_one))


def time_call(fn, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def main(argv=None) -> int:
    args = parse_args(argv)
    dataset = data_lib.load_dataset(
        ml_collections.ConfigDict(
            {"dataset": "mnist1d", "val_fraction": 0.1, "train_subset": 0, "data_seed": 0}
        )
    )
    name = "rnn" if args.model == "gru" else args.model
    keys = default_model_config(name)
    width = {"mlp": "hidden_units", "gru": "hidden_size", "cnn": "channels"}[args.model]
    keys[width], keys["num_layers"] = args.hidden_units, args.num_layers
    if args.batch_norm:
        keys["batch_norm"] = True
    model = build_model(keys, dataset.input_shape, dataset.num_classes)
    x, y = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
    print(
        f"recipe: {args.model.upper()} {args.hidden_units}x{args.num_layers}"
        f"{' with batch norm' if args.batch_norm else ''}, Adam, batch "
        f"{args.batch_size}, {args.steps} steps; {jax.device_count()} {jax.default_backend()} "
        "device(s)"
    )
    groups = [int(g) for g in args.rows_per_group.split(",")]
    optimizers = args.optimizers.split(",")
    variants = [(g, o) for o in optimizers for g in groups]
    names = [
        (f"{o} " if len(optimizers) > 1 else "engine") + (f" g={g}" if g else "")
        for g, o in variants
    ]
    print(
        f"{'K':>4} {'minimal':>9} " + " ".join(f"{n:>12}" for n in names) + "  (trial-steps/s;"
        " ratio to minimal)"
    )
    for k in (int(s) for s in args.population_sizes.split(",")):
        rates = np.geomspace(1e-4, 1e-2, k).astype(np.float32)
        keys = jax.random.split(jax.random.PRNGKey(0), k)
        params = jax.vmap(model.init)(keys)
        minimal = minimal_loop(model, x, y, args.batch_size, args.steps)
        hparams = population.make_hparams(
            learning_rate=rates, batch_size=args.batch_size, max_steps=2**30
        )
        ticks = jnp.int32(args.steps)
        engines = []
        for group, optimizer in variants:
            spec = population.PopulationSpec(
                model=model,
                optimizer=optimizer,
                schedule="constant",
                microbatch=args.batch_size,
                num_train=dataset.num_train,
                accumulates=False,
                divergence_loss=100.0 * float(np.log(10)),
                rows_per_group=group,
            )
            fresh = jax.device_get(population.init_population(spec, hparams))
            engine = functools.partial(population.train_ticks, spec)

            def run_engine(engine=engine, fresh=fresh, hparams=hparams, ticks=ticks):
                state = jax.tree.map(jnp.asarray, fresh)  # a fresh copy: the loop donates it
                return engine(state, hparams, x, y, ticks).trials.step

            engines.append(run_engine)
        time_call(minimal, params, keys, jnp.asarray(rates))  # compile all first
        for run_engine in engines:
            time_call(run_engine)
        best_min, best_eng = np.inf, [np.inf] * len(engines)
        for _ in range(args.repeats):  # alternate: a noisy neighbour slows all alike
            best_min = min(best_min, time_call(minimal, params, keys, jnp.asarray(rates)))
            for i, run_engine in enumerate(engines):
                best_eng[i] = min(best_eng[i], time_call(run_engine))
        rate_min = k * args.steps / best_min
        cells = " ".join(
            f"{k * args.steps / t:>7.0f} {k * args.steps / t / rate_min:.2f}".rjust(12)
            for t in best_eng
        )
        print(f"{k:>4} {rate_min:>9.0f} {cells}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
