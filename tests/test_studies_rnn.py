"""The RNN study's selection, its full-data stage config and its outputs, on hand-made rows."""

import csv
import importlib.util
import json
import os
import subprocess
import sys

import ml_collections
import pytest

from hpjax.errors import ConfigError
from hpjax.results import files
from hpjax.studies import rnn as rnn_study

KEYS = ("cell", "num_layers")


def _row(trial, cell, layers, lr, seed, val, *, status="early_stopped", params=100):
    return {
        "trial": trial,
        "population": 0,
        "model": "rnn",
        "cell": cell,
        "num_layers": layers,
        "hidden_size": 8,
        "learning_rate": lr,
        "base_learning_rate": lr,
        "seed": seed,
        "num_params": params * layers,
        "status": status,
        "best_val_loss": val,
        "best_val_accuracy": None if val is None else 1 - val / 3,
        "best_step": 50,
        "best_epoch": 1.0,
        "test_accuracy": None if val is None else 1 - val / 3,
        "train_loss_at_best": None if val is None else val - 0.1,
        "final_train_loss": None if val is None else val - 0.2,
        "steps": 100,
        "epochs": 2.0,
    }


def _subset_rows():
    """LSTM and GRU x 1, 2, 3 layers x 2 rates x 2 seeds; the 2-layer GRU wins on the mean."""
    means = {
        ("lstm", 1): 1.0,
        ("lstm", 2): 0.9,
        ("lstm", 3): 0.95,
        ("gru", 1): 0.92,
        ("gru", 2): 0.85,
        ("gru", 3): 0.88,
    }
    rows, trial = [], 0
    for (cell, layers), mean in means.items():
        for lr in (0.003, 0.01):
            for seed, noise in ((0, -0.05), (1, 0.05)):
                val = mean + noise + (0.0 if lr == 0.01 else 0.2)
                rows.append(
                    _row(trial, cell, layers, lr, seed, val, params=120 if cell == "lstm" else 90)
                )
                trial += 1
    # A lucky single LSTM trial with the lowest loss of all, but a poor seed mean.
    rows.append(_row(trial, "lstm", 3, 0.03, 0, 0.70))
    rows.append(_row(trial + 1, "lstm", 3, 0.03, 1, 1.40))
    return rows


def test_select_best_uses_the_seed_mean_at_the_best_rate():
    table = rnn_study.compare(_subset_rows(), KEYS)
    assert len(table) == 6
    lstm3 = next(r for r in table if (r["cell"], r["num_layers"]) == ("lstm", 3))
    assert lstm3["val_loss"] == pytest.approx(0.70)  # its best single trial ...
    assert lstm3["mean_val_loss"] == pytest.approx(0.95)  # ... but its best seed mean is at 0.01
    best = rnn_study.select_best(table, KEYS)
    assert (best["cell"], best["num_layers"]) == ("gru", 2)
    assert best["learning_rate"] == 0.01
    assert best["mean_val_loss"] == pytest.approx(0.85)


def test_select_best_breaks_ties_by_fewer_parameters():
    rows = [
        _row(0, "lstm", 1, 0.01, 0, 0.5, params=200),
        _row(1, "gru", 1, 0.01, 0, 0.5, params=150),
    ]
    best = rnn_study.select_best(rnn_study.compare(rows, KEYS), KEYS)
    assert best["cell"] == "gru"


def test_select_best_skips_diverged_and_fails_when_nothing_is_left():
    rows = [
        _row(0, "lstm", 1, 0.1, 0, None, status="diverged"),
        _row(1, "gru", 1, 0.1, 0, 2.0),
    ]
    assert rnn_study.select_best(rnn_study.compare(rows, KEYS), KEYS)["cell"] == "gru"
    with pytest.raises(rnn_study.NothingToRetrainError, match="every trial diverged"):
        rnn_study.select_best(rnn_study.compare(rows[:1], KEYS), KEYS)


def _config(**overrides) -> ml_collections.ConfigDict:
    """The quick variant of experiments/configs/rnn_study.py, with ``overrides``."""
    path = os.path.join(os.path.dirname(__file__), "..", "experiments", "configs", "rnn_study.py")
    spec = importlib.util.spec_from_file_location("rnn_study_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("quick")
    for key, value in overrides.items():
        config[key] = value
    return config


def test_full_config_takes_the_best_architecture_and_all_data():
    config = _config(full_num_steps=300, full_lr_factors=(0.5, 1.0, 2.0), train_subset=500)
    best = {"cell": "lstm", "num_layers": 2, "learning_rate": 0.01}
    full = rnn_study.full_config(config, best, KEYS)
    assert full.train_subset == 0
    assert (full.model.cell, full.model.num_layers) == ("lstm", 2)
    assert not full.model_grid
    assert full.learning_rates == pytest.approx((0.005, 0.01, 0.02))
    assert full.num_steps == 300
    assert config.train_subset == 500 and config.model.cell == "gru"  # the input is untouched


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"train_subset": 0}, r"config\.train_subset=0 must be a positive number"),
        ({"full_lr_factors": (1.0, -2.0)}, r"config\.full_lr_factors=.* positive numbers"),
        ({"full_num_steps": -1}, r"config\.full_num_steps=-1 must be an integer >= 0"),
        ({"model_grid": ml_collections.ConfigDict()}, r"config\.model_grid is empty"),
        ({"train_subset": 10_000}, r"config\.train_subset=10000 asks for 10000 training examples"),
    ],
)
def test_study_specific_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        rnn_study.validate_rnn_study(_config(**overrides))


def test_not_an_rnn_is_refused():
    config = _config()
    config.model.name = "mlp"
    with pytest.raises(ConfigError, match=r"config\.model\.name='mlp' must be 'rnn'"):
        rnn_study.validate_rnn_study(config)


