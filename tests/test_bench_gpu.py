"""tools/bench_gpu.py runs where jax, flax, optax and numpy are, without ml-collections."""

import importlib.util
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The GPU machine's Python lacks these two: make importing them fail, then run the script.
WITHOUT = (
    "import runpy, sys; sys.modules['ml_collections'] = None; sys.modules['mnist1d'] = None; "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def test_one_command_measures_each_configuration_without_ml_collections(tmp_path):
    out = tmp_path / "bench.json"
    args = ["--models=mlp,gru", "--precisions=bf16", "--population_sizes=2", "--seconds=0.1"]
    args += ["--torch_seconds=0.2", "--torch_steps=5", f"--out={out}"]
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT, str(ROOT / "tools" / "bench_gpu.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = json.loads(out.read_text())
    assert [(r["model"], r["precision"], r["K"]) for r in table["jax"]] == [
        ("mlp", "bf16", 2),
        ("gru", "bf16", 2),
    ]
    for row in table["jax"]:
        assert row["trial_steps_per_s"] > 0 and row["compile_s"] > 0
        assert row["planned_mib"] > 0.1  # at least the two trials' parameters and Adam state
    has_torch = importlib.util.find_spec("torch") is not None
    assert len(table["torch"]) == (2 if has_torch else 0)
    assert ("not installed" in result.stdout) != has_torch
