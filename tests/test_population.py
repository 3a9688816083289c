"""The core property: a trial inside a vmapped population follows the trajectory it follows alone.

"Alone" is a population of one trial with that trial's own micro-batch (its batch size), so it
takes one optimizer update per tick; inside a population it may share ticks with other batch
sizes, other learning rates, seeds, schedule parameters and weight decays.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from hpjax.engine import population, tasks
from hpjax.models import build_model
from tests.conftest import trial_hparams

NUM_TRAIN = 48
RTOL, ATOL = 2e-5, 2e-6


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(NUM_TRAIN, 6)).astype(np.float32)
    y = np.argmax(x[:, :3] @ rng.normal(size=(3, 3)), axis=1).astype(np.int32)
    cfg = ml_collections.ConfigDict(
        {"name": "mlp", "hidden_units": 16, "num_layers": 1, "activation": "tanh"}
    )
    model = build_model(cfg, (6,), 3)
    return model, jnp.asarray(x), jnp.asarray(y)


def make_spec(model, microbatch, optimizer="adam", schedule="constant", **kwargs):
    return population.PopulationSpec(
        model=model,
        optimizer=optimizer,
        schedule=schedule,
        microbatch=microbatch,
        num_train=NUM_TRAIN,
        **kwargs,
    )


def train(problem, trials, ticks, microbatch, **spec_kwargs):
    """Trains ``trials`` (a list of hyperparameter dicts) for ``ticks`` ticks; returns the state."""
    model, x, y = problem
    hparams = trial_hparams(trials)
    spec = make_spec(model, microbatch, **spec_kwargs)
    state = population.init_population(spec, hparams)
    return population.train_ticks(spec, state, hparams, x, y, jnp.int32(ticks))


def trial_slice(tree, j):
    return jax.tree.map(lambda a: np.asarray(a[j]), tree)


def assert_same_trajectory(state, j, solo, rtol=RTOL, atol=ATOL):
    np.testing.assert_array_equal(state.trials.step[j], solo.trials.step[0])
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol),
        trial_slice(state.trials.params, j),
        trial_slice(solo.trials.params, 0),
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol),
        trial_slice(state.trials.opt_state, j),
        trial_slice(solo.trials.opt_state, 0),
    )


@pytest.mark.parametrize(
    "axis,values",
    [
        ("learning_rate", [0.003, 0.03, 0.3]),
        ("seed", [0, 1, 7]),
        ("weight_decay", [0.0, 0.01, 0.1]),
        ("decay_rate", [0.01, 0.3, 1.0]),
        ("warmup_steps", [0, 5, 20]),
        ("momentum", [0.0, 0.5, 0.95]),  # Adam's b1
        ("momentum@momentum", [0.0, 0.5, 0.95]),  # SGD's momentum
    ],
)
def test_population_matches_each_trial_alone(problem, axis, values):
    schedule = "exponential" if axis in ("decay_rate", "warmup_steps") else "constant"
    axis, _, optimizer = axis.partition("@")
    kwargs = dict(schedule=schedule, optimizer=optimizer or "adam")
    if axis == "momentum":
        kwargs["per_trial_momentum"] = True
    trials = [{axis: v, "max_steps": 30} for v in values]
    together = train(problem, trials, 30, 8, **kwargs)
    for j, trial in enumerate(trials):
        alone = train(problem, [trial], 30, 8, **kwargs)
        assert_same_trajectory(together, j, alone)
    # The axis matters: trials did not all end in the same place.
    w = np.asarray(
        together.trials.params["layers"][0]["kernel"]
        if "layers" in together.trials.params
        else jax.tree.leaves(together.trials.params)[0]
    )
    assert not np.allclose(w[0], w[-1])


@pytest.mark.parametrize("schedule", ["constant", "linear", "exponential", "cosine"])
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "adagrad", "rmsprop"])
def test_every_optimizer_and_schedule_matches_solo(problem, optimizer, schedule):
    trials = [{"learning_rate": lr, "max_steps": 12, "end_factor": 0.1} for lr in (0.01, 0.1)]
    together = train(problem, trials, 12, 8, optimizer=optimizer, schedule=schedule)
    alone = train(problem, trials[1:], 12, 8, optimizer=optimizer, schedule=schedule)
    assert_same_trajectory(together, 1, alone)


@pytest.mark.parametrize("sizes", [(2, 4, 8, 16), (1, 3, 7)])
def test_batch_size_axis_matches_solo_at_that_batch_size(problem, sizes):
    """Micro-batch accumulation gives each trial the exact gradient of its own batch size."""
    microbatch = int(np.gcd.reduce(sizes))
    examples = 2 * NUM_TRAIN + 2 * max(sizes)  # crosses epoch boundaries mid-batch
    trials = [{"batch_size": b, "max_steps": examples // b} for b in sizes]
    together = train(problem, trials, examples // microbatch, microbatch)
    for j, trial in enumerate(trials):
        alone = train(problem, [trial], examples // trial["batch_size"], trial["batch_size"])
        assert int(together.trials.step[j]) == examples // trial["batch_size"]
        assert_same_trajectory(together, j, alone, rtol=1e-4, atol=1e-5)


def test_budget_freezes_a_trial_at_max_steps(problem):
    trials = [{"max_steps": 5}, {"max_steps": 20}]
    state = train(problem, trials, 20, 8)
    assert state.trials.step.tolist() == [5, 20]
    alone = train(problem, [{"max_steps": 5}], 5, 8)
    assert_same_trajectory(state, 0, alone)


def test_diverging_trial_is_flagged_frozen_and_harmless(problem):
    good = [{"learning_rate": 0.01}, {"learning_rate": 0.1}]
    bad = {"learning_rate": 100.0}
    chance = float(np.log(3))  # the loss of a uniform guess over 3 classes
    spec = dict(optimizer="adam", divergence_loss=100 * chance)
    with_bad = train(problem, [good[0], bad, good[1]], 25, 8, **spec)
    without = train(problem, good, 25, 8, **spec)
    assert with_bad.trials.diverged.tolist() == [False, True, False]
    assert without.trials.diverged.tolist() == [False, False]
    for leaf in jax.tree.leaves(trial_slice(with_bad.trials.params, 1)):
        assert np.all(np.isfinite(leaf))
    for j, k in ((0, 0), (2, 1)):
        jax.tree.map(
            np.testing.assert_array_equal,
            trial_slice(with_bad.trials.params, j),
            trial_slice(without.trials.params, k),
        )


def test_chunks_of_any_length_give_the_same_state(problem):
    """Resuming the loop at any tick (as after an evaluation) changes nothing."""
    model, x, y = problem
    trials = [
        {"learning_rate": 0.02, "batch_size": 6, "max_steps": 40},
        {"learning_rate": 0.05, "batch_size": 12, "max_steps": 20},
    ]
    hparams = trial_hparams(trials)
    spec = make_spec(model, 6)
    once = population.train_ticks(
        spec, population.init_population(spec, hparams), hparams, x, y, jnp.int32(40)
    )
    pieces = population.init_population(spec, hparams)
    for n in (7, 1, 13, 19):
        pieces = population.train_ticks(spec, pieces, hparams, x, y, jnp.int32(n))
    jax.tree.map(np.testing.assert_array_equal, once.trials, pieces.trials)


def test_evaluate_matches_direct_computation(problem):
    model, x, y = problem
    hparams = trial_hparams([{"seed": 0}, {"seed": 1}])
    spec = make_spec(model, 8, eval_batch_size=10)  # 48 = 4 full batches + one of 8
    state = population.init_population(spec, hparams)
    result = population.evaluate(spec, state.trials.params, x, y)
    loss, acc = result["loss"], result["accuracy"]
    for j in range(2):
        logits = model.apply(trial_slice(state.trials.params, j), x)
        expected = float(tasks.cross_entropy(logits, y).mean())
        np.testing.assert_allclose(loss[j], expected, rtol=1e-5)
        np.testing.assert_allclose(acc[j], float(np.mean(np.argmax(logits, -1) == y)))


def test_single_batch_size_fast_path_equals_the_accumulating_path(problem):
    trials = [{"learning_rate": lr, "max_steps": 25} for lr in (0.01, 0.1, 100.0)]
    general = train(problem, trials, 25, 8, divergence_loss=50.0)
    fast = train(problem, trials, 25, 8, divergence_loss=50.0, accumulates=False)
    assert fast.trials.diverged.tolist() == general.trials.diverged.tolist() == [False, False, True]
    for j in range(3):
        one = general.replace(trials=jax.tree.map(lambda a, j=j: a[j : j + 1], general.trials))
        assert_same_trajectory(fast, j, one)


@pytest.mark.parametrize(
    "first,new_batch",
    [({"learning_rate": 0.05}, 8), ({"learning_rate": 100.0}, 8), ({"learning_rate": 0.05}, 16)],
)
def test_a_restarted_row_follows_its_new_trial_alone(problem, first, new_batch):
    """A freed slot takes the next trial mid-run (its data stream starts at 0 while its
    neighbours are mid-epoch), also after the slot's first trial diverged, also with another
    batch size of the population's micro-batch group; the neighbours go on as if nothing
    happened."""
    model, x, y = problem
    spec = make_spec(model, 8, divergence_loss=100 * float(np.log(3)))
    neighbour = {"learning_rate": 0.01, "seed": 3}
    newcomer = {"learning_rate": 0.02, "seed": 5, "weight_decay": 0.01, "batch_size": new_batch}
    spec = make_spec(model, 8, divergence_loss=100 * float(np.log(3)), accumulates=new_batch != 8)
    before = trial_hparams([neighbour, first])
    state = population.init_population(spec, before)
    state = population.train_ticks(spec, state, before, x, y, jnp.int32(13))
    assert bool(state.trials.diverged[1]) == (first["learning_rate"] > 1)
    after = trial_hparams([neighbour, newcomer])
    state = population.restart_rows(spec, state, after, jnp.asarray([False, True]))
    state = population.train_ticks(spec, state, after, x, y, jnp.int32(20))
    alone = train(problem, [newcomer], 20 * 8 // new_batch, new_batch)
    assert_same_trajectory(state, 1, alone)
    assert_same_trajectory(state, 0, train(problem, [neighbour], 33, 8))
    assert not bool(state.trials.diverged[1])


def test_copied_rows_take_the_donor_state_and_keep_their_stream(problem):
    """Population-based training's exploit: row 1 takes row 0's state, then trains on its own
    data stream; that equals one trial that switches data stream at that point."""
    model, x, y = problem
    spec = make_spec(model, 8)
    trials = [{"learning_rate": 0.01, "seed": 1}, {"learning_rate": 0.03, "seed": 2}]
    hparams = trial_hparams(trials)
    state = population.init_population(spec, hparams)
    state = population.train_ticks(spec, state, hparams, x, y, jnp.int32(9))
    donor_params = trial_slice(state.trials.params, 0)
    own_best = trial_slice(state.best_params, 1), float(state.early_stop.best_value[1])
    state = population.copy_rows(state, jnp.asarray([0, 0]), jnp.asarray([False, True]))
    jax.tree.map(np.testing.assert_array_equal, trial_slice(state.trials.params, 1), donor_params)
    # its best point stays its own: a result is credited to the row that reached it
    jax.tree.map(np.testing.assert_array_equal, trial_slice(state.best_params, 1), own_best[0])
    assert float(state.early_stop.best_value[1]) == own_best[1]
    assert int(state.trials.ticks[1]) == 9 and int(state.trials.step[1]) == 9
    state = population.train_ticks(spec, state, hparams, x, y, jnp.int32(7))
    # Alone: trial 0 for 9 ticks, then with trial 1's rate, key and position.
    solo_h = trial_hparams([trials[0]])
    solo = population.init_population(spec, solo_h)
    solo = population.train_ticks(spec, solo, solo_h, x, y, jnp.int32(9))
    other = population.init_population(spec, trial_hparams([trials[1]]))
    solo = solo.replace(trials=solo.trials.replace(data_key=other.trials.data_key))
    switched = trial_hparams([trials[1]])
    solo = population.train_ticks(spec, solo, switched, x, y, jnp.int32(7))
    assert_same_trajectory(state, 1, solo)


@pytest.mark.parametrize("largest_group", [4, 5, 11])
def test_rows_trained_in_groups_equal_all_rows_at_once(problem, largest_group):
    """Groups of rows one after another (with a remainder: 11 rows by 4 are 4, 4 and 3) give
    every row the same bits as one program of all rows, across chunks and accumulation."""
    trials = [
        {"learning_rate": lr, "seed": s, "batch_size": b, "max_steps": 40}
        for lr, s, b in zip(np.geomspace(0.003, 0.3, 11), range(11), [4, 8] * 6, strict=False)
    ]
    model, x, y = problem
    hparams = trial_hparams(trials)
    states = []
    for group in (0, largest_group):
        spec = make_spec(model, 4, rows_per_group=group)
        state = population.init_population(spec, hparams)
        for ticks in (7, 13):  # two chunks: the second starts mid-batch and mid-epoch
            state = population.train_ticks(spec, state, hparams, x, y, jnp.int32(ticks))
        states.append(jax.device_get(state))
    jax.tree.map(np.testing.assert_array_equal, *states)
    first_leaf = jax.tree.leaves(states[1].trials.params)[0]
    assert not np.allclose(first_leaf[0], first_leaf[1])  # the rows differ


def test_row_groups_are_balanced_and_in_order():
    seen = []

    def fun(a):
        seen.append(a.shape[0])
        return a * 2

    rows = jnp.arange(100)
    np.testing.assert_array_equal(population.in_row_groups(fun, (rows,), 64), rows * 2)
    assert seen == [50]  # two groups of 50 (lax.map traces one), no remainder
    seen.clear()
    odd = jnp.arange(65)
    np.testing.assert_array_equal(population.in_row_groups(fun, (odd,), 32), odd * 2)
    assert seen == [22, 21]  # three groups of 22 would be 66: two of 22, then the 21 left
    seen.clear()
    population.in_row_groups(fun, (rows,), 0)
    assert seen == [100]
