"""Batch-size studies: fixed epochs, steps to target and the gradient noise scale.

  python experiments/batch_size_study.py --workdir runs/bs
  python experiments/batch_size_study.py --workdir runs/bs \
    --config=experiments/configs/batch_size_study.py:steps_to_target
  python experiments/batch_size_study.py --workdir runs/bs \
    --config=experiments/configs/batch_size_study.py:noise_scale

See experiments/configs/batch_size_study.py for every study and its quick variant.
"""

from hpjax import cli
from hpjax.studies.batch_size import runner

_CONFIG, _WORKDIR = cli.define_flags(
    __file__,
    "batch_size_study.py",
    "Study config file (path[:study[,quick]]); override any key with --config.KEY=VALUE.",
)


def main(argv):
    del argv  # parse_flags refuses extra arguments
    reports = cli.run(runner.run, _CONFIG.value, _WORKDIR.value)
    for name, path in reports.items():
        print(f"{name}: report {path}")


if __name__ == "__main__":
    cli.main(main)
