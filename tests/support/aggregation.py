"""What the tests look at in the server's aggregation that the server itself never asks."""

from __future__ import annotations

from services.server.aggregation import Slots


def free_slots(slots: Slots) -> int:
    """Upload slots not held right now (a snapshot: each free one is taken and given back)."""
    taken = 0
    while slots._semaphore.acquire(blocking=False):
        taken += 1
    for _ in range(taken):
        slots._semaphore.release()
    return taken
