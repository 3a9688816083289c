"""The full default study config: every key the engine reads, documented where it is set.

Experiment config files (``experiments/configs/*.py``) start from :func:`default_config` and
override what their study changes.
"""

import json
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from hpjax.models import mup
from hpjax.models.registry import default_model_config

# Keys that change how a study is run or shown, not what it computes.
NON_STUDY_KEYS = (
    "overwrite",
    "restart",
    "log_every_s",
    "compilation_cache",
    "cpu_devices",  # where the trials run, like num_processes; their values differ by rounding
    "checkpoint_every_s",
    "make_report",
    "tensorboard",
    "optuna_storage",
    "distributed",  # how the processes find each other, not what they compute
    "coordinator_address",
    "num_processes",
    "process_id",
    "train_data",  # where the training set lives; the batches are the same
    "data_sizes",  # recorded from the data (its fingerprint is the study's), for the reports
    "replay",  # what is read from the finished study's curves, not how they are trained
)


def default_config() -> ml_collections.ConfigDict:
    """Every key a study reads, with the learning-rate sweep's defaults; recipes override it."""
    config = ml_collections.ConfigDict()
    # Data.
    config.dataset = "mnist1d"  # mnist1d | digits | npz
    config.npz_path = ""  # with dataset='npz': x_train, y_train, [x_val, y_val], x_test, y_test
    config.val_fraction = 0.1  # carved out of the training set when it has no validation split
    config.train_subset = 0  # > 0: train on a random subset of this many examples
    config.data_seed = 0
    config.train_eval_examples = 2048  # training examples used to measure the training loss
    config.num_classes = 0  # 0 = found in the training labels (logged)
    config.max_abs_input = 1e6  # inputs beyond this magnitude are a data error; 0 = no check

    # Model: a built-in model with its defaults (hpjax/models/registry.py holds each built-in
    # model's keys and defaults; the MLP's: hidden_units=256, num_layers=3, activation=relu;
    # the MLP's and CNN's parametrization: standard, or mup relative to base_width: models/mup.py).
    config.model = default_model_config("mlp")
    # Matmul precision of the built-in models: float32, or bf16 (bf16 matmul inputs with float32
    # accumulation; parameters, optimizer state, activations and loss stay float32).
    config.precision = "float32"

    _add_optimizer_keys(config)

    # The sweep: the Cartesian product of these axes.
    config.learning_rates = (0.0003, 0.0006, 0.0012, 0.0025, 0.005, 0.01, 0.02, 0.04)
    config.lr_sampling = "grid"  # grid | log_uniform | quasi_random (then lr_range, num_lr_samples)
    config.lr_range = (1e-4, 1e-1)
    config.num_lr_samples = 0
    config.sampling_seed = 0
    config.seeds = (0,)
    config.batch_size = 100
    config.batch_sizes = ()  # several batch sizes, trained in one population
    # Batch sizes: vmap = all in one program (micro-batch = their gcd); split = one program each;
    # auto = neighbouring sizes share a program while the largest is <= max_accumulation x gcd.
    config.batch_axis = "auto"
    config.max_accumulation = 8
    config.weight_decays = (1.0,)  # decoupled: each step shrinks weights by lr x weight decay
    # Regularisation per trial (grid axes like weight_decays): the rate of the model's dropout
    # layers (model.dropout_layers=True, or hpjax.models.TrialDropout in your own model), and label
    # smoothing (classification).
    config.dropouts = (0.0,)
    config.label_smoothings = (0.0,)
    config.lr_scaling = (
        "fixed"  # fixed | linear | sqrt: the rate per batch size, from base_batch_size
    )
    config.base_batch_size = 100
    config.warmup_epochs = 0.0  # > 0: warmup length in epochs (per batch size) instead of steps
    # Instead of the product above: an explicit JSON list of trials, e.g.
    # '[{"learning_rate": 0.01, "batch_size": 32, "model.hidden_units": 64}, ...]' (searches).
    config.trials = ""
    # Architectures: model key -> values, one population each (e.g. hidden_units, num_layers).
    config.model_grid = ml_collections.ConfigDict()

    # Budget, evaluation and early stopping.
    config.num_steps = 3000  # optimizer updates per trial
    config.num_epochs = 0.0  # > 0: the budget in epochs instead (overrides num_steps)
    config.eval_every = 50  # steps between evaluations
    config.eval_growth = 0.0  # > 0: evaluations at most this fraction of the steps apart
    config.patience = 10  # evaluations without improvement before a trial stops; 0 = never
    config.min_delta = 0.0
    config.min_steps = 0
    config.checkpoint_every = 20  # evaluations between checkpoints of the study state
    config.divergence_factor = 100.0  # a batch loss above this x ln(classes) is divergence
    config.eval_batch_size = 1024  # examples per batch when evaluating (memory, not results)

    _add_adaptive_keys(config)
    _add_placement_keys(config)

    # Running and reporting.
    config.overwrite = False  # replace a workdir that holds a different study
    config.restart = False  # discard this study's saved state and results; train it afresh
    config.log_every_s = 5.0
    config.make_report = True
    # auto: TensorBoard event files in WORKDIR/tensorboard when tensorboardX is installed; on; off
    config.tensorboard = "auto"
    # auto: an Optuna study in the journal file WORKDIR/optuna.log when Optuna is installed;
    # sqlite: in WORKDIR/optuna.db; off; or any SQLAlchemy URL (e.g. postgresql://host/db)
    config.optuna_storage = "auto"
    config.report_x = "learning_rate"
    return config


