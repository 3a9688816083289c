"""The guide's diagnostics fire on curves made to show them, with the right numbers, only there."""

import csv
import json
import math

import pytest

from hpjax.report.diagnostics import Diagnostic, Thresholds, diagnose_trial, diagnose_workdir

LN10 = math.log(10)


def curve(train, val, steps=None):
    """metrics.jsonl records of one trial from train and val loss lists."""
    steps = steps or [100 * (i + 1) for i in range(len(val))]
    return [
        {
            "trial": 0,
            "step": s,
            "epoch": s / 100,
            "examples_seen": 32 * s,
            "learning_rate": 0.01,
            "train_loss": t,
            "train_accuracy": None,
            "val_loss": v,
            "val_accuracy": None,
            "elapsed_s": 0.1 * s,
        }
        for s, t, v in zip(steps, train, val, strict=True)
    ]


def clean(n=20, gap=0.05):
    """Exponentially decreasing train loss, validation loss a small gap above it."""
    train = [2.0 * math.exp(-i / 4) + 0.3 for i in range(n)]
    return curve(train, [t + gap for t in train])


def oscillating(n=20):
    """Drops for 3 evaluations, then zig-zags between 0.4 and 0.6 without going lower."""
    val = [2.3, 1.2, 0.7] + [0.6 if i % 2 == 0 else 0.4 for i in range(n - 3)]
    return curve([v - 0.02 for v in val], val)


def kinds(diags):
    return [d.kind for d in diags]


def test_clean_curve_fires_nothing():
    assert (
        diagnose_trial(
            0, clean(), num_classes=10, status="early_stopped", hidden_units=64, input_dim=40
        )
        == []
    )


def test_clean_curve_with_small_evaluation_noise_fires_nothing():
    noisy = clean()
    for i, p in enumerate(noisy):
        p["val_loss"] *= 1 + 0.01 * (-1) ** i  # 1% jitter: below the 5% amplitude threshold
    assert diagnose_trial(0, noisy, num_classes=10, hidden_units=64, input_dim=40) == []


def test_oscillating_fires_with_its_numbers():
    diags = diagnose_trial(3, oscillating(), num_classes=10)
    assert kinds(diags) == ["oscillating"]
    d = diags[0]
    assert isinstance(d, Diagnostic) and d.trial == 3
    assert d.numbers["loss"] == "val_loss"
    assert d.numbers["sign_change_frac"] == 1.0
    # Last half = 10 values alternating 0.6/0.4: every change is 0.2, the mean level 0.5.
    assert d.numbers["rel_amplitude"] == pytest.approx(0.2 / 0.5)
    assert d.numbers["first_half_min"] == pytest.approx(0.4)
    assert d.numbers["last_quarter_min"] == pytest.approx(0.4)
    assert "decaying" in d.message and "Adam" in d.message and "40.0%" in d.message


def test_advice_leaves_out_what_the_trial_already_does():
    from hpjax.report.diagnostics import Setting

    adam_cosine = Setting(optimizer="adam", schedule="cosine", weight_decay=1.0, patience=10)
    (d,) = diagnose_trial(3, oscillating(), num_classes=10, setting=adam_cosine)
    assert "decaying" not in d.message and "Adam, Adagrad" not in d.message
    assert "lower its learning rate (it already uses a cosine schedule and adam)" in d.message
    (d,) = diagnose_trial(3, oscillating(), num_classes=10, setting=Setting(optimizer="sgd"))
    assert "decaying" in d.message and "adaptive optimizer" in d.message
    rising = [
        {
            "step": 10 * i,
            "train_loss": 1.0 - 0.05 * i,
            "val_loss": 0.8 - 0.05 * min(i, 6) + 0.05 * max(0, i - 6),
        }
        for i in range(14)
    ]
    (d,) = diagnose_trial(0, rising, num_classes=10, setting=adam_cosine)
    assert d.kind == "overfitting" and "more weight decay than its 1" in d.message
    assert "add weight decay" not in d.message and "stop early" not in d.message


def test_changes_within_the_noise_of_a_small_split_are_not_symptoms():
    """Alternating by 40% of its level oscillates on a large split, not on one of 16 examples
    (2/sqrt(16) = 50%)."""
    from hpjax.report.diagnostics import Setting

    assert kinds(
        diagnose_trial(3, oscillating(), num_classes=10, setting=Setting(val_examples=4000))
    ) == ["oscillating"]
    assert (
        diagnose_trial(
            3, oscillating(), num_classes=10, setting=Setting(val_examples=16, train_examples=16)
        )
        == []
    )


def test_oscillating_on_train_loss_when_validation_is_missing():
    c = oscillating()
    for p in c:
        p["val_loss"] = None
    diags = diagnose_trial(0, c, num_classes=10)
    assert kinds(diags) == ["oscillating"] and diags[0].numbers["loss"] == "train_loss"


