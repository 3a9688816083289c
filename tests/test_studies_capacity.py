"""The capacity analysis on hand-made summaries: per-architecture rows, gaps, the guide's claims."""

import csv
import importlib.util
import os
import subprocess
import sys

import ml_collections
import pytest

from hpjax.errors import ConfigError
from hpjax.results import files
from hpjax.studies import capacity_study
from hpjax.studies.capacity import architecture_table, capacity_findings


def _row(trial, units, layers, lr, seed, val, train, *, status="budget_exhausted", test=0.5):
    return {
        "trial": trial,
        "population": 0,
        "model": "mlp",
        "hidden_units": units,
        "num_layers": layers,
        "learning_rate": lr,
        "base_learning_rate": lr,
        "seed": seed,
        "num_params": units * 10 * layers,
        "status": status,
        "best_val_loss": val,
        "best_val_accuracy": None if val is None else 1 - val / 3,
        "best_step": 100,
        "test_accuracy": test,
        "train_loss_at_best": train,
        "final_train_loss": None if train is None else train - 0.05,
        "input_dim": 40,
        "num_classes": 10,
    }


def _summary():
    """Two depths x three widths x two rates x two seeds, with the guide's shape built in."""
    rows, trial = [], 0
    # (units, layers) -> (val, train) at the good rate, seed 0; seed 1 adds 0.02 to val.
    shape = {
        (16, 2): (1.50, 1.45),
        (64, 2): (1.10, 0.95),
        (256, 2): (1.20, 0.60),
        (16, 3): (1.45, 1.42),
        (64, 3): (1.00, 0.85),
        (256, 3): (1.15, 0.50),
    }
    for (units, layers), (val, train) in shape.items():
        for lr in (0.001, 0.01):
            for seed in (0, 1):
                bad = 0.3 if lr == 0.01 else 0.0  # the larger rate is worse everywhere
                rows.append(_row(trial, units, layers, lr, seed, val + bad + 0.02 * seed, train))
                trial += 1
    return rows


def test_architecture_table_best_trial_gap_and_seed_mean():
    table = architecture_table(_summary(), ["num_layers", "hidden_units"])
    assert [(r["num_layers"], r["hidden_units"]) for r in table] == [
        (2, 16),
        (2, 64),
        (2, 256),
        (3, 16),
        (3, 64),
        (3, 256),
    ]
    row = table[1]  # 2 layers, 64 units
    assert row["trials"] == 4 and row["diverged"] == 0
    assert row["learning_rate"] == 0.001 and row["seed"] == 0
    assert row["val_loss"] == pytest.approx(1.10)
    assert row["train_loss"] == pytest.approx(0.95)
    assert row["gap"] == pytest.approx(0.15)
    assert row["num_params"] == 64 * 10 * 2
    # Mean over the two seeds at the best rate: val 1.10 and 1.12.
    assert row["seeds"] == 2 and row["mean_at_learning_rate"] == 0.001
    assert row["mean_val_loss"] == pytest.approx(1.11)
    assert row["std_val_loss"] == pytest.approx(0.01)
    assert row["mean_gap"] == pytest.approx(0.16)


def test_diverged_trials_are_skipped_and_counted():
    rows = [
        _row(0, 8, 1, 0.1, 0, None, None, status="diverged"),
        _row(1, 8, 1, 0.01, 0, 1.3, 1.0),
        _row(2, 16, 1, 0.1, 0, None, None, status="diverged"),
    ]
    table = architecture_table(rows, ["num_layers", "hidden_units"])
    assert table[0]["diverged"] == 1 and table[0]["val_loss"] == pytest.approx(1.3)
    assert table[1]["diverged"] == 1 and table[1]["val_loss"] is None
    assert table[1]["mean_val_loss"] is None and table[1]["trials"] == 1


def _finding(findings, start):
    """The finding whose claim starts with ``start``."""
    return next(f for f in findings if f.claim.startswith(start))


