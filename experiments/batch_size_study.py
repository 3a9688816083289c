"""Batch-size studies: fixed epochs, steps to target and the gradient noise scale.

  python experiments/batch_size_study.py --workdir runs/bs
  python experiments/batch_size_study.py --workdir runs/bs \
    --config=experiments/configs/batch_size_study.py:steps_to_target
  python experiments/batch_size_study.py --workdir runs/bs \
    --config=experiments/configs/batch_size_study.py:noise_scale

See experiments/configs/batch_size_study.py for every study and its quick variant.
"""

import sys

from hpjax import programs

if __name__ == "__main__":
    programs.run_program("batch-size-study", sys.argv, __doc__)
