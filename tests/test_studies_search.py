"""Optuna's samplers proposing populations: batched ask, one program per round, tell."""

import csv
import json
import os

import optuna
import pytest

from hpjax.errors import ConfigError
from hpjax.studies.search import run_search
from hpjax.study.run import train_and_evaluate
from tests.conftest import load_config


def search_config(variant: str, tiny_npz: str):
    config = load_config_variant(variant)
    config.dataset = "npz"
    config.npz_path = tiny_npz
    config.num_steps = 40
    config.eval_every = 10
    config.log_every_s = 0.0
    config.make_report = False
    config.tensorboard = "off"
    return config


def load_config_variant(variant: str):
    return load_config("search", variant)


@pytest.fixture(scope="module")
def tpe_search(tiny_npz, tmp_path_factory):
    """A quick TPE search (6 trials in 2 rounds of 3), shared by the tests that read it."""
    config = search_config("tpe,quick", tiny_npz)
    workdir = str(tmp_path_factory.mktemp("tpe") / "search")
    return config, workdir, run_search(config, workdir)


def test_tpe_rounds_are_told_and_a_rerun_adds_nothing(tpe_search):
    config, workdir, rows = tpe_search
    assert [r["number"] for r in rows] == list(range(6)) and [r["round"] for r in rows] == [
        0,
        0,
        0,
        1,
        1,
        1,
    ]
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{workdir}/search.db")
    assert len(study.trials) == 6
    for trial, row in zip(sorted(study.trials, key=lambda t: t.number), rows, strict=True):
        assert trial.params["learning_rate"] == pytest.approx(row["learning_rate"])
        if row["status"] != "diverged":
            assert trial.value == pytest.approx(row["best_val_loss"], rel=1e-6)
    with open(os.path.join(workdir, "search.csv"), newline="") as f:
        assert [int(r["number"]) for r in csv.DictReader(f)] == list(range(6))
    assert os.path.exists(os.path.join(workdir, "plots", "search.png"))
    again = run_search(config, workdir)  # resumed: every round finished, nothing asked anew
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{workdir}/search.db")
    assert len(study.trials) == 6
    assert [r["best_val_loss"] for r in again] == pytest.approx([r["best_val_loss"] for r in rows])


def test_a_trial_of_a_round_equals_that_trial_alone(tpe_search, tmp_path):
    config, workdir, rows = tpe_search
    with open(os.path.join(workdir, "round_001", "asked.json")) as f:
        asked = json.load(f)
    for entry, row in zip(asked, rows[3:], strict=True):
        cfg = json.loads(json.dumps(config.to_dict()))
        alone_config = load_config_variant("tpe,quick")
        alone_config.update({k: v for k, v in cfg.items() if k != "search"})
        alone_config.trials = json.dumps([entry["params"]])
        alone_config.optuna_storage = "off"
        (alone,) = train_and_evaluate(alone_config, str(tmp_path / f"alone{entry['number']}"))
        assert (alone["status"], alone["best_step"]) == (row["status"], row["best_step"])
        assert alone["best_val_loss"] == pytest.approx(row["best_val_loss"], rel=1e-5)


def test_pareto_front_of_loss_and_parameters_is_not_dominated(tiny_npz, tmp_path):
    config = search_config("pareto,quick", tiny_npz)
    workdir = str(tmp_path / "pareto")
    rows = run_search(config, workdir)
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{workdir}/search.db")
    front = [t.values for t in study.best_trials]
    assert front
    for values in front:
        for other in (r for r in rows if r["status"] != "diverged"):
            dominates = other["best_val_loss"] < values[0] and other["num_params"] < values[1]
            assert not dominates
    with open(os.path.join(workdir, "search_report.md")) as f:
        assert "## Pareto front" in f.read()


