"""A population of trials that share static structure, trained as one compiled program.

Static structure (the model, the optimizer family, the schedule family, the micro-batch size) is
a frozen :class:`PopulationSpec`, hashed into the compiled functions. Everything that differs
between trials is an array with a leading trial axis: the hyperparameters in
:class:`TrialHParams`, the training state in :class:`TrialState`. One tick of the compiled loop
gives every trial one micro-batch of ``m`` examples; a trial with batch size ``b`` (a multiple of
``m``) sums the gradients of ``b / m`` micro-batches and then applies one optimizer update, so its
update uses exactly the gradient of its own batch of ``b`` examples. Trials that have stopped
(early stopping, divergence, spent budget) are frozen by masks: their parameters and optimizer
state no longer change.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from hpjax.engine import early_stopping, optim, stream, tasks
from hpjax.engine.jit import jit
from hpjax.models import Model

Params = Any


@dataclasses.dataclass(frozen=True)
class PopulationSpec:
    """What is compiled once for a population: shared by all of its trials."""

    model: Model
    optimizer: str
    schedule: str
    microbatch: int
    num_train: int
    optimizer_options: tuple[tuple[str, Any], ...] = ()
    patience: int = 0
    min_delta: float = 0.0
    min_steps: int = 0
    eval_batch_size: int = 1024
    accumulates: bool = True  # False when every batch size equals the micro-batch: no summing
    divergence_loss: float = float("inf")  # a batch loss above this (or non-finite): divergence
    task: tasks.Task = tasks.CLASSIFICATION  # the loss trained on, the metrics, the monitor
    # True when trials differ in momentum (or Adam's b1): it is then read from TrialHParams;
    # else the static option is used, so that XLA sees the same constant as a plain optimizer.
    per_trial_momentum: bool = False
    # augment(key, x) -> x: applied to each trial's micro-batch at every tick, inside the program
    augment: Any = None
    # An optax factory's keywords that trials set for themselves (Lion's b1): read from
    # TrialHParams.optimizer_values, traced; the factory's other keywords stay static.
    traced_options: tuple[str, ...] = ()
    # True when some trial smooths its labels: the trained loss then reads TrialHParams's
    # label_smoothing (classification only); else the task's own loss, as compiled before.
    label_smoothing: bool = False
    # train_ticks runs the rows as groups of at most this many, one group after another
    # (0: all rows at once); see in_row_groups and rows_per_group
    rows_per_group: int = 0

    def options(self, hparams: TrialHParams | None = None) -> dict[str, Any]:
        """The optimizer's options for one trial: the static ones, with the trial's own values
        from ``hparams`` (one row) where trials differ in them: its momentum (or Adam's b1) when
        :attr:`per_trial_momentum`, and a factory's keywords named in :attr:`traced_options`."""
        options = dict(self.optimizer_options)
        if hparams is None:
            return options
        if self.per_trial_momentum and self.optimizer in optim.FIRST_MOMENT:
            options[optim.FIRST_MOMENT[self.optimizer]] = hparams.momentum
        for key in self.traced_options:
            options[key] = hparams.optimizer_values[key]
        return options

    def direction(self, hparams: TrialHParams | None = None) -> optax.GradientTransformation:
        """The optimizer's learning-rate-free transformation (see :meth:`options`)."""
        return optim.direction(self.optimizer, **self.options(hparams))


@struct.dataclass
class TrialHParams:
    """Per-trial hyperparameters, each an array ``[K]``."""

    learning_rate: jax.Array  # peak rate; the schedule multiplies it
    batch_size: jax.Array  # a multiple of the population's micro-batch
    seed: jax.Array  # initialisation and data order
    weight_decay: jax.Array  # decoupled
    warmup_steps: jax.Array
    decay_rate: jax.Array
    end_factor: jax.Array
    max_steps: jax.Array  # optimizer updates in the budget, also the schedule's horizon
    momentum: jax.Array  # momentum (optimizer 'momentum') or Adam's b1; unused by the others
    dropout: jax.Array  # the rate of the model's TrialDropout layers; unused without them
    label_smoothing: jax.Array  # classification: the weight of the uniform label distribution
    # an optax factory's keywords that trials set (PopulationSpec.traced_options): name -> [K]
    optimizer_values: dict[str, jax.Array] = dataclasses.field(default_factory=dict)

    @property
    def num_trials(self) -> int:
        return self.learning_rate.shape[0]


@struct.dataclass
class TrialState:
    """What one optimizer trajectory carries; leading axis ``[K]`` in a population."""

    params: Params  # the model's variables: parameters (and batch statistics, if it has any)
    opt_state: Any
    grad_sum: Params  # gradients summed over the micro-batches of the current batch
    loss_sum: jax.Array  # their mean losses, summed likewise
    micro_count: jax.Array  # micro-batches summed into grad_sum
    step: jax.Array  # optimizer updates applied
    data_key: jax.Array
    ticks: jax.Array  # micro-batches this trial has drawn from its stream (its data position)
    diverged: jax.Array  # a non-finite loss or update was met; frozen at the last finite state


@struct.dataclass
class PopulationState:
    """The whole population: trials, their best points, and the shared position in the data."""

    trials: TrialState
    best_params: Params  # each trial's parameters at its best validation loss
    early_stop: early_stopping.EarlyStopState
    tick: jax.Array  # ticks of the whole program (a scalar shared by all rows)


HPARAM_DEFAULTS = dict(
    batch_size=None,  # required, like learning_rate
    seed=0,
    weight_decay=0.0,
    warmup_steps=0,
    decay_rate=0.1,
    end_factor=0.0,
    max_steps=2**30,
    momentum=0.9,
    dropout=0.0,
    label_smoothing=0.0,
)
_INT_HPARAMS = ("batch_size", "seed", "warmup_steps", "max_steps")


def make_hparams(learning_rate, batch_size, optimizer_values=None, **columns) -> TrialHParams:
    """:class:`TrialHParams` from per-trial sequences (or scalars, broadcast to every trial);
    a column not given takes its value from :data:`HPARAM_DEFAULTS`. ``optimizer_values``:
    an optax factory's per-trial keywords, name -> sequence (float32)."""
    unknown = set(columns) - set(HPARAM_DEFAULTS)
    if unknown:
        raise TypeError(
            f"unknown hyperparameters {sorted(unknown)}; known: learning_rate, "
            + ", ".join(HPARAM_DEFAULTS)
        )
    num = np.atleast_1d(np.asarray(learning_rate)).shape[0]
    values = {k: v for k, v in HPARAM_DEFAULTS.items() if v is not None} | columns
    values |= {"learning_rate": learning_rate, "batch_size": batch_size}

    def column(value, dtype):  # by NumPy: jnp.asarray and broadcast_to compile a program each
        return jax.device_put(np.broadcast_to(np.asarray(value, dtype), (num,)))

    return TrialHParams(
        **{
            name: column(value, np.int32 if name in _INT_HPARAMS else np.float32)
            for name, value in values.items()
        },
        optimizer_values={
            name: column(value, np.float32) for name, value in (optimizer_values or {}).items()
        },
    )


def one_trial_hparams(spec: PopulationSpec) -> TrialHParams:
    """A single trial's hyperparameters (scalars, the defaults) for the shapes of its state:
    what :func:`_init_trial` takes, for estimates that trace one trial."""
    values = {k: 0.0 for k in spec.traced_options}
    row = make_hparams([1.0], [spec.microbatch], optimizer_values=values)
    return jax.tree.map(lambda a: a[0], row)


def is_active(
    trials: TrialState, early_stop: early_stopping.EarlyStopState, hparams: TrialHParams
) -> jax.Array:
    """Trials still training: not diverged, not stopped early, budget not spent."""
    return ~trials.diverged & ~early_stop.stopped & (trials.step < hparams.max_steps)


def _select(mask: jax.Array, new, old):
    return jax.tree.map(lambda a, b: jnp.where(mask, a, b), new, old)


def _all_finite(tree) -> jax.Array:
    """Whether every element of ``tree`` is finite, as one float sum per leaf: a NaN or an
    infinity makes the sum non-finite (so would an overflow past 3e38, a divergence anyway).
    XLA reads each leaf once for a sum; ``all(isfinite)`` costs it a second pass."""
    return jnp.isfinite(sum(jnp.sum(x, dtype=jnp.float32) for x in jax.tree.leaves(tree)))


def _init_trial(spec: PopulationSpec, hparams: TrialHParams) -> TrialState:
    """One trial's fresh state from its row of ``hparams``: its seed, and the optimizer's
    per-trial options (a factory may keep them in its state)."""
    init_key, data_key = jax.random.split(jax.random.PRNGKey(hparams.seed))
    variables = spec.model.init(init_key)
    params = spec.model.trainable(variables)
    return TrialState(
        params=variables,
        opt_state=spec.direction(hparams).init(params),
        grad_sum=jax.tree.map(jnp.zeros_like, params),
        loss_sum=jnp.zeros((), jnp.float32),
        micro_count=jnp.zeros((), jnp.int32),
        step=jnp.zeros((), jnp.int32),
        data_key=data_key,
        ticks=jnp.zeros((), jnp.int32),
        diverged=jnp.zeros((), bool),
    )


def _init_trials(spec: PopulationSpec, hparams: TrialHParams) -> TrialState:
    """Every trial's fresh state. On the CPU one trial after another (``lax.map``, the values a
    ``vmap`` gives): XLA:CPU on two cores deadlocks running many batched QR decompositions side
    by side (the orthogonal initialisers of LSTM and GRU recurrent kernels), and 8
    bidirectional 2-layer LSTMs of 32 units hung every time. Elsewhere as one ``vmap``."""
    init = functools.partial(_init_trial, spec)
    if jax.default_backend() == "cpu":
        return jax.lax.map(init, hparams)
    return jax.vmap(init)(hparams)


def _select_rows(mask: jax.Array, new, old):
    """Per leaf, ``new`` in the rows where ``mask [K]`` is set, else ``old``."""
    return jax.tree.map(
        lambda a, b: jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), new, old
    )


