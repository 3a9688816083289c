"""What every experiment binary does: join the other hosts, run the study, report in one line."""

import sys

import jax
from absl import logging

from hpjax.errors import ConfigError
from hpjax.train import train_and_evaluate


def initialize_distributed(config) -> None:
    """Joins a multi-host run (one process per host) when ``config.distributed`` is set.

    With no coordinator address, JAX finds the cluster itself (Cloud TPU, SLURM, ...).
    """
    if not config.get("distributed", False):
        return
    address = config.get("coordinator_address", "") or None
    num_processes = int(config.get("num_processes", 0)) or None
    process_id = int(config.get("process_id", -1))
    jax.distributed.initialize(
        coordinator_address=address,
        num_processes=num_processes,
        process_id=None if process_id < 0 else process_id,
    )
    logging.info(
        "process %d of %d, %d local of %d devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def run_study(config, workdir: str) -> list[dict]:
    """Runs ``train_and_evaluate``; a bad config or bad data exits with status 2 and one line."""
    initialize_distributed(config)
    logging.info("JAX devices: %s", jax.devices())
    try:
        rows = train_and_evaluate(config, workdir)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if jax.process_index() != 0:
        return rows
    best = min(rows, key=lambda r: r["best_val_loss"])
    print(
        f"best trial {best['trial']}: learning_rate={best['learning_rate']:.3g} "
        f"batch_size={best['batch_size']} best_val_loss={best['best_val_loss']:.4f} "
        f"test_accuracy={best['test_accuracy']:.4f} (summary: {workdir}/summary.csv, "
        f"report: {workdir}/report.md)"
    )
    return rows
