"""Capacity sweep of an MLP on MNIST-1D: hidden units x layers, one population each.

Each of the 4 x 3 architectures trains its 2 learning rates x 3 seeds at once; the verdicts on
depth compare architectures seed by seed and say "undecided" where the seeds do not separate them.

Run (9 minutes on 2 CPU cores shared with other jobs; the 1024-unit populations take most of it;
measured: three layers beat two decidedly only at 16 units, at 64-1024 units the seeds do not
separate them, so "three layers usually beat two" is undecided):
  python experiments/capacity_sweep.py --workdir runs/capacity_mlp

Quick variant for tests (seconds):
  python experiments/capacity_sweep.py --workdir /tmp/capacity_quick \
    --config experiments/configs/capacity_sweep.py:quick
"""

import ml_collections

from hpjax.config import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = default_config()
    config.description = "Capacity sweep: MLP hidden units x layers on MNIST-1D"
    config.model = ml_collections.ConfigDict(
        {"name": "mlp", "hidden_units": 256, "num_layers": 2, "activation": "relu"}
    )
    config.model_grid = ml_collections.ConfigDict(
        {"hidden_units": (16, 64, 256, 1024), "num_layers": (1, 2, 3)}
    )
    config.optimizer = "adam"
    config.schedule = "constant"
    config.learning_rates = (0.001, 0.003)
    config.weight_decays = (0.0,)  # none: the guide's capacity effects, unregularised
    config.seeds = (0, 1, 2)  # three: the depth verdicts are paired over seeds
    config.batch_size = 100
    config.num_steps = 3000
    config.eval_every = 50
    config.patience = 10
    config.report_x = "hidden_units"
    if arg == "quick":
        config.model_grid.hidden_units = (4, 8)
        config.model_grid.num_layers = (1,)
        config.learning_rates = (0.01,)
        config.seeds = (0,)
        config.num_steps = 20
        config.eval_every = 5
        # 400 training examples measured, as many as the validation set: one compiled
        # evaluation serves both.
        config.train_subset = 400
        config.train_eval_examples = 400
    elif arg:
        raise ValueError(f"unknown config variant {arg!r}; allowed: quick")
    return config
