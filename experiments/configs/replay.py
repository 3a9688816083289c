"""The config hpjax/configs/replay.py, for the binaries' --config flag: the dense grid of the
replay program and its variants, described there and by --help."""

from hpjax.configs.replay import *  # noqa: F403
from hpjax.configs.replay import get_config  # noqa: F401
