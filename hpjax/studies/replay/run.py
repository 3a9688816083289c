"""``hpjax.replay``: every scheduler setting replayed on a finished dense study's own curves.

Each setting runs on each seed's trials (one replication of the search) in ``orders`` arrival
orders: the study's own first, then random permutations. The outputs, in the workdir:

- ``replay.csv``: one row per setting, its figures over all replays (:mod:`.outcomes`);
- ``replay_runs.csv``: one row per replay (setting, seed, order);
- ``plots/replay_pareto.png``: regret against budget, one point per setting;
- ``report.md``, written again with a section on the replay.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent import futures

import numpy as np
from absl import logging

from hpjax.report import study_report
from hpjax.results import files
from hpjax.studies.replay import outcomes, report
from hpjax.studies.replay.curves import DenseStudy, read_dense
from hpjax.studies.replay.settings import (
    Setting,
    default_settings,
    describe,
    parse_settings,
    run_setting,
)

BASELINE_ORDERS = 20  # random orders random search at a replay's budget is averaged over
PARALLEL_FROM_EVALUATIONS = 50_000  # evaluations x settings: below, one process is quicker


@dataclasses.dataclass(frozen=True)
class Replay:
    """A replay's figures: ``rows`` per setting, ``runs`` per replay, and where they went."""

    rows: list[dict]
    runs: list[dict]
    seconds: float
    num_trials: int
    paths: dict[str, str]

    def row(self, setting: str) -> dict:
        """The figures of ``setting`` (its key, ``asha:eta=3,grace=300``)."""
        return next(r for r in self.rows if r["setting"] == setting)


def arrival_orders(size: int, orders: int, seed: int, group: int) -> list[np.ndarray]:
    """The study's own order, then ``orders - 1`` random permutations (seeded per group)."""
    rng = np.random.default_rng([seed, group])
    return [np.arange(size)] + [rng.permutation(size) for _ in range(orders - 1)]


def replay_setting(
    study: DenseStudy, setting: Setting, orders: int, slots: int, seed: int = 0
) -> list[dict]:
    """``setting``'s replays over every seed and arrival order: one outcome row each."""
    out = []
    for g in range(len(study.groups)):
        out += _replays(study, setting, g, range(orders), orders, slots, seed)
    return out


def _replays(study, setting, group, order_ids, orders, slots, seed) -> list[dict]:
    """``setting`` on seed ``group`` in the arrival orders ``order_ids`` (an order-free setting
    runs once; each order still sets its random search at equal budget)."""
    curves = study.groups[group]
    every = arrival_orders(curves.size, orders, seed, group)
    if setting.name == "random":  # random search draws its trials at random, never by index
        every = arrival_orders(curves.size, orders + 1, seed, group)[1:]
    baseline = arrival_orders(curves.size, BASELINE_ORDERS + 1, seed + 1, group)[1:]
    fixed, out = None, []
    for o in order_ids:
        if setting.scheduler.ordered or fixed is None:
            fixed = run_setting(setting, curves, every[o], slots, study)
        out.append({"setting": setting.key, "order": o} | outcomes.outcome(curves, fixed, baseline))
    return out


_WORKER_STUDY: list[DenseStudy] = []  # a worker process's copy of the study


def _start_worker(study: DenseStudy) -> None:
    _WORKER_STUDY[:] = [study]


def _worker_replays(*args) -> list[dict]:
    return _replays(_WORKER_STUDY[0], *args)


def _all_replays(study, settings, orders, slots, seed, workers) -> list[list[dict]]:
    """Every setting's replays, in ``workers`` processes (one replay per task; an order-free
    setting's per seed), in the order of ``settings``."""
    tasks = [
        (i, (s, g, [o] if s.scheduler.ordered else range(orders), orders, slots, seed))
        for i, s in enumerate(settings)
        for g in range(len(study.groups))
        for o in (range(orders) if s.scheduler.ordered else [0])
    ]
    out: list[list[dict]] = [[] for _ in settings]
    if workers <= 1:
        for i, args in tasks:
            out[i] += _replays(study, *args)
        return out
    context = multiprocessing.get_context("spawn")  # never fork a process that runs XLA
    with futures.ProcessPoolExecutor(workers, context, _start_worker, (study,)) as pool:
        done = pool.map(_worker_replays, *zip(*(args for _, args in tasks), strict=True))
        for (i, _), rows in zip(tasks, done, strict=True):
            out[i] += rows
    return out


