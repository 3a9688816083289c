"""The RNN study (cell type x stacked layers on a subset, the best retrained on all data):
its keys and stage configs (:mod:`.spec`), and the study with its outputs (:mod:`.study`)."""

from hpjax.studies.rnn.spec import full_config, validate_rnn_study
from hpjax.studies.rnn.study import (
    NothingToRetrainError,
    compare,
    findings,
    run_rnn_study,
    select_best,
    write_rnn_outputs,
)

__all__ = [
    "NothingToRetrainError",
    "compare",
    "findings",
    "full_config",
    "run_rnn_study",
    "select_best",
    "validate_rnn_study",
    "write_rnn_outputs",
]
