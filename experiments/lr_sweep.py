"""Learning-rate sweep: every learning rate of the config trained at once, in one program.

  python experiments/lr_sweep.py --workdir runs/lr_sweep
  python experiments/lr_sweep.py --workdir runs/lr_sgd --config.optimizer=sgd \
    --config.learning_rates="(0.01,0.03,0.1,0.3)" --config.seeds="(0,1)"
"""

import sys

from hpjax import programs

if __name__ == "__main__":
    programs.run_program("lr-sweep", sys.argv, __doc__)
