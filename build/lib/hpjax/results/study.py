"""A finished study as the Python API returns it: its rows, its best trial, and its checkpoints.

:class:`Study` holds the summary rows of a workdir (one per trial) and knows which value early
stopping watched, so :attr:`Study.best` is the trial with the lowest monitored value among those
that did not diverge, and :meth:`Study.restore` turns any trial back into a ready Flax module
(its parameters at its early-stop point).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flax import nnx

from hpjax.errors import ConfigError
from hpjax.results import checkpoints


def monitored_column(monitor: str = "loss") -> str:
    """The summary column of the value early stopping watched."""
    return f"best_val_{monitor}"


def best_row(rows: Sequence[Mapping[str, Any]], monitor: str = "loss") -> Mapping[str, Any]:
    """The row with the lowest monitored value among the trials that did not diverge."""
    column = monitored_column(monitor)

    def usable(row: Mapping[str, Any]) -> bool:
        value = row.get(column)
        return row.get("status") != "diverged" and value is not None and math.isfinite(value)

    ok = [r for r in rows if usable(r)]
    if not ok:
        raise ConfigError(
            f"no trial has a finite {column} (every trial diverged or none ran); lower the "
            "learning rates"
        )
    return min(ok, key=lambda r: (r[column], r["trial"]))


@dataclasses.dataclass(frozen=True)
class TrialResult:
    """One trial of a study: its summary row, and its model at its early-stop point."""

    row: Mapping[str, Any]
    workdir: str
    model: Callable[..., nnx.Module] | None = None

    @property
    def trial(self) -> int:
        return int(self.row["trial"])

    def __getitem__(self, key: str) -> Any:
        return self.row[key]

    def restore(self) -> checkpoints.RestoredTrial:
        """This trial's module at its early-stop point (see :func:`hpjax.restore_best`)."""
        return checkpoints.restore_best(self.workdir, self.trial, model=self.model)


@dataclasses.dataclass(frozen=True)
class Study:
    """A finished study: ``rows`` (one summary row per trial, by trial number), ``best``, and
    ``restore(trial)``; ``workdir`` holds every file it wrote."""

    workdir: str
    rows: tuple[Mapping[str, Any], ...]
    monitor: str = "loss"
    model: Callable[..., nnx.Module] | None = None  # your own model's factory, to restore it

    @property
    def best(self) -> TrialResult:
        """The trial with the lowest monitored value (diverged trials excluded)."""
        return TrialResult(best_row(self.rows, self.monitor), self.workdir, self.model)

    def trial(self, trial: int) -> TrialResult:
        """Trial number ``trial`` (its row in ``summary.csv``)."""
        for row in self.rows:
            if row["trial"] == trial:
                return TrialResult(row, self.workdir, self.model)
        raise ConfigError(f"trial={trial!r} is not in the study (trials 0..{len(self.rows) - 1})")

    def restore(self, trial: int) -> checkpoints.RestoredTrial:
        """Trial ``trial``'s module at its early-stop point."""
        return self.trial(trial).restore()
