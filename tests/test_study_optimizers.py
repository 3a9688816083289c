"""An optimizer axis (issue 35): ``optimizers=`` compares optimizers in one study, each its own
population, each trial as it trains in a study of its optimizer alone; the report pairs the
optimizers' best configurations seed by seed; what cannot work is one line before the workdir."""

import functools
import json

import optax
import pytest

import hpjax
from hpjax import api
from hpjax.config import default_config
from hpjax.errors import ConfigError
from hpjax.report.optimizers import best_configurations, optimizer_section
from hpjax.study import spec as spec_lib
from hpjax.study.run import train_and_evaluate
from tests.conftest import Crash, CrashAtEvaluation, three_class_data
from tests.test_optim_factories import net

LION = functools.partial(optax.lion, b1=0.95)
STEPS = dict(
    num_steps=30,
    eval_every=10,
    patience=0,
    batch_size=8,
    learning_rates=(1e-3, 1e-2),
    seeds=(0, 1),
    verbose=False,
)


@pytest.fixture(scope="module")
def data():
    return three_class_data()


@pytest.fixture(scope="module")
def compared(data, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("axis"))
    result = hpjax.train(net, data, workdir, optimizers=("adam", LION), make_report=True, **STEPS)
    return workdir, result.rows


def test_each_optimizer_of_the_axis_trains_as_in_a_study_of_it_alone(compared, data, tmp_path):
    workdir, rows = compared
    assert [r["optimizer"] for r in rows] == ["adam"] * 4 + ["optax.lion"] * 4
    assert {r["population"] for r in rows if r["optimizer"] == "adam"} == {0}
    assert {r["population"] for r in rows if r["optimizer"] == "optax.lion"} == {1}
    for optimizer, name in (("adam", "adam"), (LION, "optax.lion")):
        alone = hpjax.train(net, data, str(tmp_path / name), optimizer=optimizer, **STEPS).rows
        mine = [r for r in rows if r["optimizer"] == name]
        for a, b in zip(mine, alone, strict=True):
            assert (a["learning_rate"], a["seed"]) == (b["learning_rate"], b["seed"])
            for key in ("best_val_loss", "test_loss", "test_accuracy"):
                assert a[key] == pytest.approx(b[key], rel=1e-6), (name, key)
    saved = json.load(open(f"{workdir}/config.json"))
    assert saved["optimizers"] == ["adam", "optax.lion"]
    assert json.loads(saved["optimizer_kwargs"]) == {"optax.lion": {"b1": 0.95}}


def test_the_report_pairs_the_optimizers_best_configurations_by_seed(compared):
    workdir, rows = compared
    report = open(f"{workdir}/report.md").read()
    assert "## Optimizers, each at its best configuration" in report
    assert "Optimizers: adam (b1 0.9, b2 0.999); optax.lion (b1 0.95)" in report
    best = best_configurations(rows)
    for name, (text, members) in best.items():
        assert len(members) == 2 and {m["seed"] for m in members} == {0, 1}
        # the configuration of lowest mean validation loss over the seeds
        means = {
            lr: sum(
                r["best_val_loss"]
                for r in rows
                if (r["optimizer"], r["learning_rate"]) == (name, lr)
            )
            / 2
            for lr in (1e-3, 1e-2)
        }
        assert text == f"learning_rate={min(means, key=means.get):.4g}"
    assert "over 2 seeds" in report


def _row(optimizer, seed, loss):
    return {"optimizer": optimizer, "seed": seed, "learning_rate": 0.01, "best_val_loss": loss}


def test_a_difference_every_seed_shows_is_a_verdict_and_one_seed_is_undecided():
    adam = [_row("adam", s, 0.5 + 0.01 * s) for s in range(4)]
    lion = [_row("optax.lion", s, 0.6 + 0.01 * s + 0.02 * (s % 2)) for s in range(4)]
    lines, tables, _ = optimizer_section(adam + lion)
    (title, rows, columns) = tables[0]
    assert [r["optimizer"] for r in rows] == ["adam", "optax.lion"]
    assert rows[1]["paired_verdict"] == "adam lower"
    assert "optax.lion minus adam +0.11 " in lines[0]  # the mean of 0.1, 0.12, 0.1, 0.12
    lines, tables, _ = optimizer_section(adam[:1] + lion[:1])
    assert tables[0][1][1]["paired_verdict"] == "undecided" and "one seed" in lines[0]
    assert optimizer_section(adam) == ([], [], [])


def test_an_optimizer_axis_resumes_after_a_kill_as_if_uninterrupted(compared, data, tmp_path):
    _, rows = compared
    overrides = {k: v for k, v in STEPS.items() if k != "verbose"}
    cfg = api.make_config("net", data.name, optimizers=("adam", LION), **overrides)
    killed = str(tmp_path / "killed")
    with pytest.raises(Crash):
        train_and_evaluate(cfg, killed, model=net, dataset=data, hooks=[CrashAtEvaluation(5)])
    resumed = train_and_evaluate(cfg, killed, model=net, dataset=data)
    for a, b in zip(resumed, rows, strict=True):
        assert a["optimizer"] == b["optimizer"]
        assert a["best_val_loss"] == pytest.approx(b["best_val_loss"], rel=1e-6)


def test_a_binary_config_names_the_axis_and_each_trial_carries_its_optimizer():
    config = default_config()
    config.optimizers = ("sgd", "optax.lion")
    config.optimizer_kwargs = json.dumps({"optax.lion": {"b1": 0.95}})
    config.learning_rates = (0.01, 0.1)
    study = spec_lib.parse(config)
    assert [t.optimizer for t in study.trials] == ["sgd", "sgd", "optax.lion", "optax.lion"]
    assert [o.name for o in study.optimizers] == ["sgd", "optax.lion"]
    assert dict(study.optimizers[1].options) == {"b1": 0.95}


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(optimizers=("adam", "adam")), r"config.optimizers=.*must be distinct"),
        (dict(optimizers=("adam", "optax.lino")), r"config.optimizers='optax.lino'.*no 'lino'"),
        (
            dict(optimizers=("adam", "optax.lion"), optimizer_kwargs='{"b1": 0.9}'),
            r"optimizer_kwargs.*must map each optax factory.*factories: optax.lion",
        ),
        (
            dict(optimizers=("adam", "optax.lion"), trials='[{"learning_rate": 0.01}]', seeds=(0,)),
            r"trials\[0\].optimizer.*must name one of config.optimizers: adam, optax.lion",
        ),
        (
            dict(
                optimizers=("adam", "optax.lion"),
                space={"b1": (0.8, 0.9)},
                space_sampler="grid",
            ),
            r"config.b1=.*a keyword of optax.lion, not of adam",
        ),
    ],
)
def test_what_an_optimizer_axis_cannot_do_is_one_line(overrides, match, data, tmp_path):
    with pytest.raises(ConfigError, match=match) as error:
        hpjax.train(net, data, str(tmp_path / "w"), **(STEPS | overrides))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "w").exists()
