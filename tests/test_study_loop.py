"""End to end: a study writes what a user reads, stops trials early, checkpoints, and resumes."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpjax.engine import early_stopping, population, tasks
from hpjax.errors import ConfigError
from hpjax.results import checkpoints as checkpoint
from hpjax.study.loop import StudyData
from hpjax.study.run import train_and_evaluate
from hpjax.study.summary import SUMMARY_COLUMNS
from tests.conftest import ROOT


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_study_writes_config_summary_metrics_and_checkpoints(tiny_config, tmp_path):
    workdir = str(tmp_path / "study")
    rows = train_and_evaluate(tiny_config, workdir)
    summary = read_csv(os.path.join(workdir, "summary.csv"))
    assert [int(r["trial"]) for r in summary] == [0, 1, 2]
    assert set(SUMMARY_COLUMNS) <= set(summary[0])
    assert [float(r["learning_rate"]) for r in summary] == [0.003, 0.03, 0.3]
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["learning_rates"] == [0.003, 0.03, 0.3]
    metrics = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert checkpoint.has_best(workdir, 0, [0, 1, 2])  # one checkpoint of the population
    for trial, row in enumerate(rows):
        curve = [m for m in metrics if m["trial"] == trial]
        steps = [m["step"] for m in curve]
        assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == row["steps"]
        assert all(s % 10 == 0 for s in steps)
        best = min(curve, key=lambda m: m["val_loss"])
        assert row["best_step"] == best["step"]
        assert row["best_val_loss"] == pytest.approx(best["val_loss"])
        assert row["train_loss_at_best"] == pytest.approx(best["train_loss"])
        assert curve[-1]["examples_seen"] == row["steps"] * 16
        assert row["status"] in ("early_stopped", "budget_exhausted")
        if row["status"] == "early_stopped":  # stopped after `patience` evaluations, no more
            assert steps[-1] - row["best_step"] == 3 * 10


def test_restored_best_checkpoint_evaluates_to_recorded_val_loss(tiny_config, tmp_path):
    workdir = str(tmp_path / "study")
    rows = train_and_evaluate(tiny_config, workdir)
    data = StudyData.put(__import__("hpjax.data").data.load_dataset(tiny_config), 100)
    for row in rows:
        restored = checkpoint.restore_best(workdir, row["trial"])
        assert restored.metadata["best_step"] == row["best_step"]
        logits = restored.module(data.x_val)
        loss = float(tasks.cross_entropy(logits, data.y_val).mean())
        assert loss == pytest.approx(row["best_val_loss"], rel=1e-5)
        accuracy = float(np.mean(np.argmax(logits, -1) == np.asarray(data.y_val)))
        assert accuracy == pytest.approx(row["best_val_accuracy"], abs=1e-6)


def test_early_stopped_trial_in_population_equals_trial_alone(tiny_config, tmp_path):
    tiny_config.patience = 2
    together = train_and_evaluate(tiny_config, str(tmp_path / "together"))
    assert any(r["status"] == "early_stopped" for r in together)
    for row in together[1:]:
        tiny_config.learning_rates = (row["learning_rate"],)
        (alone,) = train_and_evaluate(tiny_config, str(tmp_path / f"alone{row['trial']}"))
        assert (alone["status"], alone["best_step"], alone["steps"]) == (
            row["status"],
            row["best_step"],
            row["steps"],
        )
        assert alone["best_val_loss"] == pytest.approx(row["best_val_loss"], rel=1e-5)
        a = checkpoint.restore_best(str(tmp_path / f"alone{row['trial']}"), 0).params
        b = checkpoint.restore_best(str(tmp_path / "together"), row["trial"]).params
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), a, b)


def test_a_single_bump_does_not_stop_a_patient_trial():
    curve = [1.0, 0.8, 0.6, 0.7, 0.5, 0.45, 0.47, 0.48, 0.49]  # one bump, then a plateau
    state = early_stopping.init(2)
    stopped_at = [None, None]
    for i, loss in enumerate(curve):
        state, _ = early_stopping.update(
            state,
            np.full(2, loss, np.float32),
            np.full(2, i * 10),
            ~np.asarray(state.stopped),
            patience=np.array([2, 3]),
            min_delta=0.0,
            min_steps=0,
        )
        for j in range(2):
            if stopped_at[j] is None and bool(state.stopped[j]):
                stopped_at[j] = i
    # patience 2 rides out the bump at index 3 and stops after two evaluations without
    # improvement on the plateau; patience 3 stops one evaluation later.
    assert stopped_at == [7, 8]
    assert state.best_step.tolist() == [50, 50]
    assert state.best_value.tolist() == pytest.approx([0.45, 0.45])


def test_min_delta_and_min_steps():
    state = early_stopping.init(1)
    for i, loss in enumerate([1.0, 0.99, 0.98, 0.97]):
        state, improved = early_stopping.update(
            state,
            np.array([loss]),
            np.array([i]),
            np.array([True]),
            patience=2,
            min_delta=0.05,
            min_steps=3,
        )
        if i == 2:  # two evaluations without an improvement > 0.05, but step 2 < min_steps
            assert not bool(state.stopped[0])
    assert bool(state.stopped[0]) and state.best_step.tolist() == [0]


def test_diverging_trial_is_marked_and_leaves_others_unchanged(tiny_config, tmp_path):
    tiny_config.learning_rates = (0.01, 100.0, 0.03)
    with_bad = train_and_evaluate(tiny_config, str(tmp_path / "with"))
    tiny_config.learning_rates = (0.01, 0.03)
    without = train_and_evaluate(tiny_config, str(tmp_path / "without"))
    assert [r["status"] for r in with_bad][1] == "diverged"
    # Same numbers up to float rounding (a population of 3 batches its matmuls differently).
    for a, b in zip([with_bad[0], with_bad[2]], without, strict=True):
        for key in ("best_step", "steps", "status"):
            assert a[key] == b[key], key
        for key in ("best_val_loss", "test_loss", "test_accuracy", "final_train_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key


def test_every_trial_diverging_ends_with_a_summary_not_a_crash(tiny_config, tmp_path, caplog):
    tiny_config.learning_rates = (100.0, 1000.0)
    rows = train_and_evaluate(tiny_config, str(tmp_path / "all"))
    assert [r["status"] for r in rows] == ["diverged", "diverged"]
    assert os.path.exists(tmp_path / "all" / "summary.csv")


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("patience", -1, "config.patience=-1"),
        ("min_delta", -0.1, "config.min_delta=-0.1"),
        ("optimizer", "adamw", "allowed: adagrad, adam, momentum, rmsprop, sgd"),
        ("schedule", "step", "config.schedule='step'"),
        ("learning_rates", (0.1, -1.0), "config.learning_rates"),
        ("learning_rates", (), "config.learning_rates=() is empty"),
        ("batch_size", 10_000, "larger than the training set (240 examples)"),
        ("dataset", "cifar", "allowed: digits, mnist1d, npz"),
        ("npz_path", "/nonexistent.npz", "config.npz_path"),
    ],
)
def test_bad_config_fails_before_anything_is_written(tiny_config, tmp_path, key, value, message):
    if key == "learning_rates":
        tiny_config.learning_rates = value
    else:
        tiny_config[key] = value
    workdir = tmp_path / "study"
    with pytest.raises(ConfigError, match=None) as error:
        train_and_evaluate(tiny_config, str(workdir))
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert not workdir.exists()


def test_workdir_with_a_different_study_is_refused_unless_overwrite(tiny_config, tmp_path):
    workdir = str(tmp_path / "study")
    train_and_evaluate(tiny_config, workdir)
    before = open(os.path.join(workdir, "summary.csv")).read()
    tiny_config.learning_rates = (0.01,)
    tiny_config.num_steps = 60
    with pytest.raises(ConfigError, match="holds a different study: config.num_steps is 120"):
        train_and_evaluate(tiny_config, workdir)
    assert open(os.path.join(workdir, "summary.csv")).read() == before
    tiny_config.overwrite = True
    rows = train_and_evaluate(tiny_config, workdir)
    assert len(rows) == 1 and len(read_csv(os.path.join(workdir, "summary.csv"))) == 1


def _binary(workdir, npz, extra=()):
    return [
        sys.executable,
        os.path.join(ROOT, "experiments", "lr_sweep.py"),
        f"--workdir={workdir}",
        "--config.dataset=npz",
        f"--config.npz_path={npz}",
        "--config.model.hidden_units=16",
        "--config.model.num_layers=1",
        "--config.schedule=constant",
        "--config.weight_decays=(0.0,)",
        "--config.learning_rates=(0.003,0.03,0.3)",
        "--config.batch_size=16",
        "--config.eval_every=10",
        "--config.checkpoint_every=2",
        "--config.patience=0",
        "--config.make_report=False",
        "--config.cpu_devices=1",  # as the in-process reference runs: one device, same rounding
        *extra,
    ]


def test_killed_study_resumes_to_the_same_summary(tiny_npz, tiny_config, tmp_path):
    steps = ["--config.num_steps=1500", "--config.checkpoint_every=5"]
    reference = tmp_path / "reference"
    config = tiny_config
    config.num_steps, config.patience, config.checkpoint_every = 1500, 0, 5
    train_and_evaluate(config, str(reference))
    resumed = tmp_path / "resumed"
    process = subprocess.Popen(
        _binary(resumed, tiny_npz, steps), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    metrics = resumed / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once a few state checkpoints have been written
        if metrics.exists() and sum(1 for _ in open(metrics)) > 3 * 60:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (resumed / "summary.csv").exists(), "the study finished before it was killed"
    done = subprocess.run(_binary(resumed, tiny_npz, steps), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming at tick" in done.stderr
    measured = lambda rows: [{k: v for k, v in r.items() if k != "peak_memory_mb"} for r in rows]
    assert measured(read_csv(resumed / "summary.csv")) == measured(
        read_csv(reference / "summary.csv")
    )
    strip = lambda rows: [
        {k: v for k, v in r.items() if k not in ("elapsed_s", "time")} for r in rows
    ]
    assert strip(read_jsonl(resumed / "metrics.jsonl")) == strip(
        read_jsonl(reference / "metrics.jsonl")
    )


def test_corrupt_checkpoint_falls_back_or_fails_clearly(tiny_config, tmp_path):
    workdir = tmp_path / "study"
    tiny_config.patience = 0
    train_and_evaluate(tiny_config, str(workdir))
    state_root = workdir / "state" / "population_0"
    steps = sorted(int(p.name) for p in state_root.iterdir() if p.name.isdigit())
    assert len(steps) == 2
    # Break the newest checkpoint: the study resumes from the older one with a warning.
    os.remove(workdir / "summary.csv")
    newest = state_root / str(steps[-1]) / "params"
    for path in newest.rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")
    rows = train_and_evaluate(tiny_config, str(workdir))
    assert len(rows) == 3
    # Break every checkpoint: a clear error, and the results on disk stay.
    for path in state_root.rglob("*"):
        if path.is_file() and "params" in str(path):
            path.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="cannot resume: every checkpoint .* is corrupt"):
        train_and_evaluate(tiny_config, str(workdir))
    assert (workdir / "metrics.jsonl").exists()


def test_compacted_and_chunked_populations_match_the_plain_one(tiny_config, tmp_path, caplog):
    caplog.set_level("INFO", logger="absl")
    tiny_config.learning_rates = (0.001, 0.01, 0.1, 0.3)
    tiny_config.patience = 2
    tiny_config.compact_fraction = 0.0  # never compact
    plain = train_and_evaluate(tiny_config, str(tmp_path / "plain"))
    assert len({r["steps"] for r in plain}) > 1, "trials must stop at different steps"
    # Chunks of at most 3 trials (3 + 1); the chunk of 3 compacts once one has stopped.
    tiny_config.compact_fraction, tiny_config.max_population = 0.7, 3
    other = train_and_evaluate(tiny_config, str(tmp_path / "other"))
    assert "split into 2 chunks of at most 3 trials" in caplog.text
    assert "2 trials still train; continuing in 2 rows" in caplog.text
    assert sorted({r["population"] for r in other}) == [0, 1]
    assert len(read_csv(tmp_path / "other" / "populations.csv")) == 2
    for a, b in zip(plain, other, strict=True):
        assert (a["trial"], a["status"], a["best_step"], a["steps"]) == (
            b["trial"],
            b["status"],
            b["best_step"],
            b["steps"],
        )
        for key in ("best_val_loss", "test_loss", "final_train_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key


def test_memory_estimate_counts_the_population_s_state_exactly(tiny_config):
    from hpjax.engine import memory
    from hpjax.models import build_model
    from hpjax.study import populations
    from hpjax.study import spec as spec_lib

    model = build_model(tiny_config.model, (8,), 4)
    study = spec_lib.parse(tiny_config)
    plan = populations.plan_populations(study, study.trials, 240)[0]
    spec = populations.population_spec(
        study, model, plan, num_train=240, num_classes=4, task=tasks.CLASSIFICATION
    )
    estimate = memory.estimate_trial(spec, (8,))
    hparams = population.make_hparams(np.full(3, 1e-2), 16, max_steps=100)
    state = jax.eval_shape(population.init_population.default, spec, hparams)
    assert 3 * estimate.state_bytes == memory._tree_bytes(state) - memory._tree_bytes(state.tick)
    # adam: params, best copy, gradient sum, mu and nu, and a few scalars
    assert 0 < estimate.state_bytes - 5 * model.num_params * 4 < 64


@pytest.mark.parametrize(
    "name,size_key,width",
    [("mlp", "hidden_units", 128), ("rnn", "hidden_size", 32), ("cnn", "channels", 16)],
)
def test_memory_estimate_of_each_program_is_near_xla_s_own_buffers(name, size_key, width):
    """The traced peak of one trial's micro-batch gradient and of its evaluation batch against
    the buffers XLA assigns the compiled programs (temporaries and outputs): within 25% below,
    at most 50% above (XLA fuses a convolution's evaluation tighter than its equations say)."""
    from hpjax.engine import memory
    from hpjax.models import ABSTRACT_KEY, build_model
    from hpjax.models.registry import default_model_config

    keys = default_model_config(name)
    keys[size_key], keys["num_layers"] = width, 2
    spec = population.PopulationSpec(
        model=build_model(keys, (40,), 10),
        optimizer="adam",
        schedule="constant",
        microbatch=32,
        num_train=4000,
        accumulates=False,
    )
    estimate = memory.estimate_trial(spec, (40,), eval_examples=1000)
    params = jax.eval_shape(spec.model.init, ABSTRACT_KEY)

    def xla_bytes(program, batch):
        x = jax.ShapeDtypeStruct((batch, 40), jnp.float32)
        y = jax.ShapeDtypeStruct((batch,), jnp.int32)
        analysis = jax.jit(program).lower(params, x, y).compile().memory_analysis()
        return analysis.temp_size_in_bytes + analysis.output_size_in_bytes

    def loss(p, x, y):
        return spec.task.mean_loss(spec.model.apply(p, x), y)

    def per_example(p, x, y):
        return spec.task.per_example(spec.model.apply(p, x), y)

    train = estimate.train_bytes / xla_bytes(jax.value_and_grad(loss), 32)
    evaluation = estimate.eval_bytes / xla_bytes(per_example, 1000)
    assert 0.75 <= train <= 1.5 and 0.75 <= evaluation <= 1.5, (train, evaluation)


def test_memory_estimate_counts_a_program_that_draws_random_keys():
    """A model drawing dropout masks carries typed PRNG keys (``key<fry>``) through its program:
    each counts its key data's bytes (the last CI failed on them)."""
    from hpjax.engine import memory

    def noisy(x):
        keys = jax.random.split(jax.random.key(0), 4)
        return x + jax.vmap(lambda k: jax.random.normal(k, x.shape[1:]))(keys)

    x = jnp.zeros((4, 1000))
    peak = memory._peak_bytes(jax.make_jaxpr(noisy)(x).jaxpr)
    assert x.nbytes <= peak <= 3 * x.nbytes + 4 * 8, peak


def _cut_line(path, number):
    lines = open(path).read().splitlines(keepends=True)
    lines[number] = lines[number][:15]  # cut mid-record, its newline gone
    open(path, "w").write("".join(lines))


def _cut_last_line(path):
    text = open(path).read()
    open(path, "w").write(text[:-40])


DAMAGE = {
    "a metrics line cut mid-file": lambda w: _cut_line(os.path.join(w, "metrics.jsonl"), 4),
    "the last metrics line cut": lambda w: _cut_last_line(os.path.join(w, "metrics.jsonl")),
    "metrics.jsonl deleted": lambda w: os.remove(os.path.join(w, "metrics.jsonl")),
    "checkpoints/ deleted": lambda w: __import__("shutil").rmtree(os.path.join(w, "checkpoints")),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_finished_study_with_damaged_outputs_is_rebuilt_to_the_same_results(
    tiny_config, tmp_path, damage
):
    """Rows of metrics.jsonl are written again by training the populations that lost them;
    best checkpoints are written again from the finished state; nothing is left damaged."""
    tiny_config.learning_rates = (0.003, 0.03, 0.3, 0.1)
    tiny_config.max_population = 2  # two populations: the damage hits the first one
    workdir = str(tmp_path / "study")
    drop = lambda rows: [
        {k: v for k, v in r.items() if k not in ("elapsed_s", "time")} for r in rows
    ]  # noqa: E731
    reference = train_and_evaluate(tiny_config, workdir)
    metrics = drop(read_jsonl(os.path.join(workdir, "metrics.jsonl")))
    DAMAGE[damage](workdir)
    measured = ("peak_memory_mb", "memory_estimate_mb")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in measured} for r in rows]  # noqa: E731
    assert strip(train_and_evaluate(tiny_config, workdir)) == strip(reference)
    assert drop(read_jsonl(os.path.join(workdir, "metrics.jsonl"))) == metrics
    for row in reference:
        restored = checkpoint.restore_best(workdir, row["trial"])
        assert restored.metadata["best_val_loss"] == row["best_val_loss"]


