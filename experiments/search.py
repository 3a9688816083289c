"""Optuna's samplers proposing whole populations: each batch of trials trained as one program.

  python experiments/search.py --workdir runs/search_tpe
  python experiments/search.py --workdir runs/search_pareto \
    --config=experiments/configs/search.py:pareto

Writes round_NNN/ (each round a full study workdir), search.db (the Optuna study), search.csv,
plots/search.png and search_report.md. A bad config exits with status 2 and one line.
"""

import sys

from hpjax import programs

if __name__ == "__main__":
    programs.run_program("search", sys.argv, __doc__)
