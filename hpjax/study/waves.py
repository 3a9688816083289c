"""Extendable studies: rerun into the same workdir with more trials, train only the new ones.

A workdir remembers its trials in ``trials.json`` as *waves*: the trials of the first run, then
those each extension added. A rerun whose config differs from the workdir's only in the keys
that choose trials (:data:`TRIAL_SET_KEYS`: more rates, seeds, samples, a narrower range around
the best...) adds a wave of the trials it defines that the workdir does not hold yet (same
hyperparameters = same trial), numbered after the others. Each wave is planned on its own, so
the populations of the earlier waves are planned exactly as before and resume as finished from
their checkpoints; only the new wave trains. ``summary.csv`` then holds every trial.

Changing any other study key would change the finished trials: that is refused, naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import os

import ml_collections
from absl import logging

from hpjax.config import NON_STUDY_KEYS
from hpjax.errors import ConfigError
from hpjax.results import files
from hpjax.study import spec as spec_lib
from hpjax.study.sections import StudySpec
from hpjax.study.trials import Trial

WAVES_FILE = "trials.json"
# The keys that only choose which trials a study holds.
TRIAL_SET_KEYS = (
    "learning_rates",
    "lr_sampling",
    "lr_range",
    "num_lr_samples",
    "sampling_seed",
    "seeds",
    "batch_size",
    "batch_sizes",
    "weight_decays",
    "dropouts",
    "label_smoothings",
    "lr_scaling",
    "base_batch_size",
    "trials",
    "space",
    "space_sampler",
    "num_samples",
    "model_grid",
    "description",
)


def definition(trial: Trial) -> tuple:
    """What makes two trials the same trial (their index aside)."""
    rounded = lambda x: None if x is None else float(f"{x:.10g}")  # noqa: E731
    return (
        rounded(trial.learning_rate),
        trial.batch_size,
        trial.seed,
        rounded(trial.weight_decay),
        tuple((k, json.dumps(v)) for k, v in trial.architecture),
        trial.warmup_steps,
        rounded(trial.decay_rate),
        rounded(trial.end_factor),
        rounded(trial.momentum),
        rounded(trial.dropout),
        rounded(trial.label_smoothing),
        tuple((k, rounded(v)) for k, v in trial.optimizer_values),
        trial.optimizer,
    )


def _trial_from_dict(d: dict) -> Trial:
    d = dict(d) | {
        "architecture": tuple((k, v) for k, v in d.get("architecture", ())),
        "optimizer_values": tuple((k, v) for k, v in d.get("optimizer_values", ())),
    }
    return Trial(**d)


def read_waves(workdir: str) -> list[list[Trial]] | None:
    """The workdir's waves of trials (None when it has no ``trials.json``); a corrupt file is
    refused in one line."""
    path = os.path.join(workdir, WAVES_FILE)
    if not os.path.exists(path):
        return None
    way_out = (
        "it lists the study's trials in the order they were added: restore it, or pass "
        "--config.restart=True to train this study afresh"
    )
    saved = files.read_json_file(path, "the study's trials", way_out)
    try:
        return [[_trial_from_dict(t) for t in wave] for wave in saved]
    except (TypeError, ValueError, AttributeError) as error:
        raise ConfigError(f"{path!r} does not list trials ({error}); {way_out}") from None


def write_waves(workdir: str, waves: list[list[Trial]]) -> None:
    files.write_json(
        os.path.join(workdir, WAVES_FILE),
        [[dataclasses.asdict(t) for t in wave] for wave in waves],
    )


def waves(workdir: str, study: StudySpec, *, restart: bool, overwrite: bool) -> list[list[Trial]]:
    """The waves of trials this run holds: the workdir's, plus a new one when ``study``
    defines trials it lacks. Raises :class:`ConfigError` for a change that would alter the
    finished trials (unless ``overwrite`` starts afresh)."""
    trials = study.trials
    fresh = [list(trials)]
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path) or restart:
        return fresh
    old = files.read_config_unless_overwritten(workdir, overwrite)
    new = dict(study.config)
    differing = sorted(
        k for k in set(old) | set(new) if k not in NON_STUDY_KEYS and old.get(k) != new.get(k)
    )
    if not differing:
        return _kept(workdir, old)
    blocking = [k for k in differing if k not in TRIAL_SET_KEYS]
    if blocking:
        if overwrite:
            return fresh
        inputs = [k for k in ("data_fingerprint", "model_fingerprint") if k in blocking]
        if inputs:
            what = inputs[0].split("_")[0]
            raise ConfigError(
                f"workdir {workdir!r} holds a study of other {what}: its {what} fingerprint is "
                f"{old.get(inputs[0])!r} there and {new.get(inputs[0])!r} here (arrays' shapes, "
                "dtypes and values; a model's parameter shapes); choose another --workdir, or "
                "pass overwrite=True (--config.overwrite=True) to train afresh on these"
            )
        key = blocking[0]
        raise ConfigError(
            f"workdir {workdir!r} holds a different study: config.{key} is "
            f"{json.dumps(old.get(key))[:60]} there and {json.dumps(new.get(key))[:60]} here "
            f"(also differs: {', '.join(blocking[1:]) or 'nothing else'}); that would change "
            "its finished trials. Extend it by changing only the trials (rates, seeds, "
            "samples, ranges), choose another --workdir, or pass --config.overwrite=True"
        )
    if not os.path.exists(os.path.join(workdir, "summary.csv")):
        raise ConfigError(
            f"workdir {workdir!r} holds a study that has not finished: rerun it with its own "
            "config to finish it before adding trials, or pass --config.restart=True"
        )
    kept = _kept(workdir, old)
    known = {definition(t) for wave in kept for t in wave}
    count = sum(len(w) for w in kept)
    added = [t for t in trials if definition(t) not in known]
    added = [dataclasses.replace(t, index=count + i) for i, t in enumerate(added)]
    logging.info(
        "extending the study in %s: %d finished trials kept, %d new (config differs in %s)",
        workdir,
        count,
        len(added),
        ", ".join(differing),
    )
    return kept + [added] if added else kept


def _kept(workdir: str, old: dict) -> list[list[Trial]]:
    """The waves the workdir holds; without ``trials.json``, the trials of its config."""
    kept = read_waves(workdir)
    if kept is None:
        logging.warning(
            "%s has no %s: taking the trials of its config.json as one wave", workdir, WAVES_FILE
        )
        kept = [list(spec_lib.parse(ml_collections.ConfigDict(old)).trials)]
    return kept
