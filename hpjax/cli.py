"""What every experiment binary does: parse its flags, join the other hosts, run the study,
and end in one line: its result, or what was wrong and how to go on (exit status 2 for a bad
flag, config, workdir or data; 130 after Ctrl-C, with how to resume)."""

import logging as std_logging
import os
import re
import runpy
import sys
from collections.abc import Callable
from typing import Any

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from hpjax import runtime
from hpjax.config import describe_keys
from hpjax.errors import ConfigError, disk_error_message
from hpjax.results import checkpoints
from hpjax.results.study import best_row
from hpjax.study.run import train_and_evaluate
from hpjax.study.sections import ProcessSpec
from hpjax.study.spec import parse_process


def initialize_distributed(process: ProcessSpec) -> None:
    """Joins a multi-host run (one process per host) when ``distributed`` is set.

    With no coordinator address, JAX finds the cluster itself (Cloud TPU, SLURM, ...).
    """
    if not process.distributed:
        return
    jax.distributed.initialize(
        coordinator_address=process.coordinator_address or None,
        num_processes=process.num_processes or None,
        process_id=None if process.process_id < 0 else process.process_id,
    )
    logging.info(
        "process %d of %d, %d local of %d devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


_DEFAULT_CONFIG_FILE = ""  # the program's own config file, set by define_flags
_PROGRAM_DOC = ""  # what --help prints first


def define_flags(config_path: str, help_text: str = "", doc: str = "") -> tuple[Any, Any]:
    """``--config`` (default ``config_path``) and ``--workdir``, the two flags every experiment
    program takes; ``doc`` is what ``--help`` says of the program."""
    global _DEFAULT_CONFIG_FILE, _PROGRAM_DOC
    _DEFAULT_CONFIG_FILE, _PROGRAM_DOC = config_path, doc
    try:  # ml_collections applies the --config overrides of sys.argv right here
        config = config_flags.DEFINE_config_file(
            "config",
            _DEFAULT_CONFIG_FILE,
            help_text or "Study config file; override any key with --config.KEY=VALUE.",
            lock_config=True,
        )
    except (AttributeError, KeyError, OSError) as error:
        _config_flag_error(error, sys.argv)
    except Exception as error:  # noqa: BLE001 (a config file can raise anything on import)
        fail(_load_failure(error, sys.argv))
    workdir = flags.DEFINE_string(
        "workdir", None, "Directory for the study's outputs.", required=True
    )
    return config, workdir


def fail(message: str, status: int = 2) -> None:
    """Ends the binary with ``error: message`` on one line."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(status)


def _unknown_key_message(error: BaseException, argv: list[str]) -> str:
    """Which ``--config.KEY`` override names a key the config does not have."""
    while error.args and isinstance(error.args[0], BaseException):  # ml_collections wraps it
        error = error.args[0]
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    missing = re.findall(r"'([^']+)'", text)
    suggestion = re.search(r'Did you mean "([^"]+)"', text)
    hint = f"did you mean {suggestion.group(1)!r}? " if suggestion else ""
    for arg in argv:
        name = arg.split("=", 1)[0]
        if name.startswith("--config.") and missing and name.split(".")[-1] == missing[-1]:
            return (
                f"{name}: config has no key {missing[-1]!r}; {hint}--help lists every key "
                "with its default and meaning"
            )
    return f"bad --config override: {' '.join(text.split())}"


def _config_flag_error(error: BaseException, argv: list[str]) -> None:
    if isinstance(error, OSError):  # a --config file that cannot be loaded
        config = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "?")
        fail(f"--config={config}: cannot load it ({str(error).splitlines()[0]})")
    fail(_unknown_key_message(error, argv))  # an override of a key that does not exist


def last_override_wins(argv: list[str]) -> list[str]:
    """``argv`` with only the last of repeated ``--config.KEY=VALUE`` overrides (ml_collections
    would append a repeated tuple override to the first instead of replacing it)."""
    last = {a.split("=", 1)[0]: i for i, a in enumerate(argv) if a.startswith("--config.")}
    return [
        a
        for i, a in enumerate(argv)
        if not a.startswith("--config.") or last[a.split("=", 1)[0]] == i
    ]


def _config_file(argv: list[str]) -> str:
    return next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "(the default)")


def _load_failure(error: BaseException, argv: list[str]) -> str:
    """One line for a --config file that cannot be loaded: the file and its error's last line
    (ml_collections wraps the error's whole traceback into its message)."""
    text = str(error)
    if "Error whilst parsing config file" in text:
        text = [line for line in text.strip().splitlines() if line.strip()][-1].strip()
    elif isinstance(error, SyntaxError):
        text = f"SyntaxError: {error.msg} (line {error.lineno})"
    else:
        text = f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
    return f"--config={_config_file(argv)}: cannot load it ({text})"


def print_help(argv: list[str]) -> None:
    """``--help``: the binary's docstring, its two flags, its config file's variants and every
    config key with this config's value and its meaning; exit status 0."""
    given = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    path = given[-1] if given else _DEFAULT_CONFIG_FILE
    file, _, variant = path.partition(":")
    try:
        module = runpy.run_path(file)
        config = module["get_config"](variant) if variant else module["get_config"]()
    except Exception as error:  # noqa: BLE001 (a config file can raise anything)
        fail(_load_failure(error, argv))
    main_doc = _PROGRAM_DOC.strip()
    print(main_doc + "\n" if main_doc else "", end="")
    print(
        "\nFlags:\n  --workdir=DIR  where the study writes (required)\n"
        "  --config=FILE[:VARIANTS]  the study's config (default "
        f"{_DEFAULT_CONFIG_FILE})"
        "\n  --config.KEY=VALUE  override one key (a key given twice takes its last value)"
    )
    source = sys.modules.get(getattr(module["get_config"], "__module__", ""))  # re-exported?
    doc = getattr(source, "__doc__", None) or module.get("__doc__")
    if doc:
        print(f"\nThe config file {getattr(source, '__file__', file)}:\n\n" + doc.strip())
    print("\nEvery config key, with this config's value (meanings from hpjax/config.py):")
    print("\n".join(describe_keys(config)))
    sys.exit(0)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with every mistake as one line and exit status 2: an unknown flag
    or key, a --config file that fails to load or returns no config, an extra argument."""
    argv = last_override_wins(argv)
    if any(a in ("--help", "-h", "--helpshort", "-?") for a in argv[1:]):
        print_help(argv)
    given = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    if given and not os.path.isfile(given[-1].split(":", 1)[0]):
        fail(f"--config={given[-1]}: no such file")
    try:
        rest = flags.FLAGS(argv)
        config = flags.FLAGS["config"].value if "config" in flags.FLAGS else {}  # loads it
    except flags.Error as error:
        if "Error whilst parsing config file" in str(error):
            fail(_load_failure(error, argv))
        if "Unexpected None value for flag config" in str(error):
            fail(f"--config={_config_file(argv)}: get_config() returned None, not a ConfigDict")
        fail(str(error).replace("flag --workdir=None: ", ""))
    except (AttributeError, KeyError) as error:
        _config_flag_error(error, argv)
    except Exception as error:  # noqa: BLE001 (a config file can raise anything on import)
        fail(_load_failure(error, argv))
    if config is None:
        fail(f"--config={_config_file(argv)}: get_config() returned None, not a ConfigDict")
    if len(rest) > 1:
        fail(
            f"unexpected argument(s) {' '.join(rest[1:])!r}: every setting is a flag "
            "(--workdir=DIR, --config=FILE, --config.KEY=VALUE)"
        )
    return rest


def main(entry: Callable[[list[str]], None]) -> None:
    """``app.run(entry)`` with :func:`parse_flags`; every binary's ``__main__``."""
    app.run(entry, flags_parser=parse_flags)


def check_workdir(workdir: str) -> None:
    """A workdir that is a file, or that cannot be created, is a one-line error (before anything
    is created)."""
    path = os.path.abspath(workdir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"--workdir={workdir!r} is a file, not a directory")
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent.startswith("/proc") or not os.path.isdir(parent):
        raise ConfigError(f"--workdir={workdir!r} cannot be created under {parent!r}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--workdir={workdir!r} cannot be created: {parent!r} is not writable")


def _quiet_unraisable(unraisable) -> None:
    """Drops the 'Event loop is closed' errors Orbax's garbage leaves at teardown; others show."""
    if "Event loop is closed" in str(unraisable.exc_value):
        return
    sys.__unraisablehook__(unraisable)


class DropInterrupts(std_logging.Filter):
    """Drops log records of a Ctrl-C: Orbax logs one with its traceback when the interrupt lands
    while it waits for a checkpoint to finish; the binary says it in one line instead."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt))


def run(study: Callable[[Any, str], Any], config, workdir: str) -> Any:
    """Joins the other hosts and runs ``study(config, workdir)``; a bad config or bad data
    exits with status 2 and one line, Ctrl-C with status 130 and how to resume."""
    std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL)  # Orbax's teardown noise
    sys.unraisablehook = _quiet_unraisable
    logging.get_absl_logger().addFilter(DropInterrupts())
    try:
        config.keys()
    except OSError as error:  # ml_collections defers a --config file that failed to load
        _config_flag_error(error, sys.argv)
    try:
        check_workdir(workdir)
        process = parse_process(config)
        runtime.configure(process)
        initialize_distributed(process)
        logging.info("JAX devices: %s", jax.devices())
        return study(config, workdir)
    except ConfigError as error:
        fail(str(error))
    except Exception as error:  # noqa: BLE001 (a full disk surfaces through many layers)
        message = disk_error_message(error, workdir)
        if message is None:
            raise
        fail(message)
    except KeyboardInterrupt:
        # Leave at once: a normal interpreter exit with XLA and Orbax threads mid-flight can
        # crash; what is on disk is what a SIGKILL leaves, which resumes exactly.
        saved = checkpoints.has_state(workdir)
        print(
            f"error: interrupted; run the same command again to resume {workdir!r} from its "
            "last state checkpoint"
            if saved
            else f"error: interrupted before {workdir!r} had a state checkpoint: no training "
            "was saved; the same command starts the study again",
            file=sys.stderr,
            flush=True,
        )
        os._exit(130)


def run_study(config, workdir: str, study: Callable = train_and_evaluate) -> list[dict]:
    """Runs ``study`` (``train_and_evaluate``, or one around it) and prints the best trial in
    one line (process 0)."""
    rows = run(study, config, workdir)
    if jax.process_index() != 0:
        return rows
    try:
        best = best_row(rows)
    except ConfigError as error:  # every trial diverged: the files are written, say so
        fail(f"{error} (summary: {workdir}/summary.csv, report: {workdir}/report.md)")
    print(
        f"best trial {best['trial']}: "
        f"learning_rate={best.get('learning_rate_at_best', best['learning_rate']):.3g} "
        f"batch_size={best['batch_size']} best_val_loss={best['best_val_loss']:.4f} "
        f"test_accuracy={best['test_accuracy']:.4f} (summary: {workdir}/summary.csv, "
        f"report: {workdir}/report.md)"
    )
    return rows
