"""RNN study: LSTM and GRU at 1, 2 and 3 layers on a random subset, then the best on all data.

  python experiments/rnn_study.py --workdir runs/rnn_study
  python experiments/rnn_study.py --workdir runs/rnn_study_2k --config.train_subset=2000

Writes workdir/subset and workdir/full (each a study workdir with summary.csv, report.md with
the diagnostics, plots/ and checkpoints/) and, in workdir, rnn_study.csv, plots/ and
rnn_report.md. A bad config exits with status 2 and one line before anything compiles.
"""

import sys

from hpjax import programs

if __name__ == "__main__":
    programs.run_program("rnn-study", sys.argv, __doc__)
