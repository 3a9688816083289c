"""The config hpjax/configs/rnn_study.py, for the binaries' --config flag: its variants and
keys are described there, and by --help."""

from hpjax.configs.rnn_study import *  # noqa: F403
from hpjax.configs.rnn_study import get_config  # noqa: F401
