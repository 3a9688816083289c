"""Three small studies through the binaries' configs (the default grid, ASHA, PBT) whose
results were recorded with the code before the study floor was rebuilt (commit 9b969af):
``golden_studies.json``. The rebuilt floor must give the same trials and results."""

import json

from tests.conftest import load_config

RESULT_COLUMNS = (
    "trial",
    "learning_rate",
    "batch_size",
    "seed",
    "weight_decay",
    "warmup_steps",
    "status",
    "rung",
    "exploits",
    "best_val_loss",
    "best_val_accuracy",
    "best_step",
    "test_loss",
    "test_accuracy",
    "final_val_loss",
    "steps",
)


def _tiny(config, npz: str):
    config.dataset, config.npz_path = "npz", npz
    config.model.hidden_units, config.model.num_layers = 16, 1
    config.batch_size, config.eval_every, config.checkpoint_every = 16, 10, 2
    config.log_every_s, config.make_report = 0.0, False
    config.tensorboard, config.optuna_storage = "off", "off"
    return config


def default_study(npz: str):
    config = _tiny(load_config("lr_sweep"), npz)
    config.learning_rates, config.num_steps, config.patience = (0.001, 0.01, 0.1, 1.0), 60, 2
    return config


def asha_study(npz: str):
    config = _tiny(load_config("lr_sweep", "asha"), npz)
    config.num_samples, config.slots, config.num_steps = 8, 3, 60
    config.asha.min_steps, config.asha.eta = 10, 2.0
    return config


def pbt_study(npz: str):
    config = _tiny(load_config("lr_sweep", "pbt"), npz)
    config.num_samples, config.num_steps, config.pbt.interval = 4, 60, 20
    return config


CONFIGS = {"default": default_study, "asha": asha_study, "pbt": pbt_study}


def results(rows) -> list[dict]:
    """The result columns of summary rows, as JSON holds them."""
    return json.loads(json.dumps([{k: r[k] for k in RESULT_COLUMNS if k in r} for r in rows]))
