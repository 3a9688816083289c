"""A study recorded as an Optuna study, for optuna-dashboard and Optuna's tools.

:func:`record_study` reads a finished workdir (``summary.csv``, ``metrics.jsonl``) and writes one
Optuna trial per hpjax trial into an Optuna storage: the journal file ``WORKDIR/optuna.log`` by
default, ``sqlite:///WORKDIR/optuna.db`` (``sqlite``), or any SQLAlchemy URL (a shared
PostgreSQL or MySQL server for multi-host studies). Each trial has
its hyperparameters with their distributions (the learning rate on a log scale over the study's
range, the others as the sets of values the study tried), the validation loss at every
evaluation as intermediate values, its best validation loss as the value, its state (COMPLETE for
a trial that trained to its best point, early-stopped or not; PRUNED for one ASHA pruned; FAIL
for a diverged one) and user attributes (hpjax trial, status, test metrics, its population's
checkpoint). The Optuna study is rebuilt as a whole each time, so a resumed or extended study
never holds a trial twice nor loses one.
``optuna-dashboard WORKDIR/optuna.log`` shows it. Optuna is an optional extra.
"""

from __future__ import annotations

import datetime
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging

from hpjax.errors import ConfigError, one_line
from hpjax.report.labels import varying_hparams
from hpjax.results import checkpoints, files, optuna_shared
from hpjax.results.files import is_result_column

try:
    import optuna
except ImportError:  # the extra is not installed
    optuna = None

DATABASE = "optuna.db"
JOURNAL = "optuna.log"
LOG_SCALE = ("learning_rate", "base_learning_rate")
NOT_PARAMS = ("model",)  # identical for every trial of a study; its name is the study's
DRAWN_FROM_A_RANGE = 4  # distinct float values from which a column reads as a range


def available() -> bool:
    return optuna is not None


def require() -> None:
    """A one-line error naming the extra when Optuna is missing."""
    if not available():
        raise ConfigError(
            "config.optuna_storage is set but Optuna is not installed; "
            'pip install -e ".[optuna]" (or set --config.optuna_storage=off)'
        )


def storage_url(workdir: str, setting: str, database: str = DATABASE) -> str:
    """The storage of a study: ``setting`` when it is a URL, else the SQLite file ``database``
    in the workdir."""
    if "://" in setting:
        return setting
    return f"sqlite:///{os.path.abspath(os.path.join(workdir, database))}"


def _distribution(key: str, values: Sequence[Any]):
    distinct = sorted(set(values), key=lambda v: (str(type(v)), v))
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in distinct)
    if key in LOG_SCALE and numbers and min(distinct) > 0:
        return optuna.distributions.FloatDistribution(
            float(min(distinct)), float(max(distinct)), log=True
        )
    if (
        numbers
        and len(distinct) >= DRAWN_FROM_A_RANGE
        and any(isinstance(v, float) for v in distinct)
    ):
        # drawn from a range (a space's weight decay, Lion's b1): a range, not choices
        return optuna.distributions.FloatDistribution(float(min(distinct)), float(max(distinct)))
    return optuna.distributions.CategoricalDistribution(distinct)


def _param(key: str, value: Any) -> Any:
    return float(value) if key in LOG_SCALE else value


def _state(row: Mapping):
    if row.get("status") == "diverged" or not _finite(row.get("best_val_loss")):
        return optuna.trial.TrialState.FAIL
    if row.get("status") == "pruned":  # ASHA stopped it at a rung: Optuna's own meaning
        return optuna.trial.TrialState.PRUNED
    return optuna.trial.TrialState.COMPLETE


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def params_of(summary: Sequence[Mapping]) -> list[str]:
    """The hyperparameter columns of a summary (in order of appearance)."""
    keys = dict.fromkeys(k for row in summary for k in row)
    return [k for k in keys if not is_result_column(k) and k not in NOT_PARAMS]


def _fresh_study(name: str, storage):
    """An empty Optuna study ``name`` in ``storage`` (one recorded there before is replaced)."""
    try:
        optuna.delete_study(study_name=name, storage=storage)
    except KeyError:  # not recorded before
        pass
    return optuna.create_study(study_name=name, storage=storage, direction="minimize")


def _database_study(workdir: str, storage: str, name: str):
    """A fresh study ``name`` in a database: the URL ``storage``, or ``optuna.db`` in the
    workdir for ``sqlite`` (a damaged file is moved aside)."""
    url = storage_url(workdir, storage)
    try:
        return _fresh_study(name, url)
    except Exception as error:  # noqa: BLE001 (SQLAlchemy and the drivers raise many kinds)
        local = os.path.join(workdir, DATABASE)
        if "://" in storage or not os.path.exists(local):
            raise ConfigError(
                f"cannot write the study to the Optuna storage {optuna_shared.shown(url)!r} "
                f"({optuna_shared.masked(one_line(error), url)}); fix it, or "
                "pass --config.optuna_storage=off"
            ) from None
        damaged = local + ".damaged"
        os.replace(local, damaged)
        logging.warning(
            "%s could not be opened (%s); moved to %s and written afresh from the study's "
            "summary and metrics",
            local,
            type(error).__name__,
            damaged,
        )
        return _fresh_study(name, url)


