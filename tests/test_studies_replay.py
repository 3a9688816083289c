"""Schedulers replayed on a dense study's curves: the replay of hpjax's ASHA is the live ASHA,
Optuna's pruners decide as Optuna does, and the figures are checked against closed forms."""

import json
import math

import numpy as np
import pytest

import hpjax
from hpjax.errors import ConfigError
from hpjax.results import files
from hpjax.studies.replay import simulate
from hpjax.studies.replay.curves import Curves, DenseStudy, read_dense
from hpjax.studies.replay.outcomes import outcome
from hpjax.studies.replay.settings import parse_settings, run_setting
from hpjax.study.run import train_and_evaluate
from tests.conftest import make_tiny_config

RATES = [0.0003, 0.001, 0.002, 0.003, 0.006, 0.01, 0.02, 0.03, 0.06, 0.1, 0.3, 0.0001]


def study_config(tiny_config, **changes):
    config = tiny_config
    config.trials = json.dumps([{"learning_rate": r} for r in RATES])
    config.num_steps = 90
    config.patience = 3  # some trials stop early, in the dense study and the live one alike
    for key, value in changes.items():
        setattr(config, key, value)
    return config


@pytest.fixture(scope="module")
def dense_workdir(tmp_path_factory, tiny_npz):
    workdir = str(tmp_path_factory.mktemp("dense"))
    train_and_evaluate(study_config(make_tiny_config(tiny_npz)), workdir)
    return workdir


@pytest.mark.parametrize("slots,min_steps,eta", [(4, 10, 3), (3, 20, 2)])
def test_the_replay_of_asha_makes_the_live_decisions(
    tiny_config, tmp_path, dense_workdir, slots, min_steps, eta
):
    live_config = study_config(tiny_config, scheduler="asha", slots=slots)
    live_config.asha.min_steps, live_config.asha.eta = min_steps, eta
    live = {r["trial"]: r for r in train_and_evaluate(live_config, str(tmp_path))}
    live_pruned = {t: r["rung"] for t, r in live.items() if r["status"] == "pruned"}
    assert 0 < len(live_pruned) < len(RATES) - 1, "the case must prune some, not all"

    study = read_dense(dense_workdir)
    (curves,) = study.groups
    (setting,) = parse_settings(f"asha:eta={eta},grace={min_steps}", study)
    run = run_setting(setting, curves, np.arange(curves.size), slots, study)
    replayed = {int(curves.trials[i]): s for i, s in run.pruned_at.items()}
    assert replayed == live_pruned
    steps = {int(t): int(curves.steps[i, run.seen[i]]) for i, t in enumerate(curves.trials)}
    assert steps == {t: r["steps"] for t, r in live.items()}


def test_optuna_pruners_are_driven_as_a_user_objective_would(dense_workdir):
    """Median stopping replayed through the rows equals Optuna's MedianPruner driven by hand
    one trial after another, when one trial trains at a time."""
    optuna = pytest.importorskip("optuna")
    study = read_dense(dense_workdir)
    (curves,) = study.groups
    (setting,) = parse_settings("median:warmup=20,startup=2", study)
    run = run_setting(setting, curves, np.arange(curves.size), 1, study)

    by_hand = optuna.create_study(pruner=optuna.pruners.MedianPruner(2, 20))
    pruned = {}
    for i in range(curves.size):
        trial = by_hand.ask()
        for k in range(1, curves.lengths[i]):  # from the first evaluation after training
            trial.report(float(curves.values[i, k]), int(curves.steps[i, k]))
            if k < curves.last[i] and trial.should_prune():
                pruned[i] = int(curves.steps[i, k])
                by_hand.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            by_hand.tell(trial, float(curves.dense_best[i]))
    assert pruned and run.pruned_at == pruned


def _toy(values: list[list[float]], test=None) -> Curves:
    """Curves evaluated every 10 steps from step 0 (NaN: after the curve's end)."""
    v = np.array(values, float)
    lengths = (~np.isnan(v)).sum(1)
    steps = np.tile(np.arange(v.shape[1]) * 10, (len(v), 1))
    best = np.minimum.accumulate(np.where(np.isnan(v), np.inf, v), axis=1)
    test = np.arange(len(v), dtype=float) if test is None else np.asarray(test, float)
    return Curves(0, np.arange(len(v)) + 100, steps, v, lengths, best, test)


def _study(curves: Curves, patience: int = 0) -> DenseStudy:
    return DenseStudy("toy", "loss", (curves,), patience, 0.0, 0, 40, 10)


