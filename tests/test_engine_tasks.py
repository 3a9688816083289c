"""A loss of your own (issue 35): over a model's outputs as any pytree, the batch's inputs and
targets, the values its layers sow (nnx.sow), per example or as one value of the batch.
Populations of such a task equal each trial alone (or a plain flax and optax loop);
restore_best scores what summary.csv says; a loss of the wrong shape is one line before the
workdir is touched."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import hpjax
from hpjax.engine import population, tasks
from hpjax.models import from_factory
from tests.conftest import three_class_data, trial_hparams


class WithPenalty(nnx.Module):
    """A classifier that reports a per-example penalty beside its logits."""

    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(16, 12, rngs=rngs)
        self.head = nnx.Linear(12, 3, rngs=rngs)

    def __call__(self, x):
        h = nnx.tanh(self.hidden(x))
        return {"logits": self.head(h), "aux": 0.1 * jnp.mean(jnp.square(h), axis=-1)}


def with_penalty(rngs: nnx.Rngs) -> nnx.Module:
    return WithPenalty(rngs)


def penalised(outputs, targets):
    return tasks.cross_entropy(outputs["logits"], targets) + outputs["aux"]


PENALISED = hpjax.Task(
    "penalised",
    penalised,
    (("accuracy", lambda o, t: tasks.accuracy(o["logits"], t)),),
    higher_is_better=("accuracy",),
    classification=True,
)


class AutoEncoder(nnx.Module):
    """A VAE-like model: a reconstruction of its inputs and a KL-like term per example."""

    def __init__(self, rngs: nnx.Rngs):
        self.encode = nnx.Linear(16, 4, rngs=rngs)
        self.decode = nnx.Linear(4, 16, rngs=rngs)

    def __call__(self, x):
        z = self.encode(x)
        return {"reconstruction": self.decode(z), "kl": 0.5 * jnp.sum(jnp.square(z), axis=-1)}


def auto_encoder(rngs: nnx.Rngs) -> nnx.Module:
    return AutoEncoder(rngs)


def reconstruction(outputs, targets, inputs):
    del targets  # an auto-encoder's target is its input
    return jnp.mean(jnp.square(outputs["reconstruction"] - inputs), axis=-1)


def vae_loss(outputs, targets, inputs):
    return reconstruction(outputs, targets, inputs) + 0.01 * outputs["kl"]


def vae_batch_loss(outputs, targets, inputs):
    """The same loss as one value of the batch (its mean)."""
    return jnp.mean(vae_loss(outputs, targets, inputs))


VAE = hpjax.Task("vae", vae_loss, (("reconstruction", reconstruction),))
VAE_MEAN = hpjax.Task(
    "vae_mean",
    vae_batch_loss,
    (("reconstruction", lambda o, t, inputs: jnp.mean(reconstruction(o, t, inputs))),),
    reduction="mean",
)


@pytest.fixture(scope="module")
def labelled():
    return three_class_data()


@pytest.fixture(scope="module")
def unlabelled(labelled):
    """The same inputs with a target of zeros: data for an auto-encoder."""
    return hpjax.from_arrays(
        labelled.x_train,
        np.zeros((len(labelled.x_train), 1), np.float32),
        labelled.x_test,
        np.zeros((len(labelled.x_test), 1), np.float32),
        task="regression",
    )


def _data_for(make, labelled, unlabelled):
    return labelled if make is with_penalty else unlabelled


def _engine_spec(make, task, microbatch):
    return population.PopulationSpec(
        model=from_factory(make, make.__name__),
        optimizer="adam",
        schedule="constant",
        microbatch=microbatch,
        num_train=120,
        task=task,
        accumulates=False,
    )


def _train(spec, trials, data, ticks):
    hparams = trial_hparams(trials)
    state = population.init_population(spec, hparams)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    return population.train_ticks(spec, state, hparams, x, y, jnp.int32(ticks))


@pytest.mark.parametrize(
    "make,task", [(with_penalty, PENALISED), (auto_encoder, VAE), (auto_encoder, VAE_MEAN)]
)
def test_a_population_of_a_task_of_your_own_equals_each_trial_alone(
    make, task, labelled, unlabelled
):
    data = _data_for(make, labelled, unlabelled)
    spec = _engine_spec(make, task, 8)
    trials = [
        {"learning_rate": lr, "seed": seed, "batch_size": 8, "max_steps": 20}
        for lr in (0.003, 0.03)
        for seed in (0, 1)
    ]
    together = _train(spec, trials, data, 20)
    for j, trial in enumerate(trials):
        alone = _train(spec, [trial], data, 20)
        jax.tree.map(
            lambda a, b, j=j: np.testing.assert_allclose(a[j], b[0], rtol=2e-5, atol=2e-6),
            together.trials.params,
            alone.trials.params,
        )
    start = population.init_population(spec, trial_hparams(trials))
    moved = jax.tree.map(
        lambda a, b: float(jnp.abs(a - b).max()), start.trials.params, together.trials.params
    )
    assert max(jax.tree.leaves(moved)) > 1e-3  # it trained


def test_a_batch_mean_task_is_evaluated_as_the_mean_over_the_whole_set(unlabelled):
    data = unlabelled
    """30 examples in evaluation batches of 8: the last batch is short, never padded, so a
    loss that gives one value of its batch is still the mean over the set."""
    spec = _engine_spec(auto_encoder, VAE_MEAN, 8)
    spec = population.PopulationSpec(**{**spec.__dict__, "eval_batch_size": 8})
    state = population.init_population(spec, trial_hparams([{"learning_rate": 0.01}]))
    x, y = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    evaluated = population.evaluate(spec, state.trials.params, x, y)
    params = jax.tree.map(lambda a: a[0], state.trials.params)
    outputs = spec.model.apply(params, x)
    assert float(evaluated["loss"][0]) == pytest.approx(float(vae_batch_loss(outputs, y, x)), 1e-6)
    whole = float(jnp.mean(reconstruction(outputs, y, x)))
    assert float(evaluated["reconstruction"][0]) == pytest.approx(whole, rel=1e-6)


@pytest.mark.parametrize(
    "make,task,score",
    [
        (with_penalty, PENALISED, lambda out, x, y: penalised(out, y).mean()),
        (auto_encoder, VAE, lambda out, x, y: vae_loss(out, y, x).mean()),
        (auto_encoder, VAE_MEAN, lambda out, x, y: vae_batch_loss(out, y, x)),
    ],
)
def test_restore_best_scores_what_the_summary_says(
    make, task, score, labelled, unlabelled, tmp_path
):
    data = _data_for(make, labelled, unlabelled)
    result = hpjax.train(
        make,
        data,
        str(tmp_path / task.name),
        task=task,
        learning_rates=(0.003, 0.03),
        num_steps=40,
        eval_every=10,
        batch_size=16,
        verbose=False,
    )
    x, y = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    for row in result.rows:
        restored = hpjax.restore_best(str(tmp_path / task.name), row["trial"], model=make)
        assert float(score(restored.module(x), x, y)) == pytest.approx(row["test_loss"], rel=1e-5)
        metric = task.metric_names[0]
        assert np.isfinite(row[f"test_{metric}"])


@pytest.mark.parametrize(
    "make,task,match",
    [
        (
            with_penalty,
            hpjax.Task("t", lambda o, t: penalised(o, t).mean(), classification=True),
            r"loss\(outputs, targets\) must give one value per example .*reduction='mean'.* "
            r"gave shape \[\]",
        ),
        (
            auto_encoder,
            hpjax.Task("t", vae_loss, reduction="mean"),
            r"loss\(outputs, targets, inputs\) must give one value for the batch .* shape \[3\]",
        ),
        (
            auto_encoder,
            hpjax.Task("t", lambda o, t, inputs: o["missing"]),
            r"loss\(outputs, targets, inputs\) fails on a batch of 3",
        ),
        (with_penalty, "classification", r"outputs as a pytree .*'aux'.*'logits'.*hpjax.Task"),
    ],
)
def test_a_loss_of_the_wrong_shape_is_one_line_before_the_workdir(
    make, task, match, labelled, unlabelled, tmp_path
):
    data = _data_for(make, labelled, unlabelled)
    workdir = tmp_path / "w"
    with pytest.raises(hpjax.ConfigError, match=match) as error:
        hpjax.train(make, data, str(workdir), task=task, num_steps=10, verbose=False)
    assert "\n" not in str(error.value)
    assert not workdir.exists()


def test_an_unknown_reduction_is_one_line():
    with pytest.raises(
        hpjax.ConfigError, match="reduction='sum' is unknown; allowed: per_example, mean"
    ):
        hpjax.Task("t", vae_loss, reduction="sum")


class NormalisedAutoEncoder(nnx.Module):
    """The auto-encoder with batch statistics (a stateful model) and an architecture keyword."""

    def __init__(self, rngs: nnx.Rngs, width: int = 4):
        self.encode = nnx.Linear(16, width, rngs=rngs)
        self.norm = nnx.BatchNorm(width, rngs=rngs)
        self.decode = nnx.Linear(width, 16, rngs=rngs)

    def __call__(self, x):
        z = self.norm(self.encode(x))
        return {"reconstruction": self.decode(z), "kl": 0.5 * jnp.sum(jnp.square(z), axis=-1)}


def normalised_auto_encoder(rngs: nnx.Rngs, width: int = 4) -> nnx.Module:
    return NormalisedAutoEncoder(rngs, width)


def test_a_task_of_your_own_with_batch_statistics_and_a_model_grid_equals_each_trial_alone(
    unlabelled, tmp_path
):
    steps = dict(task=VAE, num_steps=30, eval_every=10, batch_size=8, verbose=False)
    together = hpjax.train(
        normalised_auto_encoder,
        unlabelled,
        str(tmp_path / "together"),
        learning_rates=(0.003, 0.03),
        model_grid={"width": (4, 6)},
        **steps,
    ).rows
    assert len(together) == 4
    for row in together:
        alone = hpjax.train(
            normalised_auto_encoder,
            unlabelled,
            str(tmp_path / f"alone{row['trial']}"),
            learning_rates=(row["learning_rate"],),
            model_grid={"width": (row["width"],)},
            **steps,
        ).rows[0]
        for key in ("best_val_loss", "test_loss", "test_reconstruction"):
            assert alone[key] == pytest.approx(row[key], rel=1e-5), (row["trial"], key)


class Block(nnx.Module):
    """A layer that sows a penalty on its activations (a load-balancing-like term)."""

    def __init__(self, width: int, rngs: nnx.Rngs):
        self.linear = nnx.Linear(width, width, rngs=rngs)

    def __call__(self, x):
        h = nnx.tanh(self.linear(x))
        self.sow(nnx.Intermediate, "balance", jnp.mean(jnp.square(h)))
        return h


class Sowing(nnx.Module):
    """A classifier of two sowing blocks: what it sows never appears in its outputs."""

    def __init__(self, rngs: nnx.Rngs):
        self.blocks = nnx.List([Block(16, rngs), Block(16, rngs)])
        self.head = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def sowing(rngs: nnx.Rngs) -> nnx.Module:
    return Sowing(rngs)


def balanced(outputs, targets, sown):
    """Cross-entropy plus the sown penalties (one value of the batch each, added to every
    example's loss)."""
    return tasks.cross_entropy(outputs, targets) + 0.5 * sum(jax.tree.leaves(sown))


BALANCED = hpjax.Task(
    "balanced",
    balanced,
    (("accuracy", tasks.accuracy),),
    higher_is_better=("accuracy",),
    classification=True,
)


def _plain_loop(params, x, y, lr, steps, with_penalty=True):
    """Full-batch Adam on the sowing model written with flax and optax alone: the penalty from
    nnx.capture."""
    graphdef, state = nnx.split(Sowing(nnx.Rngs(0)))

    def loss(p):
        nnx.replace_by_pure_dict(state, p)
        logits, sown = nnx.capture(nnx.merge(graphdef, state), nnx.Intermediate)(x)
        penalty = 0.5 * sum(jax.tree.leaves(sown)) if with_penalty else 0.0
        return jnp.mean(tasks.cross_entropy(logits, y) + penalty)

    adam = optax.adam(lr)
    opt_state = adam.init(params)
    for _ in range(steps):
        updates, opt_state = adam.update(jax.grad(loss)(params), opt_state)
        params = optax.apply_updates(params, updates)
    return params


def test_a_loss_over_what_the_model_sows_trains_as_a_plain_loop(labelled):
    """Each trial of a population whose loss reads the sown penalties follows flax + optax's
    own full-batch loop; without the penalty it would not."""
    num = len(labelled.x_train)
    spec = population.PopulationSpec(
        model=from_factory(sowing, "sowing"),
        optimizer="adam",
        schedule="constant",
        microbatch=num,
        num_train=num,
        task=BALANCED,
        accumulates=False,
    )
    trials = [{"learning_rate": lr, "seed": 0, "batch_size": num} for lr in (0.01, 0.05)]
    hparams = trial_hparams(trials)
    start = population.init_population(spec, hparams)
    x, y = jnp.asarray(labelled.x_train), jnp.asarray(labelled.y_train)
    together = population.train_ticks(spec, start, hparams, x, y, jnp.int32(15))
    start = population.init_population(spec, hparams)
    for j, trial in enumerate(trials):
        first = jax.tree.map(lambda a, j=j: a[j], start.trials.params)
        plain = _plain_loop(first, x, y, trial["learning_rate"], 15)
        ours = jax.tree.map(lambda a, j=j: a[j], together.trials.params)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), ours, plain
        )
    unpenalised = _plain_loop(first, x, y, trials[-1]["learning_rate"], 15, with_penalty=False)
    gap = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), ours, unpenalised)
    assert max(jax.tree.leaves(gap)) > 1e-3  # the penalty moved the parameters


