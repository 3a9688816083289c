"""Serve a finished study's Optuna storage with optuna-dashboard on 127.0.0.1 and check, through
its HTTP API, that it lists every trial of ``summary.csv`` with its value; then stop it.

    python tools/optuna_dashboard_check.py WORKDIR [--storage sqlite:///WORKDIR/optuna.db]
    python tools/optuna_dashboard_check.py GATHERED --storage postgresql://... --study_name NAME

Without ``--storage`` it serves ``WORKDIR/optuna.log`` (the default record), else
``WORKDIR/optuna.db``. For a search (a directory with ``search.csv``: a worker's workdir or the
output of ``tools/gather_search.py``) it checks every row of ``search.csv`` by its Optuna trial
number, and counts the workers and the trials with intermediate values (the curves).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (127.0.0.1 only)
        return json.loads(response.read())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--storage", default="")
    parser.add_argument("--study_name", default="", help="the study to check, by name")
    parser.add_argument("--timeout_s", type=float, default=60.0)
    args = parser.parse_args(argv)
    workdir = os.path.abspath(args.workdir)
    storage = args.storage or os.path.join(workdir, "optuna.log")
    if not args.storage and not os.path.exists(storage):
        storage = f"sqlite:///{workdir}/optuna.db"
    search = os.path.exists(os.path.join(workdir, "search.csv"))
    key = "number" if search else "trial"
    with open(os.path.join(workdir, "search.csv" if search else "summary.csv"), newline="") as f:
        summary = list(csv.DictReader(f))
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from optuna_dashboard._cli import main; sys.exit(main())",
            storage,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + args.timeout_s
        studies = None
        while time.monotonic() < deadline:
            try:
                studies = get(f"{base}/studies")
                break
            except OSError:
                if server.poll() is not None:
                    print(f"optuna-dashboard exited: {server.stderr.read()[-500:]}")
                    return 1
                time.sleep(0.2)
        if studies is None:
            print("optuna-dashboard did not answer in time")
            return 1
        named = [s for s in studies["study_summaries"] if s["study_name"] == args.study_name]
        listed = named if args.study_name else studies["study_summaries"]
        if len(listed) != 1:
            names = [s["study_name"] for s in studies["study_summaries"]]
            print(f"expected one study named {args.study_name or '(any)'!r}; listed: {names}")
            return 1
        (study,) = listed
        detail = get(f"{base}/studies/{study['study_id']}?after=0")
        trials = detail["trials"]
        values, workers, curves = {}, set(), 0
        for trial in trials:
            attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
            number = trial["number"] if search else int(attrs["hpjax_trial"])
            values[number] = (trial["state"], trial.get("values"))
            workers.add(attrs.get("hpjax_worker"))
            curves += bool(trial.get("intermediate_values"))
        missing = [r[key] for r in summary if int(r[key]) not in values]
        wrong = []
        for row in summary:
            state, vals = values.get(int(row[key]), (None, None))
            if row["status"] not in ("diverged", "pruned") and row["best_val_loss"]:
                expected = float(row["best_val_loss"])
                if not vals or not math.isclose(float(vals[0]), expected, rel_tol=1e-5):
                    wrong.append((row[key], vals, expected))
        finished = [t for t in trials if t["state"] in ("Complete", "Pruned", "Fail")]
        print(
            f"optuna-dashboard on 127.0.0.1:{port}: study {study['study_name']!r}, "
            f"{len(trials)} trials listed, {len(summary)} in "
            f"{'search' if search else 'summary'}.csv, {len(missing)} missing, {len(wrong)} "
            f"with a wrong value"
            + (f"; {len(workers - {None})} workers, {curves} trials with curves" if search else "")
        )
        if search:  # a lost worker's trials are listed too (failed, each with its retry)
            return 0 if not missing and not wrong and len(finished) >= len(summary) else 1
        return 0 if not missing and not wrong and len(trials) == len(summary) else 1
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
