"""The one error type a user sees for bad configuration or bad data, and the one line for a
workdir that cannot be written."""

import errno
import os
import re


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


# TensorStore (Orbax's array writer) reports an OS error as text inside a ValueError:
# '... Failed writing: "PATH": ... No space left on device [os_error_code='28']'.
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
_FAILED_PATH = re.compile(r'(?:writing|file):? "([^"]+)"')


def disk_os_error(error: BaseException | None) -> OSError | None:
    """The full-disk or unwritable-path error at any depth of ``error``'s chain, as an
    OSError (TensorStore's text-only reports converted); None for any other error."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _DISK_ERRORS:
            return error
        code = _OS_ERROR_CODE.search(str(error))
        if code and int(code.group(1)) in _DISK_ERRORS:
            number = int(code.group(1))
            paths = _FAILED_PATH.findall(str(error))
            return OSError(number, os.strerror(number), paths[-1] if paths else None)
        error = error.__cause__ or error.__context__
    return None


def disk_error_message(error: BaseException, workdir: str) -> str | None:
    """One line for an error caused (at any depth of its chain) by a full disk or a workdir
    that cannot be written; None for any other error."""
    found = disk_os_error(error)
    if found is None:
        return None
    where = f" ({found.filename})" if found.filename else ""
    return (
        f"cannot write to {workdir!r}: {_DISK_ERRORS[found.errno]}{where}; nothing "
        "written before is lost: make room (or make it writable) and run the same "
        "command again to resume"
    )
