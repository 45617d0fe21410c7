"""Time for the server's waits (round deadlines, long polls): the system's monotonic clock, or in
tests a fake one the test moves by hand, so deadlines are tested without sleeping through them."""

from __future__ import annotations

import threading
import time


class Clock:
    """``clock()`` is the time now; ``clock.wait(cv, timeout)`` waits on ``cv`` (held by the caller)
    for a notification or ``timeout`` seconds of this clock's time. Callers re-check their
    condition and the time after every wait (a wait may end early)."""

    def __call__(self) -> float:
        return time.monotonic()

    def wait(self, cv: threading.Condition, timeout: float) -> None:
        cv.wait(max(0.0, timeout))
