"""A secure round's clients and its key phases (services/server/aggregation/secure): the round's
state, who takes part (each sampled client's index in a random order), when each phase ends
(all have sent, or ``phase_timeout_s``), and phases 1 and 2: advertise (two public keys per
client: U1) and share (the Shamir shares of its secrets, encrypted to its neighbours and relayed
unread: U2)."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from services.common import tensors
from services.common.config import SecureSettings
from services.common.secagg import shamir
from services.common.secagg.crypto import KEY_BYTES, ciphertext_bytes
from services.common.secagg.graph import neighbours
from services.common.secagg.layout import MaskedLayout
from services.common.secagg.params import ParamsError, RoundParams
from services.server.aggregation.interface import RoundAggregation, State
from services.server.aggregation.staging import Contribution, RoundClosed, Slots
from services.server.refusals import Reject


class SecureAggregatorView(Protocol):
    """What a secure round reads of its aggregator (services/server/aggregation/secure/__init__.py's
    SecureAggregator), named here so the round's modules need not import the package that holds them."""

    settings: SecureSettings
    masked: MaskedLayout
    slots: Slots
    clock: Callable[[], float]

    def params(self, n: int) -> RoundParams: ...

SHARE_PLAINTEXT_BYTES = 2 * shamir.SHARE_BYTES  # the self-mask seed's share, then the mask key's
SHARE_CIPHERTEXT_BYTES = ciphertext_bytes(SHARE_PLAINTEXT_BYTES)


@dataclass(frozen=True)
class Keys:
    cipher: bytes
    mask: bytes


