"""Updates to integers mod 2^bits and back (see :class:`RoundParams.scale` for the bound).

A client's masked input is ``words = update size + 1`` uint32 words: weight * v for each
coordinate of the update (v its clipped, scaled and stochastically rounded value), then the
integer weight itself; so the server's unmasked sum holds sum(w_i v_i) and sum(w_i), and their
quotient is the weighted mean (``mean``'s), within 1 / S."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.common.secagg.crypto import BLOCK_WORDS
from services.common.secagg.params import RoundParams


def integer_weight(weight: float, params: RoundParams) -> int:
    """The weight as an integer in [1, max_weight] (TFF's NUM_EXAMPLES weights are integers already)."""
    return int(min(max(round(weight), 1), params.max_weight))


def quantize(update: Sequence[np.ndarray], weight: float, params: RoundParams,
             rng: np.random.Generator) -> np.ndarray:
    """The client's input, unmasked: uint32 words, each < 2^bits."""
    flat = [np.asarray(u).reshape(-1) for u in update]
    size = sum(f.size for f in flat)
    out = np.empty(size + 1, np.uint32)
    w = integer_weight(weight, params)
    s, c = params.scale, params.clip
    pos = 0
    for f in flat:
        for start in range(0, f.size, BLOCK_WORDS):
            y = np.clip(f[start : start + BLOCK_WORDS].astype(np.float64), -c, c) * s
            v = np.floor(y)
            v += rng.random(y.size) < (y - v)
            out[pos : pos + y.size] = (v.astype(np.int64) * w).astype(np.uint32)
            pos += y.size
    out[-1] = w
    out &= np.uint32(params.modulus_mask)
    return out


def dequantize(total: np.ndarray, shapes: Sequence[tuple[int, ...]], params: RoundParams) -> tuple[list[np.ndarray], int]:
    """The unmasked sum into the weighted mean update (float32 arrays of ``shapes``) and the sum
    of the integer weights."""
    half, modulus = 1 << (params.bits - 1), 1 << params.bits
    weight_sum = int(total[-1]) & params.modulus_mask
    if not 0 < weight_sum < half:
        raise ValueError(f"the unmasked weight sum {weight_sum} is out of range: the masks did not cancel")
    divisor = params.scale * weight_sum
    out, pos = [], 0
    for shape in shapes:
        part = np.empty(shape, np.float32)
        flat = part.reshape(-1)
        for start in range(0, flat.size, BLOCK_WORDS):
            words = total[pos + start : pos + min(start + BLOCK_WORDS, flat.size)].astype(np.int64) & params.modulus_mask
            words[words >= half] -= modulus
            flat[start : start + words.size] = words / divisor
        pos += flat.size
        out.append(part)
    return out, weight_sum