def test_a_sowing_model_trains_with_the_built_in_task_and_sown_needs_a_sowing_model(
    labelled, tmp_path
):
    """The built-in task ignores what a model sows; a loss that takes sown of a model that sows
    nothing is one line before the workdir."""
    result = hpjax.train(
        sowing, labelled, str(tmp_path / "ok"), num_steps=10, eval_every=5, verbose=False
    )
    assert np.isfinite(float(result.best.row["best_val_loss"]))
    workdir = tmp_path / "w"
    with pytest.raises(
        hpjax.ConfigError, match=r"loss\(outputs, targets, sown\) fails .*sowed nothing"
    ) as error:
        hpjax.train(
            with_penalty, labelled, str(workdir), task=BALANCED, num_steps=10, verbose=False
        )
    assert "\n" not in str(error.value)
    assert not workdir.exists()


@pytest.mark.parametrize(
    "axis",
    [
        dict(label_smoothings=(0.0, 0.1)),
        dict(trials='[{"learning_rate": 0.01, "label_smoothing": 0.0}]'),
    ],
    ids=["a list", "an explicit 0"],
)
def test_label_smoothing_with_a_loss_of_your_own_is_one_line(axis, labelled, tmp_path):
    """Label smoothing replaces the built-in cross-entropy; with a loss of your own it would
    train in its place, silently (even at 0.0): refused, naming the task."""
    workdir = tmp_path / "w"
    with pytest.raises(
        hpjax.ConfigError, match=r"label_smoothing=0.[01] .*task 'penalised' has a loss of its own"
    ):
        hpjax.train(
            with_penalty,
            labelled,
            str(workdir),
            task=PENALISED,
            num_steps=10,
            verbose=False,
            **axis,
        )
    assert not workdir.exists()


