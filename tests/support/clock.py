"""A clock the test moves by hand (services/server/clock.py's interface): waits on it end after a
few real milliseconds or a notification, and the waiter re-checks the fake time, so a deadline
passes exactly when the test says so, never on its own."""

from __future__ import annotations

import threading

REAL_SLICE_S = 0.005


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds

    def wait(self, cv: threading.Condition, timeout: float) -> None:
        cv.wait(min(max(0.0, timeout), REAL_SLICE_S))
