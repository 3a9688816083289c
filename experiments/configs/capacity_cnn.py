"""The config hpjax/configs/capacity_cnn.py, for the binaries' --config flag: its variants and
keys are described there, and by --help."""

from hpjax.configs.capacity_cnn import *  # noqa: F403
from hpjax.configs.capacity_cnn import get_config  # noqa: F401
