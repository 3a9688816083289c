"""The config hpjax/configs/mnist1d_mlp.py, for the binaries' --config flag: its variants and
keys are described there, and by --help."""

from hpjax.configs.mnist1d_mlp import *  # noqa: F403
from hpjax.configs.mnist1d_mlp import get_config  # noqa: F401