def test_noisy_but_still_improving_curve_is_not_oscillating():
    val = [1.5 * math.exp(-i / 8) + 0.1 * (-1) ** i + 0.3 for i in range(24)]
    assert "oscillating" not in kinds(
        diagnose_trial(0, curve([v - 0.05 for v in val], val), num_classes=10)
    )


def test_oscillation_threshold_is_used():
    quiet = Thresholds(osc_rel_amplitude=0.5)  # the zig-zag's 40% is now below the threshold
    assert diagnose_trial(0, oscillating(), num_classes=10, thresholds=quiet) == []


def test_short_curve_is_not_judged_oscillating():
    assert diagnose_trial(0, oscillating(n=7), num_classes=10) == []


def test_not_learning_on_flat_loss_at_chance():
    train = [LN10 + 0.001 * (-1) ** i for i in range(12)]
    diags = diagnose_trial(1, curve(train, [t + 0.01 for t in train]), num_classes=10)
    assert kinds(diags) == ["not_learning"]
    n = diags[0].numbers
    assert n["best_loss"] == pytest.approx(LN10 - 0.001)
    assert n["chance_loss"] == pytest.approx(LN10)
    assert n["threshold"] == pytest.approx(0.9 * LN10)
    assert n["num_classes"] == 10
    assert "hidden units" in diags[0].message and "learning rate" in diags[0].message


def test_not_learning_uses_the_number_of_classes():
    train = [1.2] * 10  # far above 0.9 ln 2 = 0.62, far below 0.9 ln 10 = 2.07
    c = curve(train, train)
    assert kinds(diagnose_trial(0, c, num_classes=2)) == ["not_learning"]
    assert diagnose_trial(0, c, num_classes=10) == []


def test_overfitting_when_validation_rises_while_training_falls():
    train = [2.0 * math.exp(-i / 4) + 0.1 for i in range(16)]
    val = [2.0 * math.exp(-i / 4) + 0.4 for i in range(9)] + [0.0] * 7
    best = val[8]
    for j in range(7):
        val[9 + j] = best * (1 + 0.05 * (j + 1))  # rises to 1.35x its minimum
    diags = diagnose_trial(2, curve(train, val), num_classes=10)
    assert kinds(diags) == ["overfitting"]
    n = diags[0].numbers
    assert n["reason"] == "val_rising"
    assert n["best_step"] == 900 and n["best_val_loss"] == pytest.approx(best)
    assert n["final_val_loss"] == pytest.approx(best * 1.35)
    assert n["val_rise"] == pytest.approx(0.35)
    assert n["train_loss_at_best"] == pytest.approx(train[8])
    assert n["final_train_loss"] == pytest.approx(train[-1])
    assert "weight decay" in diags[0].message and "35%" in diags[0].message


def test_rising_validation_with_rising_training_is_not_overfitting():
    val = [1.0, 0.8, 0.6, 0.5, 0.55, 0.6, 0.65, 0.7]
    diags = diagnose_trial(0, curve([v - 0.05 for v in val], val), num_classes=10)
    assert "overfitting" not in kinds(diags)


def test_overfitting_on_a_large_final_gap():
    train = [2.0 * math.exp(-i / 3) + 0.05 for i in range(12)]
    val = [2.0 * math.exp(-i / 3) * 0.5 + 1.0 for i in range(12)]  # decreasing, never rising
    diags = diagnose_trial(0, curve(train, val), num_classes=10)
    assert kinds(diags) == ["overfitting"]
    n = diags[0].numbers
    assert n["reason"] == "gap"
    assert n["gap"] == pytest.approx(val[-1] - train[-1])
    assert n["gap_frac"] == pytest.approx((val[-1] - train[-1]) / val[-1])


def test_small_absolute_gap_is_not_overfitting():
    train = [0.5 * math.exp(-i / 3) + 0.01 for i in range(12)]
    val = [t + 0.03 for t in train]  # 75% of the val loss but only 0.03 nats
    assert diagnose_trial(0, curve(train, val), num_classes=10) == []


def test_too_few_units():
    diags = diagnose_trial(4, clean(), num_classes=10, hidden_units=16, input_dim=40)
    assert kinds(diags) == ["too_few_units"]
    assert diags[0].numbers == {"hidden_units": 16, "input_dim": 40}
    assert "16" in diags[0].message and "40" in diags[0].message
    per_layer = diagnose_trial(4, clean(), num_classes=10, hidden_units=[64, 16], input_dim=40)
    assert per_layer[0].numbers == {"hidden_units": [64, 16], "input_dim": 40}
    assert diagnose_trial(4, clean(), num_classes=10, hidden_units=40, input_dim=40) == []