def default_workers(study: DenseStudy, settings: Sequence[Setting]) -> int:
    """Processes for a replay: one per core once it is long enough to repay their start."""
    evaluations = int(sum(g.lengths.sum() for g in study.groups)) * len(settings)
    return max(1, os.cpu_count() or 1) if evaluations >= PARALLEL_FROM_EVALUATIONS else 1


def replay(
    workdir: str,
    schedulers: str | Sequence[Setting] = "",
    *,
    orders: int = 10,
    slots: int = 8,
    seed: int = 0,
    monitor: str = "loss",
    write: bool = True,
    workers: int | None = None,
) -> Replay:
    """Replays ``schedulers`` (``"asha:eta=3,grace=300; median:warmup=1000"``; empty: the
    default grid of :func:`~hpjax.studies.replay.settings.default_settings`) on the dense study
    in ``workdir``, with ``slots`` trials training at once, in ``workers`` processes (None:
    one per core for a long replay); writes its files unless ``write`` is False."""
    start = time.perf_counter()
    study = read_dense(os.fspath(workdir), monitor)
    if isinstance(schedulers, str):
        settings = parse_settings(schedulers, study) if schedulers.strip() else None
        settings = settings or default_settings(study)
    else:
        settings = tuple(schedulers)
    if orders < 1 or slots < 1:
        raise ValueError(f"orders ({orders}) and slots ({slots}) must be at least 1")
    workers = default_workers(study, settings) if workers is None else workers
    rows, runs = [], []
    for setting, replays in zip(
        settings, _all_replays(study, settings, orders, slots, seed, workers), strict=True
    ):
        runs += replays
        rows.append(outcomes.summarise(setting.key, setting.label, replays))
    seconds = time.perf_counter() - start
    paths = _write(study, settings, rows, runs, seconds, orders, slots) if write else {}
    logging.info(
        "replayed %d settings on %d trials (%d seeds x %d orders) in %.1f s",
        len(settings),
        study.num_trials,
        len(study.groups),
        orders,
        seconds,
    )
    return Replay(rows, runs, seconds, study.num_trials, paths)


def _write(study, settings, rows, runs, seconds, orders, slots) -> dict[str, str]:
    workdir = study.workdir
    meta = {
        "seconds": round(seconds, 2),
        "orders": orders,
        "slots": slots,
        "seeds": len(study.groups),
        "trials": study.num_trials,
        "monitor": study.monitor,
        "sources": describe(settings),
    }
    paths = {
        "csv": os.path.join(workdir, report.CSV),
        "runs": os.path.join(workdir, "replay_runs.csv"),
    }
    files.write_csv(paths["csv"], rows, list(rows[0]))
    files.write_csv(paths["runs"], runs, list(runs[0]))
    files.write_json(os.path.join(workdir, report.META), meta)
    paths["plot"] = report.plot_pareto(rows, os.path.join(workdir, report.PLOT))
    x = files.read_config(workdir).get("report_x") or "learning_rate"
    paths["report"] = study_report.default_report(workdir, x_hparam=x)
    return paths


def closing_line(result: Replay) -> str:
    """What a binary prints: the cheapest setting within 1% of the dense best, and the files."""
    close = [r for r in result.rows if r["regret_pct"] is not None and r["regret_pct"] <= 1.0]
    cheapest = min(close, key=lambda r: r["budget_share"], default=None)
    found = f"; {report.headline(cheapest)}" if cheapest else ""
    return (
        f"replayed {len(result.rows)} scheduler settings on {result.num_trials} trials in "
        f"{result.seconds:.1f} s{found} (table: {result.paths.get('csv')}, report: "
        f"{result.paths.get('report')})"
    )
