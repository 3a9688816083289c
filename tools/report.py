"""Regenerate the plots and report.md of a study's workdir.

Usage: python tools/report.py WORKDIR [--x learning_rate]
"""

from __future__ import annotations

import argparse
import os
import sys


def _import_report():
    """hpjax.report.study_report, from this checkout when hpjax is not installed."""
    try:
        from hpjax.report import study_report
    except ImportError:  # run from a checkout without `pip install -e .`
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from hpjax.report import study_report
    return study_report


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, rewrite the workdir's plots and report, print the report path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", help="a study's workdir (metrics.jsonl, summary.csv, ...)")
    parser.add_argument(
        "--x", default="learning_rate", help="hyperparameter for the x axis of the result plot"
    )
    args = parser.parse_args(argv)
    if not os.path.exists(os.path.join(args.workdir, "summary.csv")):
        parser.error(f"{args.workdir}: no summary.csv; is this a study's workdir?")
    study_report = _import_report()
    try:
        rows = study_report.read_workdir(args.workdir)[2]
    except ValueError as error:
        parser.error(str(error))
    if not rows:
        parser.error(f"{args.workdir}/summary.csv holds no trial rows (truncated?)")
    from hpjax.errors import disk_error_message

    try:
        print(study_report.default_report(args.workdir, x_hparam=args.x))
    except OSError as error:
        message = disk_error_message(error, args.workdir)
        if message is None:
            raise
        print(
            f"error: {message.replace('run the same command again to resume', 'rerun')}",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