def journal(path: str):
    """Optuna's journal storage in the file ``path`` (read it with ``optuna.load_study`` or
    ``optuna-dashboard PATH``)."""
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))


def record_study(workdir: str, storage: str = "auto", study_name: str | None = None) -> str:
    """Writes the finished study in ``workdir`` to ``storage``; returns the study's name.

    ``auto`` writes Optuna's journal file ``optuna.log``, whole, in place of the one before:
    64 trials took 0.03 s, against 2 s as rows of SQLite (Optuna writes each attribute of each
    trial in a query of its own). ``sqlite`` writes ``optuna.db``; a URL, that database.
    """
    require()
    saved, metrics, summary = files.read_workdir(workdir)
    name = study_name or os.path.basename(os.path.abspath(workdir))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    written = {"auto": JOURNAL, "sqlite": DATABASE}.get(storage)
    target = os.path.join(workdir, written) if written else storage
    for local in (JOURNAL, DATABASE):  # an earlier record in another storage is out of date
        stale = os.path.join(workdir, local)
        if local != written and os.path.exists(stale):
            os.remove(stale)
            logging.info("removed %s: this study is recorded in %s now", stale, target)
    if storage != "auto":
        _fill(_database_study(workdir, storage, name), workdir, saved, metrics, summary)
        return name
    path = os.path.join(workdir, JOURNAL)
    partial = path + ".partial"
    for leftover in (partial, partial + ".lock"):  # of a run killed while writing it
        if os.path.lexists(leftover):
            os.remove(leftover)
    study = optuna.create_study(study_name=name, storage=journal(partial), direction="minimize")
    _fill(study, workdir, saved, metrics, summary)
    os.replace(partial, path)
    return name


def _fill(study, workdir: str, saved: Mapping, metrics: list, summary: list) -> None:
    """Writes the study's settings and one Optuna trial per hpjax trial into ``study``."""
    study.set_user_attr("workdir", os.path.abspath(workdir))
    study.set_user_attr("dataset", str(saved.get("dataset")))
    with warnings.catch_warnings():  # Optuna marks metric names experimental
        warnings.simplefilter("ignore")
        study.set_metric_names(["best_val_loss"])  # minimised
    varying = set(varying_hparams(summary))
    every = params_of(summary)
    keys = [k for k in every if k in varying]  # the searched ones: parameters
    for key in every:  # the settings every trial shares: study attributes
        if key not in varying and summary[0].get(key) is not None:
            study.set_user_attr(key, summary[0][key])
    distributions = {
        k: _distribution(k, [r[k] for r in summary if r.get(k) is not None]) for k in keys
    }
    curves = files.curves_by_trial(metrics)
    study.add_trials([_frozen_trial(workdir, row, keys, distributions, curves) for row in summary])


def _frozen_trial(workdir: str, row: Mapping, keys: list, distributions: dict, curves: dict):
    trial = int(row["trial"])
    state = _state(row)
    intermediate = {
        int(r["step"]): float(r["val_loss"])
        for r in curves.get(trial, [])
        if _finite(r.get("val_loss"))
    }
    attrs = {k: v for k, v in row.items() if is_result_column(k) and v is not None and k != "trial"}
    attrs |= {
        "hpjax_trial": trial,
        "checkpoint": checkpoints.population_best_dir(workdir, int(row["population"])),
    }
    params = {k: _param(k, row[k]) for k in keys if row.get(k) is not None}
    frozen = optuna.trial.create_trial(
        state=state,
        value=float(row["best_val_loss"]) if state == optuna.trial.TrialState.COMPLETE else None,
        params=params,
        distributions={k: distributions[k] for k in params},
        user_attrs=attrs,
        intermediate_values=intermediate,
    )
    times = [r["time"] for r in curves.get(trial, []) if _finite(r.get("time"))]
    if len(times) >= 2:  # its first and last evaluation (older workdirs have no times)
        frozen.datetime_start = datetime.datetime.fromtimestamp(min(times))
        frozen.datetime_complete = datetime.datetime.fromtimestamp(max(times))
    return frozen


def param_importances(summary: Sequence[Mapping]) -> dict[str, float] | None:
    """Optuna's importance (fANOVA) of each varied hyperparameter for the best validation loss,
    highest first; None without Optuna, with fewer than two varied hyperparameters or fewer
    than 4 finished trials."""
    if optuna is None:
        return None
    keys = [k for k in varying_hparams(summary) if k != "seed"]
    done = [r for r in summary if r.get("status") != "diverged" and _finite(r.get("best_val_loss"))]
    if len(keys) < 2 or len(done) < 4:
        return None
    distributions = {
        k: _distribution(k, [r[k] for r in done if r.get(k) is not None]) for k in keys
    }
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize")
    for row in done:
        params = {k: _param(k, row[k]) for k in keys if row.get(k) is not None}
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions={k: distributions[k] for k in params},
                value=float(row["best_val_loss"]),
            )
        )
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
