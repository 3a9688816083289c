"""The batch-size study: steps-to-target logic, budgets, scaling rules, bad input, the binary."""

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from hpjax import data as data_lib
from hpjax.errors import ConfigError
from hpjax.studies.batch_size import analysis, plots, prose, runner
from hpjax.studies.batch_size import config as bs_config
from hpjax.study import populations, spec
from hpjax.study.trials import scaled_learning_rate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_PATH = os.path.join(ROOT, "experiments", "configs", "batch_size_study.py")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_config(arg: str = ""):
    spec = importlib.util.spec_from_file_location("batch_size_study_config", CONFIG_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.fixture(scope="module")
def npz_path(tmp_path_factory):
    """96 training examples of a 3-class problem with 6 features, and val and test splits."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 3))

    def split(n):
        x = rng.normal(size=(n, 6)).astype(np.float32)
        return x, np.argmax(x @ w, axis=1).astype(np.int32)

    path = str(tmp_path_factory.mktemp("data") / "tiny.npz")
    (xt, yt), (xv, yv), (xs, ys) = split(96), split(40), split(40)
    np.savez(path, x_train=xt, y_train=yt, x_val=xv, y_val=yv, x_test=xs, y_test=ys)
    return path


@pytest.fixture
def quick(npz_path):
    config = load_config("fixed_epochs,quick")
    config.dataset = "npz"
    config.npz_path = npz_path
    config.train_subset = 0
    config.fixed_epochs.batch_sizes = (8, 32)
    return config


# ----------------------------------------------------------------------- steps to target


def record(trial, step, acc, loss=1.0, batch=8):
    return {
        "trial": trial,
        "step": step,
        "epoch": step * batch / 100,
        "val_accuracy": acc,
        "val_loss": loss,
    }


def summary_row(trial, batch, lr, steps, status="budget_exhausted"):
    return {
        "trial": trial,
        "batch_size": batch,
        "learning_rate": lr,
        "base_learning_rate": lr,
        "status": status,
        "steps": steps,
    }


def test_steps_to_target_first_step_and_minimum_over_rates():
    summary = [
        summary_row(0, 8, 0.01, 40),
        summary_row(1, 8, 0.1, 40, status="diverged"),
        summary_row(2, 32, 0.01, 40),
        summary_row(3, 32, 0.1, 40),
        summary_row(4, 128, 0.1, 40),
    ]
    metrics = (
        # trial 0 reaches 0.5 at step 30 (then dips: the FIRST step counts)
        [record(0, s, a) for s, a in ((0, 0.1), (10, 0.3), (20, 0.45), (30, 0.5), (40, 0.4))]
        # trial 1 reaches at step 20 before diverging; a null after divergence is skipped
        + [record(1, s, a) for s, a in ((0, 0.1), (10, 0.2), (20, 0.6), (30, None))]
        + [record(2, s, a, batch=32) for s, a in ((0, 0.1), (10, 0.55), (20, 0.7))]
        + [record(3, s, a, batch=32) for s, a in ((20, 0.9), (0, 0.1), (10, 0.4))]  # unsorted
        # batch 128 never reaches the target: reported, not a crash
        + [record(4, s, a, batch=128) for s, a in ((0, 0.1), (40, 0.49))]
    )
    per_size, per_trial = analysis.steps_to_target(summary, metrics, "val_accuracy", 0.5)
    by_trial = {r["trial"]: r for r in per_trial}
    assert [by_trial[t]["steps"] for t in range(5)] == [30, 20, 10, 20, None]
    assert by_trial[0]["epochs"] == pytest.approx(30 * 8 / 100)
    assert [r["batch_size"] for r in per_size] == [8, 32, 128]
    b8, b32, b128 = per_size
    assert (b8["steps"], b8["learning_rate"], b8["lrs_reached"]) == (20, 0.1, 2)
    assert (b32["steps"], b32["learning_rate"], b32["examples"]) == (10, 0.01, 320)
    assert not b128["reached"] and b128["steps"] is None and b128["budget_steps"] == 40
    assert b128["lrs_reached"] == 0 and b128["lrs_tried"] == 1
    # Perfect scaling from the smallest batch size that reached the target.
    assert [r["perfect_scaling_steps"] for r in per_size] == [20, 5, 1.25]


def test_steps_to_target_is_known_to_the_interval_before_the_crossing():
    summary = [summary_row(0, 8, 0.1, 40), summary_row(1, 64, 0.1, 40)]
    metrics = [record(0, s, a) for s, a in ((0, 0.1), (10, 0.3), (20, 0.45), (30, 0.5))]
    metrics += [record(1, s, a, batch=64) for s, a in ((0, 0.1), (1, 0.2), (2, 0.3), (3, 0.6))]
    per_size, per_trial = analysis.steps_to_target(summary, metrics, "val_accuracy", 0.5)
    assert [r["interval"] for r in per_trial] == [10, 1]
    assert [r["resolution"] for r in per_size] == [pytest.approx(10 / 30), 0.0]
    line = prose._resolution_sentence(per_size)
    assert "within 33.3% (the coarsest: B=8, 10 steps before 30)" in line
    assert "eval_growth" in line  # coarser than 2%: says how to narrow it
    exact = prose._resolution_sentence(per_size[1:])
    assert exact.startswith("- Each step count is exact")


def _seeded(trial, batch, lr, seed, steps):
    return {
        "trial": trial,
        "batch_size": batch,
        "seed": seed,
        "learning_rate": lr,
        "base_learning_rate": lr,
        "reached": steps is not None,
        "steps": steps,
        "interval": 1 if steps else None,
        "epochs": steps * batch / 100 if steps else None,
        "budget_steps": 90,
    }


def test_steps_over_seeds_are_the_median_of_each_seeds_fastest_rate():
    # B=8: seed 0 fastest 30 (rate 0.1), seed 1 fastest 50, seed 2 fastest 40 -> median 40
    trials = [
        _seeded(0, 8, 0.01, 0, 60),
        _seeded(1, 8, 0.1, 0, 30),
        _seeded(2, 8, 0.01, 1, 50),
        _seeded(3, 8, 0.1, 1, None),
        _seeded(4, 8, 0.01, 2, 45),
        _seeded(5, 8, 0.1, 2, 40),
    ]
    row = analysis._per_size(8, trials)
    assert (row["steps"], row["steps_low"], row["steps_high"]) == (40, 30, 50)
    assert (row["seeds"], row["seeds_reached"], row["learning_rate"]) == (3, 3, 0.1)
    assert row["examples"] == 320 and row["lrs_reached"] == 2
    # one seed never reaches it: the median is the slower of the other two; the range is open
    one_missing = analysis._per_size(
        8, [_seeded(0, 8, 0.1, s, v) for s, v in enumerate((20, None, 30))]
    )
    assert (one_missing["steps"], one_missing["steps_high"]) == (30, None)
    two_missing = analysis._per_size(
        8, [_seeded(0, 8, 0.1, s, v) for s, v in enumerate((20, None, None))]
    )
    assert not two_missing["reached"] and two_missing["seeds_reached"] == 1
    line = prose._steps_sentence([row, dict(one_missing, batch_size=16)])
    assert (
        "median over 3 seeds" in line
        and "B=8: 40 (30-50)" in line
        and "B=16: 30 (20-never)" in line
    )


def test_bootstrap_interval_against_closed_forms():
    constant = np.ones((5, 3))
    assert analysis.bootstrap_interval(constant, lambda rows: float(rows.mean())) == (1.0, 1.0)
    assert analysis.bootstrap_interval(constant[:1], lambda rows: 1.0) is None
    # the mean of 200 standard normal seeds: its 90% interval is about +-1.645/sqrt(200)
    samples = np.random.default_rng(0).normal(size=(200, 1))
    low, high = analysis.bootstrap_interval(samples, lambda rows: float(rows.mean()))
    half = 1.645 / np.sqrt(200)
    assert high - low == pytest.approx(2 * half, rel=0.2)
    assert low < samples.mean() < high


def test_critical_batch_fit_over_seeds_brackets_the_true_value():
    """Steps S(B) = 1000 (1 + 256 / B) with 5% noise per seed and batch size (5 seeds): the
    fit of the medians finds B_crit near 256, its interval over seeds holds it, and E_min is
    S_min x B_crit."""
    rng = np.random.default_rng(1)
    sizes = [8, 32, 128, 512, 2048, 8192]
    trials, n = [], 0
    for b in sizes:
        for seed in range(5):
            steps = 1000 * (1 + 256 / b) * float(np.exp(rng.normal(0, 0.05)))
            trials.append(_seeded(n, b, 0.1, seed, steps))
            n += 1
    per_size = [analysis._per_size(b, [t for t in trials if t["batch_size"] == b]) for b in sizes]
    for row in per_size:  # as steps_to_target adds it
        row["perfect_scaling_steps"] = per_size[0]["steps"] * sizes[0] / row["batch_size"]
    fit = analysis.fit_with_interval(per_size)
    assert fit["b_crit"] == pytest.approx(256, rel=0.15)
    low, high = fit["b_crit_interval"]
    assert low < 256 < high and high / low < 2
    assert fit["s_min_interval"][0] < 1000 < fit["s_min_interval"][1]
    assert fit["e_min"] == pytest.approx(fit["s_min"] * fit["b_crit"])
    assert fit["e_min_interval"][0] < 1000 * 256 < fit["e_min_interval"][1]
    line = next(
        x for x in prose.describe_steps(per_size, fit, "val_accuracy", 0.6) if "B_crit" in x
    )
    assert "[90% over seeds:" in line and "E_min" in line


def test_steps_to_target_for_a_loss_counts_values_at_or_below():
    summary = [summary_row(0, 16, 0.1, 30)]
    metrics = [record(0, s, 0.0, loss=v) for s, v in ((0, 2.3), (10, 1.2), (20, 1.0), (30, 0.9))]
    per_size, _ = analysis.steps_to_target(summary, metrics, "val_loss", 1.0)
    assert per_size[0]["steps"] == 20
    per_size, _ = analysis.steps_to_target(summary, metrics, "val_loss", 0.5)
    assert not per_size[0]["reached"]


def test_no_batch_size_reaching_the_target_is_a_report_not_a_crash(tmp_path):
    summary = [summary_row(0, 8, 0.1, 10), summary_row(1, 64, 0.1, 10)]
    metrics = [record(0, 0, 0.1), record(0, 10, 0.2), record(1, 0, 0.1), record(1, 10, 0.3)]
    per_size, per_trial = analysis.steps_to_target(summary, metrics, "val_accuracy", 0.99)
    assert not any(r["reached"] for r in per_size)
    assert analysis.fit_critical_batch([], []) is None
    lines = prose.describe_steps(per_size, None, "val_accuracy", 0.99)
    assert "Not reached" in lines[0] and "B=8 (10 steps)" in lines[0]
    path = plots.plot_steps_to_target(per_size, per_trial, None, str(tmp_path / "s.png"), "none")
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE


def test_fit_recovers_the_critical_batch_size():
    sizes = [2**i for i in range(12)]
    steps = [5000 * (1 + 300 / b) for b in sizes]
    fit = analysis.fit_critical_batch(sizes, steps)
    assert fit["b_crit"] == pytest.approx(300, rel=0.02)
    assert fit["s_min"] == pytest.approx(5000, rel=0.02)
    assert not fit["at_bound"]
    perfect = analysis.fit_critical_batch(sizes[:5], [1000 / b for b in sizes[:5]])
    assert perfect["at_bound"]  # no knee in the range
    assert analysis.log_slope(sizes[:3], [1000 / b for b in sizes[:3]]) == pytest.approx(-1)


# ------------------------------------------------------------- budgets and learning rates


def test_spearman_against_its_closed_form_with_ties():
    # No ties: 1 - 6 sum(d^2) / (n (n^2 - 1)); ranks 1..5 against 2,1,4,3,5: sum(d^2) = 4.
    assert analysis.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(1 - 6 * 4 / 120)
    # Ties take their mean rank: y ranks 1.5, 1.5, 3, 4 are Pearson-correlated with 1..4.
    tied = np.corrcoef([1, 2, 3, 4], [1.5, 1.5, 3, 4])[0, 1]
    assert analysis.spearman([1, 2, 3, 4], [7, 7, 8, 9]) == pytest.approx(tied)
    assert analysis.spearman([1, 2], [2, 1]) is None  # too few points
    assert analysis.spearman([1, 2, 3], [5, 5, 5]) is None  # constant


def test_learning_rate_scaling_rules_and_warmup_per_batch_size(quick):
    quick.fixed_epochs.batch_sizes = (8, 32, 96)
    quick.fixed_epochs.learning_rate = 0.04
    quick.fixed_epochs.base_batch_size = 32
    quick.fixed_epochs.scalings = ("linear", "sqrt")
    quick.fixed_epochs.warmup_epochs = 0.5
    runs = bs_config.fixed_epochs_configs(quick)
    assert set(runs) == {"grid", "linear", "sqrt"}
    expected = {
        "linear": [0.01, 0.04, 0.12],
        "sqrt": [0.02, 0.04, 0.04 * math.sqrt(3)],
    }
    for rule, rates in expected.items():
        parsed = spec.parse(runs[rule])
        trials = parsed.trials
        assert [t.batch_size for t in trials] == [8, 32, 96]
        np.testing.assert_allclose([t.learning_rate for t in trials], rates, rtol=1e-12)
        assert all(t.base_learning_rate == 0.04 for t in trials)
        (plan,) = populations.plan_populations(parsed, trials, 96)
        assert plan.warmup_steps == (6, 1, 0)  # 0.5 epochs of 96 examples at each batch size
        assert plan.max_steps == (24, 6, 2)  # 2 epochs
    grid = spec.parse(runs["grid"]).trials
    # The grid holds the fixed rate and is not scaled.
    assert sorted({t.learning_rate for t in grid}) == [0.01, 0.04, 0.1]
    assert scaled_learning_rate(spec.parse(runs["grid"]).source, 0.1, 8) == 0.1
    # Steps to target: the budget is budget_epochs of data, clipped.
    s = quick.steps_to_target
    s.budget_epochs, s.min_budget_steps, s.max_budget_steps = 2.0, 5, 100
    assert [bs_config.budget_steps(s, b, 96) for b in (1, 8, 32, 96)] == [100, 24, 6, 5]


def test_fixed_epochs_sentences_from_hand_made_rows():
    def row(rule, b, lr, acc, status="budget_exhausted"):
        return {
            "rule": rule,
            "batch_size": b,
            "learning_rate": lr,
            "status": status,
            "steps": 960 // b,
            "final_val_accuracy": acc,
            "final_val_loss": 1.0,
            "num_classes": 10,
        }

    sizes = [8, 32, 128, 512]
    rows = [row("fixed", b, 0.1, a) for b, a in zip(sizes, [0.5, 0.7, 0.6, 0.4], strict=True)]
    rows += [
        row("linear", b, 0.1 * b / 32, a)
        for b, a in zip(sizes, [0.68, 0.7, 0.69, 0.12], strict=True)
    ]
    rows += [row("tuned", b, 0.1 * b / 32, 0.7) for b in sizes]
    text = "\n".join(prose.describe_fixed_epochs(rows, 0.1, 32))
    assert "rises from 0.500 at B=8 to its peak 0.700 at B=32, then goes to 0.400 at B=512" in text
    assert "Above the peak it falls with the batch size" in text
    assert "up to B=128 (rate 0.4); at B=512 the scaled rate 1.6 is unstable" in text
    assert "At B=128 it reaches 0.690 against 0.600 with the fixed rate" in text
    assert "grows as B^1.00" in text
    flat = [row("fixed", b, 0.1, 0.7) for b in sizes]
    assert "does not fall steadily" in prose.describe_fixed_epochs(flat, 0.1, 32)[0]


# -------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "sizes,match",
    [
        ((8, 0), r"config\.fixed_epochs\.batch_sizes=\(8, 0\) must hold positive integers"),
        ((-8,), r"config\.fixed_epochs\.batch_sizes=\(-8,\) must hold positive integers"),
        ((), r"config\.fixed_epochs\.batch_sizes=\(\) is empty"),
        ((8, 128), r"config\.fixed_epochs\.batch_sizes=\(8, 128\) holds 128, larger than the "),
        ((8, 8), r"holds a batch size twice"),
    ],
)
def test_bad_batch_sizes_are_refused_before_anything_runs(quick, tmp_path, sizes, match):
    quick.fixed_epochs.batch_sizes = sizes
    workdir = tmp_path / "never"
    with pytest.raises(ConfigError, match=match):
        runner.run(quick, str(workdir))
    assert not workdir.exists()


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("study", "everything", r"config\.study='everything' is unknown"),
        ("steps_to_target.batch_sizes", (), r"config\.steps_to_target\.batch_sizes=\(\) is empty"),
        ("steps_to_target.metric", "accuracy", r"config\.steps_to_target\.metric='accuracy'"),
        ("noise_scale.big_batch", 8, r"config\.noise_scale\.small_batch=\(8, 8\)"),
        (
            "noise_scale.batch_size",
            97,
            r"config\.noise_scale\.batch_size=97 is larger than the training set \(96\)",
        ),
        ("noise_scale.batch_size", 48, r"config\.noise_scale\.batch_size=48 is not in steps_to_"),
    ],
)
def test_bad_study_keys_name_the_key(quick, tmp_path, key, value, match):
    quick.study = "noise_scale"
    if value == 97:  # a batch size outside steps to target needs its own rate
        quick.noise_scale.learning_rate = 0.1
    section, _, name = key.rpartition(".")
    (quick[section] if section else quick)[name] = value
    with pytest.raises(ConfigError, match=match):
        runner.run(quick, str(tmp_path / "never"))
    assert not (tmp_path / "never").exists()


def test_bad_engine_key_is_refused_before_compiling(quick, tmp_path):
    quick.optimizer = "adamw"
    with pytest.raises(ConfigError, match=r"config\.optimizer='adamw' is unknown"):
        runner.run(quick, str(tmp_path / "never"))


# ---------------------------------------------------------------------------- the binary


def run_binary(workdir, *flags):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "experiments", "batch_size_study.py"),
            f"--workdir={workdir}",
            *flags,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_binary_runs_the_quick_study_end_to_end(npz_path, tmp_path):
    """Batch sizes 3, 8, 12 and 96 (n = 96) in one population at 2.5 epochs: each trial counts
    its own optimizer steps, floor(2.5 * 96 / b), and epochs. One engine run (the scaling rules'
    runs are the same engine; their rates are checked above) and one profiled batch size keep
    the subprocess short."""
    workdir = tmp_path / "bs"
    result = run_binary(
        workdir,
        f"--config={CONFIG_PATH}:fixed_epochs,quick",
        "--config.dataset=npz",
        f"--config.npz_path={npz_path}",
        "--config.train_subset=0",
        "--config.fixed_epochs.batch_sizes=(3,8,12,96)",
        "--config.fixed_epochs.num_epochs=2.5",
        "--config.fixed_epochs.scalings=()",
        "--config.compute.batch_sizes=(8,)",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = workdir / "fixed_epochs"
    assert f"fixed_epochs: report {out / 'study_report.md'}" in result.stdout
    with open(out / "fixed_epochs.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["rule"] for r in rows} == {"fixed", "tuned"}
    expected = {3: 80, 8: 30, 12: 20, 96: 2}
    fixed = {int(r["batch_size"]): r for r in rows if r["rule"] == "fixed"}
    for b, steps in expected.items():
        assert int(fixed[b]["steps"]) == steps == math.floor(2.5 * 96 / b)
        assert float(fixed[b]["epochs"]) == pytest.approx(steps * b / 96, rel=1e-5)
    assert float(fixed[8]["examples_per_s"]) > 0 and int(fixed[8]["temp_bytes"]) > 0
    assert fixed[3]["examples_per_s"] == ""  # not profiled
    # The engine's own outputs: one population, and its metrics agree with the summary.
    summary = list(csv.DictReader(open(out / "grid" / "summary.csv")))
    assert len(summary) == 12 and len({r["population"] for r in summary}) == 1  # 3 rates x 4
    with open(out / "grid" / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    for row in summary:
        last = [r for r in records if r["trial"] == int(row["trial"])][-1]
        assert last["step"] == int(row["steps"]) == expected[int(row["batch_size"])]
        assert last["examples_seen"] == last["step"] * int(row["batch_size"])
        assert last["epoch"] == pytest.approx(float(row["epochs"]), rel=1e-5)
    with open(out / "compute.csv") as f:
        assert [int(r["batch_size"]) for r in csv.DictReader(f)] == [8]
    for name in ("accuracy_vs_batch_size", "loss_vs_batch_size", "lr_grid_accuracy", "compute"):
        with open(out / "plots" / f"{name}.png", "rb") as f:
            assert f.read(8) == PNG_SIGNATURE
    text = (out / "study_report.md").read_text()
    for heading in ("## Measured against the published shape", "## Results", "## Memory"):
        assert heading in text
    assert "**Fixed rate 0.03.**" in text and "**Tuned per batch size.**" in text


def test_binary_turns_a_bad_config_into_one_line_and_status_2(tmp_path):
    result = run_binary(
        tmp_path / "bs",
        f"--config={CONFIG_PATH}:fixed_epochs,quick",
        "--config.fixed_epochs.batch_sizes=(0,8)",
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: config.fixed_epochs.batch_sizes=(0, 8) must hold positive integers; 0 is not one"
    )
    assert not (tmp_path / "bs").exists()


def _rate_trials(alpha: float, choices: dict) -> list[dict]:
    """Trials whose fastest rate at batch size B is 0.01 (B/32)^alpha times a grid step of 2:
    ``choices[(seed, B)]`` picks which of the three rates (-1, 0, +1 steps) is fastest."""
    trials = []
    for b in (8, 32, 128, 512, 2048):
        centre = 0.01 * (b / 32) ** alpha
        for seed in range(4):
            pick = choices.get((seed, b), 0)
            for k in (-1, 0, 1):
                steps = 100 + 50 * abs(k - pick)
                trials.append(_seeded(len(trials), b, centre * 2.0**k, seed, steps))
    return trials


def test_fastest_rate_power_law_recovers_a_known_exponent_and_places_the_rules():
    law = analysis.fit_rate_power_law(_rate_trials(0.7, {}))
    assert law["alpha"] == pytest.approx(0.7)
    assert law["alpha_interval"] == (pytest.approx(0.7), pytest.approx(0.7))
    assert law["rules_inside"] == [] and law["at_edge"] == 0 and law["sizes"] == 5
    # Seeds that disagree by one grid step at a few sizes widen the interval around 0.5.
    noisy = {(0, 8): 1, (1, 2048): -1, (2, 128): 1, (3, 8): -1, (3, 2048): 1}
    law = analysis.fit_rate_power_law(_rate_trials(0.5, noisy))
    low, high = law["alpha_interval"]
    assert low < 0.5 < high and high - low < 0.3
    assert law["rules_inside"] == ["square root"] and law["at_edge"] == 5
    (line,) = prose._rate_law_sentence(_rate_trials(0.5, noisy))
    assert (
        "the square root rule (0.5) lies inside the interval, the linear rule (1) does not" in line
    )
    assert "5 of the 20 (seed, batch size) fastest rates lie at an edge of their grid" in line


def test_knee_and_noise_scale_sentences_from_hand_made_rows():
    sizes = [8, 16, 32, 64, 128]
    steps = [800, 400, 210, 160, 150]  # perfect scaling up to 32, then flattening
    per_size = [
        {"batch_size": b, "reached": True, "steps": s, "perfect_scaling_steps": 800 * 8 / b}
        for b, s in zip(sizes, steps, strict=True)
    ]
    assert analysis.perfect_scaling_end(per_size) == 2
    rows = [
        {
            "step": 10 * i,
            "val_loss": 2.0 - 0.1 * i,
            "grad_sq": 1.0,
            "trace": 20.0 + 10 * i,
            "b_simple": 20.0 + 10 * i,
            "b_simple_ema": 20.0 + 10 * i,
            "val_accuracy": 0.1 * i,
        }
        for i in range(8)
    ]
    at_target = rows[4]  # B_simple 60 at the target, between the knee's 32 and 64
    lines = prose.describe_noise(at_target, rows, None, per_size, "val_accuracy", 0.4)
    text = "\n".join(lines)
    assert "grows as the loss falls" in text
    assert "leave perfect scaling between B=32 and B=64" in text and "between them" in text
    fit = analysis.fit_critical_batch(sizes, steps)
    text = "\n".join(prose.describe_noise(at_target, rows, fit, per_size, "val_accuracy", 0.4))
    assert f"B_crit={fit['b_crit']:.3g}" in text
    ratio = 60 / fit["b_crit"]
    assert f"B_simple / B_crit = {ratio:.2g}" in text
    expected = "within 2x" if 0.5 <= ratio <= 2 else "beyond the factor 2"
    assert expected in text
    far = prose.describe_noise(
        {**at_target, "b_simple_ema": 10 * fit["b_crit"]},
        rows,
        {**fit, "b_crit_interval": (0.5 * fit["b_crit"], 2 * fit["b_crit"])},
        per_size,
        "val_accuracy",
        0.4,
    )
    assert "lies outside B_crit's interval: B_simple is 10x above B_crit" in "\n".join(far)
    negative = prose._b_simple_against_b_crit(-5.0, fit)
    assert "is not a positive number" in negative and "within 2x" not in negative
    missed = prose.describe_noise(None, rows, fit, per_size, "val_accuracy", 0.99)
    assert "never reached val_accuracy 0.99" in missed[-1]


def test_the_setup_names_model_size_optimizer_data_seeds_and_target(quick):
    import types

    data = types.SimpleNamespace(name="mnist1d", num_train=512, y_val=np.zeros(400))
    line = prose.setup_sentence(quick, data, [{"num_params": 826}])
    assert line.startswith("Model: mlp (")
    for part in (
        "826 parameters",
        "optimizer momentum (momentum 0.9, not tuned)",
        "512 training and 400 validation examples",
        "the largest batch, 64, is 12% of the training set",
        "seeds (0, 1)",
        "target val_accuracy >= 0.25",
    ):
        assert part in line, part


def test_momentum_tuned_with_the_rate_per_batch_size(quick, tmp_path):
    """Each batch size trains every rate x momentum x seed; a seed's fastest trial names both,
    the batch size's row carries the median seed's momentum, and a momentum without the
    momentum optimizer, or out of [0, 1), is refused naming the key."""
    config = quick
    config.study = "steps_to_target"
    s = config.steps_to_target
    s.batch_sizes, s.learning_rates, s.momenta, s.seeds = (8, 32), (0.03, 0.3), (0.0, 0.9), (0,)
    s.target = 0.5
    config.compute.enabled = False
    configs = bs_config.steps_to_target_configs(config, 96)
    points = json.loads(configs[8].trials)
    assert sorted((p["learning_rate"], p["momentum"]) for p in points) == [
        (0.03, 0.0),
        (0.03, 0.9),
        (0.3, 0.0),
        (0.3, 0.9),
    ]
    per_size, per_trial, _ = runner.run_steps_to_target(
        config, str(tmp_path), data_lib.load_dataset(config)
    )
    assert {t["momentum"] for t in per_trial} == {0.0, 0.9} and len(per_trial) == 8
    assert all(r["reached"] for r in per_size)
    for row in per_size:
        if row["reached"]:
            mine = [t for t in per_trial if t["batch_size"] == row["batch_size"] and t["reached"]]
            fastest = min(mine, key=lambda t: (t["steps"], t["learning_rate"]))
            assert (row["learning_rate"], row["momentum"]) == (
                fastest["learning_rate"],
                fastest["momentum"],
            )
    with open(tmp_path / "steps_to_target_trials.csv") as f:
        assert {r["momentum"] for r in csv.DictReader(f)} == {"0", "0.9"}
    text = (tmp_path / "study_report.md").read_text()
    assert "momentum tuned with the rate over (0.0, 0.9)" in text
    bad = load_config("steps_to_target,quick")
    bad.steps_to_target.momenta = (0.9, 1.0)
    with pytest.raises(ConfigError, match=r"steps_to_target.momenta.*distinct numbers in \[0, 1\)"):
        bs_config.validate_config(bad)
    bad.steps_to_target.momenta = (0.9,)
    bad.optimizer = "adam"
    with pytest.raises(ConfigError, match="steps_to_target.momenta.*needs optimizer='momentum'"):
        bs_config.validate_config(bad)
