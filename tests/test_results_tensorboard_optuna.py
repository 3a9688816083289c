"""Where researchers look: TensorBoard event files and an Optuna study of every hpjax study."""

import os
import subprocess
import sys
from types import SimpleNamespace

import optuna
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

from hpjax.errors import ConfigError
from hpjax.results import files, optuna_storage, tensorboard
from hpjax.study.run import train_and_evaluate
from tests.conftest import ROOT


@pytest.fixture
def finished(tiny_config, tmp_path, caplog):
    caplog.set_level("INFO")
    tiny_config.learning_rates = (0.003, 0.03, 200.0)  # the last one diverges
    tiny_config.tensorboard = "on"
    tiny_config.optuna_storage = "auto"
    workdir = str(tmp_path / "study")
    rows = train_and_evaluate(tiny_config, workdir)
    # the log ends by saying how to open the table of trials
    assert f"tensorboard --logdir {workdir}/tensorboard, then open http" in caplog.text
    assert "/#hparams" in caplog.text
    return tiny_config, workdir, rows


def test_event_files_hold_every_trials_curves_and_the_hparams_summary(finished):
    _, workdir, rows = finished
    root = os.path.join(workdir, "tensorboard")
    runs = sorted(os.listdir(root))
    assert runs == [f"trial_{r['trial']:04d}_learning_rate={r['learning_rate']:.3g}" for r in rows]
    curves = files.curves_by_trial(files.read_metrics(workdir))
    for run, row in zip(runs, rows, strict=True):
        events = EventAccumulator(os.path.join(root, run))
        events.Reload()
        val = [(e.step, e.value) for e in events.Scalars("val/loss")]
        walls = [e.wall_time for e in events.Scalars("val/loss")]
        times = [r["time"] for r in curves[row["trial"]]]
        assert walls == pytest.approx(times, abs=1e-3)  # each evaluation's own wall time
        expected = [(r["step"], r["val_loss"]) for r in curves[row["trial"]]]
        assert [s for s, _ in val] == [s for s, _ in expected]
        assert [v for _, v in val] == pytest.approx([v for _, v in expected], rel=1e-6)
        assert "train/loss" in events.Tags()["scalars"]
        content = events.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
        starts = []
        for content_bytes in content.values():
            try:
                starts.append(hparams_metadata.parse_session_start_info_plugin_data(content_bytes))
            except Exception:  # noqa: BLE001 (the experiment and session-end summaries)
                continue
        start = starts[0]
        assert start.hparams["learning_rate"].number_value == pytest.approx(row["learning_rate"])
        assert start.hparams["status"].string_value == row["status"]
        if row["status"] != "diverged":
            best = events.Scalars("hparam/best_val_loss")[-1].value
            assert best == pytest.approx(row["best_val_loss"], rel=1e-6)


def test_optuna_storage_holds_every_trial_with_its_curve_state_and_value(finished):
    config, workdir, rows = finished
    journal = optuna_storage.journal(os.path.join(workdir, "optuna.log"))
    study = optuna.load_study(study_name="study", storage=journal)
    trials = sorted(study.trials, key=lambda t: t.user_attrs["hpjax_trial"])
    assert len(trials) == len(rows) == 3
    curves = files.curves_by_trial(files.read_metrics(workdir))
    for trial, row in zip(trials, rows, strict=True):
        assert trial.params["learning_rate"] == pytest.approx(row["learning_rate"])
        assert isinstance(
            trial.distributions["learning_rate"], optuna.distributions.FloatDistribution
        )
        assert trial.distributions["learning_rate"].log
        expected = {r["step"]: r["val_loss"] for r in curves[row["trial"]] if r["val_loss"]}
        assert trial.intermediate_values == pytest.approx(expected, rel=1e-6)
        assert trial.user_attrs["status"] == row["status"]
        diverged = row["status"] == "diverged"
        assert trial.state == (
            optuna.trial.TrialState.FAIL if diverged else optuna.trial.TrialState.COMPLETE
        )
    summary = files.read_summary(workdir)
    best = min(r["best_val_loss"] for r in summary if r["status"] != "diverged")
    assert study.best_value == pytest.approx(best, rel=1e-6)
    # read well in optuna-dashboard: a named objective, only what varies as parameters (the
    # rest as study attributes), and each trial's real duration
    assert study.metric_names == ["best_val_loss"]
    assert all(set(t.params) == {"learning_rate"} for t in trials)
    assert study.user_attrs["optimizer"] == "adam" and study.user_attrs["batch_size"] == 16
    assert all(t.duration.total_seconds() > 0 for t in trials if t.state.is_finished())
    # the same command again (a finished study) rebuilds the storage: no trial twice, none lost
    train_and_evaluate(config, workdir)
    journal = optuna_storage.journal(os.path.join(workdir, "optuna.log"))
    again = optuna.load_study(study_name="study", storage=journal)
    assert sorted(t.user_attrs["hpjax_trial"] for t in again.trials) == [0, 1, 2]
    assert sorted(os.listdir(workdir)).count("optuna.log") == 1  # whole, no partial file left
    assert not [n for n in os.listdir(workdir) if "partial" in n]
    # in SQLite instead: the same trials; the journal, now out of date, is removed
    config.optuna_storage = "sqlite"
    train_and_evaluate(config, workdir)
    again = optuna.load_study(study_name="study", storage=f"sqlite:///{workdir}/optuna.db")
    assert sorted(t.user_attrs["hpjax_trial"] for t in again.trials) == [0, 1, 2]
    assert again.best_value == pytest.approx(best, rel=1e-6)
    assert not os.path.exists(os.path.join(workdir, "optuna.log"))
    # a damaged database is moved aside and written afresh from the summary and metrics
    with open(os.path.join(workdir, "optuna.db"), "wb") as f:
        f.write(b"not a database")
    train_and_evaluate(config, workdir)
    again = optuna.load_study(study_name="study", storage=f"sqlite:///{workdir}/optuna.db")
    assert sorted(t.user_attrs["hpjax_trial"] for t in again.trials) == [0, 1, 2]
    assert open(os.path.join(workdir, "optuna.db.damaged"), "rb").read() == b"not a database"


