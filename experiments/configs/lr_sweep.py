"""The config hpjax/configs/lr_sweep.py, for the binaries' --config flag: its variants and
keys are described there, and by --help."""

from hpjax.configs.lr_sweep import *  # noqa: F403
from hpjax.configs.lr_sweep import get_config  # noqa: F401
