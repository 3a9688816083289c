"""What every experiment binary does: join the other hosts, run the study, report in one line."""

import os
import sys
from collections.abc import Callable
from typing import Any

import jax
from absl import flags, logging
from ml_collections import config_flags

from hpjax.errors import ConfigError
from hpjax.studies.grid import train_and_evaluate


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


def define_flags(binary: str, config_file: str, help_text: str = "") -> tuple[Any, Any]:
    """``--config`` (default ``experiments/configs/<config_file>`` beside ``binary``) and
    ``--workdir``, the two flags every experiment binary takes."""
    config = config_flags.DEFINE_config_file(
        "config",
        os.path.join(os.path.dirname(os.path.abspath(binary)), "configs", config_file),
        help_text or "Study config file; override any key with --config.KEY=VALUE.",
        lock_config=True,
    )
    workdir = flags.DEFINE_string(
        "workdir", None, "Directory for the study's outputs.", required=True
    )
    return config, workdir


def run(study: Callable[[Any, str], Any], config, workdir: str) -> Any:
    """Joins the other hosts and runs ``study(config, workdir)``; a bad config or bad data
    exits with status 2 and one line."""
    initialize_distributed(config)
    logging.info("JAX devices: %s", jax.devices())
    try:
        return study(config, workdir)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def run_study(config, workdir: str) -> list[dict]:
    """Runs ``train_and_evaluate`` and prints the best trial in one line (process 0)."""
    rows = run(train_and_evaluate, config, workdir)
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
