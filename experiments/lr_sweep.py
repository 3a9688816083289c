"""Learning-rate sweep: every learning rate of the config trained at once, in one program.

  python experiments/lr_sweep.py --workdir runs/lr_sweep
  python experiments/lr_sweep.py --workdir runs/lr_sgd --config.optimizer=sgd \
    --config.learning_rates="(0.01,0.03,0.1,0.3)" --config.seeds="(0,1)"
"""

from hpjax import cli

_CONFIG, _WORKDIR = cli.define_flags(__file__, "lr_sweep.py")


def main(argv):
    del argv  # parse_flags refuses extra arguments
    cli.run_study(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    cli.main(main)
