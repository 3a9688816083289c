"""The fault-injection tool at a small size: a kill, a corruption, two runs at once and a
corrupted best checkpoint each end with identical results or a clean refusal."""

import subprocess
import sys

from tests.conftest import ROOT


def test_faults_end_identical_or_refused_cleanly(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "tools/fault_inject.py",
            f"--workdir={tmp_path}",
            "--kinds=plain",
            "--kills=1",
            "--corruptions=1",
            "--concurrent=1",
            "--seed=3",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    table = result.stdout.split("tried  identical")[1]
    for kind in ("kill plain", "corrupt", "concurrent", "restore"):
        row = next(line for line in table.splitlines() if line.startswith(kind)).split()
        tried, identical, refused, bad = map(int, row[-4:])
        assert tried >= 1 and identical + refused == tried and bad == 0, row
