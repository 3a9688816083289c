"""Population-based training: lineage on disk, every member replayable alone, the plot."""

import json
import os
import runpy
import sys

import pytest

from hpjax.errors import ConfigError
from hpjax.results import files
from hpjax.studies import pbt
from hpjax.study.run import train_and_evaluate
from tests.conftest import ROOT, Crash, CrashAtEvaluation


@pytest.fixture(scope="module")
def pbt_workdir(tmp_path_factory, tiny_npz):
    from tests.conftest import load_config

    config = load_config("lr_sweep")
    config.dataset, config.npz_path = "npz", tiny_npz
    config.model.hidden_units, config.model.num_layers = 16, 1
    config.batch_size, config.num_steps, config.eval_every = 16, 80, 10
    config.patience, config.make_report, config.log_every_s = 0, True, 0.0
    config.trials = json.dumps(
        [
            {"learning_rate": lr, "weight_decay": 0.01, "seed": i}
            for i, lr in enumerate((0.0005, 0.003, 0.02, 0.3))
        ]
    )
    config.scheduler = "pbt"
    config.pbt.interval = 20
    config.pbt.fraction = 0.25
    workdir = str(tmp_path_factory.mktemp("pbt"))
    rows = train_and_evaluate(config, workdir)
    return workdir, rows, config


def test_lineage_is_written_and_metrics_name_the_parent(pbt_workdir):
    workdir, rows, _ = pbt_workdir
    lineage = files.read_csv(os.path.join(workdir, "lineage.csv"))
    assert len(lineage) == 3  # one exploit per round (a quarter of 4), at steps 20, 40, 60
    assert [e["step"] for e in lineage] == [20, 40, 60]
    rates = (0.0005, 0.003, 0.02, 0.3)
    for e in lineage:
        assert e["parent"] != e["trial"]
        # the parent's rate just before the exploit, x0.8 or x1.25 (no space: never resampled)
        (segment,) = pbt.lineage_path(lineage, e["parent"], e["tick"])[-1:]
        parent_rate = segment.values.get("learning_rate", rates[segment.member])
        ratio = e["after_learning_rate"] / parent_rate
        assert ratio == pytest.approx(0.8, rel=1e-4) or ratio == pytest.approx(1.25, rel=1e-4)
    parents = [r for r in files.read_metrics(workdir) if "parent" in r]
    assert len(parents) == len(lineage)
    assert sum(r["exploits"] for r in rows) == len(lineage)
    assert os.path.exists(os.path.join(workdir, "plots", "pbt_schedules.png"))
    report = open(os.path.join(workdir, "report.md")).read()
    assert "## PBT exploits (lineage.csv)" in report and "pbt_schedules.png" in report


def test_every_member_replays_alone_to_its_recorded_validation_losses(pbt_workdir):
    workdir, rows, _ = pbt_workdir
    for member in range(4):
        replayed = pbt.replay(workdir, member)
        assert len(replayed) == 9  # steps 0, 10, ..., 80
        for r in replayed:
            assert r["replayed_val_loss"] == pytest.approx(r["recorded_val_loss"], rel=1e-6)
    exploited = {int(e["trial"]) for e in files.read_csv(os.path.join(workdir, "lineage.csv"))}
    assert exploited, "no member was exploited: the replay tested nothing across a link"


def _replay_tool(*args, capsys):
    """``tools/replay_pbt.py`` run in this process (as its ``__main__``); exit status, output."""
    saved = sys.argv
    sys.argv = ["replay_pbt.py", *args]
    try:
        runpy.run_path(os.path.join(ROOT, "tools", "replay_pbt.py"), run_name="__main__")
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    finally:
        sys.argv = saved
    out = capsys.readouterr()
    return code, out.out, out.err


def test_replay_tool_prints_the_comparison(pbt_workdir, capsys):
    workdir, _, _ = pbt_workdir
    lineage = files.read_csv(os.path.join(workdir, "lineage.csv"))
    code, out, err = _replay_tool(workdir, str(lineage[-1]["trial"]), capsys=capsys)
    assert code == 0, err[-2000:]
    assert "largest relative difference" in out
    code, _, err = _replay_tool(ROOT, "0", capsys=capsys)
    assert code == 2 and "lineage.csv" in err


def test_pbt_moves_batch_sizes_and_members_still_replay_alone(tiny_config, tmp_path):
    """Explore moves a member to a neighbouring batch size of its space, inside the same
    compiled program (micro-batch accumulation); the replay follows it."""
    config = tiny_config
    config.num_steps, config.patience = 80, 0
    config.scheduler = "pbt"
    config.space = {"learning_rate": (0.001, 0.3, "log"), "batch_size": (8, 16, 32)}
    config.num_samples = 4
    config.batch_axis = "vmap"
    config.pbt.interval = 20
    config.pbt.resample_probability = 0.0
    workdir = str(tmp_path / "pbt_batch")
    train_and_evaluate(config, workdir)
    lineage = files.read_csv(os.path.join(workdir, "lineage.csv"))
    moved = [e for e in lineage if e["after_batch_size"] != e["before_batch_size"]]
    assert moved, "no exploit changed a batch size"
    for member in {int(e["trial"]) for e in moved}:
        for r in pbt.replay(workdir, member):
            assert r["replayed_val_loss"] == pytest.approx(r["recorded_val_loss"], rel=1e-6)


