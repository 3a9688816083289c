"""The binaries' contract: every bad flag, config, workdir or data is one ``error:`` line and
exit status 2 before anything compiles or is written; Ctrl-C says how to resume."""

import os
import signal
import subprocess
import sys
import time

import pytest

from hpjax.config import default_config
from hpjax.errors import ConfigError
from hpjax.results import files
from hpjax.study import spec
from tests.conftest import ROOT

BINARY = os.path.join(ROOT, "experiments", "lr_sweep.py")
CONFIGS = "--config=" + os.path.join(ROOT, "experiments", "configs", "lr_sweep.py")
QR = f"{CONFIGS}:quasi_random"
TINY = [
    "--config.dataset=digits",
    "--config.model.hidden_units=8",
    "--config.model.num_layers=1",
    "--config.learning_rates=(0.01,)",
    "--config.num_steps=40",
    "--config.eval_every=10",
    "--config.make_report=False",
]


def run_binary(*args, timeout=300, env=None):
    return subprocess.run(
        [sys.executable, BINARY, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--config.nosuchkey=1"], "--config.nosuchkey: config has no key 'nosuchkey'"),
        (["--config.learning_rate=0.1"], "no key 'learning_rate'; did you mean 'learning_rates'?"),
        (["--config.model.nosuchkey=3"], "--config.model.nosuchkey: config has no key"),
        (["--config.num_steps=abc"], "flag --config.num_steps=abc: invalid literal"),
        (["--config=/no/such/config.py"], "--config=/no/such/config.py: no such file"),
        ([f"{CONFIGS}:nosuch"], "cannot load it (ValueError: unknown variants ['nosuch']"),
        (["extra"], "unexpected argument(s) 'extra': every setting is a flag"),
        (["--config.train_eval_examples=0"], "config.train_eval_examples=0 must be an integer"),
        (["--config.memory_fraction=2.0"], "config.memory_fraction=2.0 must be in (0, 1]"),
        (["--config.report_x=bogus"], "config.report_x='bogus' is not a hyperparameter"),
        (["--config.precision=fp16"], "config.precision='fp16' is unknown; allowed: float32, bf16"),
        (["--config.cpu_devices=-1"], "config.cpu_devices=-1 must be an integer >= 0"),
        ([QR, "--config.space.learning_rate=(0.1,0.001,'log')"], "learning_rate=(0.1, 0.001"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2_leaving_nothing(tmp_path, args, expected):
    workdir = tmp_path / "w"
    config_file = [a for a in args if a.startswith("--config=")]  # first: ml_collections' rule
    rest = [a for a in args if a not in config_file]
    result = run_binary(f"--workdir={workdir}", *config_file, *TINY, *rest)
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = error_lines(result)
    assert expected in line
    assert "Traceback" not in result.stderr
    assert not workdir.exists()


@pytest.mark.parametrize(
    "source, expected",
    [
        ("def get_config(:\n", "cannot load it (SyntaxError: invalid syntax (line 1))"),
        ("def get_config():\n    raise ValueError('boom')\n", "cannot load it (ValueError: boom)"),
        ("def get_config():\n    return None\n", "get_config() returned None"),
        ("import no_such_module\n", "(ModuleNotFoundError: No module named 'no_such_module')"),
    ],
)
def test_a_config_file_that_fails_to_load_is_one_line(tmp_path, source, expected):
    path = tmp_path / "config.py"
    path.write_text(source)
    result = run_binary(f"--workdir={tmp_path / 'w'}", f"--config={path}")
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = error_lines(result)
    assert line.startswith(f"error: --config={path}: ") and expected in line
    assert "Traceback" not in result.stderr


def test_a_repeated_override_replaces_the_earlier_one(tmp_path):
    from hpjax.cli import last_override_wins

    argv = ["x", "--config.seeds=(0,)", "--config.batch_size=8", "--config.seeds=(1,)"]
    assert last_override_wins(argv) == ["x", "--config.batch_size=8", "--config.seeds=(1,)"]
    result = run_binary(
        f"--workdir={tmp_path}", *TINY, "--config.seeds=(0,)", "--config.seeds=(1,)"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert files.read_config(tmp_path)["seeds"] == [1]


def test_help_exits_0_and_names_every_key_with_its_default(tmp_path):
    from hpjax.config import default_config

    result = run_binary("--help", f"{CONFIGS}:asha")
    assert result.returncode == 0, result.stderr[-2000:]
    listed = result.stdout
    flat = default_config().to_dict()
    keys = [f"{s}.{k}" for s, v in flat.items() if isinstance(v, dict) for k in v]
    keys += [k for k, v in flat.items() if not isinstance(v, dict)]
    assert not [k for k in keys if f"--config.{k}=" not in listed]
    assert "--config.scheduler='asha'" in listed  # this config's values, its variant applied
    assert "--config.patience=10  # evaluations without improvement" in listed
    assert "Adaptive variants" in listed  # the config file's own doc: its variants
    assert not (tmp_path / "w").exists()


def test_missing_workdir_and_a_workdir_that_is_a_file(tmp_path):
    result = run_binary(*TINY)
    assert result.returncode == 2 and "--workdir must have a value" in error_lines(result)[0]
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    result = run_binary(f"--workdir={a_file}", *TINY)
    assert result.returncode == 2 and "is a file, not a directory" in error_lines(result)[0]
    result = run_binary(f"--workdir={a_file}/sub", *TINY)
    assert result.returncode == 2 and "cannot be created under" in error_lines(result)[0]
    assert a_file.read_text() == "mine"


def test_a_study_whose_every_trial_diverges_ends_in_one_line_with_its_files(tmp_path):
    workdir = tmp_path / "diverged"
    tiny = [a for a in TINY if not a.startswith("--config.learning_rates")]
    result = run_binary(f"--workdir={workdir}", *tiny, "--config.learning_rates=(1000.0,)")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert error_lines(result) == [
        "error: no trial has a finite best_val_loss (every trial diverged or none ran); lower "
        f"the learning rates (summary: {workdir}/summary.csv, report: {workdir}/report.md)"
    ]
    assert (workdir / "summary.csv").exists()


def test_ctrl_c_ends_with_how_to_resume_and_the_rerun_finishes(tmp_path):
    workdir = tmp_path / "w"
    args = [
        f"--workdir={workdir}",
        *TINY,
        "--config.num_steps=1000",
        "--config.patience=0",
        "--config.checkpoint_every=5",
    ]
    process = subprocess.Popen(
        [sys.executable, BINARY, *args],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        # A test runner started in the background (`cmd &` in a script) ignores SIGINT, and so
        # would the binary, which Python then leaves without its KeyboardInterrupt handler.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    state = workdir / "state" / "population_0"
    while not (state.exists() and any(p.name.isdigit() for p in state.iterdir())):
        assert time.monotonic() < deadline, "no state checkpoint in 120 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert "error: interrupted; run the same command again to resume" in err
    assert "Traceback" not in err
    result = run_binary(*args[:-3], "--config.num_steps=200", "--config.patience=0")
    assert result.returncode == 2 and "holds a different study" in error_lines(result)[0]
    result = run_binary(*args)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize(
    "key, value",
    [
        ("max_population", -1),
        ("memory_fraction", 0.0),
        ("memory_fraction", -1.0),
        ("checkpoint_every", -1),
        ("min_steps", -1),
        ("compact_fraction", 2.0),
        ("log_every_s", -1.0),
        ("divergence_factor", 0.0),
        ("warmup_steps", 3000),
    ],
)
def test_run_keys_out_of_range_name_the_key_and_the_range(key, value):
    config = default_config()
    config[key] = value
    pattern = rf"config\.{key}={value!r} (must be in|must be an integer >=|is not below)"
    with pytest.raises(ConfigError, match=pattern):
        spec.parse(config, num_train=3600)


def test_a_full_disk_is_one_line_and_the_study_resumes(tiny_config, tmp_path, monkeypatch, capsys):
    """ENOSPC while metrics are appended: exit 2 with one line; the same command later
    finishes the study as if nothing had happened."""
    import errno

    from hpjax import cli
    from hpjax.study.run import train_and_evaluate

    reference = train_and_evaluate(tiny_config.copy_and_resolve_references(), str(tmp_path / "r"))
    write = files.JsonlWriter.write
    calls = {"n": 0}

    def fills_up(self, rows):
        calls["n"] += 1
        if calls["n"] == 6:
            raise OSError(errno.ENOSPC, "No space left on device", self.path)
        return write(self, rows)

    workdir = str(tmp_path / "w")
    with monkeypatch.context() as patch:
        patch.setattr(files.JsonlWriter, "write", fills_up)
        with pytest.raises(SystemExit) as stopped:
            cli.run(train_and_evaluate, tiny_config.copy_and_resolve_references(), workdir)
    assert stopped.value.code == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert "the disk is full" in line and "run the same command again to resume" in line
    rows = cli.run(train_and_evaluate, tiny_config.copy_and_resolve_references(), workdir)
    measured = ("peak_memory_mb", "memory_estimate_mb")
    strip = lambda rs: [{k: v for k, v in r.items() if k not in measured} for r in rs]  # noqa: E731
    assert strip(rows) == strip(reference)


TENSORSTORE_FULL = (
    'RESOURCE_EXHAUSTED: Error writing "params.a/0.0" in OCDBT database at local file '
    '"/w/state/population_0/400.orbax-checkpoint-tmp/params/ocdbt.process_0/": Failed writing: '
    '"/w/state/population_0/400.orbax-checkpoint-tmp/params/ocdbt.process_0/d/2a7c": Failed to '
    "write 69825 bytes to file 14: No space left on device [os_error_code='28']"
)


def test_tensorstore_s_text_only_full_disk_is_the_os_error_it_stands_for():
    """Orbax's array writer (TensorStore) raises a ValueError whose text carries the OS error
    code: it is the ENOSPC of the file it names, also wrapped by other errors."""
    import errno

    from hpjax.errors import disk_error_message, disk_os_error

    found = disk_os_error(RuntimeError("save failed").with_traceback(None))
    assert found is None
    try:
        try:
            raise ValueError(TENSORSTORE_FULL)
        except ValueError as inner:
            raise RuntimeError("Save Finalize thread failed") from inner
    except RuntimeError as outer:
        found = disk_os_error(outer)
        message = disk_error_message(outer, "/w")
    assert found.errno == errno.ENOSPC
    assert (
        found.filename
        == "/w/state/population_0/400.orbax-checkpoint-tmp/params/ocdbt.process_0/d/2a7c"
    )
    assert message.startswith("cannot write to '/w': the disk is full (/w/state/")
    other = ValueError("RESOURCE_EXHAUSTED: out of memory [os_error_code='12']")
    assert disk_os_error(other) is None


def test_orbax_s_thread_logs_of_a_full_disk_are_dropped_and_its_other_errors_kept():
    import logging

    from hpjax.results.checkpoints import _quiet_orbax

    def record(level, message, error=None, path="/site-packages/orbax/checkpoint/future.py"):
        exc_info = (type(error), error, None) if error else None
        return logging.LogRecord("absl", level, path, 1, message, (), exc_info)

    assert not _quiet_orbax(record(logging.ERROR, "thread raised: " + TENSORSTORE_FULL))
    assert not _quiet_orbax(
        record(logging.ERROR, "4 Handler Commit operations failed", ValueError(TENSORSTORE_FULL))
    )
    assert not _quiet_orbax(record(logging.INFO, "saved"))
    assert _quiet_orbax(record(logging.ERROR, "a real failure", ValueError("bad shape")))
    assert _quiet_orbax(record(logging.ERROR, "ours: " + TENSORSTORE_FULL, path="/hpjax/x.py"))


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (a real full disk). Mounting needs root, which CI and these machines
    have: elsewhere the test fails saying so rather than passing untested."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True
    )
    assert mounted.returncode == 0, (
        f"this test mounts a 2 MiB tmpfs (needs root): {mounted.stderr.decode().strip()}"
    )
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_disk_full_in_a_state_checkpoint_s_arrays_is_one_line_and_the_rerun_resumes(
    small_disk, tmp_path
):
    """The default MLP's state checkpoint (about 4 MB) on a 2 MiB disk: Orbax's threads fail
    writing its arrays; the binary says so in one line (no traceback, no Orbax error log), and
    after making room the same command ends as an uninterrupted study."""
    study = [
        "--config.num_steps=200",
        "--config.eval_every=20",
        "--config.checkpoint_every=5",
        "--config.learning_rates=(0.001,0.003)",
        "--config.weight_decays=(0.0,)",
        "--config.make_report=False",
    ]
    workdir = str(small_disk / "run")
    failed = run_binary("--workdir", workdir, *study)
    assert failed.returncode == 2, failed.stderr[-3000:]
    (line,) = [x for x in failed.stderr.splitlines() if x.startswith("error:")]
    assert "the disk is full" in line and "state/population_0" in line
    assert "Traceback" not in failed.stderr
    assert not [x for x in failed.stderr.splitlines() if x.startswith("E")]
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    resumed = run_binary("--workdir", workdir, *study)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference = str(tmp_path / "reference")
    assert run_binary("--workdir", reference, *study).returncode == 0
    measured = ("peak_memory_mb", "memory_estimate_mb", "wall_s")
    rows = [
        [{k: v for k, v in row.items() if k not in measured} for row in files.read_summary(d)]
        for d in (workdir, reference)
    ]
    assert rows[0] == rows[1]


def test_a_ctrl_c_logged_by_a_library_is_dropped_and_other_errors_kept():
    """Orbax logs a Ctrl-C that lands while it finishes a checkpoint, with its traceback (the
    test above meets it now and then); the binary's one line is what the user reads."""
    import logging

    from hpjax.cli import DropInterrupts

    def record(error):
        return logging.LogRecord(
            "absl", logging.ERROR, "f", 1, "failed", (), (type(error), error, None)
        )

    assert not DropInterrupts().filter(record(KeyboardInterrupt()))
    assert DropInterrupts().filter(record(ValueError("real")))
    assert DropInterrupts().filter(logging.LogRecord("absl", logging.INFO, "f", 1, "x", (), None))
