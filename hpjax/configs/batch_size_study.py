"""Batch-size studies on MNIST-1D: fixed epochs, steps to target, gradient noise scale.

The argument after the colon picks the study (``config.study``) and, with ``quick``, a variant
that runs in seconds (for tests and a first look). Outputs go to ``<workdir>/<study>/``.

Fixed epochs (Mishkin et al. 2016; about 3 minutes on 2 busy CPU cores):
  python experiments/batch_size_study.py --workdir runs/bs \
    --config=experiments/configs/batch_size_study.py:fixed_epochs

Steps to target (Shallue et al. 2018; about 6 minutes on 2 busy CPU cores):
  python experiments/batch_size_study.py --workdir runs/bs \
    --config=experiments/configs/batch_size_study.py:steps_to_target

Gradient noise scale next to steps to target (McCandlish et al. 2018; under a minute when the
workdir holds the steps-to-target runs, which it otherwise runs first):
  python experiments/batch_size_study.py --workdir runs/bs \
    --config=experiments/configs/batch_size_study.py:noise_scale

The second workload, a CNN (3 x [conv k=5, 16 channels, max-pool 2]) through the same studies
(37 minutes on 2 CPU cores shared with two other jobs; B=2048's 300-step floor x 15 trials is the
longest part; measured: B_crit 101 [90% over seeds: 76-117], B_simple 2.7x below it):
  python experiments/batch_size_study.py --workdir runs/bs_cnn \
    --config=experiments/configs/batch_size_study.py:all,cnn

All three, or a quick variant of any:
  python experiments/batch_size_study.py --workdir runs/bs \
    --config=experiments/configs/batch_size_study.py:all
  python experiments/batch_size_study.py --workdir /tmp/bs_quick \
    --config=experiments/configs/batch_size_study.py:fixed_epochs,quick

Any key can be overridden, e.g. ``--config.fixed_epochs.batch_sizes="(8,32,128,512)"`` or
``--config.steps_to_target.target=0.7``.
"""

import ml_collections

from hpjax.models.registry import default_model_config

