"""What a population minimises and reports: a per-example loss and named per-example metrics.

A :class:`Task` is static (it is part of the compiled program): the engine trains on the mean of
``loss(outputs, targets)`` over a batch, and an evaluation reports the mean loss and the mean of
every metric over a set. The model's outputs may be any pytree (``{"logits": ..., "aux": ...}``:
a KL term, a load-balancing loss the model returns); a loss or metric with a parameter named
``inputs`` is also given the batch's inputs (a reconstruction), one named ``sown`` the values
the model's layers sowed during the call (``nnx.sow``: :class:`hpjax.models.model.SownOutputs`,
a pure dict like ``{"block": {"balance": (value,)}}``); with ``reduction="mean"`` each
gives one value of its batch (a scalar) instead of one per example. ``monitor`` names the value
early stopping watches on the validation set (``"loss"`` or one of the metrics); it must be
lower-is-better. Built-ins:
:data:`CLASSIFICATION` (softmax cross-entropy with integer labels; accuracy) and
:data:`REGRESSION` (mean squared error; mean absolute error). A user's own task is a
:class:`Task` with functions of their own.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from hpjax.errors import ConfigError
from hpjax.models.model import SownOutputs

# (outputs, targets [B, ...][, inputs=[B, ...]]) -> one value per example [B], or of the batch []
PerExample = Callable[..., jax.Array]
REDUCTIONS = ("per_example", "mean")


@functools.lru_cache(maxsize=256)
def _parameters(fn: Callable) -> tuple[str, ...]:
    try:
        return tuple(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # a builtin without a signature
        return ()


def takes_inputs(fn: Callable) -> bool:
    """Whether a loss or metric has a parameter named ``inputs`` (the batch's inputs)."""
    return "inputs" in _parameters(fn)


def takes_sown(fn: Callable) -> bool:
    """Whether a loss or metric has a parameter named ``sown`` (what the model sowed)."""
    return "sown" in _parameters(fn)


def signature(fn: Callable) -> str:
    """How hpjax calls ``fn``, for messages: ``(outputs, targets)``, with ``inputs`` and
    ``sown`` where it takes them."""
    extra = [name for name, takes in (("inputs", takes_inputs), ("sown", takes_sown)) if takes(fn)]
    return f"({', '.join(['outputs', 'targets', *extra])})"


def model_outputs(outputs: Any) -> Any:
    """A model's outputs without what its layers sowed beside them."""
    return outputs.outputs if isinstance(outputs, SownOutputs) else outputs


@dataclasses.dataclass(frozen=True)
class Task:
    """A loss, metrics and the monitored value; hashable, so it can sit in a static spec."""

    name: str
    loss: PerExample
    metrics: tuple[tuple[str, PerExample], ...] = ()
    monitor: str = "loss"  # lower is better; "loss" or a metric's name
    higher_is_better: tuple[str, ...] = ()  # metrics that are not lower-is-better (reporting)
    classification: bool = False  # targets are integer class labels
    # "per_example": the loss and metrics give [B]; "mean": one value of the batch, [] (a mean
    # over the batch, or a term of the whole batch); evaluation then walks unpadded batches
    reduction: str = "per_example"

    def __post_init__(self):
        if self.reduction not in REDUCTIONS:
            raise ConfigError(
                f"task {self.name!r}: reduction={self.reduction!r} is unknown; allowed: "
                f"{', '.join(REDUCTIONS)}"
            )
        names = [name for name, _ in self.metrics]
        if "loss" in names or len(set(names)) != len(names):
            raise ConfigError(f"task {self.name!r}: metric names must be unique and not 'loss'")
        if self.monitor not in ("loss", *names):
            raise ConfigError(
                f"task {self.name!r}: monitor={self.monitor!r} is unknown; allowed: "
                f"{', '.join(('loss', *names))}"
            )
        if self.monitor in self.higher_is_better:
            raise ConfigError(
                f"task {self.name!r}: monitor={self.monitor!r} is higher-is-better; early "
                "stopping watches a lower-is-better value (the loss or an error metric)"
            )

    @property
    def sows(self) -> bool:
        """Whether a function reads what the model sowed (a value of the whole batch, maybe):
        evaluation then walks unpadded batches, as for ``reduction="mean"``."""
        return any(takes_sown(fn) for _, fn in self.functions)

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.metrics)

    @property
    def functions(self) -> tuple[tuple[str, PerExample], ...]:
        """The loss and every metric, by name."""
        return (("loss", self.loss), *self.metrics)

    def value(self, fn: PerExample, outputs: Any, targets: jax.Array, inputs: Any) -> jax.Array:
        """``fn`` of a batch, given the inputs and the sown values where it asks for them."""
        keywords = {"inputs": inputs} if takes_inputs(fn) else {}
        if takes_sown(fn):
            if not isinstance(outputs, SownOutputs):
                raise ConfigError(
                    f"task {self.name!r}: {getattr(fn, '__name__', 'a function')} takes sown, "
                    "but the model sowed nothing during its call (self.sow(nnx.Intermediate, "
                    "name, value) in a layer's __call__)"
                )
            keywords["sown"] = outputs.sown
        return fn(model_outputs(outputs), targets, **keywords)

    def mean_loss(self, outputs: Any, targets: jax.Array, inputs: Any = None) -> jax.Array:
        """The batch's loss: the mean of its examples' (or the loss itself, ``"mean"``)."""
        loss = self.value(self.loss, outputs, targets, inputs)
        return loss if self.reduction == "mean" else jnp.mean(loss)

    def per_example(
        self, outputs: Any, targets: jax.Array, inputs: Any = None
    ) -> dict[str, jax.Array]:
        """The loss and every metric of each example, ``{name: [B]}`` (``"per_example"``)."""
        num = targets.shape[0]
        return {
            name: jnp.asarray(self.value(fn, outputs, targets, inputs), jnp.float32).reshape(num)
            for name, fn in self.functions
        }

    def batch_means(
        self, outputs: Any, targets: jax.Array, inputs: Any = None
    ) -> dict[str, jax.Array]:
        """The loss and every metric of the batch as a whole, ``{name: []}``."""
        if self.reduction == "per_example":
            return {k: jnp.mean(v) for k, v in self.per_example(outputs, targets, inputs).items()}
        return {
            name: jnp.asarray(self.value(fn, outputs, targets, inputs), jnp.float32).reshape(())
            for name, fn in self.functions
        }

    def with_monitor(self, monitor: str) -> Task:
        return dataclasses.replace(self, monitor=monitor)


