"""Adding masks to a vector of uint32 words mod 2^bits, block by block: a client masks its input
with its self mask and its pairwise masks; the server removes the survivors' self masks and the
dropped clients' pairwise masks from the running sum the same way (its extra memory is one block,
never a model-sized buffer per mask)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.common.secagg.crypto import KeyPair, Keystream

FUSED_BLOCK_WORDS = 1 << 16  # 256 KiB: the target's block and a mask's stay in cache together

MASK_PURPOSE = b"pairwise mask"
SHARE_KEY_PURPOSE = b"share key"


def pair_sign(own: int, peer: int) -> int:
    """The sign of client ``own``'s pairwise mask with ``peer`` (+ for the lower index): the two cancel."""
    return 1 if own < peer else -1


def pair_seed(mask_key: KeyPair, peer_public: bytes, context: bytes) -> bytes:
    return mask_key.agree(peer_public, MASK_PURPOSE, context)


class MaskStreams:
    """Masks (seed, sign) read in step: :meth:`apply` adds the next ``len(block)`` words of every
    mask to ``block`` (uint32, wrapping mod 2^32), generating each into one shared buffer while the
    block is in the CPU's cache. The extra memory is one block plus a cipher context per mask."""

    def __init__(self, masks: Sequence[tuple[bytes, int]], block_words: int = FUSED_BLOCK_WORDS) -> None:
        self.streams = [(Keystream(seed, 0), np.add if sign > 0 else np.subtract) for seed, sign in masks]
        self.block_words = block_words
        self._zeros, self._buffer = bytes(4 * block_words), bytearray(4 * block_words)

    def apply(self, block: np.ndarray) -> None:
        for start in range(0, block.size, self.block_words):
            part = block[start : start + self.block_words]
            zeros = self._zeros[: 4 * part.size]
            for stream, op in self.streams:
                op(part, stream.read_into(zeros, self._buffer), out=part)

