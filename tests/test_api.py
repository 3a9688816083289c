"""The Python API: a user's own NNX model, loss and arrays, trained as a population."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hpjax
from hpjax.results import files
from tests.conftest import ROOT

STEPS = dict(num_steps=40, eval_every=10, batch_size=16)


class TinyRegressor(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(5, 16, rngs=rngs)
        self.out = nnx.Linear(16, 2, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.tanh(self.hidden(x)))


def tiny_regressor(rngs: nnx.Rngs) -> nnx.Module:
    return TinyRegressor(rngs=rngs)


class TinyConvClassifier(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.head = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.conv(x.reshape(x.shape[0], 4, 4, 1)))
        return self.head(h.mean(axis=(1, 2)))


def tiny_cnn(rngs: nnx.Rngs) -> nnx.Module:
    return TinyConvClassifier(rngs=rngs)


@pytest.fixture(scope="module")
def regression_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = np.stack([np.sin(x[:, 0]) + x[:, 1], x[:, 2] * x[:, 3]], axis=1)
    return hpjax.from_arrays(x[:160], y[:160], x[160:], y[160:], task="regression")


@pytest.fixture(scope="module")
def classification_data():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, size=150)
    x = rng.normal(size=(150, 16)) * 0.5 + y[:, None] * np.linspace(-1, 1, 16)
    return hpjax.from_arrays(x[:120], y[:120], x[120:], y[120:])


def test_user_regression_trial_in_population_equals_trial_alone(regression_data, tmp_path):
    """The core property for a user model and the mean squared error."""
    rates, seeds = (0.003, 0.03), (0, 1)
    together = hpjax.train(
        tiny_regressor,
        regression_data,
        str(tmp_path / "together"),
        learning_rates=rates,
        seeds=seeds,
        patience=2,
        **STEPS,
    ).rows
    assert len(together) == 4 and {"best_val_mae", "test_mae"} <= set(together[0])
    for row in together:
        alone = hpjax.train(
            tiny_regressor,
            regression_data,
            str(tmp_path / f"alone{row['trial']}"),
            learning_rates=(row["learning_rate"],),
            seeds=(row["seed"],),
            patience=2,
            **STEPS,
        ).rows[0]
        for key in ("status", "best_step", "steps"):
            assert alone[key] == row[key], key
        for key in ("best_val_loss", "best_val_mae", "test_loss", "test_mae"):
            assert alone[key] == pytest.approx(row[key], rel=1e-5), key


def test_user_classifier_restores_to_its_recorded_metrics(classification_data, tmp_path):
    workdir = str(tmp_path / "cnn")
    rates = (0.01, 0.05)
    study = hpjax.train(tiny_cnn, classification_data, workdir, learning_rates=rates, **STEPS)
    rows = study.rows
    for name in ("summary.csv", "metrics.jsonl", "report.md", "config.json", "populations.csv"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert [r["trial"] for r in files.read_summary(workdir)] == [0, 1]
    for row in rows:
        restored = hpjax.restore_best(workdir, row["trial"], model=tiny_cnn)
        logits = restored.module(jnp.asarray(classification_data.x_test))
        loss = float(hpjax.CLASSIFICATION.mean_loss(logits, classification_data.y_test))
        accuracy = float(np.mean(np.argmax(logits, -1) == classification_data.y_test))
        assert loss == pytest.approx(row["test_loss"], rel=1e-5)
        assert accuracy == pytest.approx(row["test_accuracy"], abs=1e-6)
    with pytest.raises(hpjax.ConfigError, match="your own model 'tiny_cnn'"):
        hpjax.restore_best(workdir, 0)
    best = min(rows, key=lambda r: r["best_val_loss"])
    assert study.best.trial == best["trial"] and study.workdir == workdir
    logits = study.best.restore().module(jnp.asarray(classification_data.x_test))
    accuracy = float(np.mean(np.argmax(logits, -1) == classification_data.y_test))
    assert accuracy == pytest.approx(best["test_accuracy"], abs=1e-6)


def test_early_stopping_watches_the_chosen_metric(regression_data, tmp_path):
    workdir = str(tmp_path / "mae")
    study = hpjax.train(
        tiny_regressor,
        regression_data,
        workdir,
        monitor="mae",
        learning_rates=(0.03, 0.3),
        **STEPS,
    )
    rows = study.rows
    assert study.best.trial == min(rows, key=lambda r: r["best_val_mae"])["trial"]
    curve = [r for r in files.read_metrics(workdir) if r["trial"] == 0]
    best = min(curve, key=lambda r: r["val_mae"])
    assert rows[0]["best_step"] == best["step"]
    assert rows[0]["best_val_mae"] == pytest.approx(best["val_mae"], rel=1e-6)
    assert rows[0]["best_val_loss"] == pytest.approx(best["val_loss"], rel=1e-6)


def test_a_task_of_your_own(regression_data, tmp_path):
    """A Huber loss of the user's, with the mean squared error as a reported metric."""

    def huber(outputs, targets):
        err = jnp.abs(outputs - targets)
        return jnp.where(err < 1.0, 0.5 * err**2, err - 0.5).mean(axis=-1)

    task = hpjax.Task("huber", huber, (("mse", lambda o, t: jnp.square(o - t).mean(axis=-1)),))
    rows = hpjax.train(
        tiny_regressor,
        regression_data,
        str(tmp_path / "huber"),
        task=task,
        learning_rates=(0.03,),
        **STEPS,
    ).rows
    restored = hpjax.restore_best(str(tmp_path / "huber"), 0, model=tiny_regressor)
    out = restored.module(jnp.asarray(regression_data.x_test))
    assert float(huber(out, regression_data.y_test).mean()) == pytest.approx(
        rows[0]["test_loss"], rel=1e-5
    )
    assert rows[0]["test_mse"] == pytest.approx(
        float(jnp.square(out - regression_data.y_test).mean()), rel=1e-5
    )


