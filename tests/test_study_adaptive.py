"""Adaptive studies end to end: a queue through few slots, ASHA, resume, and the core property
for a trial that starts in a freed slot (also one whose previous trial diverged)."""

import json

import numpy as np
import pytest

from hpjax.results import files, optuna_storage
from hpjax.study.run import train_and_evaluate
from tests.conftest import Crash, CrashAtEvaluation

TRIALS = [
    {"learning_rate": 50.0, "seed": 0},  # diverges at once: its slot frees first
    {"learning_rate": 0.01, "seed": 1},
    {"learning_rate": 0.03, "seed": 2},  # takes the diverged trial's slot
    {"learning_rate": 0.003, "seed": 3},
    {"learning_rate": 0.1, "seed": 4},
]


def slot_config(tiny_config, trials=TRIALS, slots=2):
    config = tiny_config
    config.trials = json.dumps(trials)
    config.slots = slots
    config.num_steps = 60
    config.patience = 2
    return config


def curves(workdir):
    return {
        t: [(r["step"], r["val_loss"], r["train_loss"]) for r in rows]
        for t, rows in files.curves_by_trial(files.read_metrics(workdir)).items()
    }


def test_trials_in_refilled_slots_follow_their_trajectories_alone(tiny_config, tmp_path):
    rows = train_and_evaluate(slot_config(tiny_config), str(tmp_path / "slots"))
    assert [r["status"] for r in rows][0] == "diverged"
    together = curves(tmp_path / "slots")
    populations = files.read_csv(tmp_path / "slots" / "populations.csv", key="population")
    assert populations[0]["trials_started"] == len(TRIALS)
    for trial in range(len(TRIALS)):
        alone_dir = tmp_path / f"alone{trial}"
        alone_config = slot_config(tiny_config, [TRIALS[trial]], slots=0)
        alone = train_and_evaluate(alone_config, str(alone_dir))[0]
        mine = curves(alone_dir)[0]
        assert [s for s, _, _ in together[trial]] == [s for s, _, _ in mine]
        np.testing.assert_allclose(
            [v for _, v, _ in together[trial]], [v for _, v, _ in mine], rtol=2e-5, atol=1e-6
        )
        assert rows[trial]["status"] == alone["status"]
        assert rows[trial]["best_step"] == alone["best_step"]
        np.testing.assert_allclose(rows[trial]["test_loss"], alone["test_loss"], rtol=2e-5)


def test_queue_keeps_the_slots_busy_and_counts_trial_steps(tiny_config, tmp_path):
    config = slot_config(tiny_config, [{"learning_rate": 0.02, "seed": s} for s in range(6)])
    config.patience = 1
    rows = train_and_evaluate(config, str(tmp_path))
    (population,) = files.read_csv(tmp_path / "populations.csv", key="population")
    assert population["trial_steps"] == sum(r["steps"] for r in rows)
    assert 0 < population["training_fraction"] <= 1
    # two rows, six trials: never more than two trials train at once
    per_eval: dict[float, set] = {}
    for r in files.read_metrics(tmp_path):
        per_eval.setdefault(r["elapsed_s"], set()).add(r["trial"])
    assert len(rows) == 6 and all(r["steps"] > 0 for r in rows)


def test_asha_prunes_at_rungs_and_refills(tiny_config, tmp_path):
    rates = [0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 0.0001]
    config = slot_config(tiny_config, [{"learning_rate": r} for r in rates], slots=4)
    config.patience = 0
    config.num_steps = 90
    config.scheduler = "asha"
    config.asha.min_steps = 10
    config.asha.eta = 3
    config.make_report = True
    rows = train_and_evaluate(config, str(tmp_path))
    pruned = [r for r in rows if r["status"] == "pruned"]
    assert pruned, "ASHA pruned nothing"
    for r in pruned:
        assert r["rung"] in (10, 30) and r["steps"] == r["rung"]
    full = [r for r in rows if r["status"] != "pruned"]
    assert full and all(r["steps"] == 90 for r in full)
    # the best trial was never pruned
    best = min(rows, key=lambda r: r["best_val_loss"])
    assert best["status"] != "pruned"
    text = (tmp_path / "summary.csv").read_text()
    assert "pruned" in text and "rung" in text.splitlines()[0]
    report = (tmp_path / "report.md").read_text()
    assert "## ASHA rungs" in report and "through 4 slots, scheduler `asha`" in report
    optuna = pytest.importorskip("optuna")
    storage = optuna_storage.journal(str(tmp_path / "optuna.log"))
    (name,) = optuna.get_all_study_names(storage)
    states = [t.state for t in optuna.load_study(study_name=name, storage=storage).trials]
    assert states.count(optuna.trial.TrialState.PRUNED) == len(pruned)


# Four quick trials, then a slow one that trains alone at the end: the program shrinks to 1 row.
TAIL = [{"learning_rate": 0.3, "seed": s} for s in (0, 2, 3, 4)] + [{"learning_rate": 0.001}]


@pytest.mark.parametrize(
    "scheduler,crash_at,trials", [("none", 9, TRIALS), ("asha", 9, TRIALS), ("none", 14, TAIL)]
)
def test_a_crashed_adaptive_study_resumes_to_the_same_results(
    tiny_config, tmp_path, scheduler, crash_at, trials, caplog
):
    """Also after the tail of the study shrank the program (TAIL)."""

    def config():
        c = slot_config(tiny_config.copy_and_resolve_references(), trials)
        c.scheduler = scheduler
        c.asha.min_steps = 10
        c.checkpoint_every = 2
        return c

    with caplog.at_level("INFO"):
        reference = train_and_evaluate(config(), str(tmp_path / "reference"))
    assert "continuing in 1 rows" in caplog.text or trials is not TAIL
    caplog.clear()
    with pytest.raises(Crash):
        train_and_evaluate(config(), str(tmp_path / "resumed"), hooks=[CrashAtEvaluation(crash_at)])
    assert not (tmp_path / "resumed" / "summary.csv").exists()
    with caplog.at_level("INFO"):
        resumed = train_and_evaluate(config(), str(tmp_path / "resumed"))
    assert "resuming at tick" in caplog.text
    drop = ("peak_memory_mb", "memory_estimate_mb")
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed] == [
        {k: v for k, v in r.items() if k not in drop} for r in reference
    ]
    assert curves(tmp_path / "resumed") == curves(tmp_path / "reference")
