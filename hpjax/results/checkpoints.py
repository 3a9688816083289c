"""Orbax checkpoints: each trial at its early-stop point, and the study state for resuming.

``checkpoints/population_N/`` holds the parameters of each trial of population N at its best
validation loss (stacked, one row per trial) with the trials' summary rows that identify them
(hyperparameters, best step and epoch, validation and test metrics), the model config and input
shape, and a checksum of each row. :func:`restore_best` turns one trial's row back into a ready
Flax module; it also reads the ``checkpoints/trial_NNNN/<best_step>/`` of older studies.

``state/population_N/<tick>/`` holds a whole population (parameters, optimizer states, early
stopping, data keys, position in the data) taken right after an evaluation, with the number of
``metrics.jsonl`` lines written by then, so a killed study resumes where it left off.
"""

from __future__ import annotations

import dataclasses
import functools
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
from hpjax.errors import ConfigError, disk_os_error, one_line
from hpjax.models import ABSTRACT_KEY, build_model, from_factory
from hpjax.models.registry import MODEL_NAMES


def _quiet_orbax(record) -> bool:
    """Drops Orbax's many INFO lines per save, and the errors (with tracebacks) that each of
    its writing threads logs for a full disk: the save raises it once, as an OSError, in the
    caller's thread. Its other warnings and errors still show."""
    if "/orbax/" not in record.pathname:
        return True
    if record.levelno < 30:
        return False
    logged = record.exc_info[1] if record.exc_info else None
    return disk_os_error(logged) is None and disk_os_error(Exception(record.getMessage())) is None


def _disk_errors_raised_as_os_errors(write: Callable) -> Callable:
    """TensorStore reports a full disk as a ValueError with the OS error code in its text;
    callers (and the binaries' one line) get the OSError it stands for, chained to it."""

    @functools.wraps(write)
    def wrapped(*args, **kwargs):
        try:
            return write(*args, **kwargs)
        except OSError:
            raise
        except Exception as error:
            found = disk_os_error(error)
            if found is None:
                raise
            raise found from error

    return wrapped


logging.get_absl_logger().addFilter(_quiet_orbax)


def population_best_dir(workdir: str, population: int) -> str:
    """Where population ``population`` keeps its trials' best parameters, in one checkpoint."""
    return os.path.join(os.path.abspath(workdir), "checkpoints", f"population_{population}")


def legacy_best_dir(workdir: str, trial: int) -> str:
    """A trial's own best checkpoint, as studies before one save per population wrote them."""
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


@_disk_errors_raised_as_os_errors
def _clear_step(manager: ocp.CheckpointManager, step: int) -> None:
    """Removes a finished checkpoint at ``step`` so that a new save there can replace it."""
    manager.wait_until_finished()
    if step in manager.all_steps():
        manager.delete(step)


class CorruptCheckpointError(ValueError):
    """A restored array does not match the checksum recorded when it was saved."""


def _contiguous_bytes(leaf: Any) -> memoryview:
    """The bytes of ``leaf`` without a copy where it is contiguous already (a population's
    largest leaf is hundreds of MB)."""
    array = np.ascontiguousarray(leaf)
    return memoryview(array.reshape(-1).view(np.uint8))