def _write_stage(path, rows, curves):
    os.makedirs(path, exist_ok=True)
    files.write_csv(os.path.join(path, "summary.csv"), rows, tuple(rows[0]))
    files.write_json(
        os.path.join(path, "config.json"), {"dataset": "mnist1d", "model": {"name": "rnn"}}
    )
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        for trial, points in curves.items():
            for step, train, val in points:
                record = {
                    "trial": trial,
                    "step": step,
                    "epoch": step / 10,
                    "train_loss": train,
                    "val_loss": val,
                }
                f.write(json.dumps(record) + "\n")


def test_outputs_from_hand_made_stages(tmp_path):
    workdir = str(tmp_path)
    sub = _subset_rows()
    curve = [(0, 2.3, 2.3), (50, 1.0, 1.1), (100, 0.8, 1.0)]
    _write_stage(os.path.join(workdir, "subset"), sub, {r["trial"]: curve for r in sub})
    full = [_row(0, "gru", 2, lr, 0, val) for lr, val in ((0.005, 0.6), (0.01, 0.5), (0.02, 0.55))]
    for i, row in enumerate(full):
        row["trial"] = i
    _write_stage(os.path.join(workdir, "full"), full, {i: curve for i in range(3)})
    paths = rnn_study.write_rnn_outputs(workdir, _config(), KEYS)
    with open(paths["csv"]) as f:
        table = list(csv.DictReader(f))
    assert [r["stage"] for r in table] == ["subset"] * 6 + ["full"]
    selected = [(r["stage"], r["cell"], r["num_layers"]) for r in table if r["selected"] == "True"]
    assert selected == [("subset", "gru", "2"), ("full", "gru", "2")]
    assert float(table[-1]["val_loss"]) == pytest.approx(0.5)
    for name in ("plot", "curves"):
        assert os.path.getsize(paths[name]) > 10_000
    text = open(paths["report"]).read()
    assert "Selected: gru layers=2" in text
    assert (
        "paired over seeds: gru layers=2 minus lstm layers=2 -0.05 [-0.05, -0.05] over 2 seeds, "
        "gru layers=2 lower in 2 of 2: gru layers=2 lower" in text
    )
    assert "trying the GRU paid off" in text
    assert "Depth (GRU): seed-mean validation loss by layers 1: 0.92, 2: 0.85, 3: 0.88" in text
    assert "subset/report.md" in text and "full/report.md" in text


def test_findings_say_undecided_when_the_seeds_do_not_separate_the_cells():
    rows = []
    for cell, vals in (("lstm", (1.0, 0.8, 0.9)), ("gru", (0.85, 0.9, 0.8))):
        for seed, val in enumerate(vals):
            rows.append(_row(len(rows), cell, 1, 0.01, seed, val))
    (sentence,) = rnn_study.findings(rnn_study.compare(rows, ("cell",)), ("cell",))
    assert "over 3 seeds, gru lower in 2 of 3: undecided (the interval holds 0)" in sentence
    assert "the seeds do not separate the two cells (undecided)" in sentence


# ------------------------------------------------------------------ the binary, end to end

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = os.path.join(ROOT, "experiments", "configs", "rnn_study.py") + ":quick"


def _run_binary(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    # The quick study's runs are tiny: compile them without LLVM's optimisations (faster).
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", "rnn_study.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_rnn_binary_end_to_end(tmp_path):
    workdir = str(tmp_path / "rnn")
    result = _run_binary("--workdir", workdir, "--config", QUICK)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(os.path.join(workdir, "rnn_study.csv")) as f:
        table = list(csv.DictReader(f))
    grid = _config().model_grid
    assert [r["stage"] for r in table] == ["subset"] * len(grid.cell) * len(grid.num_layers) + [
        "full"
    ]
    chosen = next(r for r in table if r["stage"] == "subset" and r["selected"] == "True")
    assert (table[-1]["cell"], table[-1]["num_layers"]) == (chosen["cell"], chosen["num_layers"])
    assert "selected: cell=" + chosen["cell"] in result.stdout
    with open(os.path.join(workdir, "subset", "config.json")) as f:
        assert json.load(f)["train_subset"] == _config().train_subset
    with open(os.path.join(workdir, "full", "config.json")) as f:
        assert json.load(f)["train_subset"] == 0
    for name in ("rnn_comparison.png", "rnn_curves.png"):
        assert os.path.getsize(os.path.join(workdir, "plots", name)) > 10_000
    assert "## Diagnostics" in open(os.path.join(workdir, "rnn_report.md")).read()
    for stage in ("subset", "full"):
        assert "## Diagnostics" in open(os.path.join(workdir, stage, "report.md")).read()


def test_rnn_binary_subset_larger_than_the_data_exits_2_with_one_line(tmp_path):
    workdir = str(tmp_path / "bad")
    result = _run_binary("--workdir", workdir, "--config", QUICK, "--config.train_subset=100000")
    assert result.returncode == 2, result.stderr[-2000:]
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        "error: config.train_subset=100000 asks for 100000 training examples but only 3600 "
        "are available after the validation split"
    ]
    assert not os.path.exists(workdir)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("cell", ("lstm", "transformer"), r"config\.model\.cell='transformer' is unknown"),
        ("num_layers", (1, 0), r"config\.model\.num_layers=0 must be an integer >= 1"),
        ("hidden_size", (-8,), r"config\.model\.hidden_size=-8 must be an integer >= 1"),
    ],
)
def test_bad_architectures_fail_before_anything_runs(tmp_path, key, value, message):
    config = _config()
    config.model_grid[key] = value
    with pytest.raises(ConfigError, match=message):
        rnn_study.run_rnn_study(config, str(tmp_path / "never"))
    assert not os.path.exists(tmp_path / "never")
