"""Progress of a long run on the terminal: ticks per second and time left."""

from __future__ import annotations

import math
import time

from absl import logging


class Progress:
    """Logs steps per second and time left, at most every ``interval_s`` seconds.

    ``total_ticks == 0``: the length is not known in ticks (an adaptive study, which ends when
    its queue does); the message says how far it is.
    """

    def __init__(self, label: str, total_ticks: int, num_trials: int, interval_s: float = 5.0):
        self.label = label
        self.known = total_ticks > 0
        self.total_ticks = max(total_ticks, 1)
        self.num_trials = num_trials  # rows in the program; the loop updates it as it shrinks
        self.interval_s = interval_s
        self.start = time.perf_counter()
        self.start_tick = 0
        self.updates = 0
        self.last_log = -math.inf

    def update(self, tick: int, message: str = "", force: bool = False) -> None:
        """Called after each evaluation; the rate is measured from the end of the first
        training window, so that compiling it does not count as training time."""
        now = time.perf_counter()
        self.updates += 1
        if self.updates <= 2:  # the start, then the end of the window that compiled
            self.start_tick, self.start = tick, now
            if not force:
                return
        if not force and now - self.last_log < self.interval_s:
            return
        self.last_log = now
        done = tick - self.start_tick
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        if not self.known:
            logging.info(
                "%s: tick %d, %.0f ticks/s x %d rows, %.0f s elapsed%s",
                self.label,
                tick,
                rate,
                self.num_trials,
                elapsed,
                f"; {message}" if message else "",
            )
            return
        left = (self.total_ticks - tick) / rate if rate > 0 else math.inf
        logging.info(
            "%s: tick %d/%d (%.0f%%), %.0f ticks/s x %d trials, %.0f s elapsed, ~%.0f s left%s",
            self.label,
            tick,
            self.total_ticks,
            100 * tick / self.total_ticks,
            rate,
            self.num_trials,
            elapsed,
            left,
            f"; {message}" if message else "",
        )
