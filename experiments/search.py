"""Optuna's samplers proposing whole populations: each batch of trials trained as one program.

  python experiments/search.py --workdir runs/search_tpe
  python experiments/search.py --workdir runs/search_pareto \
    --config=experiments/configs/search.py:pareto

Writes round_NNN/ (each round a full study workdir), search.db (the Optuna study), search.csv,
plots/search.png and search_report.md. A bad config exits with status 2 and one line.
"""

from hpjax import cli
from hpjax.studies.search import run_search

_CONFIG, _WORKDIR = cli.define_flags(
    __file__,
    "search.py",
    "Search config file (path[:variant[,quick]]); override any key with --config.KEY=VALUE.",
)


def main(argv):
    del argv  # parse_flags refuses extra arguments
    rows = cli.run(run_search, _CONFIG.value, _WORKDIR.value)
    ok = [r for r in rows if r["status"] != "diverged" and r.get("best_val_loss") is not None]
    if ok:
        best = min(ok, key=lambda r: r["best_val_loss"])
        print(
            f"best of {len(rows)} trials: number {best['number']} learning_rate="
            f"{best['learning_rate']:.3g} best_val_loss={best['best_val_loss']:.4f} "
            f"(report: {_WORKDIR.value}/search_report.md)"
        )


if __name__ == "__main__":
    cli.main(main)
