"""Optuna's samplers proposing whole populations of the default MLP study on MNIST-1D.

Each round asks the sampler for `search.population` trials at once and trains them as one
compiled program; 32 trials in rounds of 8 by default, searching the learning rate and the
weight decay (the default study's space) with TPE.

  python experiments/search.py --workdir runs/search_tpe
  python experiments/search.py --workdir runs/search_qmc --config=experiments/configs/search.py:qmc
  # Optuna's usual loop: one trial per ask, each trained alone
  python experiments/search.py --workdir runs/search_seq \
    --config=experiments/configs/search.py:sequential
  # Two objectives over the capacity of the MLP: validation loss against parameters (NSGA-II)
  python experiments/search.py --workdir runs/search_pareto \
    --config=experiments/configs/search.py:pareto

Several workers (each its own workdir) share one search through a PostgreSQL server:

  python experiments/search.py --workdir runs/worker_a \
    --config.optuna_storage=postgresql://USER@HOST/DB --config.search.study_name=mlp_tpe

Variants: tpe (default), qmc, random, cmaes, gp (needs torch), sequential, pareto; add ",quick"
for seconds.
"""

import ml_collections

from hpjax.config import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = set((arg or "tpe").split(",")) - {""}
    known = ("tpe", "qmc", "random", "cmaes", "gp", "sequential", "pareto", "quick")
    if variants - set(known):
        raise ValueError(
            f"unknown config variant(s) {sorted(variants - set(known))}; allowed: "
            f"{', '.join(known)} (joined with commas)"
        )
    config = default_config()
    config.description = "Optuna's sampler proposing populations of the default MLP study"
    config.num_steps = 1500
    config.search = ml_collections.ConfigDict(
        {
            "sampler": "optuna_tpe",
            "num_trials": 32,
            "population": 8,
            "seed": 0,
            "objectives": ("val_loss",),
            # Workers: every process started with the same optuna_storage and study_name takes
            # part in one search (PostgreSQL for several machines). A worker whose heartbeat is
            # older than grace_s has its trials failed and queued again, up to max_retry times.
            "study_name": "search",
            "heartbeat_s": 10,
            "grace_s": 60,
            "max_retry": 3,
            # A server that drops its connections (a restart): each call is tried again for up
            # to reconnect_s seconds; past that the worker stops with one line, its trials kept.
            "reconnect_s": 300,
            "space": ml_collections.ConfigDict(
                {
                    "learning_rate": (1e-4, 1e-1, "log"),
                    "weight_decay": (1e-3, 10.0, "log"),
                }
            ),
        }
    )
    for name in ("qmc", "random", "cmaes", "gp"):
        if name in variants:
            config.search.sampler = f"optuna_{name}"
    if "sequential" in variants:
        config.search.population = 1
    if "pareto" in variants:
        config.search.sampler = "optuna_nsga2"
        config.search.objectives = ("val_loss", "num_params")
        config.search.space = ml_collections.ConfigDict(
            {
                "learning_rate": (1e-4, 3e-2, "log"),
                "model": {"hidden_units": (16, 32, 64, 128, 256, 512), "num_layers": (1, 2, 3)},
            }
        )
        config.weight_decays = (0.0,)
        config.search.num_trials = 48
        config.search.population = 12
    if "quick" in variants:
        config.dataset = "digits"
        config.model.hidden_units = 16
        config.model.num_layers = 1
        config.num_steps = 60
        config.eval_every = 20
        config.search.num_trials = 6
        config.search.population = 3
        if "pareto" in variants:
            config.search.space.model.hidden_units = (8, 16, 32)
            config.search.space.model.num_layers = (1, 2)
    return config
