"""Capacity sweep: hidden units x layers (channels x depth for a CNN), one population each.

  python experiments/capacity_sweep.py --workdir runs/capacity_mlp
  python experiments/capacity_sweep.py --workdir runs/capacity_cnn \
    --config experiments/configs/capacity_cnn.py

Writes the study's usual outputs (summary.csv, report.md with the diagnostics, plots/,
checkpoints/) and capacity.csv, plots/capacity.png and capacity_report.md. A bad config exits
with status 2 and one line before anything compiles.
"""

from absl import logging

from hpjax import cli
from hpjax.studies.capacity_study import run_capacity_study

_CONFIG, _WORKDIR = cli.define_flags(__file__, "capacity_sweep.py")


def main(argv):
    del argv  # parse_flags refuses extra arguments
    paths = cli.run(run_capacity_study, _CONFIG.value, _WORKDIR.value)
    if paths:  # process 0
        logging.info("capacity outputs: %s", paths)
        print(f"capacity table: {paths['csv']}, report: {paths['report']}, plot: {paths['plot']}")


if __name__ == "__main__":
    cli.main(main)
