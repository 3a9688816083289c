"""The workdir's owner: a lock, verified checkpoints, and files of others left alone."""

import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from hpjax.errors import ConfigError
from hpjax.results import checkpoints, files
from hpjax.study.run import train_and_evaluate
from tests.conftest import ROOT


def _xor_array_files(directory: str) -> list[str]:
    """XORs up to 4 KiB in the middle of every array data file (OCDBT ``d/``) under
    ``directory``."""
    paths = [os.path.join(d, n) for d, _, names in os.walk(directory) for n in names]
    paths = [p for p in paths if os.path.basename(os.path.dirname(p)) == "d"]
    for path in paths:
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.seek(size // 3)
            data = bytearray(f.read(4096))
            f.seek(size // 3)
            f.write(bytes(b ^ 0x5A for b in data))
    assert paths
    return paths


def test_a_locked_workdir_refuses_a_second_run_at_once(tiny_config, tmp_path):
    workdir = str(tmp_path / "w")
    with files.workdir_lock(workdir):  # as another run would hold it
        # the same process may take it again (studies nest)...
        with files.workdir_lock(workdir):
            pass
        # ...but another open of the file cannot: simulate with a child process
        code = f"from hpjax.results import files\nwith files.workdir_lock({workdir!r}): pass\n"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.returncode != 0 and "is in use by pid" in out.stderr
        assert f"pid {os.getpid()}" in out.stderr
    # released: a lock file left behind (as after SIGKILL) never blocks
    assert os.path.exists(os.path.join(workdir, files.LOCK_FILE))
    rows = train_and_evaluate(tiny_config, workdir)
    assert len(rows) == 3


def test_checksums_catch_flipped_bytes_in_state_and_best_checkpoints(tiny_config, tmp_path):
    workdir = str(tmp_path / "w")
    reference = train_and_evaluate(tiny_config, str(tmp_path / "reference"))
    train_and_evaluate(tiny_config, workdir)
    # the finished state: corrupt the newest checkpoint; resuming falls back to the older one
    state = checkpoints.state_dir(workdir, 0)
    newest = max(int(s) for s in os.listdir(state) if s.isdigit())
    _xor_array_files(os.path.join(state, str(newest)))
    again = train_and_evaluate(tiny_config, workdir)
    for a, b in zip(again, reference, strict=True):
        assert a["best_val_loss"] == pytest.approx(b["best_val_loss"], rel=1e-6)
        assert a["status"] == b["status"] and a["best_step"] == b["best_step"]
    restored = checkpoints.restore_best(workdir, 1)
    assert set(restored.metadata["checksums"]) == {
        path for path in checkpoints.checksums(restored.params)
    }
    _xor_array_files(checkpoints.population_best_dir(workdir, 0))
    with pytest.raises(ConfigError, match="trial 1 checkpoint .*population_0"):
        checkpoints.restore_best(workdir, 1)


def test_one_checkpoint_per_population_and_the_older_per_trial_layout_restore(
    tiny_config, tmp_path
):
    workdir = str(tmp_path / "w")
    rows = train_and_evaluate(tiny_config, workdir)
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["population_0"]
    restored = {r["trial"]: checkpoints.restore_best(workdir, r["trial"]) for r in rows}
    for row in rows:
        assert restored[row["trial"]].metadata["test_loss"] == row["test_loss"]
    # A study of an earlier version: each trial in its own checkpoint at its best step.
    for row in rows:
        one = restored[row["trial"]]
        manager = ocp.CheckpointManager(
            checkpoints.legacy_best_dir(workdir, row["trial"]),
            options=ocp.CheckpointManagerOptions(create=True),
            item_names=("params", "metadata"),
        )
        manager.save(
            row["best_step"],
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(jax.device_get(one.params)),
                metadata=ocp.args.JsonSave(one.metadata),
            ),
        )
        manager.wait_until_finished()
        manager.close()
    shutil.rmtree(checkpoints.population_best_dir(workdir, 0))
    for row in rows:
        again = checkpoints.restore_best(workdir, row["trial"])
        assert again.metadata["best_step"] == row["best_step"]
        jax.tree.map(np.testing.assert_array_equal, again.params, restored[row["trial"]].params)
    with pytest.raises(ConfigError, match="trial 9 has no best checkpoint"):
        checkpoints.restore_best(workdir, 9)


def test_verify_names_the_changed_array():
    tree = {"a": np.arange(4.0), "b": {"c": np.ones(3)}}
    recorded = checkpoints.checksums(tree)
    checkpoints.verify(tree, recorded, "x")
    tree["b"]["c"][1] = 2.0
    with pytest.raises(checkpoints.CorruptCheckpointError, match=r"x: array \['b'\]\['c'\]"):
        checkpoints.verify(tree, recorded, "x")


def test_every_state_checkpoint_corrupt_offers_restart_that_works(tiny_config, tmp_path):
    workdir = str(tmp_path / "w")
    tiny_config.checkpoint_every = 1
    first = train_and_evaluate(tiny_config, workdir)
    state = checkpoints.state_dir(workdir, 0)
    for step in os.listdir(state):
        if step.isdigit():
            _xor_array_files(os.path.join(state, step))
    with pytest.raises(ConfigError, match=r"pass --config\.restart=True"):
        train_and_evaluate(tiny_config, workdir)
    tiny_config.restart = True
    again = train_and_evaluate(tiny_config, workdir)
    assert [r["best_val_loss"] for r in again] == pytest.approx(
        [r["best_val_loss"] for r in first], rel=1e-6
    )


def test_files_of_others_are_never_deleted_or_replaced(tiny_config, tmp_path):
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "summary.csv").write_text("mine\n")
    (workdir / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match="holds metrics.jsonl, summary.csv but no config.json"):
        train_and_evaluate(tiny_config, str(workdir))
    assert (workdir / "summary.csv").read_text() == "mine\n"

    other = tmp_path / "other"
    tiny_config.make_report = True
    train_and_evaluate(tiny_config, str(other))
    (other / "plots" / "my_figure.png").write_bytes(b"not hpjax's")
    (other / "notes.txt").write_text("keep")
    tiny_config.learning_rates = (0.01,)
    tiny_config.num_steps = 60
    with pytest.raises(ConfigError, match="holds a different study"):
        train_and_evaluate(tiny_config, str(other))
    tiny_config.overwrite = True
    train_and_evaluate(tiny_config, str(other))
    assert (other / "plots" / "my_figure.png").read_bytes() == b"not hpjax's"
    assert (other / "notes.txt").read_text() == "keep"
    assert (other / "plots" / "learning_curves.png").exists()
    assert [r["trial"] for r in files.read_summary(other)] == [0]