@pytest.mark.parametrize(
    "path, value, match",
    [
        (("sampler",), "optuna_magic", "search.sampler='optuna_magic' is unknown; allowed"),
        (("space", "learning_rate"), (0.1, 0.001, "log"), "reversed or empty range"),
        (("space", "learning_rate"), (0.0, 0.1, "log"), "non-positive bound on a log scale"),
        (("space", "gradient_clip"), (0.1, 0.5, "linear"), "is not searchable"),
        (("num_trials",), 0, "must be a positive integer"),
    ],
)
def test_bad_search_config_is_one_line_and_touches_nothing(tiny_npz, tmp_path, path, value, match):
    config = search_config("tpe,quick", tiny_npz)
    target = config.search
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    with pytest.raises(ConfigError, match=match):
        run_search(config, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def test_a_server_that_is_down_when_a_worker_starts_is_one_line_without_its_password(
    tiny_npz, tmp_path
):
    """Issue 34: an OperationalError traceback from the advisory lock."""
    config = search_config("tpe,quick", tiny_npz)
    config.optuna_storage = "postgresql://hpjax:s3cret-pw@127.0.0.1:9/hpjax"
    with pytest.raises(ConfigError, match=r"postgresql://hpjax:\*\*\*@127.0.0.1:9/hpjax") as e:
        run_search(config, str(tmp_path / "w"))
    assert "s3cret-pw" not in str(e.value) and "cannot be reached" in str(e.value)
    assert not (tmp_path / "w").exists()


def test_every_variant_loads():
    for variant in ("tpe", "qmc", "random", "cmaes", "gp", "sequential", "pareto"):
        assert load_config_variant(variant).search.sampler.startswith("optuna_")


@pytest.mark.parametrize("variant", ["cmaes", "gp", "qmc"])
def test_every_sampler_runs_a_round_and_is_told(tiny_npz, tmp_path, variant):
    if variant == "gp":
        pytest.importorskip("torch", reason="Optuna's GP sampler needs torch")
    config = search_config(f"{variant},quick", tiny_npz)
    config.search.num_trials = 4
    config.search.population = 2
    rows = run_search(config, str(tmp_path / variant))
    study = optuna.load_study(
        study_name="search", storage=f"sqlite:///{tmp_path / variant}/search.db"
    )
    assert len(rows) == 4 and all(t.state.is_finished() for t in study.trials)


class _Killed(Exception):
    pass


@pytest.mark.parametrize("sampler, asked_before_kill", [("tpe", 0), ("tpe", 1), ("cmaes", 2)])
def test_a_search_killed_after_its_first_round_asks_what_the_uninterrupted_one_asked(
    tpe_search, tiny_npz, tmp_path, monkeypatch, sampler, asked_before_kill
):
    """Killed in round 1 after 0, 1 or 2 of its 3 trials were asked (before ``asked.json``):
    the resumed search takes the asked ones from the storage, asks the rest, and ends with the
    trials and ``search.csv`` of the uninterrupted search."""
    from hpjax.studies import search

    config = search_config(f"{sampler},quick", tiny_npz)
    if sampler == "tpe":
        _, reference_dir, reference = tpe_search
    else:
        reference_dir = str(tmp_path / "reference")
        reference = run_search(config, reference_dir)
    asks = {"count": 0}
    ask = optuna.Study.ask

    def ask_then_die(study, *args, **kwargs):
        if asks["count"] == 3 + asked_before_kill:  # round 0 asks 3
            raise _Killed
        asks["count"] += 1
        return ask(study, *args, **kwargs)

    workdir = str(tmp_path / "resumed")
    with monkeypatch.context() as patch:
        patch.setattr(optuna.Study, "ask", ask_then_die)
        with pytest.raises(_Killed):
            search.run_search(config, workdir)
    assert not os.path.exists(os.path.join(workdir, "round_001", "asked.json"))
    resumed = run_search(config, workdir)
    params = lambda rows: [(r["number"], r["learning_rate"], r["weight_decay"]) for r in rows]  # noqa: E731
    assert params(resumed) == params(reference)
    assert [r["best_val_loss"] for r in resumed] == [r["best_val_loss"] for r in reference]
    read = lambda w: [  # noqa: E731
        {k: v for k, v in r.items() if k not in ("elapsed_s", "time", "peak_memory_mb")}
        for r in csv.DictReader(open(os.path.join(w, "search.csv")))
    ]
    assert read(workdir) == read(reference_dir)
