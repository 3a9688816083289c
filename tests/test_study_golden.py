"""The rebuilt study floor gives the trials and results the binaries' configs gave before it
(recorded with commit 9b969af in golden_studies.json): the default grid, ASHA and PBT.

Each study runs in a fresh interpreter, as a binary does: in the long pytest process, after
some 450 other tests, XLA:CPU's compiler crashed (a segfault) while compiling the first of
these programs, which it compiles fine in a process of its own."""

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from tests import golden_studies
from tests.conftest import ROOT

with open(os.path.join(os.path.dirname(__file__), "golden_studies.json")) as f:
    RECORDED = json.load(f)

RUN = """
import json, sys
from hpjax.study.run import train_and_evaluate
from tests import golden_studies
name, npz, workdir = sys.argv[1:]
rows = train_and_evaluate(golden_studies.CONFIGS[name](npz), workdir)
print(json.dumps(golden_studies.results(rows)))
"""


@pytest.mark.parametrize("name", sorted(golden_studies.CONFIGS))
def test_a_study_gives_the_results_recorded_before_the_rebuild(name, tiny_npz, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", RUN, name, tiny_npz, str(tmp_path / name)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    recorded = RECORDED[name]
    assert [sorted(r) for r in rows] == [sorted(r) for r in recorded]
    for row, old in zip(rows, recorded, strict=True):
        for key, value in old.items():
            if isinstance(value, float):
                assert row[key] == pytest.approx(value, rel=1e-5), (name, row["trial"], key)
            else:
                assert row[key] == value, (name, row["trial"], key)


GROUPED = """
import sys
import numpy as np
from hpjax.engine import population
from hpjax.study.run import train_and_evaluate
from tests import golden_studies
npz, workdir, grouped = sys.argv[1:]
assert population.rows_per_group(130, 1) == population.CPU_ROWS_PER_GROUP
if grouped == "0":
    population.GROUPED_ABOVE = 10**9  # all 130 rows at once
config = golden_studies.default_study(npz)
config.learning_rates = tuple(float(r) for r in np.geomspace(1e-3, 1.0, 130))
train_and_evaluate(config, workdir)
"""


def test_a_study_of_many_rows_trained_in_groups_writes_the_same_summary(tiny_npz, tmp_path):
    """130 trials on one CPU device train as groups of rows (5 of 26): every trial's results
    are those of all rows at once, to float rounding (XLA may sum a batched matmul in another
    order for another number of rows, as for a population of another size)."""
    summaries = []
    for grouped in ("1", "0"):
        workdir = tmp_path / f"grouped_{grouped}"
        result = subprocess.run(
            [sys.executable, "-c", GROUPED, tiny_npz, str(workdir), grouped],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        summaries.append(list(csv.DictReader(io.StringIO((workdir / "summary.csv").read_text()))))
    grouped, together = summaries
    assert len(grouped) == 130 and len({r["best_val_loss"] for r in grouped}) > 100
    for a, b in zip(grouped, together, strict=True):
        assert a.keys() == b.keys()
        for key in ("status", "best_step", "steps", "learning_rate"):
            assert a[key] == b[key], (a["trial"], key)
        for key in ("best_val_loss", "best_val_accuracy", "test_loss", "final_val_loss"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4, abs=1e-6), key
