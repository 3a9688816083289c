"""The rebuilt study floor gives the trials and results the binaries' configs gave before it
(recorded with commit 9b969af in golden_studies.json): the default grid, ASHA and PBT.

Each study runs in a fresh interpreter, as a binary does: in the long pytest process, after
some 450 other tests, XLA:CPU's compiler crashed (a segfault) while compiling the first of
these programs, which it compiles fine in a process of its own."""

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