@jit(static_argnums=0)
def init_population(spec: PopulationSpec, hparams: TrialHParams) -> PopulationState:
    """Fresh parameters and optimizer states for every trial, from each trial's seed."""

    trials = _init_trials(spec, hparams)
    return PopulationState(
        trials=trials,
        best_params=trials.params,
        early_stop=early_stopping.init(hparams.seed.shape[0]),
        tick=jnp.zeros((), jnp.int32),
    )


# The random streams of a trial besides its data order (dropout masks, augmentation) come from
# its data key folded with this number, which no epoch of the data stream reaches.
_TRAINING_STREAMS = 0xFFFFFFFF


def training_keys(trial: TrialState) -> tuple[jax.Array, jax.Array]:
    """This tick's keys of the trial's model streams (dropout) and of its augmentation: from its
    seed and data position only, so a trial draws the same masks alone, in any population, after
    a resume, and after population-based training copied another member's weights."""
    base = jax.random.fold_in(jax.random.fold_in(trial.data_key, _TRAINING_STREAMS), trial.ticks)
    return jax.random.fold_in(base, 0), jax.random.fold_in(base, 1)


def _loss_and_gradient(
    spec: PopulationSpec,
    hparams: TrialHParams,
    trial: TrialState,
    x: jax.Array,
    y: jax.Array,
) -> tuple[jax.Array, Params, Params]:
    """The micro-batch's training loss, its gradient with respect to the trainable parameters,
    and the model's variables after the forward pass (the batch statistics it updated)."""
    model = spec.model
    model_key, augment_key = training_keys(trial)
    if spec.augment is not None:
        x = spec.augment(augment_key, x)

    def loss_of(outputs: jax.Array) -> jax.Array:
        if spec.label_smoothing:
            logits = tasks.model_outputs(outputs)
            return jnp.mean(tasks.smoothed_cross_entropy(logits, y, hparams.label_smoothing))
        return spec.task.mean_loss(outputs, y, x)

    if not model.stateful:
        loss, grads = jax.value_and_grad(lambda p: loss_of(model.apply(p, x)))(trial.params)
        return loss, grads, trial.params

    def forward(params: Params) -> tuple[jax.Array, Params]:
        variables = model.with_trainable(trial.params, params)
        outputs, variables = model.train_apply(variables, x, model_key, hparams.dropout)
        return loss_of(outputs), variables

    (loss, variables), grads = jax.value_and_grad(forward, has_aux=True)(
        model.trainable(trial.params)
    )
    return loss, grads, variables


