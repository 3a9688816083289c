"""The one owner of a workdir's files: writers (every write atomic or appended and flushed) and
readers of ``config.json``, ``metrics.jsonl``, ``summary.csv`` and markdown reports.

A reader reads what a writer here wrote: non-finite floats are written as empty cells (CSV) or
``null`` (JSON) and read back as ``None``.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import math
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from absl import logging

from hpjax.config import NON_STUDY_KEYS, study_identity
from hpjax.errors import ConfigError

PathLike = str | os.PathLike

# Summary columns that are results or bookkeeping (and every best_val_* and test_* column);
# every other column is a hyperparameter.
RESULT_COLUMNS = (
    "trial",
    "population",
    "num_params",
    "status",
    "best_step",
    "best_epoch",
    "train_loss_at_best",
    "final_train_loss",
    "final_val_loss",
    "steps",
    "epochs",
    "input_dim",
    "num_classes",
    "memory_estimate_mb",
    "peak_memory_mb",
    "rung",  # ASHA: the rung a pruned trial stopped at
    "exploits",  # PBT: how often a member took another's state
)


def is_result_column(key: str) -> bool:
    """A summary column that holds a result or bookkeeping, not a hyperparameter."""
    return (
        key in RESULT_COLUMNS or key.startswith(("best_val_", "test_")) or key.endswith("_at_best")
    )


# What a study writes into its workdir (and ``overwrite`` removes).
OUTPUTS = (
    "config.json",
    "metrics.jsonl",
    "summary.csv",
    "populations.csv",
    "report.md",
    "plots",
    "checkpoints",
    "state",
    "tensorboard",
    "optuna.log",
    "optuna.log.partial",
    "optuna.db",
    "optuna.db.damaged",
    "trials.json",
    "lineage.csv",
)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlWriter:
    """Appends one JSON object per line, flushed at once so a crash loses nothing written."""

    def __init__(self, path: str):
        self.path = path

    def write(self, rows: Iterable[dict]) -> None:
        lines = [json.dumps({k: _finite_or_none(v) for k, v in row.items()}) for row in rows]
        if not lines:
            return
        with open(self.path, "a") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def truncate_to(self, num_lines: int) -> None:
        """Keeps the first ``num_lines`` lines (to drop rows a resumed study will write again)."""
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb") as f:
            lines = f.read().splitlines()[:num_lines]
        tmp = f"{self.path}.tmp"
        with open(tmp, "wb") as f:
            f.write(b"".join(line + b"\n" for line in lines))
        os.replace(tmp, self.path)

    def keep_intact_lines(self) -> None:
        """Cuts the file at its first line that is not a whole JSON object (a line cut by a
        crash or damaged on disk), so that every line kept is a record; the populations whose
        rows are cut off train again (their checkpoints count more lines than remain)."""
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb") as f:
            lines = f.read().split(b"\n")
        kept = 0
        for line in lines:
            try:
                if not isinstance(json.loads(line), dict):
                    break
            except ValueError:
                break
            kept += 1
        whole = len(lines) - (lines[-1] == b"")  # the text after the last newline, if any
        if kept == whole and lines[-1] != b"":  # whole, but its newline was lost
            self.truncate_to(kept)
        elif kept < whole:
            logging.warning(
                "%s: line %d is not a whole record; keeping the %d lines before it (the "
                "populations whose rows followed train again)",
                self.path,
                kept + 1,
                kept,
            )
            self.truncate_to(kept)

    def count_lines(self) -> int:
        if not os.path.exists(self.path):
            return 0
        with open(self.path) as f:
            return sum(1 for _ in f)


def write_text_atomic(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file, so a reader never sees half of it."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_csv(
    path: str,
    rows: Sequence[dict],
    columns: Sequence[str],
    *,
    exact: bool | Collection[str] = False,
) -> None:
    """Writes ``rows`` as CSV with ``columns`` in that order; None and non-finite become empty.

    Floats get 6 significant digits, or every digit in the ``exact`` columns (True: all), the
    values read back to compute with: PBT's hyperparameters, a trial's own values to train it
    again."""
    fmt = {k: repr if exact is True or k in (exact or ()) else _format for k in columns}
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    k: "" if _finite_or_none(row.get(k)) is None else fmt[k](row.get(k))
                    for k in columns
                }
            )
    os.replace(tmp, path)


def _format(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def write_json(path: str, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


_URL_PASSWORD = re.compile(r"(://[^/:@]*:)[^@/]*@")


def write_config(workdir: str, config_dict: dict) -> None:
    """``config.json``, with the password of a storage URL hidden (the file is shared and read
    by people; a worker is given its URL on the command line, never from this file)."""
    shown = dict(config_dict)
    if isinstance(shown.get("optuna_storage"), str):
        shown["optuna_storage"] = _URL_PASSWORD.sub(r"\1***@", shown["optuna_storage"])
    write_json(os.path.join(workdir, "config.json"), shown)


def write_markdown(path: PathLike, lines: Sequence[str]) -> str:
    """Writes a markdown document (one string per line) atomically; returns its path."""
    path = os.fspath(path)
    write_text_atomic(path, "\n".join(lines).rstrip("\n") + "\n")
    return path


_INT_RE = re.compile(r"[+-]?\d+")


# ----------------------------------------------------------------------------------- reading


def _clean(v: Any) -> Any:
    """Non-finite floats (NaN, inf) become None, as the engine writes them."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def read_metrics(workdir: PathLike) -> list[dict]:
    """The records of ``metrics.jsonl``, in file order; a truncated last line is skipped."""
    path = os.path.join(workdir, "metrics.jsonl")
    with open(path) as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # the engine may be writing the last line right now
                break
            raise ValueError(f"{path}:{i + 1}: not a JSON object: {line[:80]!r}") from None
        out.append({k: _clean(v) for k, v in record.items()})
    return out


