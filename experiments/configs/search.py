"""The config hpjax/configs/search.py, for the binaries' --config flag: its variants and
keys are described there, and by --help."""

from hpjax.configs.search import *  # noqa: F403
from hpjax.configs.search import get_config  # noqa: F401
