"""Reading a workdir, plots, markdown tables, report.md and the tools/report.py command."""

import csv
import json
import math
import os
import subprocess
import sys

import pytest

from hpjax.report import figures, labels, markdown, study_report
from hpjax.report.diagnostics import Diagnostic
from hpjax.results import files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLUMNS = [
    "trial",
    "population",
    "model",
    "optimizer",
    "schedule",
    "learning_rate",
    "batch_size",
    "seed",
    "weight_decay",
    "num_params",
    "status",
    "best_val_loss",
    "best_val_accuracy",
    "best_step",
    "best_epoch",
    "test_loss",
    "test_accuracy",
    "train_loss_at_best",
    "final_train_loss",
    "final_val_loss",
    "steps",
    "epochs",
    "hidden_units",
]


def make_workdir(path, n_trials=4, diverged=(2,), evals=10):
    """A synthetic workdir: lr sweep x two batch sizes, some trials diverged (null losses)."""
    lrs = [0.001, 0.01, 0.1, 1.0]
    rows = []
    with open(path / "metrics.jsonl", "w") as f:
        for t in range(n_trials):
            lr, bs = lrs[t % 4], 32 if (t // 4) % 2 == 0 else 64
            floor = 0.3 + abs(math.log10(lr) + 2) * 0.1 + 0.001 * t
            best = None
            for i in range(evals):
                step = 50 * (i + 1)
                train = 2.3 * math.exp(-i / 3) + floor
                val = train + 0.05
                if t in diverged and i >= 3:
                    train = val = None
                if val is not None and (best is None or val < best[1]):
                    best = (step, val)
                f.write(
                    json.dumps(
                        {
                            "trial": t,
                            "step": step,
                            "epoch": step / 125,
                            "examples_seen": step * bs,
                            "learning_rate": lr,
                            "train_loss": train,
                            "train_accuracy": None,
                            "val_loss": val,
                            "val_accuracy": 0.5,
                            "elapsed_s": 0.01 * step,
                        }
                    )
                    + "\n"
                )
            rows.append(
                {
                    "trial": t,
                    "population": 0,
                    "model": "mlp",
                    "optimizer": "sgd",
                    "schedule": "constant",
                    "learning_rate": lr,
                    "batch_size": bs,
                    "seed": 0,
                    "weight_decay": "",
                    "num_params": 1234,
                    "status": "diverged" if t in diverged else "early_stopped",
                    "best_val_loss": best[1],
                    "best_val_accuracy": 0.5,
                    "best_step": best[0],
                    "best_epoch": best[0] / 125,
                    "test_loss": "" if t in diverged else best[1],
                    "test_accuracy": "" if t in diverged else 0.75,
                    "train_loss_at_best": best[1],
                    "final_train_loss": "",
                    "final_val_loss": "",
                    "steps": 50 * evals,
                    "epochs": 50 * evals / 125,
                    "hidden_units": 64,
                }
            )
    with open(path / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    config = {
        "dataset": {"name": "mnist1d"},
        "model": {"name": "mlp", "hidden_units": 64},
        "optimizer": {"name": "sgd"},
        "schedule": "constant",
        "patience": 5,
        "study": {"name": "lr_sweep", "description": "Learning rate against loss"},
    }
    (path / "config.json").write_text(json.dumps(config))
    return path


def assert_png(path):
    data = open(path, "rb").read()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


def test_read_summary_parses_types_and_empty_cells(tmp_path):
    make_workdir(tmp_path)
    rows = files.read_summary(tmp_path)
    assert len(rows) == 4
    r = rows[2]
    assert r["trial"] == 2 and isinstance(r["trial"], int)
    assert r["batch_size"] == 32 and isinstance(r["batch_size"], int)
    assert r["learning_rate"] == 0.1 and isinstance(r["learning_rate"], float)
    assert r["status"] == "diverged"
    assert r["weight_decay"] is None and r["test_loss"] is None
    assert isinstance(rows[0]["best_val_loss"], float) and rows[0]["best_epoch"] == 0.4 * 10


def test_read_summary_nonfinite_and_scientific(tmp_path):
    (tmp_path / "summary.csv").write_text("trial,lr,loss,cell\n7,1e-3,nan,lstm\n")
    assert files.read_summary(tmp_path) == [{"trial": 7, "lr": 0.001, "loss": None, "cell": "lstm"}]


def test_read_metrics_nulls_nan_and_truncated_last_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"trial": 0, "step": 1, "val_loss": null}\n'
        '{"trial": 0, "step": 2, "val_loss": NaN}\n\n'
        '{"trial": 0, "step": 3, "val_l'
    )
    assert files.read_metrics(tmp_path) == [
        {"trial": 0, "step": 1, "val_loss": None},
        {"trial": 0, "step": 2, "val_loss": None},
    ]
    (tmp_path / "metrics.jsonl").write_text('{"trial": 0\n{"trial": 1, "step": 1}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:1"):
        files.read_metrics(tmp_path)


def test_curves_by_trial_groups_and_sorts_by_step():
    metrics = [
        {"trial": 1, "step": 20},
        {"trial": 0, "step": 30},
        {"trial": 1, "step": 10},
        {"trial": 0, "step": 10},
    ]
    curves = files.curves_by_trial(metrics)
    assert list(curves) == [0, 1]
    assert [p["step"] for p in curves[0]] == [10, 30]
    assert [p["step"] for p in curves[1]] == [10, 20]


def test_markdown_table_exact():
    rows = [{"trial": 0, "lr": 0.012345, "status": "ok"}, {"trial": 1, "lr": None, "status": "a|b"}]
    assert markdown.markdown_table(rows, ["trial", "lr", "status"], floatfmt=".3g") == (
        "| trial | lr | status |\n|---:|---:|---|\n| 0 | 0.0123 | ok |\n| 1 |  | a\\|b |\n"
    )


def test_trial_label_names_varying_hyperparameters(tmp_path):
    rows = files.read_summary(make_workdir(tmp_path, n_trials=8))
    varying = labels.varying_hparams(rows)
    assert varying == ["learning_rate", "batch_size"]
    assert labels.trial_label(rows[5], varying) == "5: lr=0.01 bs=64"
    assert labels.trial_label(rows[2], varying) == "2: lr=0.1 bs=32 (diverged)"


def test_plot_learning_curves_with_nulls(tmp_path):
    make_workdir(tmp_path)
    metrics, summary = files.read_metrics(tmp_path), files.read_summary(tmp_path)
    assert any(p["val_loss"] is None for p in metrics)
    for x in ("step", "epoch", "examples_seen"):
        out = figures.plot_learning_curves(metrics, summary, tmp_path / f"lc_{x}.png", x=x)
        assert_png(out)


def test_plot_learning_curves_with_70_trials(tmp_path):
    make_workdir(tmp_path, n_trials=70, diverged=(2, 33))
    path = tmp_path / "plots" / "many.png"
    figures.plot_learning_curves(files.read_metrics(tmp_path), files.read_summary(tmp_path), path)
    assert_png(path)


def test_plot_learning_curves_without_data(tmp_path):
    assert_png(figures.plot_learning_curves([], [], tmp_path / "empty.png"))


def test_plot_hparam_grouped_with_diverged(tmp_path):
    summary = files.read_summary(make_workdir(tmp_path, n_trials=8, diverged=(3, 7)))
    path = figures.plot_hparam(
        summary, "learning_rate", "best_val_loss", tmp_path / "h.png", group_by="batch_size"
    )
    assert_png(path)


def test_plot_hparam_categorical_x(tmp_path):
    summary = [
        {"trial": 0, "cell": "lstm", "num_layers": 1, "best_val_loss": 0.5},
        {"trial": 1, "cell": "gru", "num_layers": 1, "best_val_loss": None},
        {"trial": 2, "cell": "gru", "num_layers": 2, "best_val_loss": 0.4},
    ]
    assert_png(
        figures.plot_hparam(
            summary, "cell", "best_val_loss", tmp_path / "c.png", group_by="num_layers"
        )
    )


def test_write_report_contains_tables_plots_and_diagnostics(tmp_path):
    make_workdir(tmp_path)
    rows = [{"trial": 0, "lr": 0.01}, {"trial": 1, "lr": 0.1}]
    diags = [
        Diagnostic("oscillating", 1, "Trial 1 oscillates: 40% zig-zag.", {}),
        Diagnostic("diverged", 2, "Trial 2 diverged at step 200.", {}),
    ]
    path = markdown.write_report(
        tmp_path,
        "My study",
        ["First line.", "Second line."],
        [("Trials", rows, ["trial", "lr"])],
        ["plots/learning_curves.png"],
        diags,
    )
    assert path == os.path.join(tmp_path, "report.md")
    text = open(path).read()
    assert text.startswith("# My study\n\nFirst line. Second line.\n")
    assert "**Best trial:** 1: lr=0.01: best validation loss 0.4" in text  # lowest in make_workdir
    assert "## Trials\n\n| trial | lr |\n|---:|---:|\n| 0 | 0.01 |\n| 1 | 0.1 |\n" in text
    assert "![learning curves](plots/learning_curves.png)" in text
    assert "- Trial 1 oscillates: 40% zig-zag." in text
    assert "- Trial 2 diverged at step 200." in text
    assert text.index("### Diverged") < text.index("### Oscillating")  # grouped, fixed order


def test_write_report_says_when_no_diagnostic_fired(tmp_path):
    text = open(markdown.write_report(tmp_path, "t", [], [], [], [], summary=[])).read()
    assert "## Diagnostics\n\nNone fired" in text


def test_write_report_caps_long_diagnostic_lists(tmp_path):
    diags = [Diagnostic("overfitting", t, f"Trial {t} overfits.", {}) for t in range(15)]
    text = open(markdown.write_report(tmp_path, "t", [], [], [], diags, summary=[])).read()
    assert "- Trial 9 overfits." in text and "- Trial 10 overfits." not in text
    assert "and 5 more (trials 10, 11, 12, 13, 14)" in text


def test_default_report(tmp_path):
    make_workdir(tmp_path, n_trials=8, diverged=(2,))
    path = study_report.default_report(tmp_path)
    text = open(path).read()
    assert_png(tmp_path / "plots" / "learning_curves.png")
    assert_png(tmp_path / "plots" / "learning_rate_vs_best_val_loss.png")
    assert "(plots/learning_curves.png)" in text
    assert "(plots/learning_rate_vs_best_val_loss.png)" in text
    assert "Learning rate against loss." in text and "`lr_sweep`" in text
    # Table sorted by best validation loss, the diverged trial last.
    table = text[text.index("| trial |") :].split("\n\n")[0].splitlines()[2:]
    order = [int(line.split("|")[1]) for line in table]
    summary = {r["trial"]: r for r in files.read_summary(tmp_path)}
    losses = [summary[t]["best_val_loss"] for t in order[:-1]]
    assert losses == sorted(losses) and order[-1] == 2 and len(order) == 8
    assert "Trial 2 diverged" in text


def test_tool_regenerates_report(tmp_path):
    make_workdir(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "report.py"),
            str(tmp_path),
            "--x",
            "batch_size",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == os.path.join(str(tmp_path), "report.md")
    assert (tmp_path / "report.md").exists()
    assert_png(tmp_path / "plots" / "batch_size_vs_best_val_loss.png")


def test_tool_rejects_a_directory_without_summary(tmp_path):
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "report.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "summary.csv" in done.stderr
    assert not (tmp_path / "report.md").exists()


def test_tool_on_a_workdir_it_cannot_write_is_one_line(tmp_path, monkeypatch, capsys):
    import errno
    import runpy

    make_workdir(tmp_path)
    tool = runpy.run_path(os.path.join(ROOT, "tools", "report.py"))

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(files, "write_text_atomic", read_only)
    monkeypatch.setattr(files, "write_markdown", read_only)
    assert tool["main"]([str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(
        f"error: cannot write to {str(tmp_path)!r}: the file system is read-only"
    )


def test_plots_of_a_sampled_space_keep_their_legends_short(tmp_path, monkeypatch):
    """48 trials over a sampled rate and weight decay, some pruned, one diverged: colour scales
    instead of a legend entry per value, pruned trials marked apart, a panel per hyperparameter."""
    import numpy as np

    from hpjax.report import figures

    rng = np.random.default_rng(0)
    summary, metrics = [], []
    for t in range(48):
        status = "diverged" if t == 0 else ("pruned" if t % 3 == 0 else "early_stopped")
        lr, wd = float(10 ** rng.uniform(-4, -1)), float(10 ** rng.uniform(-2, 1))
        best = None if t == 0 else float(rng.uniform(0.5, 2.0))
        summary.append(
            {
                "trial": t,
                "learning_rate": lr,
                "weight_decay": wd,
                "status": status,
                "best_val_loss": best,
                "best_step": 20,
            }
        )
        metrics += [
            {"trial": t, "step": s, "train_loss": 2.0 - s / 40, "val_loss": 2.1 - s / 40}
            for s in (0, 20, 40)
        ]
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.append(fig) or str(path))
    figures.plot_hparam(
        summary, "learning_rate", "best_val_loss", tmp_path / "a.png", group_by="weight_decay"
    )
    figures.plot_learning_curves(metrics, summary, tmp_path / "b.png")
    figures.plot_hparam_panels(
        summary, ["learning_rate", "weight_decay"], "best_val_loss", tmp_path / "c.png"
    )
    for fig in drawn:
        legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
        labels = [t.get_text() for legend in legends for t in legend.get_texts()]
        assert 0 < len(labels) <= 12, labels
        assert "pruned" in labels, labels
    assert any("weight decay" in ax.get_ylabel() for ax in drawn[0].axes)  # the colorbar
    # the learning curves: the 5 best trials drawn in full and named, the rest faint
    curves_legend = drawn[1].axes[0].get_legend().get_texts()
    named = [t.get_text() for t in curves_legend if t.get_text()[0].isdigit()]
    best = sorted((r["best_val_loss"], r["trial"]) for r in summary if r["best_val_loss"])[:5]
    assert [int(n.split(":")[0]) for n in named] == sorted(t for _, t in best)


def test_many_curves_are_coloured_by_what_varies_not_by_the_seed():
    from hpjax.report.figures import _trial_colours

    rows = {t: {"trial": t, "seed": t % 3, "dropout": 0.1 * (t // 3)} for t in range(18)}
    _, key, norm, _ = _trial_colours(list(rows), rows, ["seed", "dropout"], max_legend=12)
    assert key == "dropout" and norm.vmax == pytest.approx(0.5)
    seeds_only = {t: {"trial": t, "seed": t} for t in range(18)}
    _, key, _, _ = _trial_colours(list(seeds_only), seeds_only, ["seed"], max_legend=12)
    assert key == "seed"
