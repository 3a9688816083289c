"""hpjax: hyperparameter studies as vmapped populations of trials in one compiled JAX program."""

__version__ = "0.1.0"
