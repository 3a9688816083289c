"""RNN study: LSTM and GRU at 1, 2 and 3 layers on a random subset, then the best on all data.

  python experiments/rnn_study.py --workdir runs/rnn_study
  python experiments/rnn_study.py --workdir runs/rnn_study_2k --config.train_subset=2000

Writes workdir/subset and workdir/full (each a study workdir with summary.csv, report.md with
the diagnostics, plots/ and checkpoints/) and, in workdir, rnn_study.csv, plots/ and
rnn_report.md. A bad config exits with status 2 and one line before anything compiles.
"""

import sys

from absl import logging

from hpjax import cli
from hpjax.studies.rnn import NothingToRetrainError, run_rnn_study

_CONFIG, _WORKDIR = cli.define_flags(__file__, "rnn_study.py")


def main(argv):
    del argv  # parse_flags refuses extra arguments
    try:
        result = cli.run(run_rnn_study, _CONFIG.value, _WORKDIR.value)
    except NothingToRetrainError as error:  # every subset trial diverged
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    if "report" in result:  # process 0
        logging.info("rnn study outputs: %s", result)
        selected = ", ".join(f"{k}={v}" for k, v in result["selected"].items())
        print(f"selected: {selected}; table: {result['csv']}, report: {result['report']}")


if __name__ == "__main__":
    cli.main(main)
