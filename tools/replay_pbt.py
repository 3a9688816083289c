"""Replays one member of a population-based-training study alone and checks it.

  python tools/replay_pbt.py WORKDIR TRIAL

Walks the member's lineage back through ``lineage.csv`` (whose state it continued, from which
tick, with which hyperparameters), retrains that chain as one trial, and prints its validation
loss at every evaluation next to the one recorded in ``metrics.jsonl``. Exit status 0 when all
agree within the tolerance, 1 when one does not, 2 for a workdir that is not a PBT study.
"""

import argparse
import sys

from hpjax.errors import ConfigError
from hpjax.studies import pbt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("trial", type=int)
    parser.add_argument("--rtol", type=float, default=1e-4)
    parser.add_argument(
        "--rows",
        type=int,
        default=0,
        help="rows of the replay's program (0 = as many as the study had: bit-identical kernels)",
    )
    args = parser.parse_args()
    try:
        rows = pbt.replay(args.workdir, args.trial, args.rows or None)
    except (FileNotFoundError, KeyError, ConfigError) as error:
        print(f"replay_pbt: {error}", file=sys.stderr)
        return 2
    worst = 0.0
    print(f"{'member':>6} {'step':>6} {'recorded':>12} {'replayed':>12}")
    for r in rows:
        recorded, replayed = r["recorded_val_loss"], r["replayed_val_loss"]
        worst = max(worst, abs(recorded - replayed) / max(abs(recorded), 1e-12))
        print(f"{r['member']:>6} {r['step']:>6} {recorded:>12.6f} {replayed:>12.6f}")
    members = sorted({r["member"] for r in rows}, key=[r["member"] for r in rows].index)
    print(
        f"trial {args.trial}: {len(rows)} evaluations along the lineage {members}; "
        f"largest relative difference {worst:.2e}"
    )
    return 0 if rows and worst <= args.rtol else 1


if __name__ == "__main__":
    sys.exit(main())
