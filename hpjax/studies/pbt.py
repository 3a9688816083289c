"""Population-based training's results: a member's lineage, its replay alone, the schedule plot.

A member's final parameters were trained by a chain of members: each exploit in ``lineage.csv``
says that from ``tick`` on, member ``trial`` continued the state of ``parent`` with new
hyperparameters and its own data stream. :func:`lineage_path` walks that chain back to the
first member; :func:`replay` retrains it as ONE trial (a population of one row whose
hyperparameters, data key and data position change at each link) and returns its validation
losses next to the ones recorded in ``metrics.jsonl``: they agree when the engine's core property
holds across exploits.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import ml_collections

from hpjax import data as data_lib
from hpjax.engine import population, tasks
from hpjax.models import build_model
from hpjax.report import figures
from hpjax.results import files
from hpjax.study import spec as spec_lib
from hpjax.study.populations import plan_populations, population_spec


@dataclasses.dataclass(frozen=True)
class Segment:
    """Ticks ``[start, end)`` trained by ``member``'s hyperparameters and data stream."""

    member: int
    start: int
    end: int
    values: dict  # searched hyperparameters set at ``start`` (empty: the member's own)


def read_lineage(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "lineage.csv")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: was this a study with scheduler='pbt'?")
    return files.read_csv(path)


def lineage_path(lineage: list[dict], member: int, end_tick: int) -> list[Segment]:
    """The segments, first to last, that trained ``member``'s state at ``end_tick``."""
    segments = []
    while True:
        earlier = [e for e in lineage if int(e["trial"]) == member and int(e["tick"]) < end_tick]
        if not earlier:
            segments.append(Segment(member, 0, end_tick, {}))
            return segments[::-1]
        link = max(earlier, key=lambda e: int(e["tick"]))
        values = {k[len("after_") :]: v for k, v in link.items() if k.startswith("after_")}
        segments.append(Segment(member, int(link["tick"]), end_tick, values))
        member, end_tick = int(link["parent"]), int(link["tick"])


def replay(workdir: str, member: int, rows: int | None = None) -> list[dict]:
    """Retrains ``member``'s lineage as one trial; one row per evaluation, with the recorded and
    the replayed validation loss.

    The trial runs in a program of ``rows`` rows, every row a copy of it (default: as many as
    the study had), so XLA compiles the same kernels as for the study and the arithmetic is the
    same to the bit. With ``rows=1`` it agrees only to float rounding, and training at a high
    rate amplifies that: on MNIST-1D's MLP at rate 0.005, 2e-7 at step 50 grows to 4e-4 at 100.
    """
    lineage = read_lineage(workdir)
    config = ml_collections.ConfigDict(files.read_config(workdir))
    study = spec_lib.parse(config)
    dataset = data_lib.load_dataset(config)
    (plan,) = plan_populations(study, study.trials, dataset.num_train)
    model = build_model(
        study.model_config(plan.trials[0].architecture),
        dataset.input_shape,
        dataset.num_classes,
    )
    spec = population_spec(
        study,
        model,
        plan,
        num_train=dataset.num_train,
        num_classes=dataset.num_classes,
        task=tasks.CLASSIFICATION,
        augment=dataset.augment,
    )
    everyone = plan.hparams()
    rows = rows or len(plan.trials)
    metrics = files.read_metrics(workdir)
    ticks_per_step = plan.trials[0].batch_size // plan.microbatch
    end_tick = max(int(r["steps"]) for r in files.read_summary(workdir)) * ticks_per_step
    x_train, y_train = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
    x_val, y_val = jnp.asarray(dataset.x_val), jnp.asarray(dataset.y_val)
    state, out = None, []
    for segment in lineage_path(lineage, member, end_tick):
        row = jax.tree.map(lambda a, m=segment.member: a[jnp.full(rows, m)], everyone)
        own_values = {k: v for k, v in segment.values.items() if k not in row.optimizer_values}
        factory_values = {k: v for k, v in segment.values.items() if k in row.optimizer_values}
        hparams = row.replace(
            **{k: jnp.full(rows, v, getattr(row, k).dtype) for k, v in own_values.items()},
            optimizer_values=row.optimizer_values
            | {k: jnp.full(rows, v, jnp.float32) for k, v in factory_values.items()},
        )
        own = population.init_population(spec, hparams)
        if state is None:
            state = own
            out.append(_compare(spec, state, metrics, segment.member, x_val, y_val))
        else:  # the member's own stream, at its own position
            trials = state.trials.replace(
                data_key=own.trials.data_key, ticks=jnp.full(rows, segment.start, jnp.int32)
            )
            state = state.replace(trials=trials)
        tick = segment.start
        while tick < segment.end:
            ticks = min(plan.eval_ticks, segment.end - tick)
            state = population.train_ticks(
                spec, state, hparams, x_train, y_train, jnp.asarray(ticks, jnp.int32)
            )
            tick += ticks
            out.append(_compare(spec, state, metrics, segment.member, x_val, y_val))
    return [r for r in out if r is not None]


def _compare(spec, state, metrics, member, x_val, y_val) -> dict | None:
    step = int(state.trials.step[0])
    loss = float(population.evaluate(spec, state.trials.params, x_val, y_val)["loss"][0])
    recorded = [r for r in metrics if int(r["trial"]) == member and int(r["step"]) == step]
    if not recorded:
        return None
    return {
        "member": member,
        "step": step,
        "recorded_val_loss": recorded[-1]["val_loss"],
        "replayed_val_loss": loss,
    }


def plot_schedules(workdir: str, keys: tuple[str, ...]) -> str | None:
    """The hyperparameter schedules PBT found: each member's values along its lineage against
    the step, one panel per searched key; returns the plot's path."""
    lineage = read_lineage(workdir)
    summary = files.read_summary(workdir)
    first = spec_lib.parse(ml_collections.ConfigDict(files.read_config(workdir))).trials
    start_step = {int(e["tick"]): int(e["step"]) for e in lineage}
    end = max(int(r["steps"]) for r in summary)
    fig = figures.new_figure((6.0 * len(keys), 4.5))
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        shown = []
        for r in summary:
            path = lineage_path(lineage, int(r["trial"]), 2**62)
            steps = [start_step.get(seg.start, 0) for seg in path] + [end]
            values = [seg.values.get(key, first[seg.member].value(key)) for seg in path]
            ax.step(steps, values + values[-1:], where="post", label=f"member {r['trial']}")
            shown += values
        if min(shown) > 0 and max(shown) / min(shown) >= 10:  # a log axis only over a decade:
            figures.log_scale(ax, "y")  # within one, matplotlib would label no tick at all
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.set_title(f"{key} along each member's lineage")
    if len(summary) <= 16:
        fig.axes[0].legend(fontsize=7)
    fig.tight_layout()
    return figures.save_figure(fig, os.path.join(workdir, "plots", "pbt_schedules.png"))
