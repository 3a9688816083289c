"""Extendable studies: more trials into the same workdir train only the new ones."""

import os

import numpy as np
import pytest

from hpjax.errors import ConfigError
from hpjax.results import files
from hpjax.study import waves as extension
from hpjax.study.run import train_and_evaluate
from tests.conftest import Crash, CrashAtEvaluation


def best_dirs_mtimes(workdir):
    root = os.path.join(workdir, "checkpoints")
    return {d: os.path.getmtime(os.path.join(root, d)) for d in sorted(os.listdir(root))}


def curves(workdir):
    return {
        t: [(r["step"], r["val_loss"]) for r in rows]
        for t, rows in files.curves_by_trial(files.read_metrics(workdir)).items()
    }


def test_more_rates_train_only_the_new_trials(tiny_config, tmp_path, caplog):
    workdir = str(tmp_path / "study")
    tiny_config.learning_rates = (0.003, 0.03)
    first = train_and_evaluate(tiny_config, workdir)
    before_curves = curves(workdir)
    before_best = best_dirs_mtimes(workdir)
    tiny_config.learning_rates = (0.003, 0.03, 0.3, 0.01)
    with caplog.at_level("INFO"):
        rows = train_and_evaluate(tiny_config, workdir)
    assert "2 finished trials kept, 2 new" in caplog.text
    assert [r["trial"] for r in rows] == [0, 1, 2, 3]
    assert [r["learning_rate"] for r in rows] == [0.003, 0.03, 0.3, 0.01]
    assert rows[:2] == first  # the finished trials' rows, as they were
    after = curves(workdir)
    assert {t: after[t] for t in (0, 1)} == before_curves  # not retrained
    assert {d: t for d, t in best_dirs_mtimes(workdir).items() if d in before_best} == before_best
    assert len(files.read_summary(workdir)) == 4
    # the new trials are what they are alone
    alone = tmp_path / "alone"
    tiny_config.learning_rates = (0.3, 0.01)
    train_and_evaluate(tiny_config, str(alone))
    for new, solo in ((2, 0), (3, 1)):
        np.testing.assert_allclose(
            [v for _, v in after[new]], [v for _, v in curves(alone)[solo]], rtol=2e-5
        )
    # the same config again: nothing to train, nothing changes
    tiny_config.learning_rates = (0.003, 0.03, 0.3, 0.01)
    assert train_and_evaluate(tiny_config, workdir) == rows


def test_a_denser_quasi_random_space_adds_the_new_points(tiny_config, tmp_path):
    workdir = str(tmp_path / "study")
    tiny_config.space = {"learning_rate": (1e-3, 0.3, "log")}
    tiny_config.num_samples = 3
    tiny_config.num_steps = 40
    train_and_evaluate(tiny_config, workdir)
    tiny_config.num_samples = 6
    rows = train_and_evaluate(tiny_config, workdir)
    assert len(rows) == 6
    waves = extension.read_waves(workdir)
    assert [len(w) for w in waves] == [3, 3]


def test_changing_what_finished_trials_are_is_refused_naming_the_key(tiny_config, tmp_path):
    workdir = str(tmp_path / "study")
    train_and_evaluate(tiny_config, workdir)
    before = open(os.path.join(workdir, "summary.csv")).read()
    tiny_config.learning_rates = (0.01,)
    tiny_config.patience = 7
    with pytest.raises(ConfigError, match="config.patience is 3 there and 7 here"):
        train_and_evaluate(tiny_config, workdir)
    assert open(os.path.join(workdir, "summary.csv")).read() == before


def test_an_unfinished_study_is_not_extended(tiny_config, tmp_path):
    workdir = str(tmp_path / "study")
    train_and_evaluate(tiny_config, workdir)
    os.remove(os.path.join(workdir, "summary.csv"))
    tiny_config.learning_rates = (0.01,)
    with pytest.raises(ConfigError, match="has not finished"):
        train_and_evaluate(tiny_config, workdir)


def test_changed_data_under_the_same_path_is_refused_and_overwrite_retrains(tiny_config, tmp_path):
    """The same config and npz_path with other labels: never the first study's results."""
    import shutil

    path = str(tmp_path / "data.npz")
    shutil.copy(tiny_config.npz_path, path)
    tiny_config.npz_path, tiny_config.num_steps = path, 40
    workdir = str(tmp_path / "study")
    first = train_and_evaluate(tiny_config, workdir)
    arrays = dict(np.load(path))
    arrays["y_train"] = (arrays["y_train"] + 1) % 4
    np.savez(path, **arrays)
    with pytest.raises(ConfigError, match="holds a study of other data: its data fingerprint"):
        train_and_evaluate(tiny_config, workdir)
    tiny_config.overwrite = True
    second = train_and_evaluate(tiny_config, workdir)
    assert [r["best_val_loss"] for r in second] != [r["best_val_loss"] for r in first]


@pytest.mark.parametrize("crash_at", [1, 4])
def test_a_killed_extension_wave_keeps_every_metrics_row(tiny_config, tmp_path, crash_at):
    """Killed before its first state checkpoint (1) and after one (4): the resumed extension
    ends with the metrics and summary of the uninterrupted one."""

    def extend(workdir, hooks=()):
        config = tiny_config.copy_and_resolve_references()
        config.learning_rates = (0.003, 0.03)
        train_and_evaluate(config, workdir)
        config.learning_rates = (0.003, 0.03, 0.3, 0.01)
        return train_and_evaluate(config, workdir, hooks=hooks)

    reference = extend(str(tmp_path / "reference"))
    resumed = str(tmp_path / "resumed")
    with pytest.raises(Crash):
        extend(resumed, hooks=[CrashAtEvaluation(crash_at)])
    config = tiny_config.copy_and_resolve_references()
    config.learning_rates = (0.003, 0.03, 0.3, 0.01)
    drop = ("peak_memory_mb", "memory_estimate_mb", "elapsed_s", "time")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]  # noqa: E731
    assert strip(train_and_evaluate(config, resumed)) == strip(reference)
    assert strip(files.read_metrics(resumed)) == strip(
        files.read_metrics(str(tmp_path / "reference"))
    )


def test_a_corrupt_config_or_trials_file_is_refused_in_one_line_naming_it(tiny_config, tmp_path):
    workdir = str(tmp_path / "study")
    rows = train_and_evaluate(tiny_config, workdir)
    for name, way_out in (("trials.json", "restart=True"), ("config.json", "overwrite=True")):
        path = os.path.join(workdir, name)
        intact = open(path).read()
        with open(path, "w") as f:
            f.write(intact[: len(intact) // 2])
        with pytest.raises(ConfigError, match=f"cannot read '{path}'.*not valid JSON.*{way_out}"):
            train_and_evaluate(tiny_config, workdir)
        with open(path, "w") as f:
            f.write(intact)
    # a corrupt config.json, or none beside the outputs: overwrite trains afresh
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write("{")
    tiny_config.overwrite = True
    assert [r["best_val_loss"] for r in train_and_evaluate(tiny_config, workdir)] == [
        r["best_val_loss"] for r in rows
    ]
    os.remove(os.path.join(workdir, "config.json"))
    tiny_config.overwrite = False
    with pytest.raises(ConfigError, match="but no config.json .* --config.overwrite=True"):
        train_and_evaluate(tiny_config, workdir)
