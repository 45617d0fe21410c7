"""Updates to integers mod 2^bits and back (see :class:`RoundParams.scale` for the bound).

A client's masked input is ``words = update size + 1`` uint32 words: the integer weight w, then
w * v for each coordinate of the update (v its clipped, scaled and stochastically rounded value);
so the server's unmasked sum holds sum(w_i) and sum(w_i v_i), and their quotient is the weighted
mean (``mean``'s), within 1 / S. The weight comes first so that the server, unmasking in one pass,
knows the divisor before the first coordinate."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from services.common.secagg.crypto import Keystream
from services.common.secagg.masking import MaskStreams
from services.common.secagg.params import RoundParams

BLOCK_WORDS = 1 << 15  # words converted at a time: the float64 temporaries stay in the CPU's cache


def integer_weight(weight: float, params: RoundParams) -> int:
    """The weight as an integer in [1, max_weight] (TFF's NUM_EXAMPLES weights are integers already)."""
    return int(min(max(round(weight), 1), params.max_weight))


def quantize(update: Sequence[np.ndarray], weight: float, params: RoundParams,
             rounding_seed: bytes | None = None, masks: Sequence[tuple[bytes, int]] = ()) -> np.ndarray:
    """The client's input: uint32 words, each < 2^bits, plus ``masks`` (seed, sign) added block by
    block as the words are made (the masked input in one pass). A block at a time, in float64
    (exact for every integer it rounds to): v = floor(clip(x) S + u), u uniform in [0, 1) (32-bit
    uniforms from an AES keystream, fresh unless ``rounding_seed`` is given), which is x S rounded
    up with the probability of its fraction (stochastic rounding, unbiased)."""
    flat = [np.asarray(u).reshape(-1) for u in update]
    size = sum(f.size for f in flat)
    out = np.empty(size + 1, np.uint32)
    randomness = Keystream(rounding_seed or os.urandom(32), BLOCK_WORDS)
    streams = MaskStreams(masks)
    w = integer_weight(weight, params)
    out[0] = w
    streams.apply(out[:1])
    s, c = params.scale, params.clip
    y = np.empty(min(BLOCK_WORDS, max(size, 1)), np.float64)
    u = np.empty_like(y)
    v = np.empty(y.size, np.int64)
    pos = 1
    for f in flat:
        for start in range(0, f.size, BLOCK_WORDS):
            n = min(BLOCK_WORDS, f.size - start)
            yb, ub, vb = y[:n], u[:n], v[:n]
            np.multiply(f[start : start + n], s, out=yb)
            np.clip(yb, -c * s, c * s, out=yb)
            np.multiply(randomness.read(n), 2.0**-32, out=ub)
            np.add(yb, ub, out=yb)
            np.floor(yb, out=yb)
            vb[...] = yb
            vb *= w
            block = out[pos : pos + n]
            block[...] = vb  # mod 2^32 (two's complement)
            streams.apply(block)
            pos += n
    if params.bits < 32:
        out &= np.uint32(params.modulus_mask)
    return out


def dequantize(total: np.ndarray, shapes: Sequence[tuple[int, ...]], params: RoundParams,
               masks: Sequence[tuple[bytes, int]] = ()) -> tuple[list[np.ndarray], int]:
    """The sum into the weighted mean update (float32 arrays of ``shapes``) and the sum of the
    integer weights, adding ``masks`` (the unmasking) block by block in the same pass (``total``
    is consumed). Words are read as signed bits-bit integers (sign-extended to int32)."""
    streams = MaskStreams(masks)
    streams.apply(total[:1])
    weight_sum = int(total[0]) & params.modulus_mask
    if not 0 < weight_sum < 1 << (params.bits - 1):
        raise ValueError(f"the unmasked weight sum {weight_sum} is out of range: the masks did not cancel")
    inverse = 1.0 / (params.scale * weight_sum)
    shift = np.uint32(32 - params.bits)
    signed = np.empty(min(BLOCK_WORDS, max(total.size, 1)), np.int32)
    scaled = np.empty(signed.size, np.float64)
    out, pos = [], 1
    for shape in shapes:
        part = np.empty(shape, np.float32)
        flat = part.reshape(-1)
        for start in range(0, flat.size, BLOCK_WORDS):
            n = min(BLOCK_WORDS, flat.size - start)
            words, sb = total[pos + start : pos + start + n], signed[:n]
            streams.apply(words)
            if shift:
                np.left_shift(words, shift, out=sb.view(np.uint32))
                np.right_shift(sb, shift.astype(np.int32), out=sb)  # arithmetic: sign-extends
            else:
                sb[...] = words.view(np.int32)
            np.multiply(sb, inverse, out=scaled[:n])
            flat[start : start + n] = scaled[:n]
        pos += flat.size
        out.append(part)
    return out, weight_sum
