"""RNN study on MNIST-1D: LSTM and GRU x 1, 2, 3 stacked layers on a random subset, then the best
cell and depth retrained on the full training set.

Stage 1 trains the 6 architectures (each its own population of 2 learning rates x 3 seeds) on
1000 of the 3600 training examples; stage 2 retrains the winner on all of them at its best rate x
0.5, 1, 2 (3 seeds each). Cell and depth are compared seed by seed.

Run (15 minutes on 2 CPU cores shared with other jobs; measured here: the 3-layer GRU wins on
the subset, lower than the best LSTM (2 layers) by 0.18 nats [95% interval 0.08-0.27] in 3 of 3
seeds; the GRU's depths are undecided (3 layers lower in 3 of 3 seeds, but the intervals hold 0);
retrained on all the data it reaches 97.8% test accuracy):
  python experiments/rnn_study.py --workdir runs/rnn_study

Quick variant for tests (seconds):
  python experiments/rnn_study.py --workdir /tmp/rnn_quick \
    --config experiments/configs/rnn_study.py:quick
"""

import ml_collections

from hpjax.config import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = default_config()
    config.description = "RNN study: LSTM/GRU x stacked layers, subset first, then all data"
    config.model = ml_collections.ConfigDict(
        {
            "name": "rnn",
            "cell": "gru",
            "hidden_size": 32,
            "num_layers": 1,
            "bidirectional": False,
            "readout": "last",
        }
    )
    config.model_grid = ml_collections.ConfigDict(
        {"cell": ("lstm", "gru"), "num_layers": (1, 2, 3)}
    )
    config.train_subset = 1000  # stage 1: this many random training examples
    config.full_lr_factors = (0.5, 1.0, 2.0)  # stage 2: the best subset rate times each
    config.full_num_steps = 3000  # stage 2 budget; 0 = num_steps
    config.optimizer = "adam"
    config.schedule = "constant"
    config.learning_rates = (0.01, 0.02)
    config.weight_decays = (0.0,)  # none: the cells compared as they are
    config.seeds = (0, 1, 2)  # three: cell and depth are compared seed by seed
    config.batch_size = 100
    config.num_steps = 1500
    config.eval_every = 50
    # RNNs on MNIST-1D sit on a plateau near 1.3 nats for hundreds of steps before they drop:
    # no trial may stop before 1000 steps, and patience is 20 evaluations (1000 steps).
    config.patience = 20
    config.min_steps = 1000
    config.report_x = "learning_rate"
    if arg == "quick":
        config.model.hidden_size = 4
        config.model_grid.num_layers = (1,)
        # 400 training examples measured, as many as the validation set: one compiled
        # evaluation serves both.
        config.train_subset = 400
        config.train_eval_examples = 400
        config.learning_rates = (0.01,)
        config.seeds = (0,)
        config.full_lr_factors = (1.0,)
        config.num_steps = 10
        config.eval_every = 5
        config.min_steps = 0
    elif arg:
        raise ValueError(f"unknown config variant {arg!r}; allowed: quick")
    return config
