"""Search workers sharing one Optuna study through a real PostgreSQL server: a lost worker's trials
run again elsewhere, nothing is lost or trained twice, the points do not depend on how many
workers ask, ASHA prunes against the whole study, a restarted worker resumes its own round."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import optuna
import pytest

from hpjax.studies import search
from hpjax.studies.search import run_search
from tests.conftest import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker_flags(url: str, name: str, **overrides) -> list[str]:
    settings = {
        "optuna_storage": url,
        "search.study_name": name,
        "search.heartbeat_s": 1,
        "search.grace_s": 10,  # 3 JAX processes and the server share 2 cores: no false alarms
        "make_report": False,
        "tensorboard": "off",
        "log_every_s": 0.0,
    } | overrides
    return [f"--config.{k}={v}" for k, v in settings.items()]


def start_worker(workdir: str, flags: list[str], variant: str = "tpe,quick") -> subprocess.Popen:
    log = open(workdir + ".log", "w")  # noqa: SIM115 (the child writes it)
    return subprocess.Popen(
        [
            sys.executable,
            "experiments/search.py",
            f"--workdir={workdir}",
            f"--config=hpjax/configs/search.py:{variant}",
            *flags,
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def finish(procs: list[subprocess.Popen], workdirs: list[str], timeout: float = 600) -> None:
    for proc, workdir in zip(procs, workdirs, strict=True):
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = "timeout"
        assert code == 0, f"{workdir}: {code}\n" + open(workdir + ".log").read()[-3000:]


def read_search_csv(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "search.csv"), newline="") as f:
        return list(csv.DictReader(f))


def point(params: dict) -> tuple:
    return tuple(sorted((k, round(float(v), 12)) for k, v in params.items()))


def asked_points(workdir: str) -> list[dict]:
    asked = []
    for name in sorted(os.listdir(workdir)):
        path = os.path.join(workdir, name, "asked.json")
        if name.startswith("round_") and os.path.exists(path):
            asked += json.load(open(path))
    return asked


def test_three_workers_one_killed_end_with_every_trial_done_once(postgres_url, tmp_path):
    """24 trials, 3 workers in rounds of 4; one SIGKILLed mid-round and not restarted."""
    name = f"kill_{uuid.uuid4().hex[:8]}"
    flags = worker_flags(
        postgres_url, name, **{"search.num_trials": 24, "search.population": 4, "num_steps": 600}
    )
    workdirs = [str(tmp_path / w) for w in ("a", "b", "c")]
    victim = start_worker(workdirs[2], flags)
    asked_path = os.path.join(workdirs[2], "round_000", "asked.json")
    deadline = time.monotonic() + 300
    while not os.path.exists(asked_path):
        assert time.monotonic() < deadline and victim.poll() is None, "c never asked"
        time.sleep(0.05)
    procs = [start_worker(w, flags) for w in workdirs[:2]]
    os.kill(victim.pid, signal.SIGKILL)  # its round asked and running, not yet told
    victim.wait()
    finish(procs, workdirs[:2])

    study = optuna.load_study(study_name=name, storage=postgres_url)
    trials = study.get_trials(deepcopy=False)
    by_state = {s: [t for t in trials if t.state.name == s] for s in ("COMPLETE", "FAIL")}
    assert len(by_state["COMPLETE"]) == 24
    assert len(trials) == 24 + len(by_state["FAIL"])  # none running, waiting or pruned
    lost = json.load(open(asked_path))
    assert sorted(t.number for t in by_state["FAIL"]) == sorted(a["number"] for a in lost)
    for failed in by_state["FAIL"]:  # each lost trial ran again once, with its parameters
        (retry,) = [t for t in trials if failed.number in t.system_attrs.get("retry_history", [])]
        assert retry.state.name == "COMPLETE" and retry.params == failed.params
    # none lost: every point any worker asked finished; none trained twice to completion
    finished = [point(t.params) for t in by_state["COMPLETE"]]
    assert len(set(finished)) == 24
    assert {point(a["params"]) for w in workdirs for a in asked_points(w)} == set(finished)
    rows = [r for w in workdirs[:2] for r in read_search_csv(w)]
    assert sorted(int(r["number"]) for r in rows) == sorted(t.number for t in by_state["COMPLETE"])
    best = min(float(r["best_val_loss"]) for r in rows)
    assert study.best_value == pytest.approx(best, rel=1e-6)

    out = str(tmp_path / "gathered")
    gathered = subprocess.run(
        [sys.executable, "tools/gather_search.py", "--storage", postgres_url, "--study_name"]
        + [name, "--workdirs", ",".join(workdirs), "--out", out],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gathered.returncode == 0, gathered.stderr[-2000:]
    assert len(read_search_csv(out)) == 24
    assert json.load(open(os.path.join(out, "best.json")))["best_val_loss"] == pytest.approx(best)
    dashboard = subprocess.run(
        [sys.executable, "tools/optuna_dashboard_check.py", out, "--storage", postgres_url]
        + ["--study_name", name],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dashboard.returncode == 0, dashboard.stdout + dashboard.stderr[-2000:]
    assert "24 in search.csv, 0 missing, 0 with a wrong value; 3 workers" in dashboard.stdout


def qmc_config(url: str, name: str):
    config = load_config("search", "qmc,quick")
    config.optuna_storage = url
    config.search.study_name = name
    config.search.num_trials = 24
    config.search.population = 4
    config.num_steps = 20
    config.eval_every = 10
    config.make_report = False
    config.tensorboard = "off"
    return config


def test_one_worker_and_three_ask_the_same_quasi_random_points(postgres_url, tmp_path):
    alone = f"qmc1_{uuid.uuid4().hex[:8]}"
    run_search(qmc_config(postgres_url, alone), str(tmp_path / "alone"))
    shared = f"qmc3_{uuid.uuid4().hex[:8]}"
    flags = worker_flags(
        postgres_url,
        shared,
        **{"search.num_trials": 24, "search.population": 4, "num_steps": 20, "eval_every": 10},
    )
    workdirs = [str(tmp_path / w) for w in ("a", "b", "c")]
    finish([start_worker(w, flags, "qmc,quick") for w in workdirs], workdirs)
    points = {}
    for key in (alone, shared):
        trials = optuna.load_study(study_name=key, storage=postgres_url).trials
        assert len(trials) == 24 and all(t.state.name == "COMPLETE" for t in trials)
        points[key] = sorted(point(t.params) for t in trials)
    assert points[alone] == points[shared]
    workers = {
        t.user_attrs["hpjax_worker"]
        for t in optuna.load_study(study_name=shared, storage=postgres_url).trials
    }
    assert len(workers) >= 2  # the rounds were shared out


def asha_config(url: str, name: str, low: float, high: float, num_trials: int, population: int):
    config = load_config("search", "random,quick")
    config.optuna_storage = url
    config.search.study_name = name
    config.search.space = {"learning_rate": (low, high, "log")}
    config.search.num_trials = num_trials
    config.search.population = population
    config.num_steps = 60
    config.eval_every = 10
    config.scheduler = "asha"
    config.asha.min_steps = 20
    config.asha.eta = 2.0
    config.make_report = False
    config.tensorboard = "off"
    return config


def test_asha_across_two_workers_prunes_against_the_values_of_both(postgres_url, tmp_path):
    """Worker A trains 4 good rates; worker B then trains 4 poor ones, one per round. Alone, a
    trial first at a rung goes on; here B's first trial is pruned at the first rung by A's."""
    name = f"asha_{uuid.uuid4().hex[:8]}"
    run_search(asha_config(postgres_url, name, 0.05, 0.1, 4, 4), str(tmp_path / "a"))
    rows = run_search(asha_config(postgres_url, name, 1e-5, 2e-5, 8, 1), str(tmp_path / "b"))
    assert [r["number"] for r in rows] == [4, 5, 6, 7]
    study = optuna.load_study(study_name=name, storage=postgres_url)
    trials = sorted(study.trials, key=lambda t: t.number)
    at_rung = [t.user_attrs["asha_rung_20"] for t in trials]
    assert max(at_rung[:4]) < min(at_rung[4:])  # A's values at the rung are all better
    assert rows[0]["status"] == "pruned" and rows[0]["rung"] == 20
    assert trials[4].state.name == "PRUNED"
    for trial in trials[4:]:  # B's trials were told as Optuna's pruned trials
        assert trial.state.name == "PRUNED"


class _Killed(Exception):
    pass


def test_a_restarted_worker_resumes_its_own_round_and_asks_nothing_again(
    postgres_url, tmp_path, monkeypatch
):
    def config(name):
        c = load_config("search", "tpe,quick")
        c.optuna_storage, c.search.study_name = postgres_url, name
        c.search.num_trials, c.search.population = 4, 2
        c.num_steps, c.eval_every, c.checkpoint_every = 60, 10, 1
        c.make_report, c.tensorboard = False, "off"
        return c

    reference = run_search(config(f"ref_{uuid.uuid4().hex[:8]}"), str(tmp_path / "ref"))
    name = f"restart_{uuid.uuid4().hex[:8]}"
    calls = {"n": 0}
    evaluate = search._RoundHook.on_evaluation

    def die_in_round_one(self, run, state, rows):
        if "round_001" in run.workdir:
            calls["n"] += 1
            if calls["n"] == 3:
                raise _Killed
        return evaluate(self, run, state, rows)

    workdir = str(tmp_path / "w")
    with monkeypatch.context() as patch:
        patch.setattr(search._RoundHook, "on_evaluation", die_in_round_one)
        with pytest.raises(_Killed):
            run_search(config(name), workdir)
    study = optuna.load_study(study_name=name, storage=postgres_url)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 2 + ["RUNNING"] * 2
    resumed = run_search(config(name), workdir)
    study = optuna.load_study(study_name=name, storage=postgres_url)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4  # nothing asked again
    assert [r["number"] for r in resumed] == [0, 1, 2, 3]
    assert [r["best_val_loss"] for r in resumed] == [r["best_val_loss"] for r in reference]


def test_a_worker_killed_between_asking_and_beating_loses_nothing(postgres_url):
    """Trials left running without a heartbeat (their worker died inside its ask) are failed at
    the next ask: queued again when their parameters were drawn, else abandoned; the budget
    counts the retry once and the abandoned trial not at all."""
    from hpjax.results import optuna_shared

    url, name = postgres_url, f"ask_{uuid.uuid4().hex[:8]}"
    storage = optuna_shared.open_storage(url, heartbeat_s=1, grace_s=10, max_retry=3)
    study = optuna.create_study(study_name=name, storage=storage)
    space = {
        "learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
        "weight_decay": optuna.distributions.FloatDistribution(1e-3, 10.0, log=True),
    }
    done = study.ask(space)
    study.tell(done, 1.0)
    drawn = study.ask(space)  # all its parameters, never a beat
    partial = study.ask({"learning_rate": space["learning_rate"]})  # killed mid-draw
    beating = study.ask(space)
    storage.record_heartbeat(beating._trial_id)
    assert optuna_shared.budget(study).used == 4
    assert optuna_shared.fail_lost(study, set(space)) == [drawn.number, partial.number]
    trials = study.get_trials(deepcopy=False)
    (retry,) = [t for t in trials if t.state.name == "WAITING"]
    assert retry.params == drawn.params and retry.system_attrs["retry_history"] == [drawn.number]
    assert trials[partial.number].user_attrs[optuna_shared.ABANDONED] is True
    assert trials[beating.number].state.name == "RUNNING"
    counted = optuna_shared.budget(study)
    assert (counted.used, counted.waiting, counted.running) == (3, 1, 1)
    assert counted.askable(4) == 2  # the retry, and one new point for the abandoned one


def wait_for(path: str, procs: list[subprocess.Popen], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        assert all(p.poll() is None for p in procs), "a worker ended early"
        time.sleep(0.05)


def test_a_server_restarted_under_two_workers_loses_nothing(private_postgres, tmp_path):
    """The server restarts twice while two workers train and tell (every evaluation writes an
    intermediate value, every second a heartbeat): both ride it out, and the study ends with
    every trial complete once, none running, none retried."""
    url, control = private_postgres
    name = f"restart_{uuid.uuid4().hex[:8]}"
    flags = worker_flags(
        url,
        name,
        **{"search.num_trials": 8, "search.population": 2, "num_steps": 400, "eval_every": 20},
    )
    workdirs = [str(tmp_path / w) for w in ("a", "b")]
    procs = [start_worker(w, flags) for w in workdirs]
    for workdir in workdirs:
        wait_for(os.path.join(workdir, "round_000", "asked.json"), procs)
    assert control("restart").returncode == 0
    wait_for(os.path.join(workdirs[0], "round_001", "asked.json"), procs)
    assert control("restart").returncode == 0
    finish(procs, workdirs)

    logs = [open(w + ".log").read() for w in workdirs]
    assert any("lost the connection to postgresql://hpjax:***@" in log for log in logs)
    password = url.split(":")[2].split("@")[0]
    assert not any(password in log for log in logs)
    written = [os.path.join(d, n) for w in workdirs for d, _, names in os.walk(w) for n in names]
    assert os.path.join(workdirs[0], "worker.json") in written
    assert not [p for p in written if password.encode() in open(p, "rb").read()]
    trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 8
    assert not any(t.system_attrs.get("retry_history") for t in trials)
    rows = [r for w in workdirs for r in read_search_csv(w)]
    assert sorted(int(r["number"]) for r in rows) == list(range(8))  # each trained once


def test_a_server_that_stays_down_stops_the_worker_in_one_line_and_the_rerun_finishes(
    private_postgres, tmp_path
):
    url, control = private_postgres
    name = f"down_{uuid.uuid4().hex[:8]}"
    flags = worker_flags(
        url,
        name,
        **{
            "search.num_trials": 4,
            "search.population": 2,
            "num_steps": 400,
            "eval_every": 20,
            "search.reconnect_s": 3,
        },
    )
    workdir = str(tmp_path / "w")
    proc = start_worker(workdir, flags)
    wait_for(os.path.join(workdir, "round_000", "asked.json"), [proc])
    assert control("halt").returncode == 0
    assert proc.wait(timeout=300) == 2
    log = open(workdir + ".log").read()
    (line,) = [x for x in log.splitlines() if x.startswith("error:")]
    assert "the Optuna storage postgresql://hpjax:***@127.0.0.1:" in line
    assert "has not answered for 3 s" in line and "run the same command again" in line
    assert "Traceback" not in log and url.split(":")[2].split("@")[0] not in log
    assert control("restart").returncode == 0
    finish([start_worker(workdir, flags)], [workdir])
    trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert sorted(int(r["number"]) for r in read_search_csv(workdir)) == [0, 1, 2, 3]
