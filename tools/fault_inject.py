"""Fault injection: kill every kind of study at random moments and at its checkpoint commits,
corrupt its checkpoints, run two at once.

Each kind runs an experiment binary on a small study (the digits, a small MLP, state
checkpoints every two evaluations) and checks that the final results (every ``summary.csv``,
``metrics.jsonl``, ``lineage.csv`` and ``search.csv`` under the workdir, timings left out)
equal those of an uninterrupted run, or that the run refused cleanly (exit status 2 and one
``error:`` line):

- kill (every kind): SIGKILL, then the same command again. The kills come at random moments,
  just after a state checkpoint is committed (for PBT those are exploit ticks; for ASHA, rung
  ticks; for a search, also between its rounds), or (every fourth) at a random moment of a run
  whose every checkpoint commit is delayed by a second, so that saves are in flight;
- corrupt (plain): SIGKILL once a state checkpoint exists, XOR random bytes into a random file
  of the saved state or best checkpoints, then the same command again; afterwards, random
  bytes of a finished trial's best checkpoint, which ``restore_best`` must refuse;
- concurrent (plain): two copies started together into one workdir.

Kinds: plain (a grid of rates), slots (quasi-random trials through few slots), asha, pbt,
search (Optuna's TPE, rounds of 3), extension (a finished study given more rates, killed while
it trains them), batch_size (the fixed-epochs batch-size study).

    python tools/fault_inject.py --workdir /tmp/faults --kills 10 --corruptions 6 --concurrent 3
    python tools/fault_inject.py --workdir /tmp/faults --kinds pbt,asha --kills 10
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = [
    "--config.dataset=digits",
    "--config.model.hidden_units=32",
    "--config.model.num_layers=2",
    "--config.batch_size=32",
    "--config.eval_every=20",
    "--config.checkpoint_every=2",
    "--config.make_report=False",
]
GRID = [
    "--config.learning_rates=(0.001,0.003,0.01,0.03)",
    "--config.weight_decays=(0.0,)",
    "--config.num_steps=400",
    "--config.patience=4",
]
LR_CONFIG = os.path.join(ROOT, "experiments", "configs", "lr_sweep.py")


@dataclasses.dataclass(frozen=True)
class Kind:
    binary: str
    args: tuple[str, ...]
    before: tuple[str, ...] = ()  # a first run that finishes before the one that is killed


KINDS = {
    "plain": Kind("lr_sweep.py", (*SMALL, *GRID)),
    "slots": Kind(
        "lr_sweep.py",
        (
            f"--config={LR_CONFIG}:quasi_random",
            *SMALL,
            "--config.num_samples=8",
            "--config.slots=3",
            "--config.num_steps=300",
            "--config.patience=3",
        ),
    ),
    "asha": Kind(
        "lr_sweep.py",
        (
            f"--config={LR_CONFIG}:asha",
            *SMALL,
            "--config.num_samples=8",
            "--config.slots=4",
            "--config.num_steps=320",
            "--config.asha.min_steps=40",
            "--config.asha.eta=2.0",
        ),
    ),
    "pbt": Kind(
        "lr_sweep.py",
        (
            f"--config={LR_CONFIG}:pbt",
            *SMALL,
            "--config.num_samples=4",
            "--config.num_steps=320",
            "--config.pbt.interval=40",  # every state checkpoint is at an exploit tick
        ),
    ),
    "search": Kind(
        "search.py",
        (
            "--config=" + os.path.join(ROOT, "experiments", "configs", "search.py") + ":tpe,quick",
            "--config.num_steps=200",
            "--config.checkpoint_every=2",
        ),
    ),
    "extension": Kind(
        "lr_sweep.py",
        (*SMALL, *GRID[1:], "--config.learning_rates=(0.001,0.003,0.01,0.03)"),
        before=(*SMALL, *GRID[1:], "--config.learning_rates=(0.001,0.03)"),
    ),
    "batch_size": Kind(
        "batch_size_study.py",
        (
            "--config="
            + os.path.join(ROOT, "experiments", "configs", "batch_size_study.py")
            + ":fixed_epochs,quick",
        ),
    ),
}
RESULT_FILES = ("summary.csv", "metrics.jsonl", "lineage.csv", "search.csv")
VOLATILE = {
    "elapsed_s",
    "time",
    "peak_memory_mb",
    "wall_s",
}  # timings and measurements, not results


# Runs a binary with Orbax's commit of every checkpoint delayed (the background thread sleeps
# before it finalizes), so that kills land while saves are still being written.
SLOW_WRITES = """
import runpy, sys, time
import orbax.checkpoint as ocp
finalize = ocp.CompositeCheckpointHandler.finalize
def slow(self, directory):
    time.sleep({delay})
    return finalize(self, directory)
