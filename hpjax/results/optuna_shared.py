"""One Optuna study shared by search workers: its storage, the ask lock, heartbeats, the trial
budget, live intermediate values and ASHA's rung values.

Several workers (processes, on one machine or many) run one search by asking a storage for
trials, training them and telling the results. What keeps them from losing or repeating work:

- **The ask lock.** A worker counts the study's trials and asks its round while it holds a lock
  of the storage (a PostgreSQL advisory lock, or ``flock`` on a file storage), so two workers
  never both take the last trials of the budget, and a sampler that numbers its points from the
  storage (Sobol) hands each point out once.
- **Heartbeats** (server storages). A worker's trials carry Optuna's heartbeat, recorded by a
  thread from the moment they are asked. A trial whose heartbeat is older than the grace period
  is failed by the next worker that asks, and Optuna's retry callback queues a copy of it
  (state WAITING), which the next ``ask`` of any worker takes before proposing a new point.
- **The budget** counts the trials that finished (complete, pruned, diverged), run or wait; a
  trial failed for a lost heartbeat and queued again counts once, through its retry.
- **Ownership.** Each trial names the worker that asked it (``hpjax_worker``), so a worker
  restarted on its workdir takes back its own running trials instead of asking again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator, Sequence

try:
    import optuna
except ImportError:  # the extra is not installed
    optuna = None

SERVERS = ("postgresql", "mysql")
WORKER = "hpjax_worker"  # user attribute: the worker that asked the trial
TOLD = "hpjax_told"  # user attribute: told by its worker (FAIL without it: lost, retried)
ABANDONED = "hpjax_abandoned"  # user attribute: failed before its parameters were drawn
RUNG = "asha_rung_{}"  # user attribute: the trial's value at ASHA's rung of that many steps
FINISHED = ("COMPLETE", "PRUNED")


def scheme(url: str) -> str:
    """``postgresql`` for ``postgresql+psycopg2://...``; ``sqlite``; ``journal`` for a path."""
    return url.split("://", 1)[0].split("+", 1)[0] if "://" in url else "journal"


def is_server(url: str) -> bool:
    return scheme(url) in SERVERS


def worker_id(workdir: str) -> str:
    """A worker's name in the storage: its host and workdir."""
    return f"{socket.gethostname()}:{os.path.abspath(workdir)}"


def shown(url: str) -> str:
    """``url`` as it may be printed: its password hidden."""
    if not is_server(url):
        return url
    return __import__("sqlalchemy").engine.make_url(url).render_as_string(hide_password=True)


def open_storage(
    url: str, heartbeat_s: int | None = None, grace_s: int | None = None, max_retry: int = 0
):
    """The storage at ``url``: a server with heartbeats (every ``heartbeat_s``) and retries of
    lost trials; a SQLite URL or a journal file (one machine), or no ``heartbeat_s``, without."""
    if scheme(url) == "journal":
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url))
    if not is_server(url) or heartbeat_s is None:
        return optuna.storages.RDBStorage(url)
    with warnings.catch_warnings(), _advisory_lock(url, "tables"):  # created once, not raced
        warnings.simplefilter("ignore")  # heartbeats and the retry callback are experimental
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs={"pool_pre_ping": True},
            heartbeat_interval=heartbeat_s,
            grace_period=grace_s,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=max_retry
            ),
        )


def has_heartbeat(study) -> bool:
    return optuna.storages._heartbeat.is_heartbeat_enabled(study._storage)


def _lock_key(name: str) -> int:
    digest = hashlib.sha256(f"hpjax-search:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.contextmanager
def _advisory_lock(url: str, name: str) -> Iterator[None]:
    """PostgreSQL's session lock ``name``, on a connection of its own."""
    sqlalchemy = importlib.import_module("sqlalchemy")
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    key = {"key": _lock_key(name)}
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), key)
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), key)
    finally:
        engine.dispose()