def checksums(tree: Any) -> dict[str, str]:
    """A CRC-32 of every array of ``tree`` (host arrays), by its path in the tree."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        jax.tree_util.keystr(path): f"{zlib.crc32(_contiguous_bytes(leaf)):08x}"
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


def _checkpointer() -> ocp.Checkpointer:
    """A synchronous checkpointer of parameters and JSON metadata that process 0 alone uses
    (each handler told so too: by default they wait for every process)."""
    options = ocp.options.MultiprocessingOptions()
    if jax.process_count() > 1:
        options = ocp.options.MultiprocessingOptions(primary_host=0, active_processes={0})
    handler = ocp.CompositeCheckpointHandler(
        composite_options=ocp.CompositeOptions(multiprocessing_options=options),
        params=ocp.StandardCheckpointHandler(multiprocessing_options=options),
        metadata=ocp.JsonCheckpointHandler(multiprocessing_options=options),
    )
    return ocp.Checkpointer(handler, multiprocessing_options=options)


def _row(tree: Any, j: int) -> Any:
    return jax.tree.map(lambda leaf: np.asarray(leaf[j]), tree)


@_disk_errors_raised_as_os_errors
def save_best(
    workdir: str, population: int, best_params: Any, rows: list[dict], extra: dict
) -> None:
    """Saves a population's best parameters (``[K, ...]`` leaves, row ``j`` trial ``rows[j]``)
    with the summary rows, in one checkpoint; a checkpoint written before is replaced.

    ``extra`` is metadata shared by the trials (the model config, input shape, classes). One
    save per population instead of one per trial: 64 trials of a small MLP took 2.9 s as 64
    saves.
    """
    host_params = jax.device_get(best_params)
    metadata = dict(extra)
    metadata["trials"] = [{k: plain(v) for k, v in row.items()} for row in rows]
    metadata["checksums"] = [checksums(_row(host_params, j)) for j in range(len(rows))]
    checkpointer = _checkpointer()
    try:
        checkpointer.save(
            population_best_dir(workdir, population),
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(host_params), metadata=ocp.args.JsonSave(metadata)
            ),
            force=True,
        )
    finally:
        checkpointer.close()


def _committed(directory: str) -> bool:
    return os.path.exists(os.path.join(directory, "_CHECKPOINT_METADATA"))


def _read_metadata(directory: str) -> dict:
    checkpointer = _checkpointer()
    try:
        return checkpointer.restore(
            directory, args=ocp.args.Composite(metadata=ocp.args.JsonRestore())
        )["metadata"]
    finally:
        checkpointer.close()


def _legacy_checkpoint(workdir: str, trial: int) -> str | None:
    """The newest committed step of a trial's own checkpoint (the layout before one save per
    population), or None."""
    directory = legacy_best_dir(workdir, trial)
    if not os.path.isdir(directory):
        return None
    steps = [n for n in os.listdir(directory) if n.isdigit()]
    steps = [n for n in steps if _committed(os.path.join(directory, n))]
    return os.path.join(directory, max(steps, key=int)) if steps else None


def find_best(workdir: str, trial: int) -> tuple[str, dict, int | None]:
    """The checkpoint holding ``trial``'s best parameters: its directory, its metadata, and the
    trial's row in it (None: a trial's own checkpoint of the older layout).

    Raises ConfigError when there is none, naming any checkpoint whose metadata is unreadable.
    """
    root = os.path.join(os.path.abspath(workdir), "checkpoints")
    names = sorted(os.listdir(root)) if os.path.isdir(root) else []
    unreadable = []
    for name in names:
        directory = os.path.join(root, name)
        if not (name.startswith("population_") and _committed(directory)):
            continue
        try:
            metadata = _read_metadata(directory)
        except Exception as error:  # noqa: BLE001 (Orbax raises many kinds on corrupt files)
            unreadable.append(f"{directory}: its metadata cannot be read ({one_line(error)})")
            continue
        trials = [int(row["trial"]) for row in metadata["trials"]]
        if trial in trials:
            return directory, metadata, trials.index(trial)
    legacy = _legacy_checkpoint(workdir, trial)
    if legacy is not None:
        return legacy, _read_metadata(legacy), None
    raise ConfigError(
        f"trial {trial} has no best checkpoint under {root!r}"
        + "".join(f"; {message}" for message in unreadable)
    )


def has_best(workdir: str, population: int, trials: list[int]) -> bool:
    """Whether population ``population`` has a committed best checkpoint of ``trials`` (its
    contents are verified when restored)."""
    directory = population_best_dir(workdir, population)
    if not _committed(directory):
        return False
    try:
        saved = {int(row["trial"]) for row in _read_metadata(directory)["trials"]}
    except Exception:  # noqa: BLE001 (unreadable: written again)
        return False
    return set(trials) <= saved


@dataclasses.dataclass
class RestoredTrial:
    """A trial's best model, ready to call: ``restored.module(x)`` gives logits."""

    module: nnx.Module
    params: dict
    metadata: dict


