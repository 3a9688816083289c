"""The config hpjax/configs/mnist1d_cnn.py, for the binaries' --config flag: its variants and
keys are described there, and by --help."""

from hpjax.configs.mnist1d_cnn import *  # noqa: F403
from hpjax.configs.mnist1d_cnn import get_config  # noqa: F401