def test_pbt_batch_sizes_must_share_one_program(tiny_config, tmp_path):
    config = tiny_config
    config.scheduler = "pbt"
    config.space = {"learning_rate": (0.001, 0.3, "log"), "batch_size": (16, 24)}
    config.num_samples = 4
    with pytest.raises(ConfigError, match="space.batch_size.*divide the largest"):
        train_and_evaluate(config, str(tmp_path / "never"))
    assert not (tmp_path / "never").exists()


def test_pbt_resumed_at_an_exploit_tick_ends_as_the_uninterrupted_run(tiny_npz, tmp_path):
    """The state checkpoint at step 40 is taken right before the exploit round of step 40:
    the resumed run must rank the members by their values there, as the uninterrupted one did."""
    from tests.conftest import load_config

    def config():
        c = load_config("lr_sweep")
        c.dataset, c.npz_path = "npz", tiny_npz
        c.model.hidden_units, c.model.num_layers = 16, 1
        c.batch_size, c.num_steps, c.eval_every = 16, 80, 10
        c.patience, c.make_report, c.log_every_s = 0, False, 0.0
        c.tensorboard, c.optuna_storage = "off", "off"
        c.trials = json.dumps(
            [{"learning_rate": lr, "seed": i} for i, lr in enumerate((0.0005, 0.003, 0.02, 0.3))]
        )
        c.scheduler, c.pbt.interval, c.pbt.fraction = "pbt", 20, 0.25
        c.checkpoint_every = 2  # every 20 steps: each checkpoint is at an exploit tick
        return c

    reference = train_and_evaluate(config(), str(tmp_path / "reference"))
    with pytest.raises(Crash):  # evaluations at steps 0, 10, ..., 50: killed after step 50
        train_and_evaluate(config(), str(tmp_path / "resumed"), hooks=[CrashAtEvaluation(6)])
    resumed = train_and_evaluate(config(), str(tmp_path / "resumed"))
    drop = ("peak_memory_mb", "memory_estimate_mb")
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed] == [
        {k: v for k, v in r.items() if k not in drop} for r in reference
    ]
    lineage = [files.read_csv(str(tmp_path / w / "lineage.csv")) for w in ("reference", "resumed")]
    assert lineage[0] == lineage[1] and len(lineage[0]) == 3
    metrics = [files.read_metrics(str(tmp_path / w)) for w in ("reference", "resumed")]
    assert [(r["trial"], r["step"], r["val_loss"]) for r in metrics[0]] == [
        (r["trial"], r["step"], r["val_loss"]) for r in metrics[1]
    ]


def test_a_damaged_lineage_is_written_again_from_the_saved_state(pbt_workdir, tmp_path):
    import shutil

    workdir, rows, config = pbt_workdir
    copy = str(tmp_path / "copy")
    shutil.copytree(workdir, copy)
    lineage = open(os.path.join(workdir, "lineage.csv")).read()
    with open(os.path.join(copy, "lineage.csv"), "w") as f:
        f.write(lineage[: len(lineage) // 2])
    assert [r["best_val_loss"] for r in train_and_evaluate(config, copy)] == [
        r["best_val_loss"] for r in rows
    ]
    assert open(os.path.join(copy, "lineage.csv")).read() == lineage


def test_each_member_is_credited_with_its_own_best_and_the_values_that_trained_it(pbt_workdir):
    """A member that copies another keeps its own best: its best_val_loss is the lowest of its
    own metrics rows, at its best_step; KEY_at_best are the values in force up to that step."""
    workdir, rows, _ = pbt_workdir
    curves = files.curves_by_trial(files.read_metrics(workdir))
    lineage = files.read_csv(os.path.join(workdir, "lineage.csv"))
    assert any(
        e["step"] < r["best_step"] for r in rows for e in lineage if e["trial"] == r["trial"]
    )
    for row in rows:
        own = [r for r in curves[row["trial"]] if r["val_loss"] is not None]
        lowest = min(own, key=lambda r: r["val_loss"])
        assert (row["best_val_loss"], row["best_step"]) == (
            pytest.approx(lowest["val_loss"], rel=1e-6),
            lowest["step"],
        )
        copies = [e for e in lineage if e["trial"] == row["trial"] and e["step"] < row["best_step"]]
        if copies:
            expected = max(copies, key=lambda e: e["step"])["after_learning_rate"]
            assert row["learning_rate_at_best"] == pytest.approx(expected)
    report = open(os.path.join(workdir, "report.md")).read()
    best = min(rows, key=lambda r: r["best_val_loss"])
    assert f"is member {best['trial']}'s own evaluation at step {best['best_step']}" in report
    assert f"**Best trial:** member {best['trial']} (learning_rate=" in report
    assert "without early stopping" in report and "after 0 evaluations" not in report