ocp.CompositeCheckpointHandler.finalize = slow
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def start(
    kind: Kind, workdir: str, args: tuple[str, ...] | None = None, slow_writes: float = 0.0
) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=ROOT)
    binary = os.path.join(ROOT, "experiments", kind.binary)
    wrapper = ["-c", SLOW_WRITES.format(delay=slow_writes), binary] if slow_writes else [binary]
    return subprocess.Popen(
        [sys.executable, *wrapper, f"--workdir={workdir}", *(kind.args if args is None else args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def finish(process: subprocess.Popen, timeout: float = 900) -> tuple[int, str]:
    """The exit status and what the run said last: its ``error:`` line, else its last line of
    output."""
    out, err = process.communicate(timeout=timeout)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    said = errors or out.strip().splitlines() or ["(nothing)"]
    return process.returncode, said[-1][:300]


def prepare(kind: Kind, workdir: str, base: str | None) -> None:
    """The workdir as the killed command finds it: empty, or the finished first run."""
    shutil.rmtree(workdir, ignore_errors=True)
    if base is not None:
        shutil.copytree(base, workdir)


def _rows(path: str) -> list[dict]:
    if path.endswith(".jsonl"):
        with open(path) as f:
            records = [json.loads(line) for line in f if line.strip()]
    else:
        with open(path, newline="") as f:
            records = list(csv.DictReader(f))
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]


def results(workdir: str) -> dict[str, list[dict]]:
    """Every result file under the workdir, by relative path, without timing columns."""
    found = {}
    for directory, _, names in os.walk(workdir):
        for name in names:
            if name in RESULT_FILES:
                path = os.path.join(directory, name)
                found[os.path.relpath(path, workdir)] = _rows(path)
    return found


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


def committed_checkpoints(workdir: str) -> set[str]:
    """The state checkpoints committed so far (any population, any round)."""
    return {
        os.path.join(d, name)
        for d, dirs, _ in os.walk(workdir)
        if os.path.basename(os.path.dirname(d)) == "state"
        for name in dirs
        if name.isdigit() and os.path.exists(os.path.join(d, name, "commit_success.txt"))
    }


def wait_for_commit(workdir: str, process: subprocess.Popen, limit_s: float, nth: int) -> bool:
    """Waits until ``nth`` state checkpoints have been committed (or the run ends)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and process.poll() is None:
        if len(committed_checkpoints(workdir)) >= nth:
            return True
        time.sleep(0.02)
    return False


def restore_refuses(workdir: str, trials: list[int]) -> tuple[bool, str]:
    """``restore_best`` of each trial of a corrupted best checkpoint: True when every one
    restored or raised ConfigError; the message says which were refused."""
    code = (
        "import sys, hpjax\n"
        "refused = []\n"
        f"for trial in {trials!r}:\n"
        "    try:\n"
        f"        hpjax.restore_best({workdir!r}, trial)\n"
        "    except hpjax.ConfigError as e:\n"
        "        refused.append(f'trial {trial}: {e}')\n"
        "print('refused: ' + '; '.join(refused) if refused else 'restored')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    return out.returncode == 0, (out.stdout.strip() or out.stderr.strip()[-300:])


class Tally:
    def __init__(self):
        self.rows: dict[str, list[int]] = {}

    def record(self, case: str, outcome: str, detail: str) -> None:
        column = {"identical": 0, "refused": 1}.get(outcome, 2)
        self.rows.setdefault(case, [0, 0, 0])[column] += 1
        print(f"{case}: {outcome}: {detail}", flush=True)

    def print(self) -> int:
        print("\ncase              tried  identical  refused cleanly  bad")
        bad = 0
        for case, (same, refused, wrong) in self.rows.items():
            print(f"{case:<17} {same + refused + wrong:>5}  {same:>9}  {refused:>15}  {wrong:>3}")
            bad += wrong
        return bad


_REFERENCES: dict[str, tuple[dict, float, str | None]] = {}


def reference_run(name: str, kind: Kind, root: str) -> tuple[dict, float, str | None]:
    """The uninterrupted run's results and wall time, and the finished first run to start
    from (extension); run once per kind."""
    if name not in _REFERENCES:
        _REFERENCES[name] = _reference_run(name, kind, root)
    return _REFERENCES[name]


def _reference_run(name: str, kind: Kind, root: str) -> tuple[dict, float, str | None]:
    base = None
    if kind.before:
        base = os.path.join(root, f"{name}_base")
        code, line = finish(start(kind, base, kind.before))
        if code != 0:
            raise SystemExit(f"{name}: first run failed ({code}): {line}")
    workdir = os.path.join(root, f"{name}_reference")
    prepare(kind, workdir, base)
    began = time.monotonic()
    code, line = finish(start(kind, workdir))
    wall = time.monotonic() - began
    if code != 0:
        raise SystemExit(f"{name}: reference run failed ({code}): {line}")
    reference = results(workdir)
    rows = sum(len(v) for v in reference.values())
    print(f"{name} reference: {len(reference)} result files, {rows} rows, {wall:.1f} s", flush=True)
    return reference, wall, base


def kills(name, kind, count, root, rng, tally) -> None:
    reference, wall, base = reference_run(name, kind, root)
    for i in range(count):
        workdir = os.path.join(root, f"{name}_kill_{i}")
        prepare(kind, workdir, base)
        before = len(committed_checkpoints(workdir))
        slow = i % 4 == 3  # every fourth kill: while slow background writes are in flight
        process = start(kind, workdir, slow_writes=1.0 if slow else 0.0)
        if slow:
            delay = rng.uniform(0.5, wall)
            when = f"after {delay:.1f} s, each checkpoint's commit delayed by 1 s"
            time.sleep(delay)
        elif i % 2:
            when = f"after state checkpoint {i // 2 + 1}"
            if not wait_for_commit(workdir, process, wall + 60, before + i // 2 + 1):
                when += " (the run ended first)"
            time.sleep(rng.uniform(0.0, 0.2))
        else:
            delay = rng.uniform(0.5, wall)
            when = f"after {delay:.1f} s"
            time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        code, line = finish(start(kind, workdir))
        if code == 0 and results(workdir) == reference:
            tally.record(f"kill {name}", "identical", f"killed {when}")
        elif code == 2:
            tally.record(f"kill {name}", "refused", f"killed {when}: {line}")
        else:
            tally.record(f"kill {name}", "DIFFERENT", f"killed {when}: exit {code}: {line}")


def corruptions(count, root, rng, tally) -> None:
    kind = KINDS["plain"]
    reference, wall, _ = reference_run("plain", kind, root)
    for i in range(count):
        workdir = os.path.join(root, f"corrupt_{i}")
        process = start(kind, workdir)
        wait_for_commit(workdir, process, wall + 60, 1)
        time.sleep(rng.uniform(0.0, 1.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
        targets = [
            t
            for t in ("state", "state", "checkpoints")
            if any(files for _, _, files in os.walk(os.path.join(workdir, t)))
        ]
        if not targets:
            tally.record("corrupt", "BAD", "no checkpoint was written before the kill")
            continue
        path = corrupt_random_file(os.path.join(workdir, rng.choice(targets)), rng)
        code, line = finish(start(kind, workdir))
        where = os.path.relpath(path, workdir)
        if code == 0 and results(workdir) == reference:
            tally.record("corrupt", "identical", where)
        elif code == 2 and line:
            tally.record("corrupt", "refused", f"{where}: {line}")
        else:
            tally.record("corrupt", "BAD", f"{where}: exit {code}: {line}")
    reference_dir = os.path.join(root, "plain_reference")
    trials_of = {}
    with open(os.path.join(reference_dir, "summary.csv")) as f:
        summary = list(csv.DictReader(f))
    for row in summary:
        trials_of.setdefault(f"population_{row['population']}", []).append(int(row["trial"]))
    for population in sorted(trials_of)[: max(1, count // 2)]:
        corrupt_random_file(os.path.join(reference_dir, "checkpoints", population), rng)
        clean, message = restore_refuses(reference_dir, trials_of[population])
        outcome = "refused" if message.startswith("refused") else "identical"
        tally.record("restore", outcome if clean else "BAD", f"{population}: {message}")


def concurrent(count, root, tally) -> None:
    kind = KINDS["plain"]
    reference, _, _ = reference_run("plain", kind, root)
    for i in range(count):
        workdir = os.path.join(root, f"concurrent_{i}")
        first, second = start(kind, workdir), start(kind, workdir)
        (code1, line1), (code2, line2) = finish(first), finish(second)
        codes = sorted((code1, code2))
        refusal = line2 if code2 else line1
        if codes == [0, 0] and results(workdir) == reference:
            tally.record("concurrent", "identical", "both finished (one after the other)")
        elif codes == [0, 2] and "in use by" in str(refusal) and results(workdir) == reference:
            tally.record("concurrent", "refused", f"one refused: {refusal}")
        else:
            tally.record("concurrent", "BAD", f"exits {code1}, {code2}: {line1} / {line2}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated study kinds")
    parser.add_argument("--kills", type=int, default=10, help="per kind")
    parser.add_argument("--corruptions", type=int, default=6)
    parser.add_argument("--concurrent", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    unknown = set(args.kinds.split(",")) - set(KINDS)
    if unknown:
        parser.error(f"--kinds: unknown {sorted(unknown)}; allowed: {', '.join(KINDS)}")
    rng = random.Random(args.seed)
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    tally = Tally()
    for name in args.kinds.split(","):
        if args.kills:
            kills(name, KINDS[name], args.kills, args.workdir, rng, tally)
    if args.corruptions:
        corruptions(args.corruptions, args.workdir, rng, tally)
    if args.concurrent:
        concurrent(args.concurrent, args.workdir, tally)
    return 1 if tally.print() else 0


if __name__ == "__main__":
    sys.exit(main())
