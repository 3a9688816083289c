"""Riding out a database server that drops its connections (a restart, a fail-over, a network
blip): every call of a search worker to its Optuna storage is tried again with backoff for a
stated time, and when the server stays away that long the worker stops with one line.

A call is retried only for a lost or refused connection (SQLAlchemy's ``OperationalError`` or
``InterfaceError``, or a connection it invalidated, at any depth of the error's chain: Optuna
wraps them in ``StorageInternalError``, whose text blames "invalid data"). Every other error is
raised at once. Nested calls (a storage method calling another) are retried by the outermost
one alone, so the stated time is the longest a worker waits.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from absl import logging

from hpjax.errors import ConfigError, one_line

T = TypeVar("T")

# The storage methods that reach the database (Optuna's RDBStorage, 4.x and 5.x), the private
# ones included that Optuna's CachedStorage calls on it directly (_get_trials, ...).
DATABASE_METHODS = (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "set_trial_param",
    "get_trial_param",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_trial_id_from_study_id_trial_number",
    "get_trial",
    "get_all_trials",
    "get_best_trial",
    "record_heartbeat",
    "_get_stale_trial_ids",
    "_get_trials",
    "_get_best_trial_id",
    "_create_new_trial",
    "_set_trial_param",
)


def connection_error(error: BaseException | None) -> BaseException | None:
    """The lost or refused database connection that ``error`` is or was caused by (the
    driver's own error where SQLAlchemy kept it: its text says what happened), else None."""
    exc = importlib.import_module("sqlalchemy.exc")
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        lost = isinstance(error, exc.OperationalError | exc.InterfaceError) or (
            isinstance(error, exc.DBAPIError) and error.connection_invalidated
        )
        if lost:
            return getattr(error, "orig", None) or error
        error = error.__cause__ or error.__context__
    return None


def is_connection_error(error: BaseException | None) -> bool:
    """Whether ``error`` (or what caused it) is a lost or refused database connection."""
    return connection_error(error) is not None


@dataclasses.dataclass
class Reconnect:
    """Retries calls that lose their connection, for up to ``seconds`` (backoff from half a
    second, doubling to at most ``longest_wait``); ``shown`` names the storage in messages and
    ``mask`` hides its password in a driver's text."""

    shown: str
    seconds: float
    mask: Callable[[str], str] = lambda text: text
    longest_wait: float = 10.0
    _depth: threading.local = dataclasses.field(default_factory=threading.local)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    _down_since: float | None = None

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if getattr(self._depth, "value", 0):
            return fn(*args, **kwargs)
        self._depth.value = 1
        try:
            return self._retried(fn, *args, **kwargs)
        finally:
            self._depth.value = 0

    def _retried(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        started, wait = time.monotonic(), 0.5
        while True:
            try:
                result = fn(*args, **kwargs)
            except Exception as raised:
                error = connection_error(raised)
                if error is None:
                    raise
                waited = time.monotonic() - started
                if waited >= self.seconds:
                    raise self.down(error) from None
                self._say_lost(error)
                time.sleep(min(wait, self.seconds - waited))
                wait = min(2 * wait, self.longest_wait)
                continue
            self._say_back()
            return result

    def down(self, error: BaseException) -> ConfigError:
        return ConfigError(
            f"the Optuna storage {self.shown} has not answered for {self.seconds:g} s "
            f"({self.mask(one_line(error))[:240]}); this worker stops, its trials kept in its "
            "workdir: run the same command again when the server is back (search.reconnect_s "
            "sets how long a worker waits)"
        )

    def _say_lost(self, error: BaseException) -> None:
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
        logging.warning(
            "search: lost the connection to %s (%s); retrying for up to %g s",
            self.shown,
            self.mask(one_line(error, limit=160)),
            self.seconds,
        )

    def _say_back(self) -> None:
        if self._down_since is None:
            return
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is not None:
            logging.warning(
                "search: %s answers again after %.0f s", self.shown, time.monotonic() - since
            )


def retrying(storage_class: type, reconnect: Reconnect) -> type:
    """A subclass of the Optuna ``storage_class`` whose database calls go through
    ``reconnect``."""

    def wrap(name: str):
        method = getattr(storage_class, name)

        @functools.wraps(method)
        def retried(self, *args, **kwargs):
            return reconnect.call(method, self, *args, **kwargs)

        return retried

    methods = {name: wrap(name) for name in DATABASE_METHODS if hasattr(storage_class, name)}
    return type(f"Reconnecting{storage_class.__name__}", (storage_class,), methods)
