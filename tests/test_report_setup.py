"""The setup paragraph every report opens with, from a config.json and summary rows."""

from hpjax.report.setup import setup_sentence


def _summary(**extra):
    return [
        {"seed": seed, "num_params": params, "steps": steps, "batch_size": 32, **extra}
        for seed, params, steps in ((0, 22026, 3000), (1, 22026, 2400), (2, 89610, 1500))
    ]


def test_setup_names_model_size_optimizer_data_seeds_budget_and_stopping():
    saved = {
        "model": {"name": "mlp", "hidden_units": 128, "num_layers": 2, "batch_norm": False},
        "optimizer": "momentum",
        "momentum": 0.9,
        "nesterov": False,
        "schedule": "cosine",
        "warmup_steps": 100,
        "dataset": "mnist1d",
        "data_sizes": {"train": 3600, "val": 400, "test": 1000},
        "train_subset": 1000,
        "eval_every": 50,
        "eval_growth": 0.02,
        "patience": 10,
        "min_steps": 500,
    }
    text = setup_sentence(saved, _summary())
    assert text.startswith("**Setup.** Model: mlp (hidden_units=128, num_layers=2), ")
    assert "22,026-89,610 parameters" in text and "batch_norm" not in text
    assert (
        "Optimizer: momentum (momentum 0.9), cosine learning rate after 100 warmup steps." in text
    )
    assert "Data: mnist1d (3,600 train, 400 val, 1,000 test examples), a random 1,000" in text
    assert "Seeds: 0, 1, 2." in text
    assert "up to 3,000 steps at batch size 32; evaluated every 50 steps, early on every 2%" in text
    assert (
        "early stopping after 10 evaluations without a lower validation loss (not before step "
        "500)" in text
    )


def test_setup_leaves_out_what_varies_per_trial_and_says_no_early_stopping():
    saved = {
        "model": {"name": "cnn", "channels": 16, "parametrization": "standard", "base_width": 64},
        "optimizer": "momentum",
        "momentum": 0.9,
        "schedule": "constant",
        "patience": 0,
    }
    text = setup_sentence(saved, _summary(momentum=0.99), title="Setup of stage 2")
    assert text.startswith("**Setup of stage 2.** Model: cnn (channels=16), ")
    assert "Optimizer: momentum, constant learning rate." in text  # momentum is per trial
    assert "no early stopping" in text
    budgeted = setup_sentence({**saved, "num_steps": 5000}, _summary(), ranked=False)
    assert "each trial a budget of 5,000 steps at batch size 32" in budgeted
    assert "ranked" not in budgeted and "ranked" in text
    mup = {**saved, "model": {**saved["model"], "parametrization": "mup"}}
    assert "parametrization=mup, base_width=64" in setup_sentence(mup, _summary())


def test_a_model_grid_shows_its_values():
    saved = {"model": {"name": "mlp", "hidden_units": 256, "num_layers": 2}, "optimizer": "adam"}
    saved["model_grid"] = {"hidden_units": [16, 64], "num_layers": [1, 2, 3]}
    assert "Model: mlp (hidden_units=16/64, num_layers=1/2/3), " in setup_sentence(
        saved, _summary()
    )
