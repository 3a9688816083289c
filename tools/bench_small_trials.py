"""Benchmark: many small trials, end to end, against the loops a JAX user would write.

N trials of an MLP 64 x 2 on the 8x8 digits (batch 32, Adam, a constant rate drawn log-uniformly
in [1e-3, 1e-1], one evaluation of the validation loss every 100 steps), run side by side:

- ``binary``: ``experiments/lr_sweep.py`` in a fresh process (start-up, imports, compilation,
  checkpoints, report: everything a user waits for);
- ``api``: ``hpjax.train`` in this process, with the model as a user's own factory; its
  training time is that of the compiled training calls after each population's first (which
  compiles), scaled to all of the study's ticks;
- ``built-in``: the binary's config with the built-in MLP, in this process (the user's model
  path against the built-in path, per tick);
- ``optuna``: an Optuna study (``RandomSampler``) whose objective trains one trial with a jitted
  optax step compiled once for all trials, evaluating every 100 steps;
- ``expert``: one ``lax.scan`` per trial of the same math (random batches), compiled once, trials
  one after another; its training time is that of the trials after the first, scaled to all;
- ``minimal``: ``jax.vmap`` over all trials of that ``lax.scan`` (``tools/bench_engine.py``).

Printed per N and step count: wall seconds, the API's training time and its share of the wall
time, the expert's training time over the API's, the user's model path against the built-in
one per tick, and hpjax's speed-up over the Optuna loop.

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
from hpjax.configs import lr_sweep  # noqa: E402
from hpjax.models import from_factory  # noqa: E402
from hpjax.study import loop  # noqa: E402
from hpjax.study.run import train_and_evaluate  # noqa: E402
from tools.bench_engine import minimal_loop  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LR_RANGE = (1e-3, 1e-1)
BATCH, EVAL_EVERY, WIDTH = 32, 100, 64
METHODS = ("binary", "api", "built-in", "optuna", "expert", "minimal")


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
    """The study's training time: its training calls after each population's first (which
    compiles), scaled to all of its ticks (the first call's ticks included)."""

    def __init__(self):
        self.seen: set[int] = set()
        self.timed_s = 0.0
        self.timed_ticks = self.ticks = 0

    def on_train(self, run, num_ticks, seconds):
        if run.plan.index in self.seen:
            self.timed_s, self.timed_ticks = self.timed_s + seconds, self.timed_ticks + num_ticks
        self.seen.add(run.plan.index)
        self.ticks += num_ticks

    @property
    def seconds(self) -> float:
        return self.timed_s * self.ticks / self.timed_ticks if self.timed_ticks else float("nan")

    @property
    def seconds_per_tick(self) -> float:
        return self.timed_s / self.timed_ticks if self.timed_ticks else float("nan")


def run_api(trials: int, steps: int, workdir: str, data, built_in: bool = False) -> tuple:
    """``hpjax.train``'s study with the MLP as a user's factory, or (``built_in``) the
    binary's config and built-in MLP in this process; returns (wall s, TrainingTime)."""
    if built_in:
        config = lr_sweep.get_config()
        config.dataset, config.model.hidden_units, config.model.num_layers = data.name, WIDTH, 2
        config.update(study_keys(trials, steps))
    else:
        config = api.make_config("mlp", data.name, **study_keys(trials, steps))
    runtime.use_compilation_cache(config.compilation_cache)  # as hpjax.train does
    timing = TrainingTime()
    start = time.perf_counter()
    train_and_evaluate(
        config, workdir, model=None if built_in else mlp, dataset=data, hooks=[timing]
    )
    return time.perf_counter() - start, timing


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


def run_expert(trials: int, steps: int, data) -> tuple[float, float]:
    """Wall seconds, and the training seconds: the trials after the first (which compiles),
    scaled to all ``trials``."""
    model, _, _, _, (x, y) = _one_trial_functions(data)
    one = minimal_loop(model, x, y, BATCH, steps)  # vmapped: called on one trial at a time
    rates = np.exp(np.random.default_rng(0).uniform(*np.log(LR_RANGE), trials)).astype("f4")
    keys = jax.random.split(jax.random.PRNGKey(0), trials)
    start = time.perf_counter()
    for i in range(trials):
        if i == 1:
            second = time.perf_counter()
        params = jax.vmap(model.init)(keys[i : i + 1])
        jax.block_until_ready(one(params, keys[i : i + 1], jnp.asarray(rates[i : i + 1])))
    end = time.perf_counter()
    train_s = (end - second) * trials / (trials - 1) if trials > 1 else float("nan")
    return end - start, train_s


def run_minimal(trials: int, steps: int, data) -> float:
    model, _, _, _, (x, y) = _one_trial_functions(data)
    rates = np.exp(np.random.default_rng(0).uniform(*np.log(LR_RANGE), trials)).astype("f4")
    keys = jax.random.split(jax.random.PRNGKey(0), trials)
    start = time.perf_counter()
    params = jax.vmap(model.init)(keys)
    jax.block_until_ready(minimal_loop(model, x, y, BATCH, steps)(params, keys, jnp.asarray(rates)))
    return time.perf_counter() - start


COLUMNS = (
    ("N", 4), ("steps", 5), ("binary", 7), ("api", 7), ("built-in", 8), ("optuna", 7),
    ("expert", 7), ("minimal", 7), ("train", 6), ("share", 5), ("vs expert", 9),
    ("tick user/built-in", 18), ("optuna/api", 10), ("optuna/binary", 13),
)  # fmt: skip


def measure(n: int, steps: int, data, skip: set[str]) -> dict[str, float]:
    """One row: every method's wall seconds, hpjax's training and the ratios."""
    wall, nan = {}, float("nan")
    api_timing = built_in_timing = None
    with tempfile.TemporaryDirectory() as tmp:
        if "binary" not in skip:
            wall["binary"] = run_binary(n, steps, os.path.join(tmp, "binary"))
        if "api" not in skip:
            wall["api"], api_timing = run_api(n, steps, os.path.join(tmp, "api"), data)
        if "built-in" not in skip:
            wall["built-in"], built_in_timing = run_api(
                n, steps, os.path.join(tmp, "built_in"), data, built_in=True
            )
    if "optuna" not in skip:
        wall["optuna"] = run_optuna(n, steps, data)
    expert_train = nan
    if "expert" not in skip:
        wall["expert"], expert_train = run_expert(n, steps, data)
    if "minimal" not in skip:
        wall["minimal"] = run_minimal(n, steps, data)
    train = api_timing.seconds if api_timing else nan
    per_tick = [t.seconds_per_tick if t else nan for t in (api_timing, built_in_timing)]
    return wall | {
        "N": n,
        "steps": steps,
        "train": train,
        "share": train / wall.get("api", nan),
        "vs expert": expert_train / train,
        "tick user/built-in": per_tick[0] / per_tick[1],
        "optuna/api": wall.get("optuna", nan) / wall.get("api", nan),
        "optuna/binary": wall.get("optuna", nan) / wall.get("binary", nan),
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    skip = set(args.skip.split(",")) - {""}
    data = digits()
    print(
        f"MLP {WIDTH} x 2 on digits ({data.num_train} train), batch {BATCH}, Adam, evaluation "
        f"every {EVAL_EVERY} steps; {jax.device_count()} {jax.default_backend()} device(s). "
        "Wall seconds; train: the api's training (s), share: of its wall time; vs expert: the "
        "expert's training time over the api's; tick user/built-in: seconds per tick of the "
        "user's factory over the built-in MLP's; optuna/x: the speed-up over the Optuna loop"
    )
    print(" ".join(f"{name:>{width}}" for name, width in COLUMNS))
    for steps in (int(s) for s in args.steps.split(",")):
        for n in (int(t) for t in args.trials.split(",")):
            row = measure(n, steps, data, skip)
            cells = []
            for name, width in COLUMNS:
                value = row.get(name, float("nan"))
                text = f"{value:d}" if isinstance(value, int) else f"{value:.2f}"
                if name in ("share",):
                    text = f"{value:.0%}"
                elif "/" in name or name == "vs expert":
                    text = f"{value:.2f}x"
                elif name not in ("N", "steps"):
                    text = f"{value:.1f}"
                cells.append(f"{text:>{width}}")
            print(" ".join(cells), flush=True)


if __name__ == "__main__":
    main()
