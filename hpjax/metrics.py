"""What a study writes as it goes: JSON lines, CSV tables, and progress on the terminal."""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

from absl import logging


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


class Progress:
    """Logs steps per second and time left, at most every ``interval_s`` seconds."""

    def __init__(self, label: str, total_ticks: int, num_trials: int, interval_s: float = 5.0):
        self.label = label
        self.total_ticks = max(total_ticks, 1)
        self.num_trials = num_trials
        self.interval_s = interval_s
        self.start = time.perf_counter()
        self.start_tick: int | None = None
        self.last_log = -math.inf

    def update(self, tick: int, message: str = "", force: bool = False) -> None:
        now = time.perf_counter()
        if self.start_tick is None:
            self.start_tick, self.start = tick, now
            return
        if not force and now - self.last_log < self.interval_s:
            return
        self.last_log = now
        done = tick - self.start_tick
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        left = (self.total_ticks - tick) / rate if rate > 0 else math.inf
        logging.info(
            "%s: tick %d/%d (%.0f%%), %.0f ticks/s x %d trials, %.0f s elapsed, ~%.0f s left%s",
            self.label,
            tick,
            self.total_ticks,
            100 * tick / self.total_ticks,
            rate,
            self.num_trials,
            elapsed,
            left,
            f"; {message}" if message else "",
        )