def test_synchronous_halving_and_figures_by_hand():
    curves = _toy([[4, 3, 2, 1, 0.5], [4, 2, 1.5, 1.4, 1.3], [4, 3.5, 3, 2.5, 2], [4, 4, 4, 4, 4]])
    run = simulate.successive_halving(curves, min_steps=10, eta=2, max_rungs=8, max_steps=40)
    # rung 10: values 3, 2, 3.5, 4 -> keep 2 (trials 1 and 0); rung 20: 2 vs 1.5 -> keep 1
    assert run.pruned_at == {2: 10, 3: 10, 0: 20}
    row = outcome(curves, run, [np.arange(4)])
    assert row["trial"] == 101 and row["best_value"] == 1.3 and row["rank"] == 2
    assert math.isclose(row["regret_pct"], 100 * (1.3 - 0.5) / 0.5)
    assert math.isclose(row["budget_share"], (20 + 40 + 10 + 10) / 160)
    # random search at that budget (80 steps): the first two trials of the order, 40 each
    assert math.isclose(row["random_regret_pct"], 0.0)
    # over two orders: trials 0, 1 (regret 0), then 3, 2 (best 2.0: regret 300%)
    both = outcome(curves, run, [np.arange(4), np.array([3, 2, 1, 0])])
    assert math.isclose(both["random_regret_pct"], 150.0)
    assert row["test"] == 1.0


def test_patience_cuts_by_hpjax_rule_and_cannot_exceed_the_dense_one():
    curves = _toy([[3, 2, 2.5, 2.4, 1.0], [3, 2.9, 2.8, 2.7, 2.6]])
    run = simulate.patience(curves, patience=2, min_delta=0.0, min_steps=0)
    assert run.seen.tolist() == [3, 4] and run.pruned_at == {0: 30}
    row = outcome(curves, run, [np.arange(2)])
    # the pick is trial 0, cut at step 30 with 2.0: above trial 0's dense best (1.0), so rank 2,
    # and no test value (it was measured at step 40, which the cut trial never reached)
    assert row["best_value"] == 2.0 and row["trial"] == 100 and row["rank"] == 2
    assert math.isnan(row["test"])
    with pytest.raises(ConfigError, match="cannot show a longer patience"):
        parse_settings("patience:p=4", _study(curves, patience=3))


def test_bad_settings_are_refused_in_one_line():
    study = _study(_toy([[1, 0.5, 0.4, 0.3, 0.2]]))
    for text, match in [
        ("asha:eta=1", "eta must be above 1"),
        ("nope:x=1", "known are"),
        ("asha:rate=3", "asha takes eta, grace"),
        ("random:fraction=2", r"in \(0, 1\]"),
        ("hyperband:eta=2.5", "whole number"),
        ("asha:grace=40", "grace must be within"),
    ]:
        with pytest.raises(ConfigError, match=match) as error:
            parse_settings(text, study)
        assert "\n" not in str(error.value)


def test_a_study_with_a_scheduler_is_refused(tmp_path, tiny_config):
    config = study_config(tiny_config, scheduler="asha", slots=4)
    train_and_evaluate(config, str(tmp_path))
    with pytest.raises(ConfigError, match="needs a dense study"):
        hpjax.replay(str(tmp_path))


def test_replay_writes_its_table_plot_and_report_section(dense_workdir, tmp_path):
    import shutil

    workdir = str(tmp_path / "copy")
    shutil.copytree(dense_workdir, workdir)
    result = hpjax.replay(workdir, orders=3, slots=4)
    rows = files.read_csv(f"{workdir}/replay.csv", key="setting")
    assert [r["setting"] for r in rows] == [r["setting"] for r in result.rows]
    runs = files.read_csv(f"{workdir}/replay_runs.csv", key="setting")
    assert len(runs) == 3 * len(rows)
    for row in rows:
        assert 0 < row["budget_share"] <= 1 and row["replays"] == 3
    full = result.row("random:fraction=0.5")
    assert math.isclose(full["budget_share"], 0.5, abs_tol=0.1)
    report = open(f"{workdir}/report.md").read()
    assert "## Which scheduler? Replayed on these curves" in report
    assert "![replay pareto](plots/replay_pareto.png)" in report
    assert result.seconds > 0


def test_replays_in_worker_processes_equal_those_in_one(dense_workdir):
    settings = "asha:eta=3,grace=10; median:warmup=20; patience:p=2; random:fraction=0.5"
    one = hpjax.replay(dense_workdir, settings, orders=3, slots=4, write=False, workers=1)
    two = hpjax.replay(dense_workdir, settings, orders=3, slots=4, write=False, workers=2)
    assert one.runs == two.runs and one.rows == two.rows


def test_the_binary_refuses_a_bad_replay_before_training(tmp_path):
    import subprocess
    import sys

    root = __file__.rsplit("/tests/", 1)[0]
    for flags, match in [
        (["--config.replay.schedulers=asha:eta=1"], "eta must be above 1"),
        (["--config.scheduler=asha", "--config.slots=4"], "a replay needs a dense study"),
    ]:
        workdir = tmp_path / "never"
        done = subprocess.run(
            [sys.executable, f"{root}/experiments/lr_sweep.py", f"--workdir={workdir}"]
            + ["--config.replay.run=True", *flags],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 2, done.stderr[-500:]
        (line,) = [x for x in done.stderr.splitlines() if x.startswith("error:")]
        assert match in line
        assert not workdir.exists()


def test_a_setting_given_zero_keeps_it():
    study = _study(_toy([[1, 0.5, 0.4, 0.3, 0.2]]))
    (median,) = parse_settings("median:warmup=0", study)
    assert median.get("warmup") == 0 and median.key == "median:warmup=0,startup=5"
    (default,) = parse_settings("median", study)
    assert default.get("warmup") == 10  # an eighth of the 40 steps, on the evaluation grid
