"""The one owner of a workdir's files: writers (every write atomic or appended and flushed) and
readers of ``config.json``, ``metrics.jsonl``, ``summary.csv`` and markdown reports.

A reader reads what a writer here wrote: non-finite floats are written as empty cells (CSV) or
``null`` (JSON) and read back as ``None``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hpjax.config import NON_STUDY_KEYS, study_identity
from hpjax.errors import ConfigError

PathLike = str | os.PathLike

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
        with open(self.path) as f:
            lines = f.readlines()[:num_lines]
        write_text_atomic(self.path, "".join(lines))

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


def write_csv(path: str, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """Writes ``rows`` as CSV with ``columns`` in that order; None and non-finite become empty."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    k: "" if _finite_or_none(row.get(k)) is None else _format(row.get(k))
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
    with open(os.path.join(workdir, "summary.csv"), newline="") as f:
        return [{k: parse_cell(v or "") for k, v in row.items()} for row in csv.DictReader(f)]


def read_config(workdir: PathLike) -> dict:
    """``config.json`` as a dict ({} when absent)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


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


def prepare_workdir(workdir: str, config_dict: dict) -> bool:
    """Makes the workdir ready; returns True when it holds this same study already (resume).

    A workdir that holds a different study is refused unless ``config.overwrite`` is set, in
    which case that study's outputs are removed first.
    """
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if study_identity(old) == study_identity(config_dict):
            return True
        if not config_dict.get("overwrite", False):
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
        for name in OUTPUTS:
            target = os.path.join(workdir, name)
            if os.path.isdir(target):
                shutil.rmtree(target)
            elif os.path.exists(target):
                os.remove(target)
    os.makedirs(workdir, exist_ok=True)
    write_json(path, config_dict)
    return False
