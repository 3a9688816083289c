"""Serve a finished study's Optuna storage with optuna-dashboard on 127.0.0.1 and check, through
its HTTP API, that it lists every trial of ``summary.csv`` with its value; then stop it.

    python tools/optuna_dashboard_check.py WORKDIR [--storage sqlite:///WORKDIR/optuna.db]

Without ``--storage`` it serves ``WORKDIR/optuna.log`` (the default record), else
``WORKDIR/optuna.db``.
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
    parser.add_argument("--timeout_s", type=float, default=60.0)
    args = parser.parse_args(argv)
    workdir = os.path.abspath(args.workdir)
    storage = args.storage or os.path.join(workdir, "optuna.log")
    if not args.storage and not os.path.exists(storage):
        storage = f"sqlite:///{workdir}/optuna.db"
    with open(os.path.join(args.workdir, "summary.csv"), newline="") as f:
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
        (study,) = studies["study_summaries"]
        detail = get(f"{base}/studies/{study['study_id']}?after=0")
        trials = detail["trials"]
        values = {}
        for trial in trials:
            attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
            values[int(attrs["hpjax_trial"])] = (trial["state"], trial.get("values"))
        missing = [r["trial"] for r in summary if int(r["trial"]) not in values]
        wrong = []
        for row in summary:
            state, vals = values.get(int(row["trial"]), (None, None))
            if row["status"] != "diverged" and row["best_val_loss"]:
                expected = float(row["best_val_loss"])
                if not vals or not math.isclose(float(vals[0]), expected, rel_tol=1e-5):
                    wrong.append((row["trial"], vals, expected))
        print(
            f"optuna-dashboard on 127.0.0.1:{port}: study {study['study_name']!r}, "
            f"{len(trials)} trials listed, {len(summary)} in summary.csv, "
            f"{len(missing)} missing, {len(wrong)} with a wrong value"
        )
        return 0 if not missing and not wrong and len(trials) == len(summary) else 1
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