STUDIES = ("fixed_epochs", "steps_to_target", "noise_scale", "all")
WORKLOADS = ("mlp", "cnn")  # the model; mlp unless named


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``arg``: ``<study>[,cnn][,quick]``; the study defaults to fixed_epochs, the workload to
    the MLP."""
    parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
    unknown = [p for p in parts if p not in STUDIES + WORKLOADS + ("quick",)]
    if unknown:
        raise ValueError(
            f"unknown config argument(s) {unknown}; use <study>[,cnn][,quick] with study in "
            f"{STUDIES}"
        )
    studies = [p for p in parts if p in STUDIES]

    config = ml_collections.ConfigDict()
    config.study = studies[0] if studies else "fixed_epochs"  # or steps_to_target, noise_scale, all

    # Data.
    config.dataset = "mnist1d"  # mnist1d | digits | npz
    config.npz_path = ""
    config.val_fraction = 0.1
    config.train_subset = 0
    config.data_seed = 0
    config.train_eval_examples = 1024

    # Model: the MNIST-1D MLP, narrower than the reference 256 units to fit 2 CPU cores.
    config.model = ml_collections.ConfigDict()
    config.model.name = "mlp"
    config.model.hidden_units = 128
    config.model.num_layers = 2
    config.model.activation = "relu"

    # SGD with momentum: the linear scaling rule and the noise-scale theory are about SGD.
    config.optimizer = "momentum"
    config.momentum = 0.9
    config.schedule = "constant"
    config.warmup_steps = 0
    config.decay_rate = 0.1
    config.end_factor = 0.0
    config.seeds = (0,)
    config.weight_decays = (0.0,)

    # Every trial trains its whole budget: the studies compare budgets, not early stops.
    config.patience = 0
    config.min_delta = 0.0
    config.min_steps = 0
    config.checkpoint_every = 20
    config.divergence_factor = 100.0

    config.overwrite = False
    config.log_every_s = 10.0
    config.make_report = True  # each engine run's own report.md

    _add_study_sections(config)
    if "cnn" in parts:
        _make_cnn(config)
    if "quick" in parts:
        _make_quick(config)
    return config


def _make_cnn(config: ml_collections.ConfigDict) -> None:
    """The second workload: the MNIST-1D CNN, narrower than the recipe's 64 channels so that
    its studies fit 2 CPU cores; the same optimizer, grids and budgets as the MLP."""
    config.model = default_model_config("cnn")  # 3 x (conv k=5, max-pool 2), no dense layer
    config.model.channels = 16
    # The CNN passes 0.6 within about 40 steps from B=128 up (every size at the same few
    # evaluations); 0.85 is reached by every batch size and leaves room for a curve.
    config.steps_to_target.target = 0.85
    # B=1..4 would cost more than all the rest together (up to 40,000 steps each, x 5 rates x 3
    # seeds): the CNN's curve starts at 8, like the fixed-epochs study.
    config.steps_to_target.batch_sizes = tuple(2**i for i in range(3, 12))


def _add_study_sections(config: ml_collections.ConfigDict) -> None:
    """The sections of the three studies and of the compute measurement."""
    powers = tuple(2**i for i in range(12))  # 1 .. 2048

    # Mishkin et al.: equal epochs; fixed rate, scaled rate, and the best rate of a grid.
    config.fixed_epochs = ml_collections.ConfigDict()
    config.fixed_epochs.batch_sizes = powers[3:]  # 8 .. 2048 (1 .. 4 cost 8x the ticks)
    config.fixed_epochs.num_epochs = 20.0
    config.fixed_epochs.learning_rate = 0.03  # the fixed rate, and the scaled rules' rate at B0
    config.fixed_epochs.base_batch_size = 32  # B0
    config.fixed_epochs.scalings = ("linear",)  # and/or "sqrt"
    config.fixed_epochs.warmup_epochs = 0.0  # > 0: warmup (Goyal et al.) for the scaled rules
    config.fixed_epochs.learning_rates = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # the tuning grid
    config.fixed_epochs.batch_axis = "vmap"  # all batch sizes in one program; 'split': one each
    config.fixed_epochs.eval_every = 1  # in steps of the largest batch size

    # Shallue et al.: steps to a target, fastest rate of a grid per batch size.
    config.steps_to_target = ml_collections.ConfigDict()
    config.steps_to_target.batch_sizes = powers
    config.steps_to_target.learning_rates = (0.003, 0.01, 0.03, 0.1, 0.3)  # at B0, then scaled
    config.steps_to_target.lr_scaling = "sqrt"  # centres the grid per batch size
    config.steps_to_target.base_batch_size = 32
    config.steps_to_target.warmup_epochs = 0.0
    config.steps_to_target.metric = "val_accuracy"  # val_accuracy | val_loss | train_*
    config.steps_to_target.target = 0.6
    config.steps_to_target.budget_epochs = 10.0  # per batch size, clipped to the range below
    config.steps_to_target.min_budget_steps = 300
    config.steps_to_target.max_budget_steps = 40000
    config.steps_to_target.evals_per_trial = 60  # at least; early on, as resolution needs
    config.steps_to_target.resolution = 0.02  # evaluations <= 2% of the steps apart (or 1 step)
    config.steps_to_target.seeds = (0, 1, 2)  # each its fastest rate; the median and the range
    # () = config.momentum for every trial; else each momentum with every rate, the fastest pair
    # per batch size (Shallue et al. tune both), e.g. (0.5, 0.9, 0.97)
    config.steps_to_target.momenta = ()

    # McCandlish et al.: B_simple along the training of one trial.
    config.noise_scale = ml_collections.ConfigDict()
    config.noise_scale.batch_size = 32  # must be a steps_to_target batch size unless lr is set
    config.noise_scale.learning_rate = 0.0  # 0: its fastest base rate in steps to target
    config.noise_scale.num_steps = 0  # 0: its steps-to-target budget
    config.noise_scale.num_measurements = 40
    config.noise_scale.small_batch = 32
    config.noise_scale.big_batch = 1024
    config.noise_scale.num_draws = 16  # pairs of batches per measurement
    config.noise_scale.ema_decay = 0.8  # moving average over measurements
    config.noise_scale.exact = True  # also the exact value from every per-example gradient

    # Memory (XLA's analysis) and speed of one trial per batch size.
    config.compute = ml_collections.ConfigDict()
    config.compute.enabled = True
    config.compute.examples = 20000  # examples per timed run (the fastest of 3 counts)
    config.compute.batch_sizes = ()  # () = every batch size of the study; else only these


def _make_quick(config: ml_collections.ConfigDict) -> None:
    """Seconds instead of minutes: for the tests and a first look."""
    config.train_subset = 512
    config.train_eval_examples = 256
    if config.model.name == "cnn":
        config.model.channels = 4
    else:
        config.model.hidden_units = 16
        config.model.num_layers = 1
    config.checkpoint_every = 0
    config.make_report = False
    config.log_every_s = 60.0
    config.fixed_epochs.batch_sizes = (8, 32, 128)
    config.fixed_epochs.num_epochs = 2.0
    config.fixed_epochs.learning_rates = (0.01, 0.1)
    config.steps_to_target.batch_sizes = (16, 64)
    config.steps_to_target.learning_rates = (0.03, 0.3)
    config.steps_to_target.target = 0.25
    config.steps_to_target.budget_epochs = 2.0
    config.steps_to_target.min_budget_steps = 20
    config.steps_to_target.evals_per_trial = 10
    config.steps_to_target.seeds = (0, 1)
    config.noise_scale.batch_size = 16
    config.noise_scale.num_measurements = 4
    config.noise_scale.small_batch = 8
    config.noise_scale.big_batch = 64
    config.noise_scale.num_draws = 4
    config.compute.examples = 512
