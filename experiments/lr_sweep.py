"""Learning-rate sweep: every learning rate of the config trained at once, in one program.

  python experiments/lr_sweep.py --workdir runs/lr_sweep
  python experiments/lr_sweep.py --workdir runs/lr_sgd --config.optimizer=sgd \
    --config.learning_rates="(0.01,0.03,0.1,0.3)" --config.seeds="(0,1)"
"""

import os

from absl import app, flags
from ml_collections import config_flags

from hpjax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    os.path.join(os.path.dirname(__file__), "configs", "lr_sweep.py"),
    "Study config file; override any key with --config.KEY=VALUE.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the study's outputs.", required=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.run_study(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
