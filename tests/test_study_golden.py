"""The rebuilt study floor gives the trials and results the binaries' configs gave before it
(recorded with commit 9b969af in golden_studies.json): the default grid, ASHA and PBT."""

import json
import os

import pytest

from hpjax.study.run import train_and_evaluate
from tests import golden_studies

with open(os.path.join(os.path.dirname(__file__), "golden_studies.json")) as f:
    RECORDED = json.load(f)


@pytest.mark.parametrize("name", sorted(golden_studies.CONFIGS))
def test_a_study_gives_the_results_recorded_before_the_rebuild(name, tiny_npz, tmp_path):
    config = golden_studies.CONFIGS[name](tiny_npz)
    rows = golden_studies.results(train_and_evaluate(config, str(tmp_path / name)))
    recorded = RECORDED[name]
    assert [sorted(r) for r in rows] == [sorted(r) for r in recorded]
    for row, old in zip(rows, recorded, strict=True):
        for key, value in old.items():
            if isinstance(value, float):
                assert row[key] == pytest.approx(value, rel=1e-5), (name, row["trial"], key)
            else:
                assert row[key] == value, (name, row["trial"], key)