def test_a_truncated_summary_is_an_error_not_zero_trials(tiny_config, tmp_path):
    workdir = tmp_path / "w"
    train_and_evaluate(tiny_config, str(workdir))
    text = (workdir / "summary.csv").read_text()
    (workdir / "summary.csv").write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=r"summary.csv:\d+: \d+ cells where the header has"):
        files.read_summary(workdir)
    out = subprocess.run(
        [sys.executable, "tools/report.py", str(workdir)], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 2 and "cells where the header has" in out.stderr
    (workdir / "summary.csv").write_text(text.splitlines()[0] + "\n")
    out = subprocess.run(
        [sys.executable, "tools/report.py", str(workdir)], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 2 and "holds no trial rows" in out.stderr
    with pytest.raises(ConfigError, match="trial='0' must be an integer"):
        checkpoints.restore_best(str(workdir), trial="0")


def test_a_state_checkpoint_keeps_the_host_state_of_the_moment_it_was_saved(tmp_path):
    """Orbax writes the JSON after save() returns: a scheduler changing its lists right after
    must not change what the checkpoint holds."""
    saver = checkpoints.StateCheckpoints(str(tmp_path), 0)
    rungs = {"recorded": [[0.5]], "passed": {"0": 1}}
    host = {"metrics_lines": 3, "scheduler": rungs}
    saver.save(1, {"w": np.zeros(2)}, host)
    rungs["recorded"][0].append(0.9)  # the next evaluation, at once
    host["metrics_lines"] = 99
    saver.close()
    _, restored = checkpoints.StateCheckpoints(str(tmp_path), 0).restore_latest({"w": np.zeros(2)})
    assert restored["scheduler"]["recorded"] == [[0.5]] and restored["metrics_lines"] == 3


def test_config_json_hides_a_storage_password_and_the_study_still_resumes(tmp_path):
    """config.json is read by people and tools: a storage URL's password is not in it, and a
    rerun given the URL with its password is the same study (resume), not a different one."""
    url = "postgresql+psycopg://hpjax:s3cret@db.example:5432/hpjax"
    config = {"learning_rates": [0.01], "optuna_storage": url}
    workdir = str(tmp_path / "w")
    assert files.prepare_workdir(workdir, config) is False
    text = open(os.path.join(workdir, "config.json")).read()
    assert "s3cret" not in text and "postgresql+psycopg://hpjax:***@db.example:5432/hpjax" in text
    assert files.prepare_workdir(workdir, config) is True
    assert "s3cret" not in open(os.path.join(workdir, "config.json")).read()