def test_findings_follow_the_numbers():
    table = architecture_table(_summary(), ["num_layers", "hidden_units"])
    findings = capacity_findings(table, "mlp", "hidden_units", input_dim=40)
    assert _finding(findings, "Capacity grows").verdict == "supported"
    overfit = _finding(findings, "Too much capacity overfits")
    assert overfit.verdict == "supported"  # gap 0.05 -> 0.6, and 256 units did worse than 64
    assert "lowest validation loss 1 at 64 units (wider did worse)" in overfit.evidence
    pull = _finding(findings, "If the model is not learning")
    assert pull.verdict == "supported" and "from 64 units" in pull.evidence
    assert _finding(findings, "Use more hidden units than inputs").verdict == "supported"
    three = _finding(findings, "Three layers")
    assert three.verdict == "supported"
    assert "three layers lower in 3 of 3 widths by more than the seeds' spread" in three.evidence


def test_depth_verdict_is_undecided_when_the_seeds_do_not_separate_the_depths():
    """Three layers lower on average, but one seed of three says the opposite: undecided."""
    rows, trial = [], 0
    for layers, vals in ((2, (1.00, 1.10, 1.20)), (3, (0.90, 1.00, 1.25))):
        for seed, val in enumerate(vals):
            rows.append(_row(trial, 64, layers, 0.001, seed, val, val - 0.1))
            trial += 1
    table = architecture_table(rows, ["num_layers", "hidden_units"])
    assert table[0]["seed_values"] == {0: 1.00, 1: 1.10, 2: 1.20}
    three = _finding(capacity_findings(table, "mlp", "hidden_units", input_dim=40), "Three")
    assert three.verdict == "undecided"
    assert "over 3 seeds, 3 layers lower in 2 of 3: undecided" in three.evidence
    # The same means with the seeds agreeing decide it.
    for r in rows[3:]:
        r["best_val_loss"] = {0: 0.95, 1: 1.05, 2: 1.15}[r["seed"]]
    table = architecture_table(rows, ["num_layers", "hidden_units"])
    three = _finding(capacity_findings(table, "mlp", "hidden_units", input_dim=40), "Three")
    assert three.verdict == "supported" and "3 layers lower in 3 of 3: 3 layers lower" in (
        three.evidence
    )


def test_findings_say_not_tested_or_not_supported():
    rows = [_row(0, 64, 2, 0.01, 0, 1.0, 0.9), _row(1, 64, 3, 0.01, 0, 1.2, 1.1)]
    table = architecture_table(rows, ["num_layers", "hidden_units"])
    findings = capacity_findings(table, "mlp", "hidden_units", input_dim=40)
    assert _finding(findings, "Capacity grows").verdict == "not tested"
    assert _finding(findings, "Use more hidden units").verdict == "not tested"
    assert _finding(findings, "Three layers").verdict == "undecided"  # one seed
    cnn = capacity_findings(table, "cnn", "channels")
    assert _finding(cnn, "For CNNs deeper is better").verdict == "not tested"


def test_cnn_deeper_is_better_finding():
    rows = []
    cells = [(8, 1, 1.0), (8, 2, 0.8), (8, 3, 0.6), (16, 1, 0.9), (16, 2, 0.7), (16, 3, 0.5)]
    for i, (channels, layers, val) in enumerate(cells):
        for seed, noise in enumerate((0.0, 0.01, -0.01)):
            v = val + noise * layers
            rows.append(
                {**_row(3 * i + seed, 0, layers, 0.01, seed, v, v - 0.1), "channels": channels}
            )
    table = architecture_table(rows, ["num_layers", "channels"])
    finding = _finding(capacity_findings(table, "cnn", "channels"), "For CNNs deeper")
    assert finding.verdict == "supported"
    assert "2 vs 1 layers: deeper lower in 2 of 2 widths" in finding.evidence


def _write_workdir(path, rows):
    os.makedirs(path, exist_ok=True)
    files.write_csv(os.path.join(path, "summary.csv"), rows, tuple(rows[0]))
    files.write_json(
        os.path.join(path, "config.json"),
        {
            "dataset": "mnist1d",
            "model": {"name": "mlp"},
            "model_grid": {"hidden_units": [16, 64, 256], "num_layers": [2, 3]},
        },
    )
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        f.write("")


