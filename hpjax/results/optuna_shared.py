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
import copy
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

from absl import logging

from hpjax.errors import ConfigError, one_line
from hpjax.results import storage_retry

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
    """``postgresql`` for ``postgresql+psycopg2://...``; ``sqlite``; ``mysql``."""
    return url.split("://", 1)[0].split("+", 1)[0]


def is_server(url: str) -> bool:
    return scheme(url) in SERVERS


def worker_id(workdir: str) -> str:
    """A worker's name in the storage: its host and workdir."""
    return f"{socket.gethostname()}:{os.path.abspath(workdir)}"


def shown(url: str) -> str:
    """``url`` as it may be printed: its password hidden."""
    if not is_server(url):
        return url
    return _sqlalchemy().engine.make_url(url).render_as_string(hide_password=True)


def masked(text: str, url: str) -> str:
    """``text`` with the password of ``url`` hidden wherever it appears (a driver's message
    may quote the URL it was given)."""
    if not is_server(url):
        return text
    password = _sqlalchemy().engine.make_url(url).password
    text = text.replace(url, shown(url))
    return text.replace(str(password), "***") if password else text


def check_reachable(url: str) -> None:
    """Connects to the database server at ``url`` once: one line (its password hidden) when it
    cannot be reached, before any training rather than after all of it."""
    if not is_server(url):
        return
    engine = _sqlalchemy().create_engine(driver_url(url), connect_args={"connect_timeout": 10})
    try:
        with engine.connect():
            pass
    except Exception as error:  # noqa: BLE001 (SQLAlchemy and the drivers raise many kinds)
        raise ConfigError(
            f"the Optuna storage {shown(url)} cannot be reached "
            f"({masked(one_line(error), url)[:300]}); start the server, fix the URL, or pass "
            "--config.optuna_storage=off"
        ) from None
    finally:
        engine.dispose()


def _sqlalchemy():
    return importlib.import_module("sqlalchemy")


def driver_url(url: str) -> str:
    """``postgresql://`` with its driver named (psycopg 3, the extra's), whatever SQLAlchemy's
    default driver is (psycopg2 before SQLAlchemy 2.1)."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


# A worker on a machine that vanished (power, network) holds the ask lock until the server sees
# its connection dead: TCP keepalives make that a minute, not the system's two hours.
KEEPALIVE = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


def reconnect(url: str, seconds: float, longest_wait: float = 10.0) -> storage_retry.Reconnect:
    """Retries of the calls to the server at ``url`` that lose their connection, for up to
    ``seconds`` (at most ``longest_wait`` between tries), its password hidden in messages."""
    return storage_retry.Reconnect(
        shown(url), seconds, mask=lambda text: masked(text, url), longest_wait=longest_wait
    )


def open_storage(
    url: str,
    heartbeat_s: int | None = None,
    grace_s: int | None = None,
    max_retry: int = 0,
    retry: storage_retry.Reconnect | None = None,
):
    """The storage at ``url``: a server with heartbeats (every ``heartbeat_s``) and retries of
    lost trials; a SQLite URL (one machine), or no ``heartbeat_s``, without. With ``retry`` a
    server's calls that lose their connection are tried again (:mod:`storage_retry`)."""
    if not is_server(url) or heartbeat_s is None:
        return optuna.storages.RDBStorage(driver_url(url))
    engine = {"pool_pre_ping": True, "connect_args": KEEPALIVE}
    storage_class = optuna.storages.RDBStorage
    if retry is not None:
        storage_class = storage_retry.retrying(storage_class, retry)

    def connect():
        with warnings.catch_warnings(), _advisory_lock(url, "tables", retry):  # made once
            warnings.simplefilter("ignore")  # heartbeats and the retry callback: experimental
            return storage_class(
                driver_url(url),
                engine_kwargs=engine,
                heartbeat_interval=heartbeat_s,
                grace_period=grace_s,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=max_retry
                ),
            )

    storage = connect() if retry is None else retry.call(connect)
    storage.hpjax_retry = retry
    return storage


def _retry_of(study) -> storage_retry.Reconnect | None:
    backend = getattr(study._storage, "_backend", study._storage)
    return getattr(backend, "hpjax_retry", None)


def has_heartbeat(study) -> bool:
    return optuna.storages._heartbeat.is_heartbeat_enabled(study._storage)


def _lock_key(name: str) -> int:
    digest = hashlib.sha256(f"hpjax-search:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.contextmanager
def _advisory_lock(
    url: str, name: str, retry: storage_retry.Reconnect | None = None
) -> Iterator[None]:
    """PostgreSQL's session lock ``name``, on a connection of its own outside any transaction
    (a server's idle-in-transaction timeout never drops it); says so while it waits. With
    ``retry`` a lost connection is tried again while the lock is taken; a lock whose connection
    the server dropped (a restart) went with it, and there is nothing to release."""
    sqlalchemy = _sqlalchemy()
    engine = sqlalchemy.create_engine(
        driver_url(url),
        poolclass=sqlalchemy.pool.NullPool,
        isolation_level="AUTOCOMMIT",
        connect_args=KEEPALIVE,
    )
    key = {"key": _lock_key(name)}

    def acquire():
        connection = engine.connect()
        try:
            waited = 0.0
            try_lock = sqlalchemy.text("SELECT pg_try_advisory_lock(:key)")
            while not connection.execute(try_lock, key).scalar():
                if waited in (30.0, 300.0):
                    logging.warning("search: waiting %.0f s for another worker's ask lock", waited)
                time.sleep(0.1)
                waited = round(waited + 0.1, 1)
        except BaseException:
            connection.close()
            raise
        return connection

    try:
        connection = acquire() if retry is None else retry.call(acquire)
        try:
            yield
        finally:
            try:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), key)
            except Exception as error:
                if not storage_retry.is_connection_error(error):
                    raise
            finally:
                with contextlib.suppress(Exception):
                    connection.close()
    finally:
        engine.dispose()


