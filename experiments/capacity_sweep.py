"""Capacity sweep: hidden units x layers (channels x depth for a CNN), one population each.

  python experiments/capacity_sweep.py --workdir runs/capacity_mlp
  python experiments/capacity_sweep.py --workdir runs/capacity_cnn \
    --config experiments/configs/capacity_cnn.py

Writes the study's usual outputs (summary.csv, report.md with the diagnostics, plots/,
checkpoints/) and capacity.csv, plots/capacity.png and capacity_report.md. A bad config exits
with status 2 and one line before anything compiles.
"""

import sys

from hpjax import programs

if __name__ == "__main__":
    programs.run_program("capacity-sweep", sys.argv, __doc__)