class KeyPhases(RoundAggregation):
    """One secure round's state, driven by the servicer's threads (the phases) and the round loop
    (close, finish); its key phases. Clients are known by their index in the round (a random order
    of the sampled). Refusals are the servicer's (services/server/refusals.py)."""

    def __init__(self, aggregator: SecureAggregatorView, state: State) -> None:  # noqa: D107 - no float sums
        self.aggregator: SecureAggregatorView = aggregator  # type: ignore[assignment]  # a SecureAggregator: an Aggregator
        self.state = state
        self.contributions: list[Contribution] = []
        self.closed = False
        self._cv = threading.Condition()
        self.clock = aggregator.clock
        self.timeout = aggregator.settings.phase_timeout_s
        self.opened = self.clock()
        self.params: RoundParams | None = None
        self.round_number = 0
        self.task_id = ""
        self.index: dict[str, int] = {}
        self.keys: dict[int, Keys] = {}
        self.u1: frozenset[int] | None = None
        self.u1_at = 0.0
        self.shares: dict[int, dict[int, bytes]] = {}
        self.u2: frozenset[int] | None = None
        self.committed: set[int] = set()
        self.u3: frozenset[int] | None = None
        self.closed_at = 0.0
        self.asked: dict[int, tuple[frozenset[int], frozenset[int]]] = {}
        self.self_mask_shares: dict[int, dict[int, bytes]] = {}  # owner -> {holder's x: share}
        self.mask_key_shares: dict[int, dict[int, bytes]] = {}
        self.revealed: set[int] = set()
        self.failed: str | None = None
        self.total: np.ndarray | None = tensors.aligned_zeros((aggregator.masked.words,), np.uint32)  # None once finished

    # ---- the round's clients ----------------------------------------------------------------
    def bind(self, round_number: int, task_id: str, sampled: Iterable[str]) -> RoundParams:
        """The round's sampled clients, in a random order (their indices); idempotent."""
        with self._cv:
            if self.params is None:
                order = sorted(sampled)
                secrets.SystemRandom().shuffle(order)
                self.index = {cid: i for i, cid in enumerate(order)}
                self.round_number, self.task_id = round_number, task_id
                self.params = self.aggregator.params(len(order))
                try:
                    self.params.check()
                except ParamsError as exc:  # e.g. fewer clients sampled than the threshold needs
                    self._fail(str(exc))
            return self.params

    def neighbours_of(self, i: int) -> frozenset[int]:
        assert self.params is not None
        return neighbours(i, self.params.clients, self.params.neighbours)

    def hands_task(self, client: str) -> bool:
        """A (re)polling client gets the round's task only while keys are still being advertised
        and it has not advertised: a client that restarted later has lost its keys."""
        with self._cv:
            return self.failed is None and self.u1 is None and self.index.get(client, -1) not in self.keys

    def expects(self, client: str) -> bool:
        """Whether a result may still come from ``client`` (the round loop stops waiting for the others)."""
        with self._cv:
            self._advance()
            i = self.index.get(client, -1)
            if self.failed is not None:
                return False
            if self.u1 is None:
                return True
            if self.u2 is None:
                return i in self.u1
            return i in self.u2

    def _advance(self) -> None:
        """Close the key phases whose time has come (callers hold the lock)."""
        p, now = self.params, self.clock()
        if p is None or self.failed is not None:
            return
        if self.u1 is None and (len(self.keys) == p.clients or now >= self.opened + self.timeout):
            self.u1, self.u1_at = frozenset(self.keys), now
            if len(self.u1) < p.threshold:
                self._fail(f"{len(self.u1)} clients advertised keys, {p.threshold} needed")
            self._cv.notify_all()
        if self.u1 is not None and self.u2 is None and self.failed is None and (
                len(self.shares) == len(self.u1) or now >= self.u1_at + self.timeout):
            self.u2 = frozenset(self.shares)
            if len(self.u2) < p.threshold:
                self._fail(f"{len(self.u2)} clients shared keys, {p.threshold} needed")
            self._cv.notify_all()

    def _fail(self, why: str) -> None:
        self.failed = why
        self._cv.notify_all()

    def _wait(self, ready: Callable[[], bool], deadline: float) -> None:
        """Wait (lock held) until ``ready()`` or the round fails; RoundClosed after ``deadline``."""
        while True:
            self._advance()
            if self.failed is not None:
                raise RoundClosed(f"the secure round was refused: {self.failed}")
            if ready():
                return
            left = deadline - self.clock()
            if left <= 0:
                raise RoundClosed("the secure phase timed out")
            self._cv.wait(min(left, 0.25))

    def _member(self, client: str) -> int:
        i = self.index.get(client)
        if i is None or self.params is None:
            raise Reject("not_sampled", "client is not in this secure round")
        return i

    # ---- phase 1: advertise ---------------------------------------------------------------------
    def advertise(self, client: str, keys: Keys, timeout: float) -> tuple[int, dict[int, Keys]]:
        """Record the client's keys; when the phase ends, its index and its neighbours' keys."""
        if len(keys.cipher) != KEY_BYTES or len(keys.mask) != KEY_BYTES:
            raise Reject("invalid", f"advertised keys must be {KEY_BYTES} bytes each, got "
                                        f"{len(keys.cipher)} and {len(keys.mask)}")
        if keys.cipher == keys.mask:
            raise Reject("invalid", "the cipher and mask keys must differ")
        with self._cv:
            i = self._member(client)
            self._advance()
            if i in self.keys:
                raise Reject("duplicate", "keys already advertised for this round")
            if self.u1 is not None:
                raise Reject("stale", "the key advertisement phase is over")
            self.keys[i] = keys
            self._cv.notify_all()
            self._wait(lambda: self.u1 is not None, self.clock() + timeout)
            assert self.u1 is not None
            return i, {j: self.keys[j] for j in self.neighbours_of(i) & self.u1}

    # ---- phase 2: share -------------------------------------------------------------------------
    def share(self, client: str, shares: Mapping[int, bytes], timeout: float) -> dict[int, bytes]:
        """Record the client's encrypted shares (one for each of its neighbours in U1, exact size);
        when the phase ends, the ciphertexts addressed to it."""
        with self._cv:
            i = self._member(client)
            self._advance()
            if self.u1 is None or i not in self.u1:
                raise Reject("out_of_order", "share keys after advertising them, in the same phase")
            if i in self.shares:
                raise Reject("duplicate", "shares already sent for this round")
            if self.u2 is not None:
                raise Reject("stale", "the key sharing phase is over")
            wanted = self.neighbours_of(i) & self.u1
            if set(shares) != wanted:
                raise Reject("invalid", f"expected one share for each of {len(wanted)} neighbours, "
                                            f"got {len(shares)} for other peers")
            for ct in shares.values():
                if len(ct) != SHARE_CIPHERTEXT_BYTES:
                    raise Reject("invalid", f"a share ciphertext is {SHARE_CIPHERTEXT_BYTES} bytes, got {len(ct)}")
            self.shares[i] = dict(shares)
            self._cv.notify_all()
            self._wait(lambda: self.u2 is not None, self.clock() + timeout)
            assert self.u2 is not None
            return {j: self.shares[j][i] for j in self.neighbours_of(i) & self.u2}

