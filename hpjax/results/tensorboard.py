"""TensorBoard event files of a study: a run per trial with its curves, and the HParams summary.

``WORKDIR/tensorboard/<trial run>/`` holds each trial's scalars at every evaluation
(``train/loss``, ``val/loss``, every metric, ``learning_rate``) and, once the study has its
summary, the HParams plugin's session (the trial's hyperparameters against ``hparam/best_val_loss``,
test metrics and status). :class:`TensorBoardHook` writes the curves while the study runs, so
``tensorboard --logdir WORKDIR/tensorboard`` shows it live; :func:`write_study` rewrites the whole
directory from ``metrics.jsonl`` and ``summary.csv`` at the end (and after a resume), so it holds
every evaluation once. Written with tensorboardX (no TensorFlow); an optional extra.

tensorboardX is imported when first needed, by the hook's worker thread: the import takes about a
second where PyTorch is installed (tensorboardX imports it), which the hook keeps off the start.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from typing import Any

from hpjax.errors import ConfigError
from hpjax.results import files
from hpjax.results.files import is_result_column

DIRECTORY = "tensorboard"
SKIP = {"trial", "step", "epoch", "examples_seen", "elapsed_s", "time", "parent"}


def available() -> bool:
    return importlib.util.find_spec("tensorboardX") is not None


def require() -> None:
    """A one-line error naming the extra when tensorboardX is missing."""
    if not available():
        raise ConfigError(
            "config.tensorboard is on but tensorboardX is not installed; "
            'pip install -e ".[tensorboard]" (or set --config.tensorboard=off)'
        )


def run_name(row: Mapping, keys: Sequence[str]) -> str:
    """``trial_0003_learning_rate=0.01_batch_size=32``: the trial and what varies."""
    parts = [f"trial_{int(row['trial']):04d}"]
    for key in keys:
        value = row.get(key)
        parts.append(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}")
    return "_".join(parts).replace("/", "-")


def how_to_open(root: str) -> str:
    """The command that serves ``root`` and the page that opens on the table of trials.

    TensorBoard opens on its time series; the ``#hparams`` page is the study's table (every
    trial's hyperparameters against its best validation loss, test metrics and status), with
    parallel coordinates and scatter plots beside it.
    """
    return f"tensorboard --logdir {root}, then open http://localhost:6006/#hparams"


class _EventFile:
    """One run's event file, written as the caller goes: tensorboardX's ``SummaryWriter``
    starts a writing thread per run, which cost a rewrite of 512 runs a second."""

    def __init__(self, logdir: str):
        from tensorboardX.event_file_writer import EventsWriter

        os.makedirs(logdir, exist_ok=True)
        self._writer = EventsWriter(os.path.join(logdir, "events"))

    def add_summary(self, summary, global_step: int | None = None, walltime: float | None = None):
        from tensorboardX.proto.event_pb2 import Event

        event = Event(summary=summary, wall_time=time.time() if walltime is None else walltime)
        if global_step is not None:
            event.step = int(global_step)
        self._writer.write_event(event)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def _event(
    file: _EventFile, values: Mapping[str, float], step: int, walltime: float | None = None
) -> None:
    """Scalars as one event (one event per value, as ``add_scalar`` writes, took 4x as long)."""
    from tensorboardX.proto.summary_pb2 import Summary

    summary = Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
    file.add_summary(summary, step, walltime=walltime)


def _scalars(file: _EventFile, record: Mapping) -> None:
    """One evaluation's losses, metrics and learning rate, tagged ``train/…``, ``val/…``."""
    values = {
        key.replace("train_", "train/", 1).replace("val_", "val/", 1): float(value)
        for key, value in record.items()
        if key not in SKIP and value is not None and not isinstance(value, str)
    }
    _event(file, values, int(record["step"]), record.get("time"))


def _hparam_value(value: Any) -> Any:
    return value if isinstance(value, int | float | str | bool) else str(value)


def write_study(workdir: str, varying: Sequence[str] = ("learning_rate",)) -> str:
    """Rewrites ``WORKDIR/tensorboard`` from the workdir's files; returns its path."""
    require()
    from tensorboardX.summary import hparams as hparams_summaries

    _, metrics, summary = files.read_workdir(workdir)
    root = os.path.join(workdir, DIRECTORY)
    if os.path.isdir(root):
        shutil.rmtree(root)
    curves = files.curves_by_trial(metrics)
    keys = [k for k in varying if any(k in r for r in summary)]
    hparams = [k for k in dict.fromkeys(k for r in summary for k in r) if not is_result_column(k)]
    for row in summary:
        file = _EventFile(os.path.join(root, run_name(row, keys)))
        for record in curves.get(int(row["trial"]), []):
            _scalars(file, record)
        results = {
            f"hparam/{k}": float(v)
            for k, v in row.items()
            if k.startswith(("best_val_", "test_")) and isinstance(v, int | float)
        }
        chosen = {k: _hparam_value(row[k]) for k in hparams if row.get(k) is not None}
        chosen["status"] = str(row.get("status"))
        experiment, start, end = hparams_summaries(chosen, results)
        for summary_proto in (experiment, start, end):
            file.add_summary(summary_proto)
        _event(file, results, int(row.get("best_step") or 0))
        file.close()
    return root


class TensorBoardHook:
    """Runner hook: each evaluation's rows as scalars in the trial's run, as they come.

    A worker thread imports tensorboardX and writes, in the order of the evaluations, so that
    neither holds up training; ``on_end`` waits for it and raises what it raised. The live files
    are a view: the record is ``metrics.jsonl``, from which :func:`write_study` rewrites them.
    """

    def __init__(self, workdir: str, varying: Sequence[str]):
        require()
        self.root = os.path.join(workdir, DIRECTORY, "live")
        self.varying = list(varying)
        self.writers: dict[int, Any] = {}
        self.run_names: dict[int, str] = {}  # trial -> its run's name, found once
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tensorboard")
        self._pending = [self._worker.submit(importlib.import_module, "tensorboardX")]

    def on_start(self, run, state) -> None:
        pass

    def on_train(self, run, num_ticks: int, seconds: float) -> None:
        pass

    def on_evaluation(self, run, state, rows: list[dict]) -> None:
        if not run.sharding.is_writer:
            return
        for spec in run.plan.trials:
            if spec.index not in self.run_names:
                values = {k: getattr(spec, k, None) for k in self.varying}
                values |= {k: v for k, v in spec.architecture if k in self.varying}
                row = {"trial": spec.index, **values}
                keys = [k for k in self.varying if row.get(k) is not None]
                self.run_names[spec.index] = run_name(row, keys)
        named = [(self.run_names[int(record["trial"])], record) for record in rows]
        self._pending.append(self._worker.submit(self._write, named))

    def _write(self, named: list[tuple[str, dict]]) -> None:
        written = set()
        for name, record in named:
            trial = int(record["trial"])
            if trial not in self.writers:
                self.writers[trial] = _EventFile(os.path.join(self.root, name))
            _scalars(self.writers[trial], record)
            written.add(trial)
        for trial in written:  # TensorBoard sees each evaluation as it comes
            self.writers[trial].flush()

    def on_end(self, run, summary_rows: list[dict]) -> None:
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()
