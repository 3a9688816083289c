"""Learning-rate sweep: 8 rates log-spaced around 0.01, Adam, an MLP on MNIST-1D.

The default: MLP 40-256-256-256-10 (the guide: three layers usually beat two), Adam with
decoupled weight decay 1.0 (AdamW), a cosine decay, batch 100, up to 3000 steps with patience 10.
Run (about a minute on 2 CPU cores; its best rate reached 72.6% test accuracy):
  python experiments/lr_sweep.py --workdir runs/lr_sweep

The MNIST-1D reference recipe (MLP 40-256-256-10, Adam, batch 100, 8000 steps, 8 rates):
  python experiments/lr_sweep.py --workdir runs/lr_reference --config.model.num_layers=2 \
    --config.weight_decays="(0.0,)" --config.schedule=constant --config.num_steps=8000 \
    --config.patience=0
"""

import ml_collections

from hpjax.config import default_config


def get_config() -> ml_collections.ConfigDict:
    return default_config()
