"""What a study adds to the host loop (:mod:`hpjax.study.loop`): measurements at each
evaluation, timings of the training calls, outputs written as trials end, ASHA's rungs shared
beyond one program."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
