"""Shamir's t-of-m secret sharing of 32-byte secrets over the prime field GF(2^521 - 1) (a
Mersenne prime above any 32-byte value). Shares are evaluated at x = 1..; a share is its value,
SHARE_BYTES big-endian. Any t shares give the secret; t - 1 give nothing about it."""

from __future__ import annotations

import secrets as _random
from collections.abc import Mapping

PRIME = (1 << 521) - 1
SHARE_BYTES = 66  # ceil(521 / 8)
SECRET_BYTES = 32


class ShareError(ValueError):
    """Shares that cannot give a secret (too few, malformed, or inconsistent)."""


def split(secret: bytes, threshold: int, xs: list[int]) -> dict[int, bytes]:
    """Shares of ``secret`` for the points ``xs`` (distinct, 1 <= x < PRIME): any ``threshold`` of them
    reconstruct it."""
    if len(secret) != SECRET_BYTES:
        raise ShareError(f"a secret is {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= len(xs) or len(set(xs)) != len(xs) or not all(0 < x < PRIME for x in xs):
        raise ShareError(f"need distinct points 1.. and 1 <= threshold ({threshold}) <= {len(xs)}")
    coefficients = [int.from_bytes(secret, "big")] + [_random.randbelow(PRIME) for _ in range(threshold - 1)]
    out = {}
    for x in xs:
        y = 0
        for c in reversed(coefficients):
            y = (y * x + c) % PRIME
        out[x] = y.to_bytes(SHARE_BYTES, "big")
    return out


def share_value(share: bytes) -> int:
    """A share's field element, checked (exact size, below the prime)."""
    if len(share) != SHARE_BYTES:
        raise ShareError(f"a share is {SHARE_BYTES} bytes, got {len(share)}")
    value = int.from_bytes(share, "big")
    if value >= PRIME:
        raise ShareError("a share must be below the field's prime")
    return value


def combine(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """The secret from ``threshold`` shares (the first ``threshold`` points, by x) by Lagrange
    interpolation at 0."""
    if len(shares) < threshold:
        raise ShareError(f"{len(shares)} shares, {threshold} needed")
    points = sorted(shares.items())[:threshold]
    secret = 0
    for i, (xi, share) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * -xj % PRIME
                den = den * (xi - xj) % PRIME
        secret = (secret + share_value(share) * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 1 << (8 * SECRET_BYTES):
        raise ShareError("the shares do not combine to a 32-byte secret (inconsistent shares)")
    return secret.to_bytes(SECRET_BYTES, "big")
