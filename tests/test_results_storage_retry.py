"""Retries of a storage call that lost its database connection: tried again until it answers,
one line (password hidden) when it stays away, any other error at once, nested calls retried
by the outermost only. The real server restarted under two workers is in
``test_studies_search_workers.py``."""

import optuna
import pytest
import sqlalchemy.exc

from hpjax.errors import ConfigError
from hpjax.results import optuna_shared, storage_retry

URL = "postgresql://hpjax:s3cret@127.0.0.1:1/hpjax"


def dropped() -> Exception:
    cause = sqlalchemy.exc.OperationalError(
        "SELECT 1", {}, Exception(f"connection to {URL} failed: server closed the connection")
    )
    try:
        raise optuna.exceptions.StorageInternalError("invalid data in the commit") from cause
    except optuna.exceptions.StorageInternalError as error:
        return error


def failing(times: int, error: Exception):
    calls = {"n": 0}

    def call():
        calls["n"] += 1
        if calls["n"] <= times:
            raise error
        return "answer"

    return call, calls


def test_a_dropped_connection_is_tried_again_until_the_server_answers(monkeypatch):
    monkeypatch.setattr(storage_retry.time, "sleep", lambda s: None)
    call, calls = failing(3, dropped())
    assert optuna_shared.reconnect(URL, 60).call(call) == "answer" and calls["n"] == 4


def test_a_server_that_stays_away_is_one_line_without_the_password():
    call, calls = failing(10**9, dropped())
    with pytest.raises(ConfigError) as raised:
        optuna_shared.reconnect(URL, 1.0, longest_wait=0.2).call(call)
    line = str(raised.value)
    assert "\n" not in line and "s3cret" not in line and calls["n"] >= 3
    assert line.startswith("the Optuna storage postgresql://hpjax:***@127.0.0.1:1/hpjax has not")
    assert "answered for 1 s" in line and "run the same command again" in line


def test_other_errors_are_raised_at_once():
    for error in (ValueError("bad value"), optuna.exceptions.StorageInternalError("invalid")):
        call, calls = failing(1, error)
        with pytest.raises(type(error)):
            optuna_shared.reconnect(URL, 60).call(call)
        assert calls["n"] == 1


def test_nested_calls_are_retried_by_the_outermost_alone(monkeypatch):
    monkeypatch.setattr(storage_retry.time, "sleep", lambda s: None)
    retry = optuna_shared.reconnect(URL, 60)
    inner, inner_calls = failing(2, dropped())
    outer_calls = {"n": 0}

    def outer():
        outer_calls["n"] += 1
        return retry.call(inner)

    assert retry.call(outer) == "answer"
    assert outer_calls["n"] == 3 and inner_calls["n"] == 3  # inner failures went to the outer


def test_the_storage_subclass_routes_every_database_method_through_the_retry():
    retry = optuna_shared.reconnect(URL, 60)
    cls = storage_retry.retrying(optuna.storages.RDBStorage, retry)
    assert issubclass(cls, optuna.storages.RDBStorage)
    for name in storage_retry.DATABASE_METHODS:
        assert getattr(cls, name) is not getattr(optuna.storages.RDBStorage, name), name
    methods = [
        n
        for n, v in vars(optuna.storages.RDBStorage).items()
        if callable(v) and (n.startswith(("get_", "set_", "create_", "record_", "delete_")))
    ]
    unwrapped = {"get_heartbeat_interval", "get_heartbeat_stale_trial_callback"}
    assert set(methods) - set(storage_retry.DATABASE_METHODS) <= unwrapped | {
        "get_current_version",
        "get_head_version",
        "get_all_versions",
    }


def test_every_database_call_of_optuna_s_cached_storage_is_retried():
    """CachedStorage calls private methods of the RDB storage directly (``_get_trials``): each
    that reaches the database is retried (the suite once lost a worker on ``_get_trials`` during
    a server restart)."""
    import inspect
    import re

    from optuna.storages import _cached_storage

    from hpjax.results import storage_retry

    called = set(re.findall(r"_backend\.(\w+)", inspect.getsource(_cached_storage)))
    no_database = {"get_heartbeat_interval", "get_heartbeat_stale_trial_callback"}
    assert called - no_database - set(storage_retry.DATABASE_METHODS) == set()
