"""The config hpjax/configs/batch_size_study.py, for the binaries' --config flag: its variants and
keys are described there, and by --help."""

from hpjax.configs.batch_size_study import *  # noqa: F403
from hpjax.configs.batch_size_study import get_config  # noqa: F401