@contextlib.contextmanager
def ask_lock(
    url: str, study_name: str, retry: storage_retry.Reconnect | None = None
) -> Iterator[None]:
    """Holds the storage's lock for counting and asking: one worker at a time. The lock goes
    with its holder's connection or process, so a killed worker never leaves it held."""
    kind = scheme(url)
    if kind == "postgresql":
        with _advisory_lock(url, study_name, retry):
            yield
        return
    if kind != "sqlite":
        raise ValueError(f"search workers need PostgreSQL or SQLite, not {kind}")
    path = os.path.abspath(_sqlalchemy().engine.make_url(url).database)
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
    """Counts the study's trials; a trial lost with its worker counts through its retry (when its
    retries are spent, or it was abandoned before its parameters were drawn, not at all: a new
    point takes its place)."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    used = waiting = running = 0
    for t in trials:
        state = t.state.name
        if state == "WAITING":
            waiting += 1
        if state == "RUNNING":
            running += 1
        used += not lost(t, retried)
    return Budget(used, waiting, running)


def _beating(study) -> set[int]:
    """The ids of the trials with a heartbeat recorded."""
    backend = getattr(study._storage, "_backend", study._storage)
    table = optuna.storages._rdb.models.TrialHeartbeatModel.__tablename__

    def read() -> set[int]:
        with backend.engine.connect() as connection:
            rows = connection.execute(_sqlalchemy().text(f"SELECT trial_id FROM {table}"))
            return {row[0] for row in rows}

    retry = _retry_of(study)
    return read() if retry is None else retry.call(read)


def fail_lost(study, keys: set[str]) -> list[int]:
    """Under the ask lock, fails the running trials of lost workers; returns their numbers.

    A trial whose heartbeat is older than the grace period is failed and queued again by
    Optuna's retry callback. One with no heartbeat at all was asked by a worker killed before
    its first beat (every live worker beats a trial as soon as it asks it, under this lock): it
    is queued again likewise when its parameters (``keys``) were all drawn, else abandoned.
    """
    if not has_heartbeat(study):
        return []
    running = lambda: {
        t.number for t in study.get_trials(deepcopy=False, states=(_state("RUNNING"),))
    }  # noqa: E731
    before = running()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)
    beating, storage = _beating(study), study._storage
    retry = storage.get_heartbeat_stale_trial_callback()
    for t in study.get_trials(deepcopy=False, states=(_state("RUNNING"),)):
        if t._trial_id in beating:
            continue
        if not (t.params and set(t.params) >= keys):
            abandon(study, t)
            continue
        storage.set_trial_state_values(t._trial_id, state=_state("FAIL"))
        if retry is not None:
            retry(study, copy.deepcopy(storage.get_trial(t._trial_id)))
    return sorted(before - running())


def abandon(study, trial) -> None:
    """Fails a trial killed while its parameters were drawn: never retried, never counted."""
    study._storage.set_trial_user_attr(trial._trial_id, ABANDONED, True)
    study._storage.set_trial_state_values(trial._trial_id, state=_state("FAIL"))


def lost(trial, retried: set[int]) -> bool:
    """Whether a trial ended with its worker (failed and queued again, or abandoned) rather than
    told by it: its retry, if any, stands for it."""
    if trial.state.name != "FAIL":
        return False
    return (
        trial.number in retried
        or not trial.user_attrs.get(TOLD)
        or bool(trial.user_attrs.get(ABANDONED))
    )


def retried_numbers(trials) -> set[int]:
    return {n for t in trials for n in t.system_attrs.get("retry_history", ())}


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
            self.thread.join(timeout=2 * self.interval)  # a beat hung on a dead connection


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
        with taken_over():
            self.study._storage.set_trial_user_attr(
                self.trial_ids[trial], RUNG.format(rung), stored
            )


@contextlib.contextmanager
def taken_over() -> Iterator[None]:
    """Skips a write to a trial another worker failed (this worker's heartbeat came too late:
    its retry runs elsewhere); says so once."""
    try:
        yield
    except optuna.exceptions.UpdateFinishedTrialError:
        if not _warned:
            _warned.append(True)
            logging.warning(
                "search: another worker failed a trial of this round (its heartbeat came later "
                "than search.grace_s); it runs again as a retry, and this worker's result for it "
                "is not told"
            )


_warned: list[bool] = []
