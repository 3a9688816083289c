"""A generated differential test of the study space (issue 34): Hypothesis draws a small study
from what a user combines (model, task, axes, how trials are named, scheduler, entry point, a
kill)
and :func:`check_study` holds it to the oracles a user relies on:

- every declared axis value is in ``summary.csv``, crossed as documented (the expected number
  of trials is computed here from the drawn study, not read from hpjax), or the study is
  refused in one line before anything is written;
- every trial equals the same trial trained alone (its metrics at every evaluation, its status,
  best step and test loss; a pruned trial's curve is a prefix of the alone one);
- ``restore_best`` of every trial scores the ``test_loss`` that ``summary.csv`` says;
- a kill at a drawn evaluation and a rerun give the same ``summary.csv`` and ``metrics.jsonl``.

The suite runs a fast profile (``tests/test_study_fuzz.py``); ``tools/fuzz_studies.py
--examples N`` runs the long one and prints the count and the shrunk failing study.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from hypothesis import strategies as st

import hpjax
from hpjax import api
from hpjax.engine import tasks
from hpjax.errors import ConfigError
from hpjax.models import TrialDropout
from hpjax.models.model import SownOutputs
from hpjax.models.registry import default_model_config
from hpjax.results import files
from hpjax.study.run import train_and_evaluate
from tests.conftest import Crash, CrashAtEvaluation

NUM_FEATURES, NUM_CLASSES = 12, 3
BASE = dict(
    num_steps=24,
    eval_every=8,
    optimizer="adam",
    make_report=False,
    tensorboard="off",
    optuna_storage="off",
)
# Columns that differ between two runs of one study (clocks, memory).
UNSTABLE = {"elapsed_s", "time", "peak_memory_mb", "memory_estimate_mb", "wall_s", "train_s"}


def tiny_data() -> hpjax.Dataset:
    rng = np.random.default_rng(3)
    y = rng.integers(0, NUM_CLASSES, size=132)
    x = rng.normal(size=(132, NUM_FEATURES)) + y[:, None] * np.linspace(-0.5, 0.5, NUM_FEATURES)
    return hpjax.from_arrays(x[:108], y[:108], x[108:], y[108:])


def user_mlp(rngs: nnx.Rngs, width: int = 8, activation: str = "relu") -> nnx.Module:
    return nnx.Sequential(
        nnx.Linear(NUM_FEATURES, width, rngs=rngs),
        getattr(nnx, activation),
        nnx.Linear(width, NUM_CLASSES, rngs=rngs),
    )


def user_batch_norm(rngs: nnx.Rngs, width: int = 8) -> nnx.Module:
    return nnx.Sequential(
        nnx.Linear(NUM_FEATURES, width, rngs=rngs),
        nnx.BatchNorm(width, rngs=rngs),
        nnx.relu,
        nnx.Linear(width, NUM_CLASSES, rngs=rngs),
    )


def user_dropout(rngs: nnx.Rngs, width: int = 8) -> nnx.Module:
    return nnx.Sequential(
        nnx.Linear(NUM_FEATURES, width, rngs=rngs),
        nnx.relu,
        nnx.Dropout(0.2, rngs=rngs),
        TrialDropout(rngs=rngs),
        nnx.Linear(width, NUM_CLASSES, rngs=rngs),
    )


class Sowing(nnx.Module):
    """An MLP with batch statistics whose hidden layer sows a penalty on its activations
    (nnx.sow): sown values crossed with a stateful model's training mode."""

    def __init__(self, rngs: nnx.Rngs, width: int = 8):
        self.hidden = nnx.Linear(NUM_FEATURES, width, rngs=rngs)
        self.norm = nnx.BatchNorm(width, rngs=rngs)
        self.head = nnx.Linear(width, NUM_CLASSES, rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.norm(self.hidden(x)))
        self.sow(nnx.Intermediate, "penalty", jnp.mean(jnp.square(h)))
        return self.head(h)


def user_sowing(rngs: nnx.Rngs, width: int = 8) -> nnx.Module:
    return Sowing(rngs, width)


