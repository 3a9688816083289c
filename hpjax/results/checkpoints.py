"""Orbax checkpoints: each trial at its early-stop point, and the study state for resuming.

``checkpoints/trial_NNNN/<best_step>/`` holds one trial's parameters at its best validation loss
with metadata that identifies it (hyperparameters, step, epoch, validation loss and accuracy, the
model config and input shape). :func:`restore_best` turns it back into a ready Flax module.

``state/population_N/<tick>/`` holds a whole population (parameters, optimizer states, early
stopping, data keys, position in the data) taken right after an evaluation, with the number of
``metrics.jsonl`` lines written by then, so a killed study resumes where it left off.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zlib
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from hpjax.config import plain
from hpjax.errors import ConfigError
from hpjax.models import build_model, from_factory
from hpjax.models.registry import MODEL_NAMES


def _quiet_orbax(record) -> bool:
    """Drops Orbax's many INFO lines per save; its warnings and errors still show."""
    return record.levelno >= 30 or "/orbax/" not in record.pathname


logging.get_absl_logger().addFilter(_quiet_orbax)


def best_dir(workdir: str, trial: int) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints", f"trial_{trial:04d}")


def state_dir(workdir: str, population: int) -> str:
    return os.path.join(os.path.abspath(workdir), "state", f"population_{population}")


def _manager(directory: str, max_to_keep: int) -> ocp.CheckpointManager:
    """A manager that process 0 alone uses (in a multi-host study only process 0 writes)."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    if jax.process_count() > 1:
        os.makedirs(directory, exist_ok=True)
        options.create = False
        options.multiprocessing_options = ocp.options.MultiprocessingOptions(
            primary_host=0, active_processes={0}
        )
    return ocp.CheckpointManager(directory, options=options, item_names=("params", "metadata"))


def _clear_step(manager: ocp.CheckpointManager, step: int) -> None:
    """Removes a finished checkpoint at ``step`` so that a new save there can replace it."""
    manager.wait_until_finished()
    if step in manager.all_steps():
        manager.delete(step)


class CorruptCheckpointError(ValueError):
    """A restored array does not match the checksum recorded when it was saved."""


def checksums(tree: Any) -> dict[str, str]:
    """A CRC-32 of every array of ``tree`` (host arrays), by its path in the tree."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        jax.tree_util.keystr(path): f"{zlib.crc32(np.ascontiguousarray(leaf).tobytes()):08x}"
        for path, leaf in leaves
    }


def verify(tree: Any, recorded: dict[str, str] | None, where: str) -> None:
    """Raises :class:`CorruptCheckpointError` naming the first array whose bytes changed."""
    if recorded is None:
        return  # written before checksums were recorded
    for path, crc in checksums(jax.device_get(tree)).items():
        if recorded.get(path) != crc:
            raise CorruptCheckpointError(
                f"{where}: array {path} does not match its checksum (recorded "
                f"{recorded.get(path)}, read {crc}); the file is corrupt"
            )


def save_best(workdir: str, best_params: Any, rows: list[dict], extra: dict) -> None:
    """Saves each trial's best parameters (``[K, ...]`` leaves) with its summary row.

    ``extra`` is metadata shared by the trials (the model config, input shape, classes).
    """
    host_params = jax.device_get(best_params)
    managers = []
    for j, row in enumerate(rows):
        params = jax.tree.map(lambda leaf, j=j: np.asarray(leaf[j]), host_params)
        metadata = {k: plain(v) for k, v in row.items()} | extra
        metadata["checksums"] = checksums(params)
        manager = _manager(best_dir(workdir, row["trial"]), max_to_keep=1)
        _clear_step(manager, int(row["best_step"]))
        manager.save(
            int(row["best_step"]),
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params), metadata=ocp.args.JsonSave(metadata)
            ),
            force=True,
        )
        managers.append(manager)
    for manager in managers:
        manager.wait_until_finished()
        manager.close()


@dataclasses.dataclass
class RestoredTrial:
    """A trial's best model, ready to call: ``restored.module(x)`` gives logits."""

    module: nnx.Module
    params: dict
    metadata: dict


