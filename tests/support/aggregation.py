"""The tests' side of the server's aggregation: results made by hand (layouts, updates, their wire
bytes, chunks) and what the tests look at that the server itself never asks (free upload slots)."""

from __future__ import annotations

import numpy as np

from services.common import tensors
from services.server.aggregation import Slots


def free_slots(slots: Slots) -> int:
    """Upload slots not held right now (a snapshot: each free one is taken and given back)."""
    taken = 0
    while slots._semaphore.acquire(blocking=False):
        taken += 1
    for _ in range(taken):
        slots._semaphore.release()
    return taken


def layout_of(shapes: list[tuple[int, ...]], dtypes: list[str] | None = None) -> tensors.Layout:
    """A ClientResult layout (update leaves, then update_weight), as Layout.of(TFF type) makes it."""
    leaves, offset = [], 0
    for i, (shape, dtype) in enumerate(zip(shapes, dtypes or ["<f4"] * len(shapes), strict=True)):
        leaf = tensors.Leaf(f"update.{i}", np.dtype(dtype), shape, offset)
        leaves.append(leaf)
        offset += leaf.nbytes
    leaves.append(tensors.Leaf("update_weight", np.dtype("<f4"), (), offset))
    return tensors.Layout(tuple(leaves), offset + 4, "0123456789abcdef")


def results(weights: list[float], layout: tensors.Layout, seed: int = 0) -> list[tuple[list[np.ndarray], float]]:
    """Random updates of ``layout``, one per weight."""
    rng = np.random.default_rng(seed)
    return [([rng.standard_normal(leaf.shape).astype(leaf.dtype) for leaf in layout.leaves[:-1]], w) for w in weights]


def payload(update: list[np.ndarray], weight: float, layout: tensors.Layout) -> bytes:
    """A result's wire bytes: the update's tensors, then update_weight."""
    return bytes(layout.encode([*update, np.float32(weight)]))


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def same_bits(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.dtype == y.dtype and x.tobytes() == y.tobytes() for x, y in zip(a, b, strict=True))
