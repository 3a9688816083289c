"""Batch-size studies: fixed epochs, steps to target and the gradient noise scale.

  python experiments/batch_size_study.py --workdir runs/bs
  python experiments/batch_size_study.py --workdir runs/bs \
    --config=experiments/configs/batch_size_study.py:steps_to_target
  python experiments/batch_size_study.py --workdir runs/bs \
    --config=experiments/configs/batch_size_study.py:noise_scale

See experiments/configs/batch_size_study.py for every study and its quick variant.
"""

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from hpjax import batch_study
from hpjax.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    os.path.join(os.path.dirname(__file__), "configs", "batch_size_study.py"),
    "Study config file (path[:study[,quick]]); override any key with --config.KEY=VALUE.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the study's outputs.", required=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.info("JAX devices: %s", jax.devices())
    try:
        reports = batch_study.run(_CONFIG.value, _WORKDIR.value)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    for name, path in reports.items():
        print(f"{name}: report {path}")


if __name__ == "__main__":
    app.run(main)
