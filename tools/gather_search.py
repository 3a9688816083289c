"""Gather a search that several workers ran against one Optuna storage: one ``search.csv`` with a
row per finished trial (and the worker that trained it), ``search_report.md``,
``plots/search.png``, and the best trial's checkpoint in ``OUT/best/``.

    python tools/gather_search.py --storage postgresql://USER@HOST/DB --study_name search \\
        --workdirs runs/worker_a,runs/worker_b,runs/worker_c --out runs/search_gathered

Workdirs of other machines are read where you copied them (``rsync``); a finished trial whose
workdir is not given keeps a row with what the storage knows (its values and parameters).
"""

from __future__ import annotations

import argparse
import sys

from hpjax.errors import ConfigError
from hpjax.studies.search_outputs import gather


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True, help="the workers' --config.optuna_storage")
    parser.add_argument("--study_name", default="search", help="their --config.search.study_name")
    parser.add_argument("--workdirs", required=True, help="the workers' workdirs, comma separated")
    parser.add_argument("--out", required=True, help="where the gathered search is written")
    args = parser.parse_args(argv)
    workdirs = [w for w in args.workdirs.split(",") if w]
    try:
        paths = gather(args.storage, args.study_name, workdirs, args.out)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(", ".join(f"{name}: {path}" for name, path in paths.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
