"""Which scheduler fits this problem: a dense learning-rate grid, then schedulers replayed on it.

32 learning rates log-spaced over [1e-4, 0.1] x 3 seeds of the default study (MLP
40-256-256-256-10 on MNIST-1D, AdamW, cosine, 3000 steps, patience 10), every trial trained to
its own end in one program; then ASHA, synchronous successive halving, Optuna's successive
halving, Hyperband, median stopping, Wilcoxon pruning, shorter patience and random search
replayed on its curves (config.replay), each over 10 arrival orders per seed:
  hpjax replay --workdir runs/replay
  python experiments/lr_sweep.py --workdir runs/replay \
    --config=experiments/configs/lr_sweep.py:replay
Variants of the study as lr_sweep's (dropout, ...) follow after a comma: --config=:replay,dropout.
"""

import ml_collections

from hpjax.configs import lr_sweep


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return lr_sweep.get_config(",".join(["replay", *(arg or "").split(",")]).strip(","))