FACTORIES = {
    "user_mlp": user_mlp,
    "user_batch_norm": user_batch_norm,
    "user_dropout": user_dropout,
    "user_sowing": user_sowing,
}
BUILT_IN = {
    "mlp": dict(name="mlp", hidden_units=8, num_layers=1),
    "mlp_batch_norm": dict(name="mlp", hidden_units=8, num_layers=1, batch_norm=True),
    "cnn": dict(name="cnn", channels=4, num_layers=1, kernel_size=3),
    "gru": dict(name="rnn", cell="gru", hidden_size=4, num_layers=1),
}
# model_grid keys each model takes, and two values of each
GRIDS = {
    "user_mlp": {"width": (4, 8), "activation": ("relu", "tanh")},
    "user_batch_norm": {"width": (4, 8)},
    "user_dropout": {"width": (4, 8)},
    "user_sowing": {"width": (4, 8)},
    "mlp": {"hidden_units": (4, 8)},
    "mlp_batch_norm": {"hidden_units": (4, 8)},
    "cnn": {"channels": (2, 4)},
    "gru": {"hidden_size": (2, 4)},
}
# list axis -> (config key, summary column, values to draw from)
LISTS = {
    "learning_rates": ("learning_rate", (0.003, 0.01, 0.03, 0.1)),
    "batch_sizes": ("batch_size", (4, 8, 12)),
    "seeds": ("seed", (0, 1, 2)),
    "weight_decays": ("weight_decay", (0.0, 0.1)),
    "label_smoothings": ("label_smoothing", (0.0, 0.1)),
    "dropouts": ("dropout", (0.0, 0.3)),
}
SPACE = {
    "learning_rate": ((1e-3, 1e-1, "log"), (0.01, 0.05)),
    "weight_decay": ((0.0, 0.2, "linear"), (0.0, 0.1)),
    "momentum": ((0.8, 0.95, "linear"), (0.8, 0.9)),
    "warmup_steps": ((0, 8, "linear"), (0, 4)),
    "seed": (None, (0, 1)),
    "b1": ((0.8, 0.95, "linear"), (0.8, 0.9)),  # Lion's, a per-trial keyword of the factory
}


def batch_cross_entropy(outputs, targets):
    return jnp.mean(tasks.cross_entropy(outputs, targets))


def batch_accuracy(outputs, targets):
    return jnp.mean(tasks.accuracy(outputs, targets))


def penalised_by_sown(outputs, targets, sown):
    return tasks.cross_entropy(outputs, targets) + 0.1 * sum(jax.tree.leaves(sown))


# The task drawn: the built-in one, a task of your own of one value per batch
# (reduction="mean"), or (for the sowing model, always) a loss adding what the model sows.
TASKS = {
    "classification": tasks.CLASSIFICATION,
    "batch_mean": hpjax.Task(
        "batch_mean",
        batch_cross_entropy,
        (("accuracy", batch_accuracy),),
        higher_is_better=("accuracy",),
        classification=True,
        reduction="mean",
    ),
    "sown": hpjax.Task(
        "sown",
        penalised_by_sown,
        (("accuracy", tasks.accuracy),),
        higher_is_better=("accuracy",),
        classification=True,
    ),
}
# The optimizer drawn: the built-in Adam, an optax factory, or both as an optimizer axis.
OPTIMIZERS = ("adam", "adam", "optax.lion", "axis")
AXIS = ("adam", "optax.lion")


def space_keys(optimizer: str) -> list[str]:
    """The keys a space may hold with ``optimizer``: hpjax's momentum (Adam's b1) is the
    built-ins', Lion's b1 the factory's; an axis of both holds neither."""
    keys = set(SPACE) - {"momentum", "b1"}
    keys |= {"adam": {"momentum"}, "optax.lion": {"b1"}}.get(optimizer, set())
    return sorted(keys)