def restore_best(
    workdir: str, trial: int, model: Callable[[nnx.Rngs], nnx.Module] | None = None
) -> RestoredTrial:
    """Loads trial ``trial``'s parameters at its early-stop point as a Flax module.

    A built-in model is rebuilt from the checkpoint's metadata; a study of your own model needs
    its factory ``model`` (the one it was trained with).
    """
    if isinstance(trial, bool) or not isinstance(trial, int | np.integer):
        raise ConfigError(f"trial={trial!r} must be an integer trial number (summary.csv)")
    directory = best_dir(workdir, int(trial))
    if not os.path.isdir(directory):
        raise ConfigError(f"trial {trial} has no best checkpoint under {directory!r}")
    manager = _manager(directory, max_to_keep=1)
    step = manager.latest_step()
    if step is None:
        raise ConfigError(f"trial {trial}: no finished checkpoint in {directory!r}")
    try:
        metadata = manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))[
            "metadata"
        ]
    except Exception as error:  # noqa: BLE001 (Orbax raises many kinds on corrupt files)
        manager.close()
        raise ConfigError(
            f"trial {trial} checkpoint {directory}/{step}: its metadata cannot be read "
            f"({type(error).__name__}: {str(error)[:200]})"
        ) from None
    model_config = metadata["model_config"]
    if model is not None:
        built = from_factory(model, str(model_config.get("name", "model")))
    elif model_config.get("name") in MODEL_NAMES:
        built = build_model(
            ml_collections.ConfigDict(model_config),
            tuple(metadata["input_shape"]),
            int(metadata["num_classes"]),
        )
    else:
        raise ConfigError(
            f"trial {trial} was trained with your own model {model_config.get('name')!r}; pass "
            "its factory: restore_best(workdir, trial, model=make_model)"
        )
    model = built
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    try:
        params = manager.restore(
            step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract))
        )["params"]
        verify(params, metadata.get("checksums"), f"trial {trial} checkpoint {directory}/{step}")
    except CorruptCheckpointError as error:
        raise ConfigError(str(error)) from None
    except Exception as error:  # noqa: BLE001 (Orbax raises many kinds on corrupt files)
        raise ConfigError(
            f"trial {trial} checkpoint {directory}/{step} cannot be read: "
            f"{type(error).__name__}: {str(error)[:200]}"
        ) from None
    finally:
        manager.close()
    return RestoredTrial(module=model.module(params), params=params, metadata=metadata)


class StateCheckpoints:
    """Periodic checkpoints of one population's whole state, for resuming a killed study."""

    def __init__(self, workdir: str, population: int):
        self.directory = state_dir(workdir, population)
        self.manager = _manager(self.directory, max_to_keep=2)

    def save(self, tick: int, state: Any, host: dict) -> None:
        """Saves asynchronously; ``host`` is JSON metadata (metrics lines, finished flag).

        A checkpoint already at ``tick`` (the last periodic one, when the study ends right
        after it) is replaced.
        """
        _clear_step(self.manager, tick)
        # A deep copy: Orbax writes the JSON after save() returns, and the caller goes on
        # changing its own objects (a scheduler's rungs) meanwhile.
        host = json.loads(json.dumps(host | {"checksums": checksums(jax.device_get(state))}))
        self.manager.save(
            tick,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(host)
            ),
            force=True,
        )

    def restore_latest(self, template: Any) -> tuple[Any, dict] | None:
        """The newest checkpoint that restores, falling back to older ones with a warning.

        Returns None when there is none at all; raises ConfigError when some exist and none
        restores (a corrupt directory is never replaced by a silent restart from scratch).
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        errors = []
        for step in steps:
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        params=ocp.args.StandardRestore(abstract), metadata=ocp.args.JsonRestore()
                    ),
                )
                verify(
                    restored["params"],
                    restored["metadata"].get("checksums"),
                    f"state checkpoint {self.directory}/{step}",
                )
                if errors:
                    logging.warning(
                        "resumed from the older checkpoint %d; newer ones failed: %s",
                        step,
                        "; ".join(errors),
                    )
                return restored["params"], restored["metadata"]
            except Exception as error:  # noqa: BLE001 (Orbax raises many kinds on corrupt files)
                errors.append(f"step {step}: {type(error).__name__}: {str(error)[:200]}")
        self.close()  # an open manager left to the interpreter's exit spews asyncio errors
        raise ConfigError(
            f"cannot resume: every checkpoint in {self.directory!r} is corrupt ("
            + "; ".join(errors)
            + "); pass --config.restart=True to discard them and train this study afresh"
        )

    def clear(self) -> None:
        """Deletes every checkpoint of this population (it trains again from the start)."""
        self.manager.wait_until_finished()
        for step in self.manager.all_steps():
            self.manager.delete(step)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def has_state(workdir: str) -> bool:
    """Whether a population under ``workdir`` (also in a study's sub-workdirs: a search's
    rounds, the batch-size study's runs) has a state checkpoint to resume from."""
    return any(
        name.isdigit()
        for directory, names, _ in os.walk(workdir)
        if os.path.basename(os.path.dirname(directory)) == "state"
        for name in names
    )


def has_best(workdir: str, trial: int) -> bool:
    """Whether ``trial`` has a committed best checkpoint (its contents are verified when
    restored)."""
    directory = best_dir(workdir, trial)
    return os.path.isdir(directory) and any(
        name.isdigit() and os.path.exists(os.path.join(directory, name, "_CHECKPOINT_METADATA"))
        for name in os.listdir(directory)
    )


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)