def mean_over_set(
    values: Callable[[jax.Array, jax.Array], dict[str, jax.Array]],
    x: jax.Array,
    y: jax.Array,
    batch: int,
) -> dict[str, jax.Array]:
    """The mean over the set ``(x, y)`` of a task whose values are of a whole batch
    (``reduction="mean"``; ``values(xb, yb) -> {name: []}``): its batches' values weighted by
    their sizes, the last batch short instead of padded (padding would enter its value)."""
    num = x.shape[0]
    whole = num // batch
    split = whole * batch

    def one_batch(totals, batch_data):
        means = values(*batch_data)
        return {k: totals[k] + means[k] * batch for k in totals}, None

    totals = jax.tree.map(jnp.zeros_like, jax.eval_shape(values, x[:1], y[:1]))
    if whole:

        def grouped(a):
            return a[:split].reshape((whole, batch) + a.shape[1:])

        totals, _ = jax.lax.scan(one_batch, totals, (grouped(x), grouped(y)))
    if split < num:
        means = values(x[split:], y[split:])
        totals = {k: totals[k] + means[k] * (num - split) for k in totals}
    return {k: v / num for k, v in totals.items()}


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy of each example with an integer label."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def smoothed_cross_entropy(
    logits: jax.Array, labels: jax.Array, smoothing: jax.Array | float
) -> jax.Array:
    """Cross-entropy against labels smoothed by ``smoothing``: the target puts ``1 - smoothing``
    on the label and spreads ``smoothing`` evenly over every class (Szegedy et al. 2016)."""
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    on_label = jnp.take_along_axis(log_p, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return -((1.0 - smoothing) * on_label + smoothing * jnp.mean(log_p, axis=-1))


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return (jnp.argmax(logits, -1) == labels).astype(jnp.float32)


def _per_example_mean(values: jax.Array) -> jax.Array:
    return values.reshape(values.shape[0], -1).mean(axis=1)


def squared_error(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Squared error of each example, averaged over its output dimensions."""
    return _per_example_mean(jnp.square(outputs - targets.reshape(outputs.shape)))


def absolute_error(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    return _per_example_mean(jnp.abs(outputs - targets.reshape(outputs.shape)))


CLASSIFICATION = Task(
    "classification",
    cross_entropy,
    (("accuracy", accuracy),),
    higher_is_better=("accuracy",),
    classification=True,
)
REGRESSION = Task("regression", squared_error, (("mae", absolute_error),))
TASKS = {"classification": CLASSIFICATION, "regression": REGRESSION}


def get_task(task: str | Task) -> Task:
    """A built-in task by name, or ``task`` itself."""
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise ConfigError(f"task={task!r} is unknown; allowed: {', '.join(TASKS)} or a Task")
    return TASKS[task]