def micro_step(
    spec: PopulationSpec,
    hparams: TrialHParams,
    trial: TrialState,
    stopped_early: jax.Array,
    x: jax.Array,
    y: jax.Array,
) -> TrialState:
    """One tick of one trial: add the gradient of a micro-batch, update when the batch is full.

    A batch whose loss is non-finite or above ``spec.divergence_loss``, or whose gradient is not
    finite, marks the trial diverged; it keeps its last parameters.

    Masking costs no pass over memory of its own: the decision to apply an update is known before
    the update, the new optimizer state is selected first, and the parameters step from the
    selected state (``optim.direction_of_state``), so each select fuses into the elementwise
    update that writes the buffer in place.
    """
    loss, grads, variables = _loss_and_gradient(spec, hparams, trial, x, y)
    if spec.accumulates:
        grad_sum = jax.tree.map(jnp.add, trial.grad_sum, grads)
        loss_sum = trial.loss_sum + loss
        micro_count = trial.micro_count + 1
        micro_per_batch = hparams.batch_size // spec.microbatch
        batch_done = micro_count >= micro_per_batch
        mean_grad = jax.tree.map(lambda g: g / micro_per_batch, grad_sum)
        batch_loss = loss_sum / micro_per_batch
    else:  # every tick is a whole batch
        grad_sum, loss_sum, micro_count = trial.grad_sum, trial.loss_sum, trial.micro_count
        batch_done, mean_grad, batch_loss = jnp.ones((), bool), grads, loss

    active = ~trial.diverged & ~stopped_early & (trial.step < hparams.max_steps)
    apply = batch_done & active
    finite = jnp.isfinite(batch_loss) & (batch_loss < spec.divergence_loss) & _all_finite(mean_grad)
    accept = apply & finite

    lr = optim.learning_rate(
        spec.schedule,
        trial.step,
        hparams.learning_rate,
        hparams.max_steps,
        warmup_steps=hparams.warmup_steps,
        decay_rate=hparams.decay_rate,
        end_factor=hparams.end_factor,
    )
    params = spec.model.trainable(trial.params)
    options = spec.options(hparams)
    direction = optim.direction(spec.optimizer, **options)
    updates, stepped_state = direction.update(mean_grad, trial.opt_state, params)
    opt_state = _select(accept, stepped_state, trial.opt_state)
    from_state = optim.direction_of_state(spec.optimizer, mean_grad, opt_state, **options)
    if from_state is not None:  # else (any other factory) the direction its update returned
        updates = from_state
    multipliers = spec.model.lr_multipliers(spec.optimizer)  # static: μP's per-layer rates
    new_params = _select(
        accept, optim.apply_update(params, updates, lr, hparams.weight_decay, multipliers), params
    )
    if spec.model.stateful:  # batch statistics move with every micro-batch of an active trial
        variables = _select(active & jnp.isfinite(loss), variables, trial.params)
    return TrialState(
        params=spec.model.with_trainable(variables, new_params),
        opt_state=opt_state,
        grad_sum=_select(batch_done, jax.tree.map(jnp.zeros_like, grad_sum), grad_sum)
        if spec.accumulates
        else grad_sum,
        loss_sum=jnp.where(batch_done, 0.0, loss_sum),
        micro_count=jnp.where(batch_done, 0, micro_count),
        step=trial.step + accept.astype(jnp.int32),
        data_key=trial.data_key,
        ticks=trial.ticks + 1,
        diverged=trial.diverged | (apply & ~finite),
    )


