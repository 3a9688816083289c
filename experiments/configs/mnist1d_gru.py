"""The config hpjax/configs/mnist1d_gru.py, for the binaries' --config flag: its variants and
keys are described there, and by --help."""

from hpjax.configs.mnist1d_gru import *  # noqa: F403
from hpjax.configs.mnist1d_gru import get_config  # noqa: F401
