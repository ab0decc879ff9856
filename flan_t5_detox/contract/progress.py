"""How far a job has come, in its log: "step 3 of 20, 1.52 s each, about 0:00:26 left".

The seconds per unit are the mean over the units this process has done (a resumed job counts
from its restart), so the estimate follows a slowing or speeding job. No torch import here.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def clock_text(seconds: float) -> str:
    """`H:MM:SS`, rounded to the second."""
    whole = int(round(max(seconds, 0.0)))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


class Progress:
    """Units of work numbered `first + 1` .. `total`; `done(k)` after unit k finished."""

    def __init__(
        self, total: int, what: str = "step", first: int = 0, clock: Callable[[], float] = time.monotonic
    ):
        self.total, self.what, self.first, self.clock = total, what, first, clock
        self.started = clock()

    def done(self, number: int) -> str:
        units = number - self.first
        each = (self.clock() - self.started) / units if units > 0 else 0.0
        left = max(self.total - number, 0) * each
        return f"{self.what} {number} of {self.total}, {each:.3g} s each, about {clock_text(left)} left"
