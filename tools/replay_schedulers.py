"""Replays schedulers on a finished dense study's own learning curves and prints what each finds.

  python tools/replay_schedulers.py WORKDIR
  python tools/replay_schedulers.py WORKDIR --schedulers "asha:eta=3,grace=300; median:warmup=500"

ASHA (hpjax's own class, as the live scheduler runs it), synchronous successive halving,
Optuna's successive halving, Hyperband, median and Wilcoxon pruners (Optuna's classes, driven
through an in-memory study), shorter patience and random search at equal budget, each over
the study's seeds and ``--orders`` arrival orders: the trial-steps spent, the regret against the
dense best, the pick's rank and test value, with the middle 95% of the replays. Writes
``replay.csv``, ``replay_runs.csv``, ``plots/replay_pareto.png`` and the report's section, and
prints the table with the time the replay took. Exit status 2 for a workdir that is not a
finished dense study or a bad setting.
"""

import argparse
import sys

from hpjax.errors import ConfigError
from hpjax.studies.replay import run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--schedulers", default="", help="NAME:KEY=VALUE,...; ... ('' = a grid)")
    parser.add_argument("--orders", type=int, default=10, help="arrival orders per seed")
    parser.add_argument("--slots", type=int, default=8, help="trials training at once")
    parser.add_argument("--seed", type=int, default=0, help="of the random arrival orders")
    parser.add_argument("--monitor", default="loss", help="the monitored validation value")
    args = parser.parse_args()
    try:
        result = run.replay(
            args.workdir,
            args.schedulers,
            orders=args.orders,
            slots=args.slots,
            seed=args.seed,
            monitor=args.monitor,
        )
    except (FileNotFoundError, ConfigError, ValueError) as error:
        print(f"replay_schedulers: {error}", file=sys.stderr)
        return 2
    width = max(len(r["scheduler"]) for r in result.rows)
    print(f"{'scheduler':<{width}} {'budget %':>9} {'regret %':>9} {'random %':>9} {'rank':>5}")
    for r in result.rows:
        print(
            f"{r['scheduler']:<{width}} {100 * r['budget_share']:>9.1f} {r['regret_pct']:>9.2f} "
            f"{r['random_regret_pct']:>9.2f} {r['median_rank']:>5g}"
        )
    print(run.closing_line(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
