"""What a population minimises and reports: a per-example loss and named per-example metrics.

A :class:`Task` is static (it is part of the compiled program): the engine trains on the mean of
``loss(outputs, targets)`` over a batch, and an evaluation reports the mean loss and the mean of
every metric over a set. ``monitor`` names the value early stopping watches on the validation
set (``"loss"`` or one of the metrics); it must be lower-is-better. Built-ins:
:data:`CLASSIFICATION` (softmax cross-entropy with integer labels; accuracy) and
:data:`REGRESSION` (mean squared error; mean absolute error). A user's own task is a
:class:`Task` with functions of their own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from hpjax.errors import ConfigError

# (outputs [B, ...], targets [B, ...]) -> one value per example [B]
PerExample = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Task:
    """A loss, metrics and the monitored value; hashable, so it can sit in a static spec."""

    name: str
    loss: PerExample
    metrics: tuple[tuple[str, PerExample], ...] = ()
    monitor: str = "loss"  # lower is better; "loss" or a metric's name
    higher_is_better: tuple[str, ...] = ()  # metrics that are not lower-is-better (reporting)
    classification: bool = False  # targets are integer class labels

    def __post_init__(self):
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
    def metric_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.metrics)

    def mean_loss(self, outputs: jax.Array, targets: jax.Array) -> jax.Array:
        return jnp.mean(self.loss(outputs, targets))

    def per_example(self, outputs: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
        """The loss and every metric of each example, ``{name: [B]}``."""
        values = {"loss": self.loss(outputs, targets)}
        values.update({name: fn(outputs, targets) for name, fn in self.metrics})
        return {k: jnp.asarray(v, jnp.float32).reshape(outputs.shape[0]) for k, v in values.items()}

    def with_monitor(self, monitor: str) -> Task:
        return dataclasses.replace(self, monitor=monitor)


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
