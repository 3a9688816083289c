"""Learning-rate transfer across widths: does the best learning rate found on a narrow MLP stay
best on a wide one? Under the standard parametrisation and under μP (Yang et al. 2022, "Tensor
Programs V"), on MNIST-1D with Adam.

One population per width x parametrisation (``model_grid``); each trains its learning rates x 3
seeds at once. μP is relative to ``model.base_width`` = 64, the narrowest width, where the two
parametrisations are the same model.

Run (10 minutes on 2 shared CPU cores; the two 1024-unit populations take 6 of them):
  python experiments/width_transfer.py --workdir runs/width_transfer

Quick variant for tests (seconds):
  python experiments/width_transfer.py --workdir /tmp/width_transfer_quick \
    --config experiments/configs/width_transfer.py:quick
"""

import ml_collections

from hpjax.config import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = default_config()
    config.description = "Learning-rate transfer across widths: standard vs μP, MLP on MNIST-1D"
    config.model = ml_collections.ConfigDict(
        {
            "name": "mlp",
            "hidden_units": 64,
            "num_layers": 2,
            "activation": "relu",
            "parametrization": "standard",
            "base_width": 64,
        }
    )
    config.model_grid = ml_collections.ConfigDict(
        {"hidden_units": (64, 128, 256, 512, 1024), "parametrization": ("standard", "mup")}
    )
    config.optimizer = "adam"
    config.schedule = "constant"
    config.learning_rates = tuple(2.0**k for k in range(-12, -2))  # 2.4e-4 .. 0.125, x2 apart
    config.weight_decays = (0.0,)
    config.seeds = (0, 1, 2)
    config.batch_size = 100
    config.num_steps = 600  # the best rates' lowest validation losses come by step ~450
    config.eval_every = 50
    config.patience = 0  # every trial trains its budget; its loss is its lowest validation loss
    # 400 training examples measured, as many as the validation set: one compiled evaluation
    # serves both (the training loss is not what this study compares).
    config.train_eval_examples = 400
    if arg == "quick":
        config.model_grid.hidden_units = (8, 16)
        config.model.base_width = 8
        config.learning_rates = (0.001, 0.01, 0.1)
        config.seeds = (0, 1)
        config.num_steps = 20
        config.eval_every = 10
        config.train_subset = 400
    elif arg:
        raise ValueError(f"unknown config variant {arg!r}; allowed: quick")
    return config
