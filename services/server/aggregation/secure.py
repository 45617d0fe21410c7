"""``secure``: pairwise-masked secure aggregation (Bonawitz et al., CCS 2017, on the SecAgg+ graph
of Bell et al., CCS 2020): the server learns the sum of the round's quantized updates and nothing
else of any one of them. The phases of a round (docs/secure-aggregation.md):

1. advertise: each sampled client sends two fresh X25519 public keys; the phase ends when all
   did or ``phase_timeout_s`` after the round opened (U1: who advertised; < t: the round is refused);
2. share: each client sends its neighbours in U1 its Shamir shares of its self-mask seed and its
   mask private key, encrypted to them; the server relays them unread (U2: who shared);
3. masked input: each client in U2 streams its quantized update plus its self mask plus its
   pairwise masks with its neighbours in U2 through SubmitResult; an accepted one is added to the
   running sum mod 2^32 (committed, as every aggregator's results), anything else counts for
   nothing. The round's close fixes U3 (who committed);
4. unmask: each client in U3 reveals the self-mask share of its surviving neighbours and the
   mask-key share of its dropped ones (never both for one peer); with t shares of each, the server
   removes the survivors' self masks and the dropped clients' pairwise masks from the sum, block
   by block, and dequantizes it into the weighted mean update.

Below t survivors anywhere a secret is needed, the round is refused before anything is revealed
(the round runner retries it). The server holds the running sum (one word per coordinate) plus at
most ``server.upload_slots`` staged inputs, as ``mean``."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from services.common import tensors
from services.common.chunking import PayloadError
from services.common.config import SecureSettings
from services.common.secagg import shamir
from services.common.secagg.crypto import KEY_BYTES, CryptoError, KeyPair, ciphertext_bytes, round_context
from services.common.secagg.graph import neighbours
from services.common.secagg.layout import MaskedLayout
from services.common.secagg.masking import pair_seed, pair_sign
from services.common.secagg.params import ParamsError, RoundParams, default_threshold
from services.common.secagg.quantize import dequantize
from services.common.tensors import LayoutError
from services.server.aggregation.interface import Aggregator, Outcome, RoundAggregation, State
from services.server.aggregation.staging import Contribution, Norms, RoundClosed, RoundRefused, Slots, stage

SHARE_PLAINTEXT_BYTES = 2 * shamir.SHARE_BYTES  # the self-mask seed's share, then the mask key's
SHARE_CIPHERTEXT_BYTES = ciphertext_bytes(SHARE_PLAINTEXT_BYTES)


class PhaseError(Exception):
    """A secure-phase request refused; ``reason`` is the servicer's (invalid, duplicate, stale,
    out_of_order, not_sampled)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Keys:
    cipher: bytes
    mask: bytes