def test_outputs_from_a_workdir(tmp_path):
    workdir = str(tmp_path / "study")
    _write_workdir(workdir, _summary())
    paths = capacity_study.write_capacity_outputs(workdir)
    with open(paths["csv"]) as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6 and {"gap", "num_params", "mean_val_loss"} <= set(table[0])
    assert os.path.getsize(paths["plot"]) > 10_000
    text = open(paths["report"]).read()
    for phrase in (
        "Three layers usually beat two",
        "too_few_units",
        "plots/capacity.png",
        "| 2 | 64 |",
        "**Setup.** Model: mlp",
        "Seeds: 0, 1.",
        "**undecided** means the seeds do not separate the two sides",
    ):
        assert phrase in text


def test_config_checks():
    config = ml_collections.ConfigDict(
        {"model": {"name": "mlp", "hidden_units": 8}, "model_grid": {"activation": ("relu",)}}
    )
    with pytest.raises(ConfigError, match="varies neither model.hidden_units nor model.num_layers"):
        capacity_study.validate_capacity_config(config)
    config.model.name = "bogus"
    with pytest.raises(ConfigError, match="has no capacity axis"):
        capacity_study.validate_capacity_config(config)


# ------------------------------------------------------------------ the binary, end to end

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_binary(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    # The quick study's runs are tiny: compile them without LLVM's optimisations (faster).
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", "capacity_sweep.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _config(name: str, variant: str | None = "quick") -> ml_collections.ConfigDict:
    path = os.path.join(ROOT, "experiments", "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def test_capacity_binary_end_to_end(tmp_path):
    workdir = str(tmp_path / "capacity")
    config = os.path.join(ROOT, "experiments", "configs", "capacity_sweep.py") + ":quick"
    result = _run_binary("--workdir", workdir, "--config", config)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(os.path.join(workdir, "capacity.csv")) as f:
        table = list(csv.DictReader(f))
    grid = _config("capacity_sweep").model_grid
    assert len(table) == len(grid.hidden_units) * len(grid.num_layers)
    assert all(
        float(r["gap"]) == pytest.approx(float(r["val_loss"]) - float(r["train_loss"]), abs=1e-4)
        for r in table
    )
    assert os.path.getsize(os.path.join(workdir, "plots", "capacity.png")) > 10_000
    text = open(os.path.join(workdir, "capacity_report.md")).read()
    assert "What the guide predicts" in text and "## Diagnostics" in text
    assert "## Diagnostics" in open(os.path.join(workdir, "report.md")).read()


@pytest.mark.parametrize(
    "name, key, values, message",
    [
        ("capacity_sweep", "hidden_units", (8, -4), r"config\.model\.hidden_units=-4 must be"),
        (
            "capacity_sweep",
            "num_layers",
            (0, 1),
            r"config\.model\.num_layers=0 must be an integer >= 1",
        ),
        ("capacity_cnn", "channels", (0,), r"config\.model\.channels=0 must be an integer >= 1"),
        (
            "capacity_cnn",
            "num_layers",
            (2, 6),
            r"num_layers=6 is too deep: after conv layer 6 the sequence has length 0",
        ),
    ],
)
def test_bad_architectures_fail_before_compiling(tmp_path, name, key, values, message):
    config = _config(name)
    config.model_grid[key] = values
    workdir = str(tmp_path / "never")
    with pytest.raises(ConfigError, match=message):
        capacity_study.run_capacity_study(config, workdir)
    assert not os.path.exists(workdir)


def test_a_grid_of_depths_at_one_width_is_plotted_against_depth(tmp_path, monkeypatch):
    from hpjax.report import figures
    from hpjax.studies import capacity_plot

    shown = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: shown.setdefault("fig", fig))
    table = [
        dict(num_layers=d, channels=32, val_loss=v, train_loss=0.01, gap=v - 0.01, seeds=1)
        for d, v in ((2, 0.12), (4, 0.08), (8, 0.07))
    ]
    capacity_plot.plot_capacity(table, "channels", str(tmp_path / "capacity.png"))
    left, right = shown["fig"].axes[:2]
    assert left.get_xlabel() == right.get_xlabel() == "num layers"
    (line,) = [ln for ln in left.get_lines() if ln.get_label() == "32 channels"]
    assert list(line.get_xdata()) == [2, 4, 8]
