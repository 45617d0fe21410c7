"""The masked input's wire layout: ``words`` little-endian uint32 words (the weight, then the
update's coordinates in the ClientResult's order), named by a fingerprint that binds it to the
ClientResult type it comes from, so a client of another model is refused before a byte is read."""

from __future__ import annotations

from collections.abc import Sequence

from services.common.tensors import Layout, LayoutError


class MaskedLayout:
    def __init__(self, result: Layout) -> None:
        update = result.leaves[:-1]
        self.shapes: Sequence[tuple[int, ...]] = [tuple(leaf.shape) for leaf in update]
        self.words = sum(leaf.nbytes // leaf.dtype.itemsize for leaf in update) + 1
        self.nbytes = 4 * self.words
        self.fingerprint = f"secagg-v1:weight-first:{self.words}:{result.fingerprint}"

    def check_fingerprint(self, fingerprint: str, who: str) -> None:
        if fingerprint != self.fingerprint:
            raise LayoutError(f"{who} is laid out as {fingerprint[:96]!r}, expected the masked layout "
                              f"{self.fingerprint!r}")