@st.composite
def studies(draw) -> dict[str, Any]:
    """A small study: every key a plain value, so that a failing one prints as it is."""
    model = draw(st.sampled_from(sorted({*FACTORIES, *BUILT_IN})))
    naming = draw(st.sampled_from(["grid", "space", "trials"]))
    study: dict[str, Any] = {"model": model, "naming": naming}
    study["schedule"] = draw(st.sampled_from(["constant", "cosine", "linear"]))
    study["patience"] = draw(st.sampled_from([0, 1]))
    study["task"] = (
        "sown"
        if model == "user_sowing"
        else draw(st.sampled_from(["classification", "classification", "batch_mean"]))
    )
    optimizer = study["optimizer"] = draw(st.sampled_from(OPTIMIZERS))
    held = set()
    if naming == "space":
        keys = draw(
            st.lists(st.sampled_from(space_keys(optimizer)), min_size=1, max_size=3, unique=True)
        )
        sampler = draw(st.sampled_from(["random", "quasi_random", "grid"]))
        study["space_sampler"] = sampler
        study["space"] = {
            k: SPACE[k][1] if sampler == "grid" or SPACE[k][0] is None else SPACE[k][0]
            for k in keys
        }
        if sampler != "grid":
            study["num_samples"] = draw(st.integers(1, 3))
        held = set(keys)
    lists = {}
    for key, (column, values) in LISTS.items():
        if key == "dropouts" and model != "user_dropout":
            continue
        if key == "label_smoothings" and study["task"] != "classification":
            lists[key] = (0.0,)  # smoothing a loss of your own is refused (tested apart)
            continue
        single = naming == "trials" or column in held
        size = 1 if single else draw(st.integers(1, 2))
        lists[key] = tuple(
            draw(st.lists(st.sampled_from(values), min_size=size, max_size=size, unique=True))
        )
    study["lists"] = lists
    if naming == "trials":
        count = draw(st.integers(1, 3))
        study["trials"] = [
            {
                "learning_rate": draw(st.sampled_from(LISTS["learning_rates"][1])),
                "seed": draw(st.sampled_from(LISTS["seeds"][1])),
                "batch_size": draw(st.sampled_from(LISTS["batch_sizes"][1])),
            }
            for _ in range(count)
        ]
        for trial in study["trials"]:
            if optimizer == "axis":
                trial["optimizer"] = draw(st.sampled_from(AXIS))
            if optimizer == "optax.lion" and draw(st.booleans()):
                trial["b1"] = draw(st.sampled_from(SPACE["b1"][1]))
    grid = GRIDS[model]
    grid_keys = draw(st.lists(st.sampled_from(sorted(grid)), max_size=len(grid), unique=True))
    study["model_grid"] = {k: grid[k] if naming != "trials" else (grid[k][0],) for k in grid_keys}
    study["scheduler"] = draw(st.sampled_from(["none", "slots", "asha"]))
    if jax.device_count() > 1:  # a process started with several (CPU) devices
        study["num_devices"] = draw(st.sampled_from(sorted({1, 2, jax.device_count()})))
    study["kill_at"] = draw(st.sampled_from([0, 0, 2, 3]))
    return study


def overrides(study: dict[str, Any]) -> dict[str, Any]:
    """The study's config keys, as the API takes them (a binary's --config.KEY likewise)."""
    config = dict(BASE, schedule=study["schedule"], patience=study["patience"])
    config["num_devices"] = study.get("num_devices", 1)
    optimizer = study.get("optimizer", "adam")
    if optimizer == "axis":
        config["optimizers"] = AXIS
    else:
        config["optimizer"] = optimizer
    config |= {k: v for k, v in study["lists"].items() if k != "batch_sizes"}
    config["batch_sizes"] = study["lists"]["batch_sizes"]
    if study["naming"] == "space":
        config["space"] = dict(study["space"])
        config["space_sampler"] = study["space_sampler"]
        config["num_samples"] = study.get("num_samples", 0)
    if study["naming"] == "trials":
        config["trials"] = json.dumps(study["trials"])
    if study["model_grid"]:
        config["model_grid"] = dict(study["model_grid"])
    if study["scheduler"] == "slots":
        config["slots"] = 2
    elif study["scheduler"] == "asha":
        config |= {"scheduler": "asha", "asha": {"min_steps": 8, "eta": 2.0}}
    return config