def _hashable(value: Any) -> Any:
    """A JSON value as the factory was given it: lists back to tuples."""
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def _architecture(metadata: dict, model_config: dict) -> tuple[tuple[str, Any], ...]:
    """The keywords the trial's factory was called with (``model_grid``'s values): recorded
    as ``architecture``; in checkpoints from before that, the model config's keys but its
    name (a user model's config holds nothing else)."""
    if "architecture" in metadata:
        pairs = [(str(k), v) for k, v in metadata["architecture"]]
    else:
        pairs = [(k, v) for k, v in model_config.items() if k != "name"]
    return tuple(sorted((k, _hashable(v)) for k, v in pairs))


def _trained_model(metadata: dict, trial: int, model: Callable | None) -> Any:
    """The model a trial was trained with: the user's ``model`` factory, or a built-in one
    rebuilt from the checkpoint's metadata."""
    model_config = metadata["model_config"]
    if model is not None:
        name = str(model_config.get("name", "model"))
        return from_factory(model, name, _architecture(metadata, model_config))
    if model_config.get("name") in MODEL_NAMES:
        return build_model(
            ml_collections.ConfigDict(model_config),
            tuple(metadata["input_shape"]),
            int(metadata["num_classes"]),
        )
    raise ConfigError(
        f"trial {trial} was trained with your own model {model_config.get('name')!r}; pass "
        "its factory: restore_best(workdir, trial, model=make_model)"
    )


def restore_best(
    workdir: str, trial: int, model: Callable[[nnx.Rngs], nnx.Module] | None = None
) -> RestoredTrial:
    """Loads trial ``trial``'s parameters at its early-stop point as a Flax module.

    A built-in model is rebuilt from the checkpoint's metadata; a study of your own model needs
    its factory ``model`` (the one it was trained with).
    """
    if isinstance(trial, bool) or not isinstance(trial, int | np.integer):
        raise ConfigError(f"trial={trial!r} must be an integer trial number (summary.csv)")
    directory, saved, position = find_best(workdir, int(trial))
    if position is None:  # the older layout: the trial's row is the metadata
        metadata, recorded = saved, saved.get("checksums")
    else:
        shared = {k: v for k, v in saved.items() if k not in ("trials", "checksums")}
        metadata = saved["trials"][position] | shared
        recorded = saved["checksums"][position]
        metadata["checksums"] = recorded
    built = _trained_model(metadata, trial, model)
    abstract = jax.eval_shape(built.init, ABSTRACT_KEY)
    if position is not None:  # every trial of the population, stacked
        rows = len(saved["trials"])
        abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct((rows, *s.shape), s.dtype), abstract)
    where = f"trial {trial} checkpoint {directory}"
    checkpointer = _checkpointer()
    try:
        params = checkpointer.restore(
            directory, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract))
        )["params"]
        if position is not None:
            params = jax.tree.map(lambda leaf: leaf[position], params)
        verify(params, recorded, where)
    except CorruptCheckpointError as error:
        raise ConfigError(str(error)) from None
    except Exception as error:  # noqa: BLE001 (Orbax raises many kinds on corrupt files)
        raise ConfigError(f"{where} cannot be read: {one_line(error)[:300]}") from None
    finally:
        checkpointer.close()
    try:
        module = built.module(params)
    except ValueError as error:  # another factory than the trial's
        raise ConfigError(
            f"trial {trial}: {one_line(error)}; pass the factory it was trained with"
        ) from None
    return RestoredTrial(module=module, params=params, metadata=metadata)


class StateCheckpoints:
    """Periodic checkpoints of one population's whole state, for resuming a killed study."""

    def __init__(self, workdir: str, population: int):
        self.directory = state_dir(workdir, population)
        self.manager = _manager(self.directory, max_to_keep=2)

    @_disk_errors_raised_as_os_errors
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

    @_disk_errors_raised_as_os_errors
    def clear(self) -> None:
        """Deletes every checkpoint of this population (it trains again from the start)."""
        self.manager.wait_until_finished()
        for step in self.manager.all_steps():
            self.manager.delete(step)

    @_disk_errors_raised_as_os_errors
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


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)
