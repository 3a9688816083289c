"""Benchmark: many small trials, end to end, against the loops a JAX user would write.

N trials of an MLP 64 x 2 on the 8x8 digits (batch 32, Adam, a constant rate drawn log-uniformly
in [1e-3, 1e-1], one evaluation of the validation loss every 100 steps), run side by side:

- ``binary``: ``experiments/lr_sweep.py`` in a fresh process (start-up, imports, compilation,
  checkpoints, report: everything a user waits for);
- ``api``: ``hpjax.train`` in this process, with the model as a user's own factory; its
  ``train_s`` is the time of the compiled training calls after each population's first;
- ``optuna``: an Optuna study (``RandomSampler``) whose objective trains one trial with a jitted
  optax step compiled once for all trials, evaluating every 100 steps;
- ``expert``: one ``lax.scan`` per trial of the same math (random batches), compiled once, trials
  one after another;
- ``minimal``: ``jax.vmap`` over all trials of that ``lax.scan`` (``tools/bench_engine.py``).

Printed per N and step count: wall seconds, trials per second, and hpjax's speed-up over the
Optuna loop.

  python tools/bench_small_trials.py                          # N = 8, 64, 512; 300, 3000 steps
  python tools/bench_small_trials.py --trials 8,64 --steps 300 --skip binary
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from hpjax import api, runtime  # noqa: E402
from hpjax import data as data_lib  # noqa: E402
from hpjax.models import from_factory  # noqa: E402
from hpjax.study import loop  # noqa: E402
from hpjax.study.run import train_and_evaluate  # noqa: E402
from tools.bench_engine import minimal_loop  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LR_RANGE = (1e-3, 1e-1)
BATCH, EVAL_EVERY, WIDTH = 32, 100, 64
METHODS = ("binary", "api", "optuna", "expert", "minimal")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", default="8,64,512")
    parser.add_argument("--steps", default="300,3000")
    parser.add_argument("--skip", default="", help=f"methods to leave out: {', '.join(METHODS)}")
    return parser.parse_args(argv)


def mlp(rngs: nnx.Rngs) -> nnx.Module:
    return nnx.Sequential(
        lambda x: x.reshape(x.shape[0], -1),  # the 8x8 images, flattened
        nnx.Linear(64, WIDTH, rngs=rngs),
        nnx.relu,
        nnx.Linear(WIDTH, WIDTH, rngs=rngs),
        nnx.relu,
        nnx.Linear(WIDTH, 10, rngs=rngs),
    )


def digits() -> data_lib.Dataset:
    config = ml_collections.ConfigDict(
        {"dataset": "digits", "val_fraction": 0.1, "train_subset": 0, "data_seed": 0}
    )
    return data_lib.load_dataset(config)


def study_keys(trials: int, steps: int) -> dict:
    return dict(
        lr_sampling="log_uniform",
        num_lr_samples=trials,
        lr_range=LR_RANGE,
        batch_size=BATCH,
        num_steps=steps,
        eval_every=EVAL_EVERY,
        patience=0,
        schedule="constant",
        weight_decays=(0.0,),
        optimizer="adam",
    )


def run_binary(trials: int, steps: int, workdir: str) -> float:
    as_flag = lambda v: f"({','.join(map(str, v))},)" if isinstance(v, tuple) else v  # noqa: E731
    flags = [f"--config.{k}={as_flag(v)}" for k, v in study_keys(trials, steps).items()]
    command = [
        sys.executable,
        os.path.join(ROOT, "experiments", "lr_sweep.py"),
        f"--workdir={workdir}",
        "--config.dataset=digits",
        f"--config.model.hidden_units={WIDTH}",
        "--config.model.num_layers=2",
        *flags,
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


class TrainingTime(loop.Hooks):
    """The wall time of the training calls, each population's first (its compile) left out."""

    def __init__(self):
        self.seconds, self.seen = 0.0, set()

    def on_train(self, run, num_ticks, seconds):
        if run.plan.index in self.seen:
            self.seconds += seconds
        self.seen.add(run.plan.index)


def run_api(trials: int, steps: int, workdir: str, data) -> tuple[float, float]:
    config = api.make_config("mlp", data.name, **study_keys(trials, steps))
    runtime.use_compilation_cache(config.compilation_cache)  # as hpjax.train does
    timing = TrainingTime()
    start = time.perf_counter()
    train_and_evaluate(config, workdir, model=mlp, dataset=data, hooks=[timing])
    return time.perf_counter() - start, timing.seconds