@jit(static_argnums=0, donate_argnums=1)
def train_ticks(
    spec: PopulationSpec,
    state: PopulationState,
    hparams: TrialHParams,
    x_train: jax.Array,
    y_train: jax.Array,
    num_ticks: jax.Array,
) -> PopulationState:
    """Runs ``num_ticks`` ticks of the whole population in one compiled loop.

    ``num_ticks`` is traced, so chunks of any length share one compilation. The rows run in
    groups of at most ``spec.rows_per_group`` (:func:`in_row_groups`), each group through all
    the ticks before the next: within a call the rows do not interact (early stopping decides
    between calls), so a row's results change only by float rounding, as in a population of
    another size (XLA may sum a batched matmul in another order for another number of rows).
    """
    m, n = spec.microbatch, spec.num_train
    stopped = state.early_stop.stopped

    def run_rows(trials: TrialState, stopped: jax.Array, hparams: TrialHParams) -> TrialState:
        step_all = jax.vmap(functools.partial(micro_step, spec))

        def body(_, carry):
            # The permutations are carried one tick behind and rolled forward first, so that the
            # gather reads what this tick wrote: XLA then updates them in place instead of copying.
            trials, perms = carry
            perms = stream.advance_permutations(perms, trials.data_key, trials.ticks - 1, m, n)
            idx = stream.microbatch_indices(perms, trials.ticks, m, n)
            return step_all(hparams, trials, stopped, x_train[idx], y_train[idx]), perms

        perms = stream.permutations_at(trials.data_key, trials.ticks - 1, m, n)
        trials, _ = jax.lax.fori_loop(0, num_ticks, body, (trials, perms))
        return trials

    trials = in_row_groups(run_rows, (state.trials, stopped, hparams), spec.rows_per_group)
    return state.replace(trials=trials, tick=state.tick + jnp.maximum(num_ticks, 0))


