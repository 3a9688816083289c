"""Learning-rate sweep: 8 rates log-spaced around 0.01, Adam, an MLP on MNIST-1D.

The default: MLP 40-256-256-256-10 (the guide: three layers usually beat two), Adam with
decoupled weight decay 1.0 (AdamW), a cosine decay, batch 100, up to 3000 steps with patience 10.
Run (about a minute on 2 CPU cores; its best rate reached 72.6% test accuracy):
  python experiments/lr_sweep.py --workdir runs/lr_sweep

The MNIST-1D reference recipe (MLP 40-256-256-10, Adam, batch 100, 8000 steps, 8 rates):
  python experiments/lr_sweep.py --workdir runs/lr_reference --config.model.num_layers=2 \
    --config.weight_decays="(0.0,)" --config.schedule=constant --config.num_steps=8000 \
    --config.patience=0

Adaptive variants over the default study's space (learning rate, weight decay, warmup):
  # 256 quasi-random (Sobol) trials through 16 slots; a stopped trial's slot takes the next
  python experiments/lr_sweep.py --workdir runs/qr \
    --config=experiments/configs/lr_sweep.py:quasi_random
  # the same trials under asynchronous successive halving (rungs at 250, 750, 2250 steps)
  python experiments/lr_sweep.py --workdir runs/asha \
    --config=experiments/configs/lr_sweep.py:asha
  # population-based training: 8 members exploring rate and weight decay every 500 steps
  python experiments/lr_sweep.py --workdir runs/pbt \
    --config=experiments/configs/lr_sweep.py:pbt
Add ",budget" to stop starting trials once the grid's budget of trial-steps is spent (8 slots,
as the grid has 8 rows), for a comparison at equal cost.

Which scheduler fits this problem (32 rates x 3 seeds dense, then ASHA, Hyperband, median,
Wilcoxon, patience and random search replayed on the curves: replay.csv and report.md):
  python experiments/lr_sweep.py --workdir runs/replay \
    --config=experiments/configs/lr_sweep.py:replay

Dropout against overfitting (the guide's cure for "more units lead to overfitting"): a wide MLP
(40-512-512-10) on 500 training examples, 6 dropout rates from 0 to 0.5 x 3 seeds in one
program; the report tabulates validation minus training loss per rate:
  python experiments/lr_sweep.py --workdir runs/dropout \
    --config=experiments/configs/lr_sweep.py:dropout
"""

import ml_collections
import numpy as np

from hpjax.config import default_config

GRID_TRIAL_STEPS = 14500  # what the default grid spends: populations.csv, trial_steps


def default_space() -> ml_collections.ConfigDict:
    """The default study's space: the grid's rates and weight decay widened, and warmup."""
    return ml_collections.ConfigDict(
        {
            "learning_rate": (2e-4, 6e-2, "log"),
            "weight_decay": (1e-2, 10.0, "log"),
            "warmup_steps": (0, 500, "linear"),
        }
    )


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = default_config()
    variants = set((arg or "").split(",")) - {""}
    unknown = variants - {"quasi_random", "asha", "pbt", "budget", "dropout", "replay"}
    if unknown:
        known = "quasi_random, asha, pbt, budget, dropout, replay"
        raise ValueError(f"unknown variants {sorted(unknown)}; known: {known}")
    if variants & {"quasi_random", "asha"}:
        config.space = default_space()
        config.space_sampler = "quasi_random"
        config.num_samples = 256
        config.slots = 16
    if "asha" in variants:
        config.scheduler = "asha"
        config.asha.min_steps = 250
        config.asha.eta = 3.0
    if "pbt" in variants:
        config.space = default_space()
        del config.space["warmup_steps"]
        config.space_sampler = "quasi_random"
        config.num_samples = 8
        config.scheduler = "pbt"
        config.patience = 0
        config.pbt.interval = 500
    if "dropout" in variants:
        config.train_subset = 500  # small enough that a wide MLP overfits
        config.model.hidden_units = 512
        config.model.num_layers = 2
        config.model.dropout_layers = True
        config.dropouts = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
        config.seeds = (0, 1, 2)
        config.learning_rates = (0.0003,)
        config.weight_decays = (0.0,)
        config.schedule = "constant"
        config.num_steps = 1500  # 300 epochs: without dropout it memorises the 500 examples
        config.eval_every = 25
        config.patience = 0  # an equal budget: the gaps are compared at the end
    if "replay" in variants:  # a dense grid, then its schedulers replayed on its curves
        if variants & {"quasi_random", "asha", "pbt", "budget"}:
            raise ValueError(
                "the replay variant trains a dense grid: no quasi_random, asha, pbt, budget"
            )
        config.learning_rates = tuple(float(f"{r:.3g}") for r in np.geomspace(1e-4, 0.1, 32))
        config.seeds = (0, 1, 2)
        config.replay.run = True
    if "budget" in variants and "pbt" not in variants:  # PBT's budget is its members' steps
        config.budget_trial_steps = GRID_TRIAL_STEPS
        config.slots = 8
    return config
