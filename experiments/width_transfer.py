"""Width transfer: the best learning rate of an MLP (or CNN) at several widths, under the
standard parametrisation and μP; one population per width x parametrisation.

  python experiments/width_transfer.py --workdir runs/width_transfer
  python experiments/width_transfer.py --workdir /tmp/width_transfer_quick \
    --config experiments/configs/width_transfer.py:quick

Writes the study's usual outputs (summary.csv, report.md with the diagnostics, plots/,
checkpoints/) and width_transfer.csv, plots/width_transfer.png and width_transfer_report.md. A
bad config exits with status 2 and one line before anything compiles.
"""

import sys

from hpjax import programs

if __name__ == "__main__":
    programs.run_program("width-transfer", sys.argv, __doc__)
