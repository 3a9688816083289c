"""Benchmark and demonstration: one search run by several workers through PostgreSQL, one of
them killed with SIGKILL mid-round and not restarted, against the same search by one worker.

Each worker is ``experiments/search.py`` in a process of its own, with the search config's
variant (the default: TPE over the learning rate and weight decay of the default MLP on
MNIST-1D), its own workdir, one storage URL and one study name. Printed: wall time of each run,
the study's complete trials, the diverged ones (told as failed), the trials lost with the killed
worker and how many of their retries finished, the points trained to completion twice, and the
best validation loss of the study against the best in the workers' ``search.csv``.

  python tools/bench_search_workers.py                        # 3 workers, 24 trials in rounds of 4
  python tools/bench_search_workers.py --num_steps 300 --workers 3 --kill 0
  python tools/bench_search_workers.py --storage postgresql://USER@HOST/DB   # your own server

Without ``--storage`` it starts a throwaway server (``tools/postgres_throwaway.sh``).
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import optuna

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(workdir: str, args, url: str, name: str) -> subprocess.Popen:
    flags = {
        "optuna_storage": url,
        "search.study_name": name,
        "search.num_trials": args.num_trials,
        "search.population": args.population,
        "search.heartbeat_s": 2,
        "search.grace_s": 10,
        "tensorboard": "off",
        "make_report": False,
    }
    if args.num_steps:
        flags["num_steps"] = args.num_steps
    return subprocess.Popen(
        [sys.executable, "experiments/search.py", f"--workdir={workdir}"]
        + [f"--config=hpjax/configs/search.py:{args.variant}"]
        + [f"--config.{k}={v}" for k, v in flags.items()],
        cwd=ROOT,
        stdout=open(workdir + ".log", "w"),  # noqa: SIM115 (the child writes it)
        stderr=subprocess.STDOUT,
    )


def run(args, url: str, workers: int, kill: int, root: str) -> dict:
    """One search by ``workers`` processes, ``kill`` of them killed after their first ask."""
    name = f"bench_{uuid.uuid4().hex[:8]}"
    workdirs = [os.path.join(root, f"{name}_{i}") for i in range(workers)]
    begin = time.perf_counter()
    procs = [start(w, args, url, name) for w in workdirs]
    for proc, workdir in list(zip(procs, workdirs, strict=True))[:kill]:
        while not os.path.exists(os.path.join(workdir, "round_000", "asked.json")):
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - begin
    if any(c != 0 for c in codes[kill:]):
        raise SystemExit(f"a worker failed: {codes}; logs next to {workdirs}")
    trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    complete = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    failed = [t for t in trials if t.state.name == "FAIL"]
    lost = [t for t in failed if t.number in retried]
    diverged = [t for t in failed if t.number not in retried]  # told FAIL by their worker
    points = [tuple(sorted(t.params.items())) for t in complete + diverged]
    rows = []
    for workdir in workdirs[kill:]:
        with open(os.path.join(workdir, "search.csv"), newline="") as f:
            rows += list(csv.DictReader(f))
    best_rows = min(float(r["best_val_loss"]) for r in rows if r["best_val_loss"])
    best_study = min(t.values[0] for t in complete if t.values)
    return {
        "workers": workers,
        "killed": kill,
        "wall_s": wall,
        "complete": len(complete),
        "diverged": len(diverged),
        "lost": len(lost),
        "retries_finished": sum(
            any(t.number in u.system_attrs.get("retry_history", []) for u in complete + diverged)
            for t in lost
        ),
        "trained_twice": len(points) - len(set(points)),
        "best_study": best_study,
        "best_rows": best_rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="")
    parser.add_argument("--variant", default="tpe")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kill", type=int, default=1)
    parser.add_argument("--num_trials", type=int, default=24)
    parser.add_argument("--population", type=int, default=4)
    parser.add_argument("--num_steps", type=int, default=0, help="0: the config's")
    parser.add_argument("--skip_one", action="store_true", help="skip the 1-worker reference")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="hpjax-workers-")
    url, server = args.storage, None
    if not url:
        server = tempfile.mkdtemp(prefix="hpjax-pg-")  # reachable by the postgres user
        script = os.path.join(ROOT, "tools", "postgres_throwaway.sh")
        url = subprocess.check_output(["bash", script, "start", server], text=True).strip()
    try:
        runs = [] if args.skip_one else [run(args, url, 1, 0, root)]
        runs.append(run(args, url, args.workers, args.kill, root))
    finally:
        if server:
            subprocess.run(["bash", script, "stop", server], check=False)
    print(
        f"{args.num_trials} trials of search variant {args.variant!r} in rounds of "
        f"{args.population}; workdirs under {root}"
    )
    print(
        "| workers | killed | wall s | complete | diverged | lost (retries finished) "
        "| trained twice | best (study) | best (search.csv) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        print(
            f"| {r['workers']} | {r['killed']} | {r['wall_s']:.1f} | {r['complete']} | "
            f"{r['diverged']} | {r['lost']} ({r['retries_finished']}) | {r['trained_twice']} | "
            f"{r['best_study']:.4f} | {r['best_rows']:.4f} |"
        )


if __name__ == "__main__":
    main()
