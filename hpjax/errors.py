"""The one error type a user sees for bad configuration or bad data, and the one line for a
workdir that cannot be written."""

import errno


class ConfigError(ValueError):
    """A bad config value or bad input data, found before anything compiles.

    The message is one line that names the offending key and, where there is a closed set,
    the allowed values, e.g. ``config.optimizer='adamw' is unknown; allowed: adagrad, adam``.
    """


def config_error(key: str, value, why: str) -> ConfigError:
    """``config.KEY=VALUE why``: the one-line error for a bad config value."""
    return ConfigError(f"config.{key}={value!r} {why}")


def one_line(error: BaseException, limit: int = 200) -> str:
    """``TypeName: first line of the message`` (at most ``limit`` characters of it): how a
    user's code or a library failed, inside a one-line error of ours."""
    first = (str(error).strip().splitlines() or [""])[0][:limit]
    return f"{type(error).__name__}: {first}"


_DISK_ERRORS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is spent",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def disk_error_message(error: BaseException, workdir: str) -> str | None:
    """One line for an error caused (at any depth of its chain) by a full disk or a workdir
    that cannot be written; None for any other error."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _DISK_ERRORS:
            where = f" ({error.filename})" if error.filename else ""
            return (
                f"cannot write to {workdir!r}: {_DISK_ERRORS[error.errno]}{where}; nothing "
                "written before is lost: make room (or make it writable) and run the same "
                "command again to resume"
            )
        error = error.__cause__ or error.__context__
    return None
