"""What every experiment binary does: run the study, turn a ConfigError into one clear line."""

import sys

import jax
from absl import logging

from hpjax.errors import ConfigError
from hpjax.train import train_and_evaluate


def run_study(config, workdir: str) -> list[dict]:
    """Runs ``train_and_evaluate``; a bad config or bad data exits with status 2 and one line."""
    logging.info("JAX devices: %s", jax.devices())
    try:
        rows = train_and_evaluate(config, workdir)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    best = min(rows, key=lambda r: r["best_val_loss"])
    print(
        f"best trial {best['trial']}: learning_rate={best['learning_rate']:.3g} "
        f"batch_size={best['batch_size']} best_val_loss={best['best_val_loss']:.4f} "
        f"test_accuracy={best['test_accuracy']:.4f} (summary: {workdir}/summary.csv, "
        f"report: {workdir}/report.md)"
    )
    return rows