def _one_trial_functions(data):
    model = from_factory(mlp, "mlp")
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    x_val, y_val = jnp.asarray(data.x_val), jnp.asarray(data.y_val)
    adam = optax.scale_by_adam()

    def step(carry, lr):
        params, opt_state, key = carry
        key, sub = jax.random.split(key)
        idx = jax.random.randint(sub, (BATCH,), 0, x.shape[0])

        def loss_fn(p):
            return optax.softmax_cross_entropy_with_integer_labels(
                model.apply(p, x[idx]), y[idx]
            ).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = adam.update(grads, opt_state)
        params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
        return (params, opt_state, key)

    def val_loss(params):
        logits = model.apply(params, x_val)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y_val).mean()

    def init(key):
        params = model.init(key)
        return params, adam.init(params), key

    return model, jax.jit(init), jax.jit(step), jax.jit(val_loss), (x, y)


def run_optuna(trials: int, steps: int, data) -> float:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _, init, step, val_loss, _ = _one_trial_functions(data)
    start = time.perf_counter()

    def objective(trial):
        lr = trial.suggest_float("learning_rate", *LR_RANGE, log=True)
        carry = init(jax.random.PRNGKey(trial.number))
        best = np.inf
        for s in range(1, steps + 1):
            carry = step(carry, lr)
            if s % EVAL_EVERY == 0:
                value = float(val_loss(carry[0]))
                best = min(best, value)
                trial.report(value, s)
        return best

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=trials)
    return time.perf_counter() - start


def run_expert(trials: int, steps: int, data) -> float:
    model, _, _, _, (x, y) = _one_trial_functions(data)
    one = minimal_loop(model, x, y, BATCH, steps)  # vmapped: called on one trial at a time
    rates = np.exp(np.random.default_rng(0).uniform(*np.log(LR_RANGE), trials)).astype("f4")
    keys = jax.random.split(jax.random.PRNGKey(0), trials)
    start = time.perf_counter()
    for i in range(trials):
        params = jax.vmap(model.init)(keys[i : i + 1])
        jax.block_until_ready(one(params, keys[i : i + 1], jnp.asarray(rates[i : i + 1])))
    return time.perf_counter() - start


def run_minimal(trials: int, steps: int, data) -> float:
    model, _, _, _, (x, y) = _one_trial_functions(data)
    rates = np.exp(np.random.default_rng(0).uniform(*np.log(LR_RANGE), trials)).astype("f4")
    keys = jax.random.split(jax.random.PRNGKey(0), trials)
    start = time.perf_counter()
    params = jax.vmap(model.init)(keys)
    jax.block_until_ready(minimal_loop(model, x, y, BATCH, steps)(params, keys, jnp.asarray(rates)))
    return time.perf_counter() - start


def main(argv=None) -> None:
    args = parse_args(argv)
    skip = set(args.skip.split(",")) - {""}
    data = digits()
    print(
        f"MLP {WIDTH} x 2 on digits ({data.num_train} train), batch {BATCH}, Adam, evaluation "
        f"every {EVAL_EVERY} steps; {jax.device_count()} {jax.default_backend()} device(s)"
    )
    header = f"{'N':>4} {'steps':>5} " + " ".join(f"{m:>8}" for m in METHODS)
    print(header + f" {'train_s':>8} {'api/optuna':>10} {'binary/optuna':>13}  (wall seconds)")
    for steps in (int(s) for s in args.steps.split(",")):
        for n in (int(t) for t in args.trials.split(",")):
            wall, train_s = {}, float("nan")
            with tempfile.TemporaryDirectory() as tmp:
                if "binary" not in skip:
                    wall["binary"] = run_binary(n, steps, os.path.join(tmp, "binary"))
                if "api" not in skip:
                    wall["api"], train_s = run_api(n, steps, os.path.join(tmp, "api"), data)
            for name, fn in (
                ("optuna", run_optuna),
                ("expert", run_expert),
                ("minimal", run_minimal),
            ):
                if name not in skip:
                    wall[name] = fn(n, steps, data)
            cells = " ".join(f"{wall.get(m, float('nan')):>8.1f}" for m in METHODS)
            optuna_s = wall.get("optuna", np.nan)
            api_x, binary_x = (optuna_s / wall.get(m, np.nan) for m in ("api", "binary"))
            print(f"{n:>4} {steps:>5} {cells} {train_s:>8.1f} {api_x:>10.1f}x {binary_x:>12.1f}x")


if __name__ == "__main__":
    main()