@contextlib.contextmanager
def ask_lock(url: str, study_name: str) -> Iterator[None]:
    """Holds the storage's lock for counting and asking: one worker at a time. The lock goes
    with its holder's connection or process, so a killed worker never leaves it held."""
    kind = scheme(url)
    if kind == "postgresql":
        with _advisory_lock(url, study_name):
            yield
        return
    if kind == "mysql":
        raise ValueError("search workers need PostgreSQL, SQLite or a journal file, not MySQL")
    path = "/" + url.split("://", 1)[1].lstrip("/") if kind == "sqlite" else url
    with open(path + ".asklock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclasses.dataclass(frozen=True)
class Budget:
    """The study's trials as a worker counts them before asking."""

    used: int  # finished (complete, pruned, diverged), running or waiting
    waiting: int  # queued retries of lost trials
    running: int  # running in any worker

    def askable(self, num_trials: int) -> int:
        """Trials a worker may take now: the queued retries and the budget's new points."""
        return self.waiting + max(0, num_trials - self.used)


def budget(study) -> Budget:
    """Counts the study's trials; a trial lost with its worker counts through its retry (or, when
    its retries are spent, as finished), one abandoned before its parameters not at all."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    used = waiting = running = 0
    for t in trials:
        state = t.state.name
        if state == "WAITING":
            waiting += 1
        if state == "RUNNING":
            running += 1
        if state == "FAIL":
            used += t.number not in retried and not t.user_attrs.get(ABANDONED, False)
        else:
            used += 1
    return Budget(used, waiting, running)


def fail_lost(study, grace_s: int) -> list[int]:
    """Fails the running trials whose worker stopped beating (Optuna queues their retries), and
    those asked longer than the grace period ago by a worker killed before it could name
    itself; returns the numbers failed."""
    if not has_heartbeat(study):
        return []
    before = {t.number for t in study.get_trials(deepcopy=False, states=(_state("RUNNING"),))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(_state("RUNNING"),)):
        started = t.datetime_start.timestamp() if t.datetime_start else now
        if WORKER not in t.user_attrs and now - started > grace_s:
            study._storage.set_trial_user_attr(t._trial_id, ABANDONED, True)
            study.tell(t.number, state=_state("FAIL"))
    after = {t.number for t in study.get_trials(deepcopy=False, states=(_state("RUNNING"),))}
    return sorted(before - after)


def _state(name: str):
    return getattr(optuna.trial.TrialState, name)


def own_running(study, worker: str) -> list:
    """The running trials ``worker`` asked (or, without heartbeats, that no worker named)."""
    shared = has_heartbeat(study)
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(_state("RUNNING"),))
        if t.user_attrs.get(WORKER) == worker or (not shared and WORKER not in t.user_attrs)
    ]


class Heartbeat:
    """Records the heartbeat of a round's trials every interval until :meth:`stop`; without
    heartbeats in the storage it does nothing."""

    def __init__(self, study, trial_ids: Sequence[int]):
        self.storage = study._storage
        self.trial_ids = list(trial_ids)
        self.stopped = threading.Event()
        self.thread = None
        if has_heartbeat(study):
            self.beat()
            self.interval = self.storage.get_heartbeat_interval()
            self.thread = threading.Thread(target=self._run, daemon=True, name="hpjax-heartbeat")
            self.thread.start()

    def beat(self) -> None:
        for trial_id in self.trial_ids:
            self.storage.record_heartbeat(trial_id)

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            with contextlib.suppress(Exception):  # a dropped connection: the next beat retries
                self.beat()

    def stop(self) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join()


class RungValues:
    """ASHA's values at each rung across the whole study: every worker writes a trial's value at a
    rung as its user attribute; a rung's cutoff reads those of the trials outside this round
    (running, complete or pruned; a lost trial's values leave with it). Read at most once a
    second: a rung judged for many trials at one evaluation reads the storage once."""

    def __init__(self, study, trial_ids: dict[int, int]):
        self.study = study
        self.trial_ids = trial_ids  # the round's trial index -> Optuna trial id
        self.read_at = -math.inf
        self.trials: list = []

    def values(self, rung: int) -> list[float]:
        if time.monotonic() - self.read_at > 1.0:
            states = tuple(_state(s) for s in ("RUNNING", *FINISHED))
            self.trials = self.study.get_trials(deepcopy=False, states=states)
            self.read_at = time.monotonic()
        own = set(self.trial_ids.values())
        key = RUNG.format(rung)
        return [
            math.inf if t.user_attrs[key] is None else float(t.user_attrs[key])
            for t in self.trials
            if t._trial_id not in own and key in t.user_attrs
        ]

    def record(self, trial: int, rung: int, value: float) -> None:
        stored = value if math.isfinite(value) else None
        self.study._storage.set_trial_user_attr(self.trial_ids[trial], RUNG.format(rung), stored)