def run(study: dict[str, Any], config: dict[str, Any], workdir: str, hooks=()) -> list[dict]:
    """The study through its entry point: the API for a user factory (``hpjax.train``, or the
    same config into ``train_and_evaluate`` with hooks), a built-in model's config as a binary
    parses it."""
    data = tiny_data()
    name = study["model"]
    task = TASKS[study.get("task", "classification")]
    if name in FACTORIES and not hooks:
        return list(
            hpjax.train(FACTORIES[name], data, workdir, task=task, verbose=False, **config).rows
        )
    cfg = api.make_config(name, data.name, **config)
    if name in BUILT_IN:
        model = default_model_config(BUILT_IN[name]["name"])
        model.update(BUILT_IN[name])
        cfg.model = model
    factory = FACTORIES.get(name)
    return train_and_evaluate(
        cfg, workdir, model=factory, task=task, dataset=data, hooks=list(hooks)
    )


def expected_count(study: dict[str, Any]) -> int:
    """How many trials the documented crossing names (computed from the drawn study)."""
    architectures = math.prod(len(v) for v in study["model_grid"].values())
    lists = study["lists"]
    lengths = {k: len(set(v)) for k, v in lists.items()}
    regularisers = ("dropouts", "label_smoothings")
    for key in regularisers:  # a list of just 0.0 is no axis
        if key in lists and lists[key] == (0.0,):
            lengths[key] = 1
    if study["naming"] == "trials":
        return len(study["trials"])
    if study.get("optimizer") == "axis":
        architectures *= len(AXIS)
    if study["naming"] == "grid":
        return architectures * math.prod(lengths.values())
    if study["space_sampler"] == "grid":
        points = math.prod(len(v) for v in study["space"].values())
    else:
        points = study["num_samples"]
    held = set(study["space"])
    crossed = [n for k, n in lengths.items() if LISTS[k][0] not in held]
    return architectures * points * math.prod(crossed)


def _close(a: float, b: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)


def check_axes(study: dict[str, Any], rows: list[dict]) -> None:
    assert len(rows) == expected_count(study), (len(rows), expected_count(study))
    if study.get("optimizer") == "axis" and study["naming"] != "trials":
        for name in AXIS:  # every point once per optimizer
            assert sum(r["optimizer"] == name for r in rows) == len(rows) // len(AXIS), name
    if study["naming"] == "trials":
        named = sorted((p["learning_rate"], p["seed"], p["batch_size"]) for p in study["trials"])
        got = sorted((r["learning_rate"], r["seed"], r["batch_size"]) for r in rows)
        assert all(map(_close_tuple, named, got)), (named, got)
        if study.get("optimizer") == "axis":
            by_trial = sorted(p["optimizer"] for p in study["trials"])
            assert by_trial == sorted(r["optimizer"] for r in rows)
        return
    held = set(study.get("space", {}))
    for key, values in study["lists"].items():
        column = LISTS[key][0]
        if column in held or (key in ("dropouts", "label_smoothings") and values == (0.0,)):
            continue
        seen = {r[column] for r in rows}
        assert all(any(_close(v, s) for s in seen) for v in values), (key, values, seen)
        assert len(seen) == len(set(values)), (key, values, seen)
    for key, values in study["model_grid"].items():
        assert {r[key] for r in rows} == set(values), (key, values)


def _close_tuple(a: tuple, b: tuple) -> bool:
    return all(_close(x, y) for x, y in zip(a, b, strict=True))


def _curves(workdir: str) -> dict[int, list[dict]]:
    return files.curves_by_trial(files.read_metrics(workdir))


def alone_config(study: dict[str, Any], row: dict) -> dict[str, Any]:
    """The study of ``row``'s trial alone: its own values as the one trial, no scheduler, on
    one device."""
    config = dict(BASE, schedule=study["schedule"], patience=study["patience"], num_devices=1)
    config["optimizer"] = row["optimizer"]  # a trial of an optimizer axis: that one alone
    point = {"learning_rate": row["learning_rate"], "batch_size": row["batch_size"]}
    keys = ("seed", "weight_decay", "dropout", "label_smoothing", "momentum", "warmup_steps", "b1")
    for key in keys:
        if row.get(key) is not None:
            point[key] = row[key]
    config["trials"] = json.dumps([point])
    if study["model_grid"]:
        config["model_grid"] = {k: (row[k],) for k in study["model_grid"]}
    return config