# On one CPU device a population of more than GROUPED_ABOVE rows trains as groups of at most
# CPU_ROWS_PER_GROUP rows (see in_row_groups). At 512 rows groups of 32 trained the MLP 64 x 2,
# the CNN and the GRU 1.3-1.6x faster per trial-step than all rows at once; at 128 rows the GRU
# lost 10% in groups of 32 (python tools/bench_engine.py --rows_per_group 0,16,32,64).
CPU_ROWS_PER_GROUP = 32
GROUPED_ABOVE = 128


def rows_per_group(num_rows: int, num_devices: int, batch_statistics: bool = False) -> int:
    """The rule for :attr:`PopulationSpec.rows_per_group`: groups of at most
    :data:`CPU_ROWS_PER_GROUP` rows for a population of more than :data:`GROUPED_ABOVE` on one
    CPU device; otherwise all rows at once, as on an accelerator, which the rows are there to
    fill, and where the rows are sharded over several devices.

    A model with batch statistics trains its rows one at a time on one CPU device: the bias of a
    layer that feeds a BatchNorm has a gradient that is zero but for rounding, which Adam (or
    any optimizer that divides by the gradient's scale) turns into steps of about the learning
    rate, so the rounding of a batched matmul against the trial alone's moved such a trial's
    validation loss by 3-7% in 100 steps. One row at a time is the trial alone's arithmetic,
    bit for bit (1.4-2.2x the time per trial-step of all rows at once: tools/bench_engine.py).
    """
    if jax.default_backend() != "cpu" or num_devices != 1:
        return 0
    if batch_statistics and num_rows > 1:
        return 1
    return CPU_ROWS_PER_GROUP if num_rows > GROUPED_ABOVE else 0


def in_row_groups(fun: Callable, rows: tuple, largest_group: int) -> Any:
    """``fun(*rows)`` for a function of independent rows (``rows``: pytrees whose leaves lead
    with the row axis), computed as groups of at most ``largest_group`` rows one after another
    (``lax.map``), balanced (100 rows by 64: two groups of 50), rows in order.

    On the CPU each group's working set then stays in the caches across a whole loop of ticks:
    at 512 rows the GRU and the CNN lose a quarter of their speed per trial-step against 64
    (``python tools/bench_engine.py --rows_per_group``). 0, or no more rows than that: one call.
    """
    num = jax.tree.leaves(rows)[0].shape[0]
    if not largest_group or num <= largest_group:
        return fun(*rows)
    size = -(-num // -(-num // largest_group))
    whole = num // size
    split = whole * size

    def grouped(a):
        return a[:split].reshape((whole, size) + a.shape[1:])

    out = jax.lax.map(lambda group: fun(*group), jax.tree.map(grouped, rows))
    out = jax.tree.map(lambda a: a.reshape((split,) + a.shape[2:]), out)
    if split == num:
        return out
    rest = fun(*jax.tree.map(lambda a: a[split:], rows))
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), out, rest)


def _tick(
    spec: PopulationSpec, hparams: TrialHParams, state: PopulationState, x: jax.Array, y: jax.Array
) -> PopulationState:
    """One tick of every trial on its micro-batch ``x[k], y[k]``, the rows grouped as in
    :func:`train_ticks`."""
    step_all = jax.vmap(functools.partial(micro_step, spec))
    rows = (hparams, state.trials, state.early_stop.stopped, x, y)
    trials = in_row_groups(step_all, rows, spec.rows_per_group)
    return state.replace(trials=trials, tick=state.tick + 1)


@jit(static_argnums=0, donate_argnums=1)
def train_batches(
    spec: PopulationSpec,
    state: PopulationState,
    hparams: TrialHParams,
    xs: jax.Array,
    ys: jax.Array,
) -> PopulationState:
    """Ticks of the whole population on given micro-batches ``xs [T, K, m, ...]``, ``ys``: the
    training set stays on the host (:mod:`hpjax.engine.host_data` gathers the very examples
    :func:`train_ticks` would)."""

    def body(state, batch):
        return _tick(spec, hparams, state, *batch), None

    state, _ = jax.lax.scan(body, state, (xs, ys))
    return state


