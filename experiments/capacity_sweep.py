"""Capacity sweep: hidden units x layers (channels x depth for a CNN), one population each.

  python experiments/capacity_sweep.py --workdir runs/capacity_mlp
  python experiments/capacity_sweep.py --workdir runs/capacity_cnn \
    --config experiments/configs/capacity_cnn.py

Writes the study's usual outputs (summary.csv, report.md with the diagnostics, plots/,
checkpoints/) and capacity.csv, plots/capacity.png and capacity_report.md. A bad config exits
with status 2 and one line before anything compiles.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from hpjax import cli
from hpjax.capacity import run_capacity_study
from hpjax.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    os.path.join(os.path.dirname(__file__), "configs", "capacity_sweep.py"),
    "Study config file; override any key with --config.KEY=VALUE.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the study's outputs.", required=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.initialize_distributed(_CONFIG.value)
    try:
        paths = run_capacity_study(_CONFIG.value, _WORKDIR.value)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if paths:  # process 0
        logging.info("capacity outputs: %s", paths)
        print(f"capacity table: {paths['csv']}, report: {paths['report']}, plot: {paths['plot']}")


if __name__ == "__main__":
    app.run(main)