def check_alone(study: dict[str, Any], rows: list[dict], workdir: str, scratch: str) -> None:
    """Every trial against the trial alone (the first, the last and one between)."""
    curves = _curves(workdir)
    picked = sorted({0, len(rows) // 2, len(rows) - 1})
    for position in picked:
        row = rows[position]
        alone_dir = os.path.join(scratch, f"alone{row['trial']}")
        (alone,) = run(study, alone_config(study, row), alone_dir)
        mine, theirs = curves[row["trial"]], _curves(alone_dir)[0]
        cut = row["status"] in ("pruned", "study_budget")
        if cut:
            theirs = theirs[: len(mine)]
        assert [c["step"] for c in mine] == [c["step"] for c in theirs], row["trial"]
        for key in ("train_loss", "val_loss"):
            np.testing.assert_allclose(
                [c[key] for c in mine],
                [c[key] for c in theirs],
                rtol=2e-5,
                atol=1e-6,
                err_msg=f"trial {row['trial']} {key}",
            )
        if not cut:
            for key in ("status", "best_step"):
                assert alone[key] == row[key], (row["trial"], key, alone[key], row[key])
            if row["test_loss"] is not None:
                assert alone["test_loss"] == pytest.approx(row["test_loss"], rel=2e-5, abs=1e-6)


def check_restore(study: dict[str, Any], rows: list[dict], workdir: str) -> None:
    data = tiny_data()
    factory = FACTORIES.get(study["model"])
    for row in rows:
        if row["test_loss"] is None:
            continue
        restored = hpjax.restore_best(workdir, row["trial"], model=factory)
        x = jnp.asarray(data.x_test, jnp.float32)
        logits, sown = nnx.capture(restored.module, nnx.Intermediate)(x)
        outputs = SownOutputs(logits, nnx.to_pure_dict(sown)) if jax.tree.leaves(sown) else logits
        task = TASKS[study.get("task", "classification")]
        loss = float(task.mean_loss(outputs, jnp.asarray(data.y_test), x))
        assert loss == pytest.approx(row["test_loss"], rel=1e-5, abs=1e-6), row["trial"]


def _stable(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in UNSTABLE} for r in records]


def check_kill(study: dict[str, Any], config: dict[str, Any], workdir: str, scratch: str) -> None:
    """Killed at the drawn evaluation and run again: the same summary and metrics."""
    killed = os.path.join(scratch, "killed")
    try:
        run(study, config, killed, hooks=[CrashAtEvaluation(study["kill_at"])])
    except Crash:
        pass
    run(study, config, killed)
    assert _stable(files.read_summary(killed)) == _stable(files.read_summary(workdir))
    ours = sorted(_stable(files.read_metrics(killed)), key=lambda r: (r["trial"], r["step"]))
    theirs = sorted(_stable(files.read_metrics(workdir)), key=lambda r: (r["trial"], r["step"]))
    assert ours == theirs


def check_study(study: dict[str, Any], scratch: str) -> str:
    """Runs the drawn study and every oracle; returns "refused" or "trained"."""
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    workdir = os.path.join(scratch, "study")
    config = overrides(study)
    try:
        rows = run(study, config, workdir)
    except ConfigError as error:  # refused: in one line, before anything was written
        assert "\n" not in str(error) and not os.path.exists(workdir), str(error)
        return f"refused: {error}"
    rows = sorted(rows, key=lambda r: r["trial"])
    summary = files.read_summary(workdir)
    check_axes(study, summary)
    check_alone(study, summary, workdir, scratch)
    check_restore(study, summary, workdir)
    if study["kill_at"]:
        check_kill(study, config, workdir, scratch)
    return "trained"


def as_config_dict(study: dict[str, Any]) -> ml_collections.ConfigDict:  # for printing
    return ml_collections.ConfigDict(overrides(study))