def parse_cell(cell: str) -> Any:
    cell = cell.strip()
    if cell == "":
        return None
    if _INT_RE.fullmatch(cell):
        return int(cell)
    try:
        return _clean(float(cell))
    except ValueError:
        return cell


def read_summary(workdir: PathLike) -> list[dict]:
    """The rows of ``summary.csv``: ints and floats parsed, empty (or non-finite) cells None."""
    return read_csv(os.path.join(workdir, "summary.csv"))


def read_csv(path: PathLike, key: str = "trial") -> list[dict]:
    """The rows of one of hpjax's CSV files (with a ``key`` column), cells parsed."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        if key not in header:
            raise ValueError(f"{path}: no header with a {key!r} column (truncated or not hpjax's)")
        rows = []
        for number, cells in enumerate(reader, start=2):
            if len(cells) != len(header):
                raise ValueError(
                    f"{path}:{number}: {len(cells)} cells where the header has {len(header)} "
                    "(a truncated file?)"
                )
            rows.append({k: parse_cell(v) for k, v in zip(header, cells, strict=True)})
    return rows


def read_json_file(path: PathLike, what: str, way_out: str = "") -> Any:
    """A JSON file hpjax wrote; a corrupt or unreadable one is a :class:`ConfigError` naming
    the file, what it holds and ``way_out`` (what the user can do)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else f"not valid JSON ({error})"
        raise ConfigError(
            f"cannot read {os.fspath(path)!r} ({what}): {reason}"
            + (f"; {way_out}" if way_out else "")
        ) from None


CONFIG_WAY_OUT = (
    "it records which study the workdir holds: restore it, choose another --workdir, or pass "
    "--config.overwrite=True to train this study afresh there"
)


def read_config(workdir: PathLike) -> dict:
    """``config.json`` as a dict ({} when absent); a corrupt one is refused in one line."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return {}
    config = read_json_file(path, "the study's config", CONFIG_WAY_OUT)
    if not isinstance(config, dict):
        raise ConfigError(f"{path!r} holds no config (a JSON object); {CONFIG_WAY_OUT}")
    return config


def read_config_unless_overwritten(workdir: PathLike, overwrite: bool) -> dict:
    """``config.json``; a corrupt one reads as ``{}`` (another study) when ``overwrite`` is
    going to replace it anyway."""
    try:
        return read_config(workdir)
    except ConfigError:
        if overwrite:
            return {}
        raise


def curves_by_trial(metrics: Iterable[Mapping]) -> dict[int, list[dict]]:
    """Metrics records grouped by trial (ascending), each trial's records sorted by step."""
    curves: dict[int, list[dict]] = {}
    for record in metrics:
        curves.setdefault(int(record["trial"]), []).append(dict(record))
    return {t: sorted(curves[t], key=lambda r: r.get("step") or 0) for t in sorted(curves)}


def read_workdir(workdir: PathLike) -> tuple[dict, list[dict], list[dict]]:
    """``config.json``, ``metrics.jsonl`` and ``summary.csv`` of a workdir; empty when absent."""
    workdir = os.fspath(workdir)
    has = lambda name: os.path.exists(os.path.join(workdir, name))  # noqa: E731
    metrics = read_metrics(workdir) if has("metrics.jsonl") else []
    summary = read_summary(workdir) if has("summary.csv") else []
    return read_config(workdir), metrics, summary


PLOTS_WRITTEN = ".hpjax_written"  # in a plots directory: the files hpjax wrote there
_OWN_DIR_ENTRIES = {  # directories hpjax owns entries of, and the pattern of those entries
    "checkpoints": re.compile(r"trial_\d{4}"),
    "state": re.compile(r"population_\d+"),
    "tensorboard": re.compile(r"trial_\d{4}.*|live"),
}


def record_written(path: PathLike) -> None:
    """Notes that hpjax wrote ``path`` (a plot), so that replacing the study removes it and
    nothing else of its directory."""
    path = os.fspath(path)
    listing = os.path.join(os.path.dirname(os.path.abspath(path)), PLOTS_WRITTEN)
    names = set(_read_lines(listing))
    if os.path.basename(path) not in names:
        with open(listing, "a") as f:
            f.write(os.path.basename(path) + "\n")


