"""Secure aggregation's masking as the tests apply it to a whole vector at once."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.common.secagg.masking import FUSED_BLOCK_WORDS, MaskStreams


def add_masks(target: np.ndarray, masks: Sequence[tuple[bytes, int]], modulus_mask: int,
              block_words: int = FUSED_BLOCK_WORDS) -> None:
    """``target += sum(sign * PRG(seed))`` mod 2^bits, in place (``target`` is uint32, 1-D), in one
    pass over it whatever the number of masks (:class:`MaskStreams`)."""
    if target.dtype != np.uint32 or target.ndim != 1:
        raise TypeError("masks are added to a 1-D uint32 vector")
    MaskStreams(masks, block_words).apply(target)
    if modulus_mask != 0xFFFFFFFF:
        np.bitwise_and(target, np.uint32(modulus_mask), out=target)