class SecureAggregator(Aggregator):
    name = "secure"
    weights_in_clear = False

    def __init__(self, layout: tensors.Layout, slots: Slots, settings: SecureSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(layout, slots)
        self.settings = settings
        self.masked = MaskedLayout(layout)
        self.clock = clock

    def params(self, n: int) -> RoundParams:
        s = self.settings
        return RoundParams(n, s.threshold or default_threshold(n, s.neighbours), s.neighbours, s.bits, s.clip,
                           s.max_weight)

    def open_round(self, state: State) -> SecureRound:
        return SecureRound(self, state)

    def initial_state(self) -> State:
        return {}

    def admit(self, state: State, norms: Norms) -> Contribution:  # pragma: no cover - not a float upload
        raise NotImplementedError("secure rounds stage masked words, not float results")

    def finish(self, state: State, total: list[np.ndarray], contributions: list[Contribution]) -> Outcome:  # pragma: no cover
        raise NotImplementedError("a secure round finishes itself")


class MaskedUpload:
    """One client's masked input as it streams in (the servicer's Upload protocol): staged in an
    upload slot's buffer, added to the sum only when committed."""

    def __init__(self, secure_round: SecureRound, index: int) -> None:
        self.round = secure_round
        self.index = index
        self.layout = secure_round.aggregator.masked
        self._slots = secure_round.aggregator.slots
        self.buffer: np.ndarray | None = self._slots.buffer(self.layout.nbytes)
        self.received = 0
        self.state = "streaming"

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self.state != "streaming":
            raise RuntimeError(f"feed() on a {self.state} upload")
        if self.round.closed:
            raise RoundClosed("the round closed while this masked input was streaming in")
        assert self.buffer is not None
        self.received = stage(self.buffer, self.received, data)

    def finish(self) -> None:
        if self.received != self.layout.nbytes:
            raise PayloadError(f"stream ended after {self.received} of {self.layout.nbytes} announced bytes")
        bits = self.round.params.bits if self.round.params else 32
        if bits < 32 and int(self.words().max()) >> bits:
            raise LayoutError(f"a masked input's words must be < 2^{bits}")
        self.state = "finished"

    def words(self) -> np.ndarray:
        assert self.buffer is not None
        return self.buffer.view("<u4")

    def release(self, state: str) -> None:
        if self.state in ("committed", "discarded"):
            return
        self.state = state
        buffer, self.buffer = self.buffer, None
        if buffer is not None:
            self._slots.keep(buffer)
        self._slots.release()

    def discard(self) -> None:
        self.release("discarded")


class SecureRound(RoundAggregation):
    """One secure round's state, driven by the servicer's threads (the phases) and the round loop
    (close, finish). Clients are known by their index in the round (a random order of the sampled)."""

    def __init__(self, aggregator: SecureAggregator, state: State) -> None:  # noqa: D107 - no float sums
        self.aggregator: SecureAggregator = aggregator
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
        self.total = tensors.aligned_zeros((aggregator.masked.words,), np.uint32)

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
            raise PhaseError("not_sampled", "client is not in this secure round")
        return i

    # ---- phase 1: advertise ---------------------------------------------------------------------
    def advertise(self, client: str, keys: Keys, timeout: float) -> tuple[int, dict[int, Keys]]:
        """Record the client's keys; when the phase ends, its index and its neighbours' keys."""
        if len(keys.cipher) != KEY_BYTES or len(keys.mask) != KEY_BYTES:
            raise PhaseError("invalid", f"advertised keys must be {KEY_BYTES} bytes each, got "
                                        f"{len(keys.cipher)} and {len(keys.mask)}")
        if keys.cipher == keys.mask:
            raise PhaseError("invalid", "the cipher and mask keys must differ")
        with self._cv:
            i = self._member(client)
            self._advance()
            if i in self.keys:
                raise PhaseError("duplicate", "keys already advertised for this round")
            if self.u1 is not None:
                raise PhaseError("stale", "the key advertisement phase is over")
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
                raise PhaseError("out_of_order", "share keys after advertising them, in the same phase")
            if i in self.shares:
                raise PhaseError("duplicate", "shares already sent for this round")
            if self.u2 is not None:
                raise PhaseError("stale", "the key sharing phase is over")
            wanted = self.neighbours_of(i) & self.u1
            if set(shares) != wanted:
                raise PhaseError("invalid", f"expected one share for each of {len(wanted)} neighbours, "
                                            f"got {len(shares)} for other peers")
            for ct in shares.values():
                if len(ct) != SHARE_CIPHERTEXT_BYTES:
                    raise PhaseError("invalid", f"a share ciphertext is {SHARE_CIPHERTEXT_BYTES} bytes, got {len(ct)}")
            self.shares[i] = dict(shares)
            self._cv.notify_all()
            self._wait(lambda: self.u2 is not None, self.clock() + timeout)
            assert self.u2 is not None
            return {j: self.shares[j][i] for j in self.neighbours_of(i) & self.u2}

    # ---- phase 3: masked input (the servicer's SubmitResult) ------------------------------------
    @property
    def result_layout(self) -> MaskedLayout:  # type: ignore[override]
        return self.aggregator.masked

    def receive(self, client: str, weight: float, timeout: float) -> MaskedUpload:  # type: ignore[override]
        with self._cv:
            i = self.index.get(client)
            self._advance()
            if self.failed is not None:
                raise RoundClosed(f"the secure round was refused: {self.failed}")
            if self.closed:
                raise RoundClosed("the round closed before this result arrived")
            if i is None or self.u2 is None or i not in self.u2:
                raise RoundClosed("a masked input is only taken from a client whose keys were shared")
        if not self.aggregator.slots.acquire(timeout):
            raise RoundClosed("the round closed while the result waited for an upload slot")
        return MaskedUpload(self, i)

    def commit(self, upload: MaskedUpload) -> None:  # type: ignore[override]
        if upload.state != "finished":
            raise RuntimeError(f"only a finished upload can be committed, this one is {upload.state}")
        with self._cv:
            if self.closed or self.failed is not None:
                raise RoundClosed("the round closed while this result was streaming in")
            np.add(self.total, upload.words(), out=self.total)
            self.committed.add(upload.index)
            self.contributions.append(Contribution(1.0))
        upload.release("committed")

    def close(self) -> None:
        with self._cv:
            if self.closed:
                return
            self.closed = True
            self.u3, self.closed_at = frozenset(self.committed), self.clock()
            if self.params is not None and self.failed is None:
                why = self._infeasible()
                if why:
                    self._fail(why)
            self._cv.notify_all()

    def _infeasible(self) -> str | None:
        """Why the survivors cannot rebuild every secret the sum needs (before anything is revealed)."""
        assert self.params is not None and self.u3 is not None
        t, u3 = self.params.threshold, self.u3
        if len(u3) < t:
            return f"{len(u3)} masked inputs, {t} needed"
        for u in u3:
            if len((self.neighbours_of(u) | {u}) & u3) < t:
                return f"client {u}'s self mask has fewer than {t} surviving holders"
        for u in self._dropped():
            if self.neighbours_of(u) & u3 and len(self.neighbours_of(u) & u3) < t:
                return f"dropped client {u}'s mask key has fewer than {t} surviving holders"
        return None

    def _dropped(self) -> frozenset[int]:
        assert self.u2 is not None and self.u3 is not None
        return self.u2 - self.u3

    # ---- phase 4: unmask --------------------------------------------------------------------------
    def unmask(self, client: str, timeout: float) -> tuple[frozenset[int], frozenset[int]]:
        """Once the round closed: which self-mask shares (survivors) and mask-key shares (dropped)
        this client is to reveal."""
        with self._cv:
            i = self._member(client)
            if i not in self.committed:
                raise PhaseError("out_of_order", "unmasking follows an accepted masked input")
            self._wait(lambda: self.closed, self.clock() + timeout)
            assert self.u3 is not None
            ask = ((self.neighbours_of(i) | {i}) & self.u3, self.neighbours_of(i) & self._dropped())
            self.asked[i] = ask
            return ask

    def reveal(self, client: str, self_mask: Mapping[int, bytes], mask_key: Mapping[int, bytes]) -> None:
        with self._cv:
            i = self._member(client)
            if i not in self.asked:
                raise PhaseError("out_of_order", "reveal shares after asking which")
            if i in self.revealed:
                raise PhaseError("duplicate", "shares already revealed for this round")
            if self.failed is not None:
                raise PhaseError("stale", f"the secure round was refused: {self.failed}")
            survivors, dropped = self.asked[i]
            if set(self_mask) != survivors or set(mask_key) != dropped:
                raise PhaseError("invalid", "reveal exactly the shares asked for")
            try:
                for share in (*self_mask.values(), *mask_key.values()):
                    shamir.share_value(share)
            except shamir.ShareError as exc:
                raise PhaseError("invalid", str(exc)) from None
            for owner, share in self_mask.items():
                self.self_mask_shares.setdefault(owner, {})[i + 1] = share
            for owner, share in mask_key.items():
                self.mask_key_shares.setdefault(owner, {})[i + 1] = share
            self.revealed.add(i)
            self._cv.notify_all()

    def _have_enough(self) -> bool:
        assert self.params is not None and self.u3 is not None
        t = self.params.threshold
        if self.revealed >= self.u3:
            return True
        return all(len(self.self_mask_shares.get(u, {})) >= t for u in self.u3) and all(
            len(self.mask_key_shares.get(u, {})) >= t for u in self._dropped() if self.neighbours_of(u) & self.u3)

    # ---- the end --------------------------------------------------------------------------------
    def finish(self) -> Outcome:
        """Wait for the survivors' shares (up to ``phase_timeout_s``), remove the masks, dequantize."""
        self.close()
        with self._cv:
            if self.params is None or self.u3 is None or not self.u3:
                raise RoundRefused("no masked input")
            try:
                self._wait(self._have_enough, self.closed_at + self.timeout)
            except RoundClosed as exc:
                raise RoundRefused(str(exc)) from None
            p, u3, dropped = self.params, self.u3, self._dropped()
            self.closed = True
            masks = self._unmasking(p, u3, dropped)
            total, self.total = self.total, None
        self.aggregator.slots.drop_buffers()
        assert total is not None
        try:  # unmasked and dequantized in one pass over the sum
            update, weight_sum = dequantize(total, self.aggregator.masked.shapes, p, masks)
        except ValueError as exc:
            raise RoundRefused(str(exc)) from None
        return Outcome(update, {}, {"weight_sum": float(weight_sum), "secure_inputs": float(len(u3)),
                                    "secure_dropped": float(len(dropped)), "secure_scale": p.scale})

    def _unmasking(self, p: RoundParams, u3: frozenset[int], dropped: frozenset[int]) -> list[tuple[bytes, int]]:
        """The masks to add to the sum: minus each survivor's self mask, and for each dropped client
        the negation of the pairwise masks its surviving neighbours added with it."""
        masks: list[tuple[bytes, int]] = []
        try:
            for u in sorted(u3):
                masks.append((shamir.combine(self.self_mask_shares[u], p.threshold), -1))
            context = round_context(self.round_number, self.task_id)
            for u in sorted(dropped):
                survivors = self.neighbours_of(u) & u3
                if not survivors:
                    continue
                key = KeyPair.from_private_bytes(shamir.combine(self.mask_key_shares[u], p.threshold))
                if key.public != self.keys[u].mask:
                    raise RoundRefused(f"dropped client {u}'s mask key shares do not match its advertised key")
                for v in sorted(survivors):
                    masks.append((pair_seed(key, self.keys[v].mask, context), -pair_sign(v, u)))
        except (shamir.ShareError, CryptoError, KeyError) as exc:
            raise RoundRefused(f"cannot rebuild the masks: {exc}") from None
        return masks

