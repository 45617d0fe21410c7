"""A secure round's parameters, as the server announces them in the TRAIN task header and as both
sides derive the rest from them (the threshold default, the quantization scale)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.secagg.graph import degree

VERSION = 1  # the secure protocol's version, in every task header that starts a secure round
MIN_BITS, MAX_BITS = 16, 32


class ParamsError(ValueError):
    """Parameters no secure round can run with."""


def default_threshold(n: int, k: int) -> int:
    """A strict majority of a client's neighbourhood (its neighbours and itself)."""
    m = degree(n, k) + 1
    return min(m, m // 2 + 1)


@dataclass(frozen=True)
class RoundParams:
    clients: int  # n: the clients sampled for the round
    threshold: int  # t: shares needed to rebuild a secret; clients needed to finish the round
    neighbours: int  # k: the graph's degree bound (even)
    bits: int  # masked inputs are integers mod 2^bits (one uint32 word each)
    clip: float  # each coordinate of an update is clipped to [-clip, clip]
    max_weight: int  # a client's weight is rounded to an integer in [1, max_weight]

    def check(self) -> RoundParams:
        """Raise ParamsError unless a round can run with these (both sides call it)."""
        if self.clients < 2:
            raise ParamsError(f"a secure round needs >= 2 clients, got {self.clients}")
        if self.neighbours < 2 or self.neighbours % 2:
            raise ParamsError(f"neighbours must be even and >= 2, got {self.neighbours}")
        if not 1 <= self.threshold <= self.neighbourhood:
            raise ParamsError(f"threshold {self.threshold} must be in 1..{self.neighbourhood} "
                              f"(a neighbourhood of {self.clients} clients with k={self.neighbours})")
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise ParamsError(f"bits must be in {MIN_BITS}..{MAX_BITS}, got {self.bits}")
        if not (self.clip > 0 and self.clip < float("inf")) or self.max_weight < 1:
            raise ParamsError(f"clip must be finite > 0 and max_weight >= 1, got {self.clip}, {self.max_weight}")
        if self.scale <= 0:
            raise ParamsError(f"bits={self.bits} leave no room for {self.clients} clients x max_weight "
                              f"{self.max_weight}: raise bits or lower max_weight")
        return self

    @property
    def neighbourhood(self) -> int:
        """Holders of a client's shares: its neighbours and itself."""
        return degree(self.clients, self.neighbours) + 1

    @property
    def modulus_mask(self) -> int:
        return (1 << self.bits) - 1

    @property
    def scale(self) -> float:
        """S: a clipped coordinate x becomes the integer v = x * S rounded stochastically (|v| <=
        clip * S + 1) and is sent as weight * v. With S = (2^(bits-1) - 1 - n * max_weight) /
        (n * max_weight * clip) the sum over n clients, |sum weight_i * v_i| <= n * max_weight *
        (clip * S + 1) = 2^(bits-1) - 1, cannot wrap mod 2^bits, and the weighted mean comes out
        within 1 / S of that of the clipped updates, coordinate by coordinate (the quantization bound)."""
        room = (1 << (self.bits - 1)) - 1 - self.clients * self.max_weight
        return room / (self.clients * self.max_weight * self.clip)
