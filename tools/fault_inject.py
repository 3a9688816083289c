"""Fault injection: kill a study at random moments, corrupt its checkpoints, run two at once.

Each case runs the learning-rate binary on a small study (an MLP on scikit-learn's digits, four
learning rates, state checkpoints every two evaluations) and checks that the final
``summary.csv`` and ``metrics.jsonl`` equal those of an uninterrupted run, or that the run
refused cleanly (exit status 2 and one ``error:`` line):

- kill: SIGKILL at a random moment, then the same command again;
- corrupt: SIGKILL once a state checkpoint exists, XOR random bytes into a random file of the
  saved state or best checkpoints, then the same command again; afterwards, random bytes of a
  finished trial's best checkpoint, which ``restore_best`` must refuse with a clear error;
- concurrent: two copies started together into one workdir.

    python tools/fault_inject.py --workdir /tmp/faults --kills 8 --corruptions 6 --concurrent 3
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "experiments", "lr_sweep.py")
STUDY = [
    "--config.dataset=digits",
    "--config.model.hidden_units=32",
    "--config.model.num_layers=2",
    "--config.learning_rates=(0.001,0.003,0.01,0.03)",
    "--config.weight_decays=(0.0,)",
    "--config.batch_size=32",
    "--config.num_steps=400",
    "--config.eval_every=20",
    "--config.patience=4",
    "--config.checkpoint_every=2",
    "--config.make_report=False",
]
VOLATILE = {"elapsed_s", "peak_memory_mb", "wall_s"}  # timings and measurements, not results


def start(workdir: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.Popen(
        [sys.executable, BINARY, f"--workdir={workdir}", *STUDY],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def finish(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    """The exit status and what the run said last: its ``error:`` line, else its last line of
    output."""
    out, err = process.communicate(timeout=timeout)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    said = errors or out.strip().splitlines() or ["(nothing)"]
    return process.returncode, said[-1][:300]


def results(workdir: str) -> tuple[list[dict], list[dict]]:
    """summary.csv rows and metrics.jsonl records without their timing columns."""
    with open(os.path.join(workdir, "summary.csv"), newline="") as f:
        summary = [{k: v for k, v in r.items() if k not in VOLATILE} for r in csv.DictReader(f)]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        metrics = [
            {k: v for k, v in json.loads(line).items() if k not in VOLATILE}
            for line in f
            if line.strip()
        ]
    return summary, metrics


def same(a, b) -> bool:
    """Identical results: every summary cell and metrics value equal, as written."""
    return a == b


def corrupt_random_file(directory: str, rng: random.Random) -> str | None:
    """XORs up to 4 KiB of a random non-empty file under ``directory``; returns its path."""
    candidates = [
        os.path.join(d, name)
        for d, _, names in os.walk(directory)
        for name in names
        if os.path.getsize(os.path.join(d, name)) > 0
    ]
    if not candidates:
        return None
    path = rng.choice(candidates)
    size = os.path.getsize(path)
    start_at = rng.randrange(size)
    length = min(4096, size - start_at)
    with open(path, "r+b") as f:
        f.seek(start_at)
        data = bytearray(f.read(length))
        for i in range(len(data)):
            data[i] ^= rng.randrange(1, 256)
        f.seek(start_at)
        f.write(bytes(data))
    return path


def wait_for_state(workdir: str, process: subprocess.Popen, limit_s: float) -> bool:
    deadline = time.monotonic() + limit_s
    state = os.path.join(workdir, "state")
    while time.monotonic() < deadline and process.poll() is None:
        steps = (
            [d for _, dirs, _ in os.walk(state) for d in dirs if d.isdigit()]
            if os.path.isdir(state)
            else []
        )
        if steps:
            return True
        time.sleep(0.05)
    return False


def restore_refuses(workdir: str, trial: int) -> tuple[bool, str]:
    """``restore_best`` on a corrupted best checkpoint: True when it raised ConfigError."""
    code = (
        "import sys, hpjax\n"
        "try:\n"
        f"    hpjax.restore_best({workdir!r}, {trial})\n"
        "except hpjax.ConfigError as e:\n"
        "    print('refused:', e); sys.exit(3)\n"
        "print('restored')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    return out.returncode in (0, 3), (out.stdout.strip() or out.stderr.strip()[-300:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--corruptions", type=int, default=6)
    parser.add_argument("--concurrent", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)

    reference_dir = os.path.join(args.workdir, "reference")
    begin = time.monotonic()
    code, line = finish(start(reference_dir))
    wall = time.monotonic() - begin
    if code != 0:
        print(f"reference run failed ({code}): {line}")
        return 1
    reference = results(reference_dir)
    print(f"reference: {len(reference[0])} trials, {len(reference[1])} metric rows, {wall:.1f} s")
    tally = {"kill": [0, 0, 0], "corrupt": [0, 0, 0], "concurrent": [0, 0, 0], "restore": [0, 0, 0]}

    def record(kind: str, outcome: str, detail: str) -> None:
        column = {"identical": 0, "refused": 1}.get(outcome, 2)
        tally[kind][column] += 1
        print(f"{kind}: {outcome}: {detail}")

    for i in range(args.kills):
        workdir = os.path.join(args.workdir, f"kill_{i}")
        process = start(workdir)
        delay = rng.uniform(0.5, wall)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        code, line = finish(start(workdir))
        ok = code == 0 and same(results(workdir), reference)
        record("kill", "identical" if ok else "DIFFERENT", f"killed after {delay:.1f} s, {line}")

    for i in range(args.corruptions):
        workdir = os.path.join(args.workdir, f"corrupt_{i}")
        process = start(workdir)
        wait_for_state(workdir, process, wall)
        time.sleep(rng.uniform(0.0, 1.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
        targets = [
            t
            for t in ("state", "state", "checkpoints")
            if any(files for _, _, files in os.walk(os.path.join(workdir, t)))
        ]
        if not targets:
            record("corrupt", "BAD", "no checkpoint was written before the kill")
            continue
        path = corrupt_random_file(os.path.join(workdir, rng.choice(targets)), rng)
        code, line = finish(start(workdir))
        where = os.path.relpath(path, workdir)
        if code == 0 and same(results(workdir), reference):
            record("corrupt", "identical", f"{where}")
        elif code == 2 and line:
            record("corrupt", "refused", f"{where}: {line}")
        else:
            record("corrupt", "BAD", f"{where}: exit {code}: {line}")

    for i in range(args.concurrent):
        workdir = os.path.join(args.workdir, f"concurrent_{i}")
        first, second = start(workdir), start(workdir)
        (code1, line1), (code2, line2) = finish(first), finish(second)
        codes = sorted((code1, code2))
        refusal = line2 if code2 else line1
        if codes == [0, 0] and same(results(workdir), reference):
            record("concurrent", "identical", "both finished (one after the other)")
        elif codes == [0, 2] and "in use by" in str(refusal) and same(results(workdir), reference):
            record("concurrent", "refused", f"one refused: {refusal}")
        else:
            record("concurrent", "BAD", f"exits {code1}, {code2}: {line1} / {line2}")

    best = os.path.join(args.workdir, "reference", "checkpoints")
    for trial in sorted(os.listdir(best))[: max(1, args.corruptions // 2)]:
        path = corrupt_random_file(os.path.join(best, trial), rng)
        clean, message = restore_refuses(reference_dir, int(trial.split("_")[1]))
        outcome = "refused" if message.startswith("refused") else "identical"
        record("restore", outcome if clean else "BAD", f"{os.path.relpath(path, best)}: {message}")

    print("\ncase        tried  identical  refused cleanly  bad")
    bad = 0
    for kind, (same_n, refused, wrong) in tally.items():
        print(f"{kind:<11} {same_n + refused + wrong:>5}  {same_n:>9}  {refused:>15}  {wrong:>3}")
        bad += wrong
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