def _read_lines(path: str) -> list[str]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def _remove_outputs(workdir: str) -> None:
    """Removes what hpjax wrote into ``workdir``; files of anyone else stay where they are."""
    for name in OUTPUTS:
        target = os.path.join(workdir, name)
        if name in _OWN_DIR_ENTRIES and os.path.isdir(target):
            for entry in os.listdir(target):
                if _OWN_DIR_ENTRIES[name].fullmatch(entry):
                    shutil.rmtree(os.path.join(target, entry))
        elif name == "plots" and os.path.isdir(target):
            listing = os.path.join(target, PLOTS_WRITTEN)
            for entry in _read_lines(listing):
                if os.path.isfile(os.path.join(target, entry)):
                    os.remove(os.path.join(target, entry))
            if os.path.exists(listing):
                os.remove(listing)
        elif os.path.isfile(target):
            os.remove(target)
        if os.path.isdir(target) and not os.listdir(target):
            os.rmdir(target)


def prepare_workdir(workdir: str, config_dict: dict, extendable: Sequence[str] = ()) -> bool:
    """Makes the workdir ready; returns True when it holds this same study already (resume).

    A workdir that holds a different study is refused unless ``config.overwrite`` is set;
    ``config.restart`` discards this same study's saved state and results. Either removes only
    what hpjax wrote. A workdir with study outputs but no ``config.json`` was not written by
    hpjax: it is refused, naming the files. Keys in ``extendable`` may differ (an extended
    study, :mod:`hpjax.study.waves`): the new config is recorded and the outputs kept.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        foreign = sorted(
            name for name in OUTPUTS if name != "config.json" and _holds(workdir, name)
        )
        if foreign and not config_dict.get("overwrite", False):
            raise ConfigError(
                f"workdir {workdir!r} holds {', '.join(foreign)} but no config.json (deleted, "
                "or written by another tool), so which study it holds is unknown; choose "
                "another --workdir, or pass --config.overwrite=True to replace hpjax's files "
                "there"
            )
        _remove_outputs(workdir)
    else:
        old = read_config_unless_overwritten(workdir, config_dict.get("overwrite", False))
        ignore = lambda d: {k: v for k, v in study_identity(d).items() if k not in extendable}  # noqa: E731
        same = ignore(old) == ignore(config_dict)
        if same and not config_dict.get("restart", False):
            if old != config_dict:
                write_config(workdir, config_dict)
            return True
        if not same and not config_dict.get("overwrite", False):
            differing = sorted(
                k
                for k in set(old) | set(config_dict)
                if k not in NON_STUDY_KEYS and old.get(k) != config_dict.get(k)
            )
            raise ConfigError(
                f"workdir {workdir!r} holds a different study (it differs in "
                f"{', '.join(differing)}); choose another --workdir or pass "
                "--config.overwrite=True to replace it"
            )
        _remove_outputs(workdir)
    os.makedirs(workdir, exist_ok=True)
    write_config(workdir, config_dict)
    return False


def _holds(workdir: str, name: str) -> bool:
    target = os.path.join(workdir, name)
    return os.path.isfile(target) or (os.path.isdir(target) and bool(os.listdir(target)))


LOCK_FILE = ".hpjax.lock"
_HELD: dict[str, list] = {}  # lock path -> [open file, depth]: this process's locks


@contextlib.contextmanager
def workdir_lock(workdir: str):
    """Holds an OS lock (``flock``) on ``workdir`` for the study's life.

    A second run into a locked workdir stops at once with a :class:`ConfigError` naming the
    process that holds it. The kernel releases the lock when its process ends, however it ends,
    so a lock left by a killed run never blocks a rerun. Re-entrant within one process.
    """
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"workdir {workdir!r} is a file; choose a directory (--workdir)")
    try:
        os.makedirs(workdir, exist_ok=True)
        path = os.path.realpath(os.path.join(workdir, LOCK_FILE))
        handle = None if path in _HELD else open(path, "a+")  # noqa: SIM115 (held while locked)
    except OSError as error:  # read-only, no permission, a file on the path
        raise ConfigError(
            f"workdir {workdir!r} cannot be written: {error.strerror or error}; choose a "
            "writable directory (--workdir)"
        ) from None
    if handle is None:
        _HELD[path][1] += 1
    else:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ConfigError(
                f"workdir {workdir!r} is in use by {holder}; wait for it to finish or choose "
                "another --workdir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(
            f"pid {os.getpid()} on {socket.gethostname()} since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')} ({' '.join(sys.argv)[:200]})"
        )
        handle.flush()
        _HELD[path] = [handle, 1]
    try:
        yield
    finally:
        _HELD[path][1] -= 1
        if _HELD[path][1] == 0:
            handle = _HELD.pop(path)[0]
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