def test_dashboard_lists_every_trial_through_its_http_api(finished):
    _, workdir, _ = finished
    result = subprocess.run(
        [sys.executable, "tools/optuna_dashboard_check.py", workdir],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert "3 trials listed, 3 in summary.csv, 0 missing, 0 with a wrong value" in result.stdout


def test_a_missing_extra_is_one_line_naming_it(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setattr(tensorboard, "available", lambda: False)
    tiny_config.tensorboard = "on"
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[tensorboard\]"'):
        train_and_evaluate(tiny_config, str(tmp_path / "a"))
    tiny_config.tensorboard = "auto"  # auto: skipped without a word when missing
    monkeypatch.setattr(optuna_storage, "optuna", None)
    tiny_config.optuna_storage = "sqlite"
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[optuna\]"'):
        train_and_evaluate(tiny_config, str(tmp_path / "b"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    tiny_config.optuna_storage = "bogus"
    with pytest.raises(ConfigError, match="config.optuna_storage='bogus' is unknown"):
        train_and_evaluate(tiny_config, str(tmp_path / "c"))


def test_an_unreachable_storage_is_one_line_before_training_with_its_password_hidden(
    tiny_config, tmp_path
):
    """Issue 34: the line came after all training had run, and printed the password."""
    tiny_config.optuna_storage = "postgresql://hpjax:s3cret-pw@127.0.0.1:9/hpjax"
    with pytest.raises(ConfigError) as raised:
        train_and_evaluate(tiny_config, str(tmp_path / "w"))
    message = str(raised.value)
    assert "s3cret-pw" not in message and "\n" not in message
    assert message.startswith("the Optuna storage postgresql://hpjax:***@127.0.0.1:9/hpjax")
    assert "cannot be reached" in message and not (tmp_path / "w").exists()


def test_the_live_hook_writes_each_evaluation_from_its_worker_thread(tmp_path):
    """While a study runs, each evaluation reaches the trial's live run (written by the hook's
    worker thread; on_end waits for it)."""
    trial = SimpleNamespace(index=3, learning_rate=0.1, architecture=())
    run = SimpleNamespace(
        sharding=SimpleNamespace(is_writer=True), plan=SimpleNamespace(trials=[trial])
    )
    hook = tensorboard.TensorBoardHook(str(tmp_path), ["learning_rate"])
    for step, loss in ((10, 2.0), (20, 1.5)):
        hook.on_evaluation(run, None, [{"trial": 3, "step": step, "val_loss": loss}])
    hook.on_end(run, [])
    events = EventAccumulator(
        str(tmp_path / "tensorboard" / "live" / "trial_0003_learning_rate=0.1")
    )
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("val/loss")] == [(10, 2.0), (20, 1.5)]


def test_importance_names_the_hyperparameter_the_result_depends_on():
    import math

    summary = [
        {
            "trial": t,
            "learning_rate": 10 ** (-4 + 3 * ((t * 7) % 20) / 20),
            "weight_decay": 10 ** (-2 + 3 * ((t * 3) % 20) / 20),
            "status": "early_stopped",
        }
        for t in range(20)
    ]
    for row in summary:  # the loss is a bowl in log(rate) alone
        row["best_val_loss"] = 0.3 + (math.log10(row["learning_rate"]) + 2.5) ** 2
    importances = optuna_storage.param_importances(summary)
    assert list(importances) == ["learning_rate", "weight_decay"]
    assert importances["learning_rate"] > 0.8
    assert optuna_storage.param_importances(summary[:3]) is None  # too few trials
