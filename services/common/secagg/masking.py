"""Adding masks to a vector of uint32 words mod 2^bits, block by block: a client masks its input
with its self mask and its pairwise masks; the server removes the survivors' self masks and the
dropped clients' pairwise masks from the running sum the same way (its extra memory is one block
at a time, never a model-sized buffer per mask)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.common.secagg.crypto import BLOCK_WORDS, KeyPair, mask_blocks

MASK_PURPOSE = b"pairwise mask"
SHARE_KEY_PURPOSE = b"share key"


def pair_sign(own: int, peer: int) -> int:
    """The sign of client ``own``'s pairwise mask with ``peer`` (+ for the lower index): the two cancel."""
    return 1 if own < peer else -1


def pair_seed(mask_key: KeyPair, peer_public: bytes, context: bytes) -> bytes:
    return mask_key.agree(peer_public, MASK_PURPOSE, context)


def add_masks(target: np.ndarray, masks: Sequence[tuple[bytes, int]], modulus_mask: int,
              block_words: int = BLOCK_WORDS) -> None:
    """``target += sum(sign * PRG(seed))`` mod 2^bits, in place (``target`` is uint32, 1-D): one mask
    after the other, each a block at a time, so the extra memory is one block whatever the count."""
    if target.dtype != np.uint32 or target.ndim != 1:
        raise TypeError("masks are added to a 1-D uint32 vector")
    for seed, sign in masks:
        op = np.add if sign > 0 else np.subtract
        start = 0
        for words in mask_blocks(seed, target.size, block_words):
            block = target[start : start + words.size]
            op(block, words, out=block)
            start += words.size
    if modulus_mask != 0xFFFFFFFF:
        np.bitwise_and(target, np.uint32(modulus_mask), out=target)
