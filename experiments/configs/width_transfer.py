"""The config hpjax/configs/width_transfer.py, for the binaries' --config flag: its variants and
keys are described there, and by --help."""

from hpjax.configs.width_transfer import *  # noqa: F403
from hpjax.configs.width_transfer import get_config  # noqa: F401