def _add_optimizer_keys(config: ml_collections.ConfigDict) -> None:
    """The optimizer, its options and the schedule; the peak learning rate is per trial."""
    # adagrad | adam | momentum | rmsprop | sgd, or an optax factory's import path (optax.lion)
    config.optimizer = "adam"
    config.optimizer_kwargs = "{}"  # that factory's fixed keywords, a JSON object: '{"b1": 0.95}'
    # several optimizers compared in one study, an axis crossed with the others (replaces
    # optimizer; optimizer_kwargs then maps each factory to its keywords: '{"optax.lion": {...}}')
    config.optimizers = ()
    config.momentum = 0.9  # with optimizer='momentum'
    config.nesterov = False  # with optimizer='momentum' (Nesterov's accelerated gradient)
    config.b1 = 0.9  # Adam's first-moment decay (a per-trial `momentum` in a space replaces it)
    config.b2 = 0.999  # Adam's second-moment decay
    config.eps = 0.0  # Adam, Adagrad, RMSProp; 0 = optax's default (1e-8; Adagrad 1e-7)
    config.initial_accumulator_value = 0.1  # Adagrad's initial sum of squares
    config.rms_decay = 0.9  # RMSProp's decay of the squared gradients
    config.schedule = "cosine"  # constant | linear | exponential | cosine
    config.warmup_steps = 0
    config.decay_rate = 0.1  # exponential: factor reached at the end of the budget
    config.end_factor = 0.0  # linear, cosine: final fraction of the peak rate


def _add_placement_keys(config: ml_collections.ConfigDict) -> None:
    """Where a study runs: devices, processes, program sizes, and the compilation cache."""
    config.num_devices = 0  # devices the trial axis is sharded over; 0 = all present
    config.cpu_devices = 1  # binaries: the host CPU as this many devices (0 = one per core)
    # JAX's persistent compilation cache ("" = off): a rerun with the same shapes loads its programs
    config.compilation_cache = "~/.cache/hpjax/jax"
    config.compact_fraction = 0.0  # > 0: retire stopped trials once at most this fraction trains
    config.max_population = 0  # > 0: at most this many trials per compiled program
    config.memory_fraction = 0.8  # populations larger than this share of device memory split
    # Where the training set lives: device (gathered inside the compiled loop), host (each
    # training call's batches gathered on the host and prefetched: same results), or auto (host
    # when it is memory-mapped or more than half of the memory_fraction share).
    config.train_data = "auto"
    config.distributed = False  # one process per host: jax.distributed.initialize()
    config.coordinator_address = ""  # host:port of process 0 ("" = found by JAX)
    config.num_processes = 0
    config.process_id = -1


