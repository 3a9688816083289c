"""Capacity sweep of a 1-D CNN on MNIST-1D: channels x depth, one population each.

Each of the 2 x 4 architectures trains its 2 learning rates x 3 seeds at once (the verdict on
depth compares depths seed by seed).

Run (6.5 minutes on 2 shared CPU cores; measured: 2 layers beat 1 decidedly at both widths,
deeper than 2 is undecided, so "for CNNs deeper is better" is undecided over 3 seeds):
  python experiments/capacity_sweep.py --workdir runs/capacity_cnn \
    --config experiments/configs/capacity_cnn.py

Quick variant for tests (seconds): --config experiments/configs/capacity_cnn.py:quick

"For CNNs deeper is better", tested the way deep CNNs are trained: residual blocks with batch
normalisation at depths 2, 4 and 8 (only the first layer pools), 32 channels, 3 seeds:
  python experiments/capacity_sweep.py --workdir runs/capacity_resnet \
    --config experiments/configs/capacity_cnn.py:residual_bn
"""

import ml_collections

from hpjax.config import default_config
from hpjax.models.registry import default_model_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = default_config()
    config.description = "Capacity sweep: CNN channels x depth on MNIST-1D"
    config.model = default_model_config("cnn")  # 32 channels, k=5, max-pool 2, no dense layer
    # 40 -> 20 -> 10 -> 5 -> 2 after each conv + max-pool: at most 5 layers fit.
    config.model_grid = ml_collections.ConfigDict({"channels": (8, 32), "num_layers": (1, 2, 3, 4)})
    config.optimizer = "adam"
    config.schedule = "constant"
    config.learning_rates = (0.001, 0.003)
    config.weight_decays = (0.0,)  # none: the guide's capacity effects, unregularised
    config.seeds = (0, 1, 2)  # three: depths are compared seed by seed
    config.batch_size = 100
    config.num_steps = 2000
    config.eval_every = 50
    config.patience = 10
    config.report_x = "channels"
    if arg == "quick":
        config.model_grid.channels = (2, 4)
        config.model_grid.num_layers = (1,)
        config.learning_rates = (0.01,)
        config.num_steps = 20
        config.seeds = (0,)
        config.eval_every = 5
        # 400 training examples measured, as many as the validation set: one compiled
        # evaluation serves both.
        config.train_subset = 400
        config.train_eval_examples = 400
    elif arg == "residual_bn":
        config.model.residual = True
        config.model.batch_norm = True
        config.model_grid = ml_collections.ConfigDict({"num_layers": (2, 4, 8)})
        config.learning_rates = (0.003,)
        config.seeds = (0, 1, 2)
        config.num_steps = 1500
        config.report_x = "num_layers"
    elif arg:
        raise ValueError(f"unknown config variant {arg!r}; allowed: quick, residual_bn")
    return config