@pytest.mark.parametrize(
    "loss, match",
    [
        (lambda o, t: jnp.square(o - t).mean(), r"must give one value per example .* shape \[\]"),
        (lambda o, t: jnp.square(o - t)[::2].mean(-1), r"one value per example .* shape \[2\]"),
        (lambda o, t: o["missing"], r"loss\(outputs, targets\) fails on a batch of 3"),
    ],
    ids=["one_per_batch", "half_a_batch", "raises"],
)
def test_a_task_of_the_wrong_shape_is_one_line_before_the_workdir(
    loss, match, regression_data, tmp_path
):
    """Issue 34: such a loss raised 'cannot reshape' after the workdir was made."""
    workdir = tmp_path / "wrong"
    with pytest.raises(hpjax.ConfigError, match=match):
        hpjax.train(tiny_regressor, regression_data, str(workdir), task=hpjax.Task("t", loss))
    assert not workdir.exists()


def test_a_workdir_that_cannot_be_one_is_one_line(regression_data, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    with pytest.raises(hpjax.ConfigError, match="is a file; choose a directory"):
        hpjax.train(tiny_regressor, regression_data, str(afile), **STEPS)
    with pytest.raises(hpjax.ConfigError, match="cannot be written: Not a directory"):
        hpjax.train(tiny_regressor, regression_data, str(afile / "under"), **STEPS)
    with pytest.raises(hpjax.ConfigError, match="cannot be written"):  # read-only for root too
        hpjax.train(tiny_regressor, regression_data, "/proc/hpjax_study", **STEPS)


class IgnoresItsParameters(nnx.Module):
    """Outputs that training cannot move (as a branch drawn with Python's random at trace
    time can leave the evaluated one untrained)."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.out = nnx.Linear(5, 2, rngs=rngs)

    def __call__(self, x):
        return 0.0 * self.out(x) + jnp.ones((x.shape[0], 2))


def test_outputs_that_training_does_not_move_are_one_warning_line(
    regression_data, tmp_path, caplog
):
    with caplog.at_level("WARNING"):
        hpjax.train(
            lambda rngs: IgnoresItsParameters(rngs=rngs),
            regression_data,
            str(tmp_path / "still"),
            learning_rates=(0.01, 0.1),
            verbose=False,
            **STEPS,
        )
        hpjax.train(
            tiny_regressor,
            regression_data,
            str(tmp_path / "moves"),
            learning_rates=(0.01,),
            verbose=False,
            **STEPS,
        )
    warned = [
        r.getMessage()
        for r in caplog.records
        if "did not" in r.getMessage() or "moved" in r.getMessage()
    ]
    assert len(warned) == 1 and "outputs do not depend on its training" in warned[0]


def test_a_trial_named_twice_is_one_warning_line(regression_data, tmp_path, caplog):
    with caplog.at_level("WARNING"):
        rows = hpjax.train(
            tiny_regressor,
            regression_data,
            str(tmp_path / "twice"),
            learning_rates=(0.01, 0.03, 0.01),
            verbose=False,
            **STEPS,
        ).rows
    warned = [r.getMessage() for r in caplog.records if "repeat" in r.getMessage()]
    assert warned == [
        "1 trial(s) repeat another's hyperparameters and will train the same again: 2 (= 0)"
    ]
    assert rows[2]["best_val_loss"] == pytest.approx(rows[0]["best_val_loss"], rel=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"no_such_key": 1}, "unknown config key 'no_such_key'"),
        ({"dataset": "digits"}, "'dataset' names a built-in model or data set"),
        ({"model_grid": {"width": (8,)}}, r"model_grid\.width: your model factory tiny_cnn\(\)"),
        ({"space": {"learning_rate": hpjax.loguniform(0.1, 0.01)}}, "reversed or empty range"),
        ({"monitor": "accuracy"}, "higher-is-better"),
        ({"task": "regression"}, "does not fit data"),
        ({"task": "ranking"}, "task='ranking' is unknown"),
        ({"optimizer": "adamw"}, r"config\.optimizer='adamw' is unknown"),
        (
            {"num_steps": "60"},
            r"num_steps='60' is a str; it must be an integer \(its default is 2000",
        ),
        ({"learning_rates": 0.01}, r"learning_rates=0.01 is a float; it must be a tuple such as"),
        ({"learning_rates": (True,)}, r"learning_rates=\(True,\) must hold positive finite"),
        ({"batch_size": True}, "batch_size=True must hold positive integers"),
    ],
)
def test_bad_arguments_fail_in_one_line_before_anything_is_written(
    classification_data, tmp_path, kwargs, match
):
    with pytest.raises(hpjax.ConfigError, match=match):
        hpjax.train(tiny_cnn, classification_data, str(tmp_path / "w"), **kwargs)
    assert not os.path.exists(tmp_path / "w")


def test_a_model_or_workdir_of_the_wrong_type_is_one_line(classification_data):
    with pytest.raises(hpjax.ConfigError, match="model must be a factory"):
        hpjax.train(3, classification_data, "w")
    with pytest.raises(hpjax.ConfigError, match="workdir must be a path"):
        hpjax.train(tiny_cnn, classification_data, 5)


class WidthRegressor(nnx.Module):
    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(5, width, rngs=rngs)
        self.out = nnx.Linear(width, 2, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.tanh(self.hidden(x)))


def make_width_regressor(rngs: nnx.Rngs, width: int = 16) -> nnx.Module:
    return WidthRegressor(width, rngs=rngs)


def test_model_grid_sweeps_your_models_architecture_and_best_restores(regression_data, tmp_path):
    """A factory's keyword argument is an architecture: one population per width, each trial as
    if trained alone, and the best one restores to its recorded test loss."""
    workdir = str(tmp_path / "widths")
    study = hpjax.train(
        make_width_regressor,
        regression_data,
        workdir,
        learning_rates=(0.03,),
        model_grid={"width": (4, 16)},
        **STEPS,
    )
    assert [(r["width"], r["num_params"]) for r in study.rows] == [
        (4, 5 * 4 + 4 + 4 * 2 + 2),
        (16, 5 * 16 + 16 + 16 * 2 + 2),
    ]
    populations = files.read_csv(os.path.join(workdir, "populations.csv"), key="population")
    assert len(populations) == 2
    for row in study.rows:
        alone = hpjax.train(
            lambda rngs, w=row["width"]: WidthRegressor(w, rngs=rngs),
            regression_data,
            str(tmp_path / f"alone{row['width']}"),
            learning_rates=(0.03,),
            **STEPS,
        ).rows[0]
        assert alone["best_val_loss"] == pytest.approx(row["best_val_loss"], rel=1e-5)
    best = study.best
    restored = best.restore()
    assert restored.metadata["model_config"]["width"] == best["width"]
    outputs = restored.module(jnp.asarray(regression_data.x_test))
    loss = float(hpjax.REGRESSION.mean_loss(outputs, regression_data.y_test))
    assert loss == pytest.approx(best["test_loss"], rel=1e-5)


class ActivationRegressor(nnx.Module):
    def __init__(self, width: int, activation: str, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(5, width, rngs=rngs)
        self.out = nnx.Linear(width, 2, rngs=rngs)
        self.activation = getattr(nnx, activation)

    def __call__(self, x):
        return self.out(self.activation(self.hidden(x)))


def make_activation_regressor(rngs, width: int = 16, activation: str = "relu") -> nnx.Module:
    return ActivationRegressor(width, activation, rngs=rngs)


def test_a_space_is_crossed_with_the_grid_axes_and_model_grid_and_every_trial_restores(
    regression_data, tmp_path
):
    """Issue 34: a space with model_grid and weight_decays trained every trial at the factory's
    defaults and the first decay; a trial of a shape-keeping keyword (tanh against the default
    relu) restored as the default model, and a width other than the default did not restore."""
    workdir = str(tmp_path / "crossed")
    study = hpjax.train(
        make_activation_regressor,
        regression_data,
        workdir,
        space={"learning_rate": hpjax.loguniform(1e-2, 1e-1)},
        num_samples=2,
        weight_decays=(0.0, 0.5),
        model_grid={"width": (4, 8), "activation": ("relu", "tanh")},
        **STEPS,
    )
    cells = [(r["width"], r["activation"], r["weight_decay"]) for r in study.rows]
    assert len(study.rows) == 16 and len(set(cells)) == 8 and cells.count(cells[0]) == 2
    assert len({r["learning_rate"] for r in study.rows}) == 2
    assert {r["num_params"] for r in study.rows} == {5 * 4 + 4 + 4 * 2 + 2, 5 * 8 + 8 + 8 * 2 + 2}
    for row in study.rows:
        restored = study.restore(row["trial"])
        assert restored.module.activation is getattr(nnx, row["activation"])
        outputs = restored.module(jnp.asarray(regression_data.x_test))
        loss = float(hpjax.REGRESSION.mean_loss(outputs, regression_data.y_test))
        assert loss == pytest.approx(row["test_loss"], rel=1e-5), row["trial"]


@pytest.mark.parametrize(
    "config, match",
    [
        (
            dict(space={"batch_size": hpjax.choice(8, 16)}, batch_sizes=(16, 32)),
            r"batch_sizes=\(16, 32\) sets batch_size, which space.batch_size also sets",
        ),
        (
            dict(space={"seed": hpjax.choice(0, 1)}, seeds=(0, 1, 2)),
            r"seeds=\(0, 1, 2\) sets seed, which space.seed also sets",
        ),
        (
            dict(trials='[{"learning_rate": 0.01}]', seeds=(0, 1)),
            r"seeds=\(0, 1\) lists several values beside trials",
        ),
        (
            dict(trials='[{"learning_rate": 0.01}]', model_grid={"width": (4, 8)}),
            r"model_grid=\{'width': \(4, 8\)\} lists several values beside trials",
        ),
    ],
    ids=["space_and_batch_sizes", "space_and_seeds", "trials_and_seeds", "trials_and_model_grid"],
)
def test_two_sources_of_one_value_are_refused_in_one_line(config, match, regression_data, tmp_path):
    workdir = tmp_path / "refused"
    with pytest.raises(hpjax.ConfigError, match=match):
        hpjax.train(make_activation_regressor, regression_data, str(workdir), **STEPS, **config)
    assert not workdir.exists()


def test_a_space_of_typed_dimensions_and_asha(classification_data, tmp_path):
    study = hpjax.train(
        tiny_cnn,
        classification_data,
        str(tmp_path / "space"),
        space={"learning_rate": hpjax.loguniform(1e-3, 1e-1), "seed": hpjax.choice(0, 1)},
        num_samples=4,
        scheduler="asha",
        asha={"min_steps": 10, "eta": 2.0},
        **STEPS,
    )
    rates = [r["learning_rate"] for r in study.rows]
    assert len(rates) == 4 and all(1e-3 <= r <= 1e-1 for r in rates)
    assert {r["seed"] for r in study.rows} <= {0, 1}
    assert any(r["status"] == "pruned" for r in study.rows)
    finite = [r for r in study.rows if r["status"] != "diverged"]
    assert study.best.trial == min(finite, key=lambda r: r["best_val_loss"])["trial"]


def test_a_factory_that_cannot_build_is_one_line():
    def broken(rngs):
        return nnx.Linear(3, 4, rngs=rngs, no_such_argument=1)

    with pytest.raises(hpjax.ConfigError, match="model factory 'broken' failed") as error:
        hpjax.models.from_factory(broken, "broken")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "arrays, match",
    [
        (dict(x_train=np.zeros((4,)), y_train=np.zeros(4)), "x_train has shape"),
        (dict(y_train=np.array([0, 1, 2, 1.5, 0, 1, 2, 0, 1, 2])), "non-integer labels"),
        (dict(y_train=np.zeros(9, int)), "x_train has 10 rows but y_train has 9"),
        (dict(x_test=np.full((3, 2), np.nan)), "non-finite"),
        (dict(x_val=np.zeros((3, 2))), "both x_val and y_val"),
        (dict(y_test=np.array([0, 1, 5])), "y_test holds label.s. 5 that y_train never shows"),
        (dict(y_train=np.ones(10, int)), "single class"),
        (dict(x_train=np.full((10, 2), 1e9)), r"x_train reaches \|x\| = 1e\+09"),
        (dict(x_train=None), "x_train is None; give an array"),
        (dict(x_train=[[1.0, 2.0], [3.0]]), "x_train is not an array .*ragged"),
        (dict(x_train="abc"), "x_train is not an array of numbers"),
        (dict(num_classes=-3), r"num_classes=-3 must be an integer >= 0"),
        (dict(max_abs_input=-1.0), r"max_abs_input=-1.0 must be a finite number >= 0"),
    ],
)
def test_from_arrays_checks_like_an_npz(arrays, match):
    base = dict(
        x_train=np.zeros((10, 2)),
        y_train=np.arange(10) % 3,
        x_test=np.zeros((3, 2)),
        y_test=np.arange(3),
    )
    with pytest.raises(hpjax.ConfigError, match=match):
        hpjax.from_arrays(**(base | arrays))


def test_from_arrays_splits_off_validation_and_counts_classes():
    data = hpjax.from_arrays(np.ones((50, 3)), np.arange(50) % 4, np.ones((5, 3)), np.arange(5) % 4)
    assert (data.num_train, len(data.y_val), data.num_classes) == (45, 5, 4)
    more = hpjax.from_arrays(
        np.ones((50, 3)), np.arange(50) % 4, np.ones((5, 3)), np.arange(5), num_classes=6
    )
    assert more.num_classes == 6
    jax.tree.map(lambda a: a, data.x_train)  # plain arrays
    reg = hpjax.from_arrays(
        np.ones((50, 3)), np.ones((50, 2)), np.ones((5, 3)), np.ones((5, 2)), task="regression"
    )
    assert not reg.is_classification and reg.y_train.dtype == np.float32


def test_example_script_trains_and_restores(tmp_path):
    result = subprocess.run(
        [sys.executable, "examples/own_model.py", "--workdir", str(tmp_path), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("diabetes (residual MLP, MSE): best trial")
    assert lines[1].startswith("digits (CNN, cross-entropy): best trial")
    summary = files.read_summary(tmp_path / "digits")
    best = min(summary, key=lambda r: r["best_val_loss"])
    assert f"test accuracy {best['test_accuracy']:.4f}" in lines[2]


class FiveOutputs(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.out = nnx.Linear(16, 5, rngs=rngs)

    def __call__(self, x):
        return self.out(x)


class SevenInputs(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.out = nnx.Linear(7, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(x)


def five_outputs(rngs):
    return FiveOutputs(rngs=rngs)


def seven_inputs(rngs):
    return SevenInputs(rngs=rngs)


@pytest.mark.parametrize(
    "factory, match",
    [
        (five_outputs, r"gives outputs of shape \[5\] per example, but 'arrays' has 3 classes"),
        (seven_inputs, r"does not take the data's inputs of shape \[16\]"),
    ],
)
def test_a_model_that_does_not_fit_the_data_is_refused_before_compiling(
    classification_data, tmp_path, factory, match
):
    with pytest.raises(hpjax.ConfigError, match=match) as error:
        hpjax.train(factory, classification_data, str(tmp_path / "w"), **STEPS)
    assert "\n" not in str(error.value) and not os.path.exists(tmp_path / "w")


def test_another_model_under_the_same_name_is_refused_in_one_line(classification_data, tmp_path):
    workdir = str(tmp_path / "w")
    hpjax.train(tiny_cnn, classification_data, workdir, learning_rates=(0.01,), **STEPS)

    def tiny_cnn_wider(rngs):  # another model, given under the first one's name
        return nnx.Sequential(nnx.Linear(16, 8, rngs=rngs), nnx.relu, nnx.Linear(8, 3, rngs=rngs))

    tiny_cnn_wider.__name__ = "tiny_cnn"
    with pytest.raises(hpjax.ConfigError, match="holds a study of other model"):
        hpjax.train(tiny_cnn_wider, classification_data, workdir, learning_rates=(0.01,), **STEPS)


def test_train_shows_progress_unless_told_not_to(classification_data, tmp_path, capfd):
    kwargs = dict(learning_rates=(0.01,), num_steps=40, eval_every=10, log_every_s=0.0)
    hpjax.train(tiny_cnn, classification_data, str(tmp_path / "a"), **kwargs)
    shown = capfd.readouterr().err
    assert "hpjax: population 1/1" in shown and "best val loss so far" in shown
    hpjax.train(tiny_cnn, classification_data, str(tmp_path / "b"), verbose=False, **kwargs)
    assert "hpjax:" not in capfd.readouterr().err


def test_search_proposes_populations_of_your_model_and_records_them(regression_data, tmp_path):
    import optuna

    workdir = str(tmp_path / "search")
    rows = hpjax.search(
        tiny_regressor,
        regression_data,
        workdir,
        space={"learning_rate": hpjax.loguniform(1e-3, 1e-1)},
        num_trials=4,
        population=2,
        sampler="optuna_random",
        verbose=False,
        **STEPS,
    )
    assert [r["number"] for r in rows] == [0, 1, 2, 3] and [r["round"] for r in rows] == [
        0,
        0,
        1,
        1,
    ]
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{workdir}/search.db")
    for trial, row in zip(sorted(study.trials, key=lambda t: t.number), rows, strict=True):
        assert 1e-3 <= trial.params["learning_rate"] <= 1e-1
        assert trial.params["learning_rate"] == pytest.approx(row["learning_rate"])
        assert trial.value == pytest.approx(row["best_val_loss"], rel=1e-6)
    best = min(rows, key=lambda r: r["best_val_loss"])
    restored = hpjax.restore_best(
        os.path.join(workdir, f"round_{best['round']:03d}"), best["trial"], tiny_regressor
    )
    assert restored.metadata["best_val_loss"] == pytest.approx(best["best_val_loss"])
