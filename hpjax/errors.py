"""The one error type a user sees for bad configuration or bad data."""


class ConfigError(ValueError):
    """A bad config value or bad input data, found before anything compiles.

    The message is one line that names the offending key and, where there is a closed set,
    the allowed values, e.g. ``config.optimizer='adamw' is unknown; allowed: adagrad, adam``.
    """


def config_error(key: str, value, why: str) -> ConfigError:
    """``config.KEY=VALUE why``: the one-line error for a bad config value."""
    return ConfigError(f"config.{key}={value!r} {why}")