def test_what_the_model_sows_is_evaluated_over_unpadded_batches(labelled):
    """A sown penalty of the whole batch: each evaluation batch's value is that of its own
    examples (the last one short, not padded), weighted by its size."""
    model = from_factory(sowing, "sowing")
    spec = population.PopulationSpec(
        model=model,
        optimizer="adam",
        schedule="constant",
        microbatch=8,
        num_train=len(labelled.x_train),
        task=BALANCED,
        eval_batch_size=7,
    )
    params = jax.vmap(model.init)(jax.random.split(jax.random.PRNGKey(0), 2))
    x, y = jnp.asarray(labelled.x_test), jnp.asarray(labelled.y_test)
    ours = population.evaluate(spec, params, x, y)
    for j in range(2):
        p = jax.tree.map(lambda a, j=j: a[j], params)
        total = 0.0
        for start in range(0, len(x), 7):
            xb, yb = x[start : start + 7], y[start : start + 7]
            total += float(jnp.sum(balanced_by_hand(model, p, xb, yb)))
        assert float(ours["loss"][j]) == pytest.approx(total / len(x), rel=1e-5)


def balanced_by_hand(model, params, xb, yb):
    graphdef, state = nnx.split(Sowing(nnx.Rngs(0)))
    nnx.replace_by_pure_dict(state, params)
    logits, sown = nnx.capture(nnx.merge(graphdef, state), nnx.Intermediate)(xb)
    return tasks.cross_entropy(logits, yb) + 0.5 * sum(jax.tree.leaves(sown))
