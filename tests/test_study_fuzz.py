"""The fast profile of the generated study-space test (``tests/study_fuzz.py``): a fixed set
of drawn studies (derandomised, so CI draws the same ones), each held to every oracle, and the
studies it found wrong, kept as examples."""

import tempfile

from hypothesis import HealthCheck, example, given, settings

from tests import study_fuzz

FAST_EXAMPLES = 6
LISTS = dict(weight_decays=(0.0,), label_smoothings=(0.0,))

# Found by the generator: `trials` beside a model_grid of one value trained the factory's
# default width (the alone run of every model-grid trial was another model).
EXPLICIT_TRIALS_AND_ONE_ARCHITECTURE = {
    "model": "user_dropout",
    "naming": "trials",
    "schedule": "cosine",
    "patience": 1,
    "lists": dict(LISTS, learning_rates=(0.01,), batch_sizes=(12,), seeds=(0,), dropouts=(0.0,)),
    "trials": [{"learning_rate": 0.01, "seed": 2, "batch_size": 12}],
    "model_grid": {"width": (4,)},
    "scheduler": "slots",
    "kill_at": 3,
}
# Found by the generator: with batch sizes 4 and 12 in one program, evaluations came every
# eval_every steps of the largest batch, so the batch-4 trial was evaluated at steps 0 and 24
# where alone it is at 0, 8, 16, 24 (and early stopping with patience decided otherwise); then,
# with windows of the smallest batch, sizes 8 and 12 missed the batch-12 trial's step 8.
MIXED_BATCH_SIZES_WITH_PATIENCE = {
    "model": "user_mlp",
    "naming": "grid",
    "schedule": "constant",
    "patience": 1,
    "lists": dict(LISTS, learning_rates=(0.01, 0.1), batch_sizes=(8, 12), seeds=(0,)),
    "model_grid": {},
    "scheduler": "asha",
    "kill_at": 3,
}


@settings(
    max_examples=FAST_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(study_fuzz.studies())
@example(EXPLICIT_TRIALS_AND_ONE_ARCHITECTURE)
@example(MIXED_BATCH_SIZES_WITH_PATIENCE)
def test_every_drawn_study_is_right_or_refused_in_one_line(study):
    with tempfile.TemporaryDirectory() as scratch:
        outcome = study_fuzz.check_study(study, scratch)
    kept = (EXPLICIT_TRIALS_AND_ONE_ARCHITECTURE, MIXED_BATCH_SIZES_WITH_PATIENCE)
    assert outcome == "trained" or study not in kept, outcome