def test_diverged_status():
    diags = diagnose_trial(5, clean(), num_classes=10, status="diverged")
    assert kinds(diags) == ["diverged"]
    assert diags[0].numbers == {"status": "diverged"}
    assert "learning rate" in diags[0].message


def test_diverged_on_null_loss_after_finite_values():
    c = clean(n=10)
    for p in c[6:]:
        p["train_loss"] = p["val_loss"] = None
    diags = diagnose_trial(5, c, num_classes=10, status="budget_exhausted")
    assert kinds(diags) == ["diverged"]
    n = diags[0].numbers
    assert n["first_nonfinite_step"] == 700
    assert n["last_finite_step"] == 600
    assert n["last_finite_loss"] == pytest.approx(c[5]["val_loss"] - 0.05)  # train comes first
    assert "700" in diags[0].message


def test_null_before_any_finite_value_is_not_divergence():
    c = clean()
    c[0]["train_loss"] = None  # e.g. an evaluation before the first update
    assert diagnose_trial(0, c, num_classes=10) == []


def write_workdir(path, trials):
    """trials: list of (summary overrides, curve)."""
    base = {
        "population": 0,
        "model": "mlp",
        "optimizer": "sgd",
        "schedule": "constant",
        "learning_rate": 0.01,
        "batch_size": 32,
        "seed": 0,
        "weight_decay": "",
        "num_params": 1000,
        "status": "early_stopped",
        "best_val_loss": 0.5,
        "best_val_accuracy": 0.8,
        "best_step": 100,
        "best_epoch": 1.0,
        "test_loss": 0.5,
        "test_accuracy": 0.8,
        "train_loss_at_best": 0.4,
        "final_train_loss": 0.3,
        "final_val_loss": 0.6,
        "steps": 100,
        "epochs": 1.0,
        "hidden_units": 64,
    }
    rows = []
    with open(path / "metrics.jsonl", "w") as f:
        for t, (over, c) in enumerate(trials):
            rows.append({"trial": t, **base, **over})
            for p in c:
                f.write(json.dumps({**p, "trial": t}) + "\n")
    with open(path / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    config = {
        "dataset": {"name": "mnist1d"},
        "model": {"name": "mlp", "hidden_units": 64},
        "optimizer": "sgd",
        "schedule": "constant",
        "patience": 5,
        "study": "lr_sweep",
    }
    (path / "config.json").write_text(json.dumps(config))


def test_diagnose_workdir(tmp_path):
    write_workdir(
        tmp_path,
        [
            ({}, clean()),
            ({}, oscillating()),
            ({"status": "diverged", "best_val_loss": ""}, clean(n=4)),
            ({"hidden_units": 16}, clean()),
            ({"model": "cnn", "hidden_units": 16}, clean()),  # the units rule is for dense models
        ],
    )
    got = [(d.trial, d.kind) for d in diagnose_workdir(tmp_path)]
    assert got == [(1, "oscillating"), (2, "diverged"), (3, "too_few_units")]


def test_diagnose_workdir_takes_classes_and_inputs_from_config(tmp_path):
    flat = curve([1.0] * 10, [1.0] * 10)
    write_workdir(tmp_path, [({"hidden_units": 50}, flat)])
    assert diagnose_workdir(tmp_path) == []  # mnist1d: 10 classes, 40 inputs
    config = json.loads((tmp_path / "config.json").read_text())
    config["dataset"] = {"name": "mine", "num_classes": 2, "input_dim": 60}
    (tmp_path / "config.json").write_text(json.dumps(config))
    got = diagnose_workdir(tmp_path)
    assert [d.kind for d in got] == ["not_learning", "too_few_units"]
    assert got[0].numbers["num_classes"] == 2 and got[1].numbers["input_dim"] == 60


def test_a_study_report_gives_no_advice_its_config_already_follows(tiny_config, tmp_path):
    """Adam, a cosine decay, weight decay and early stopping, as the default study: the report
    never tells a trial to adopt them, and says how noisy its validation loss is."""
    from hpjax.study.run import train_and_evaluate

    tiny_config.schedule = "cosine"
    tiny_config.weight_decays = (0.5,)
    tiny_config.learning_rates = (0.003, 0.3, 3.0, 30.0)  # the high ones misbehave
    tiny_config.make_report = True
    workdir = tmp_path / "study"
    train_and_evaluate(tiny_config, str(workdir))
    report = (workdir / "report.md").read_text()
    diagnostics = report[report.index("## Diagnostics") :]
    assert "Trial" in diagnostics  # something fired
    followed = ("decaying learning rate", "adaptive optimizer", "add weight decay", "stop early")
    assert not [advice for advice in followed if advice in diagnostics]
    assert "A validation loss is a mean over 80 examples" in diagnostics