def _add_adaptive_keys(config: ml_collections.ConfigDict) -> None:
    """The keys of search spaces and adaptive studies: slots, a queue, and their schedulers."""
    # Instead of the product: points of a search space, key -> (low, high, "log" | "linear") or a
    # tuple of choices, over learning_rate, weight_decay, warmup_steps, decay_rate, end_factor,
    # batch_size, seed; drawn by space_sampler (grid | random | quasi_random), num_samples of them.
    config.space = ml_collections.ConfigDict()
    config.space_sampler = "quasi_random"
    config.num_samples = 0
    # Adaptive studies: trials share `slots` rows of one compiled program (0 = a row per trial);
    # a row whose trial ends (early stop, divergence, budget, pruned) takes the next pending trial.
    config.slots = 0
    config.scheduler = "none"  # none | asha (successive halving) | pbt (population-based training)
    config.budget_trial_steps = 0  # > 0: stop before the trials take more optimizer steps in all
    config.asha = ml_collections.ConfigDict()
    config.asha.min_steps = 250  # the first rung; the next ones at min_steps x eta^k
    config.asha.eta = 3.0  # a trial goes past a rung only in the top 1/eta of those there so far
    config.pbt = ml_collections.ConfigDict()
    config.pbt.interval = 250  # steps between exploit/explore rounds
    config.pbt.fraction = 0.25  # the bottom fraction copies a member of the top fraction
    config.pbt.resample_probability = 0.25  # else each searched value is x0.8 or x1.25
    config.pbt.seed = 0
    # After a dense study (scheduler none, slots 0): its schedulers replayed on its own curves
    # (hpjax.replay, tools/replay_schedulers.py), written to replay.csv and report.md.
    config.replay = ml_collections.ConfigDict()
    config.replay.run = False  # True: replay the schedulers once the study has finished
    config.replay.schedulers = ""  # 'asha:eta=3,grace=300; median:warmup=500'; "" = a grid
    config.replay.orders = 10  # arrival orders per seed: the study's own, then random ones
    config.replay.slots = 8  # trials training at once in the replayed asynchronous schedulers
    config.replay.seed = 0  # of the random arrival orders


def as_tuple(value: Any) -> tuple:
    """A config value as a tuple: None is empty, a scalar (or string) is one item."""
    if value is None:
        return ()
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        return (value,)
    return tuple(value)


def plain(value: Any) -> Any:
    """A numpy scalar as the Python number it holds (for JSON and CSV); anything else as is."""
    return value.item() if isinstance(value, np.generic) else value


def config_to_dict(config: Any) -> dict:
    """A plain, JSON-ready dict of the config (tuples become lists)."""
    if isinstance(config, ml_collections.ConfigDict):
        config = config.to_dict()
    return json.loads(json.dumps(config, default=list))


# Keys added after studies were written: a config.json without one held this default.
ADDED_KEYS = {"eval_growth": 0.0}
# Keys of the built-in models added likewise (μP's, for the models that have them).
ADDED_MODEL_KEYS = {name: dict(mup.DEFAULTS) for name in mup.WIDTH_KEYS}


def study_identity(config_dict: dict) -> dict:
    """What makes two configs the same study: every key but :data:`NON_STUDY_KEYS`, keys
    added later (:data:`ADDED_KEYS`, :data:`ADDED_MODEL_KEYS`) at their defaults if missing."""
    identity = ADDED_KEYS | {k: v for k, v in config_dict.items() if k not in NON_STUDY_KEYS}
    model = identity.get("model")
    if isinstance(model, dict) and model.get("name") in ADDED_MODEL_KEYS:
        identity["model"] = ADDED_MODEL_KEYS[model["name"]] | model
    return identity


def key_meanings() -> dict[str, str]:
    """Each key's meaning, from the trailing comment of the line that sets it in this file
    (``config.KEY = ...  # meaning``; a section's keys as ``SECTION.KEY``)."""
    import inspect
    import re

    pattern = re.compile(r"^\s*(?:config|c)\.([\w.]+)\s*=.*?#\s*(.+)$")
    meanings = {}
    for line in inspect.getsource(inspect.getmodule(key_meanings)).splitlines():
        found = pattern.match(line)
        if found and "noqa" not in found.group(2):
            meanings.setdefault(found.group(1), found.group(2).strip())
    return meanings


def describe_keys(config: ml_collections.ConfigDict) -> list[str]:
    """One line per key of ``config`` (sections flattened as ``SECTION.KEY``): its value and,
    where ``hpjax/config.py`` says, its meaning."""
    meanings = key_meanings()
    lines = []

    def walk(node, prefix: str) -> None:
        for key in sorted(node.keys()):
            value = node[key]
            if isinstance(value, ml_collections.ConfigDict):
                walk(value, f"{prefix}{key}.")
                continue
            name = f"{prefix}{key}"
            meaning = meanings.get(name) or meanings.get(key) or ""
            lines.append(f"  --config.{name}={value!r}" + (f"  # {meaning}" if meaning else ""))

    walk(config, "")
    return lines
