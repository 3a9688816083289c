"""What a study adds to the host loop (:mod:`hpjax.study.loop`): measurements at each
evaluation, timings of the training calls, outputs written as trials end, ASHA's rungs shared
beyond one program."""

from __future__ import annotations

from typing import TYPE_CHECKING

from absl import logging

if TYPE_CHECKING:
    from hpjax.engine import population
    from hpjax.study.loop import PopulationRun
    from hpjax.study.schedulers import RungBoard


class Hooks:
    """What a study adds to the host loop; every method is optional and does nothing here.

    ``state`` is the population's device state, valid only during the call (the next training
    call donates it).
    """

    def on_start(self, run: PopulationRun, state: population.PopulationState) -> None:
        """Before the first training call of a population (not called for a finished one)."""

    def on_train(self, run: PopulationRun, num_ticks: int, seconds: float) -> None:
        """After each compiled training call, with its wall time (the result is ready)."""

    def on_evaluation(
        self, run: PopulationRun, state: population.PopulationState, rows: list[dict]
    ) -> None:
        """After each evaluation (the first one before training), with its metrics rows."""

    def on_end(self, run: PopulationRun, summary_rows: list[dict]) -> None:
        """When a population has finished (also one finished before a resume)."""

    def rung_board(self, run: PopulationRun) -> RungBoard | None:
        """Where ASHA shares its rung values beyond this program (search workers)."""


class UntrainedOutputs(Hooks):
    """One warning line when training moved no trial's validation loss by a single bit: the
    model's outputs do not depend on what it learns (a value of Python's ``random`` or of
    NumPy drawn in ``__call__`` is a constant of each compiled program, so training and
    evaluation may run different branches; or constant outputs)."""

    def __init__(self):
        self.checked = False

    def on_evaluation(self, run, state, rows) -> None:
        trained = [r for r in rows if r["step"] > 0]
        if self.checked or not trained:
            return
        self.checked = True
        first = {r["trial"]: run.history[r["trial"]][0] for r in trained}
        if all(
            first[r["trial"]]["step"] == 0 and r["val_loss"] == first[r["trial"]]["val_loss"]
            for r in trained
        ):
            logging.warning(
                "%s: after %d steps no trial's validation loss moved from its value before "
                "training: the model's outputs do not depend on its training (a draw of "
                "Python's random or NumPy inside __call__ is fixed when the program is "
                "compiled; use the rngs the factory gets, or nnx.Dropout)",
                run.label,
                trained[0]["step"],
            )