def test_progress_measures_the_rate_after_the_window_that_compiled(monkeypatch):
    """The first training window compiles; the rate and the time left count from its end."""
    from hpjax.study import progress

    clock = iter([0.0, 0.0, 30.0, 31.0, 32.0])  # compiling took 30 s, then 1 s per window
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    said = []
    monkeypatch.setattr(progress.logging, "info", lambda fmt, *a: said.append(fmt % a))
    reporter = progress.Progress("p", total_ticks=100, num_trials=4, interval_s=0.0)
    for tick in (0, 10, 20, 30):
        reporter.update(tick)
    assert "tick 30/100 (30%), 10 ticks/s" in said[-1] and "~7 s left" in said[-1]


def test_eval_growth_evaluates_densest_early_and_trains_the_same_trials(tiny_config, tmp_path):
    """eval_growth=0.25, eval_every=10, 60 steps: the next evaluation after step s comes
    max(1, floor(0.25 s)) steps later, at most 10: steps worked by hand below. Where to
    evaluate does not change training: the values equal those of an evaluation every step."""
    tiny_config.patience = 0
    tiny_config.num_steps = 60
    growth = tiny_config.copy_and_resolve_references()
    growth.eval_growth = 0.25
    train_and_evaluate(growth, str(tmp_path / "growth"))
    dense = tiny_config.copy_and_resolve_references()
    dense.eval_every = 1
    train_and_evaluate(dense, str(tmp_path / "dense"))
    sparse = read_jsonl(tmp_path / "growth" / "metrics.jsonl")
    every = {(r["trial"], r["step"]): r for r in read_jsonl(tmp_path / "dense" / "metrics.jsonl")}
    steps = [r["step"] for r in sparse if r["trial"] == 0]
    assert steps == [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 18, 22, 27, 33, 41, 51, 60]
    for row in sparse:
        same = every[(row["trial"], row["step"])]
        assert (row["val_loss"], row["train_loss"]) == (same["val_loss"], same["train_loss"])


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"eval_growth": 0.02, "patience": 3}, "needs patience=0"),
        ({"eval_growth": 0.02, "patience": 0, "slots": 2}, "needs a row per trial"),
        ({"eval_growth": 1.5, "patience": 0}, "config.eval_growth=1.5"),
    ],
)
def test_eval_growth_is_refused_where_it_cannot_hold(tiny_config, tmp_path, overrides, match):
    tiny_config.update(overrides)
    with pytest.raises(ConfigError, match=match):
        train_and_evaluate(tiny_config, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()