@jit(static_argnums=0)
def evaluate(
    spec: PopulationSpec, params: Params, x: jax.Array, y: jax.Array
) -> dict[str, jax.Array]:
    """The mean loss and every metric of the task, ``{name: [K]}``, of each trial's ``params``
    on the set ``(x, y)``.

    The set is shared by all trials and walked in batches of ``spec.eval_batch_size``.
    """
    num = x.shape[0]
    batch = min(spec.eval_batch_size, num)
    num_batches = -(-num // batch)
    pad = num_batches * batch - num

    def batched(a):
        a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
        return a.reshape((num_batches, batch) + a.shape[1:])

    if spec.task.reduction == "mean" or spec.task.sows:  # no padding enters a batch's value

        def batch_values(p, xb, yb):
            return spec.task.batch_means(spec.model.apply(p, xb), yb, xb)

        over_set = functools.partial(tasks.mean_over_set, x=x, y=y, batch=batch)
        return jax.vmap(lambda p: over_set(functools.partial(batch_values, p)))(params)
    xs, ys = batched(x), batched(y)
    weights = (jnp.arange(num_batches * batch) < num).reshape(num_batches, batch)
    names = ("loss", *spec.task.metric_names)

    def one_trial(p):
        def one_batch(totals, batch_data):
            xb, yb, wb = batch_data
            values = spec.task.per_example(spec.model.apply(p, xb), yb, xb)
            return {k: totals[k] + jnp.sum(values[k] * wb) for k in names}, None

        zeros = {k: jnp.zeros((), jnp.float32) for k in names}
        sums, _ = jax.lax.scan(one_batch, zeros, (xs, ys, weights))
        return {k: v / num for k, v in sums.items()}

    return jax.vmap(one_trial)(params)


@jit(static_argnums=0, donate_argnums=1)
def record_evaluation(
    spec: PopulationSpec,
    state: PopulationState,
    monitored: jax.Array,
    evaluated: jax.Array,
) -> tuple[PopulationState, jax.Array]:
    """Feeds the monitored validation value ``[K]`` to early stopping and keeps each improved
    trial's parameters."""
    early_stop, improved = early_stopping.update(
        state.early_stop,
        monitored,
        state.trials.step,
        evaluated,
        patience=spec.patience,
        min_delta=spec.min_delta,
        min_steps=spec.min_steps,
    )
    best_params = _select_rows(improved, state.trials.params, state.best_params)
    return state.replace(early_stop=early_stop, best_params=best_params), improved


@jit
def active_mask(state: PopulationState, hparams: TrialHParams) -> jax.Array:
    """Which trials are still training, ``[K]`` bool."""
    return is_active(state.trials, state.early_stop, hparams)


@jit(static_argnums=0, donate_argnums=1)
def restart_rows(
    spec: PopulationSpec, state: PopulationState, hparams: TrialHParams, rows: jax.Array
) -> PopulationState:
    """The trials in ``rows`` (``[K]`` bool) start afresh from their seeds in ``hparams``: new
    parameters and optimizer state, their data streams and step counters at 0, no best point.

    The other rows go on untouched; the shapes do not change, so nothing recompiles. This is how
    a freed slot takes the next trial of a queue.
    """
    fresh = _init_trials(spec, hparams)
    early_stop = _select_rows(rows, early_stopping.init(rows.shape[0]), state.early_stop)
    return state.replace(
        trials=_select_rows(rows, fresh, state.trials),
        best_params=_select_rows(rows, fresh.params, state.best_params),
        early_stop=early_stop,
    )


@jit(donate_argnums=0)
def copy_rows(state: PopulationState, source: jax.Array, rows: jax.Array) -> PopulationState:
    """Each row in ``rows`` takes the training state of row ``source[r]``: parameters, optimizer
    state, step count (population-based training's exploit, a gather along the trial axis on the
    device). It keeps its own data stream (key and position) and its own best point: a row's
    best is the best of its own evaluations, so a result is credited to the row that reached it,
    never to one that copied it later."""
    donor = jax.tree.map(lambda a: a[source], state.trials)
    own = state.trials
    copied = donor.replace(data_key=own.data_key, ticks=own.ticks)
    return state.replace(trials=_select_rows(rows, copied, own))
