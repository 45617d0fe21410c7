"""One contract, every aggregator (as Flower's linkstate_test.py runs one suite against every
LinkState): :class:`AggregatorContract` states what the round loop, the coordinator and the servicer
rely on of a round's aggregation, and each ``Test*`` class below runs it against one aggregator
through its factory (:meth:`AggregatorContract.aggregator`).

- The refusal matrix: an upload that is refused (every way a stream can be refused) before, between
  or after the valid ones leaves the round bit for bit as it is without it, and gives its upload
  slot back.
- Commit semantics: only a finished upload is committed, once; a resent result counts once; an
  upload streaming in when the round closes is refused and leaves nothing; nothing is taken after.
- Upload slots: at most ``upload_slots`` staged at a time; a wait for one ends at its deadline or
  when the round closes.

``mean``, ``robust`` and ``dp`` take float results; ``dp`` runs with a noise multiplier of 0, as its
noise is drawn into the sum while results are committed (the same sum, not the same bits).
``secure`` takes masked words once a client's keys are shared: its float-result refusals do not
apply, and what must stay bit for bit is the round's masked sum (its update needs the clients'
shares: tests/services/test_secure_aggregation.py). No TensorFlow here."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import pytest
from support.aggregation import chunks, free_slots, layout_of, payload, results, same_bits

from services.common import tensors
from services.common.chunking import PayloadError
from services.common.config import SecureSettings
from services.common.tensors import LayoutError
from services.server.aggregation import Aggregator, RoundAggregation, RoundClosed, Slots, Upload
from services.server.aggregation.dp import DifferentiallyPrivate
from services.server.aggregation.mean import Mean
from services.server.aggregation.robust import Robust
from services.server.aggregation.secure import Keys, SecureAggregator, SecureRound

SHAPES = [(9, 13), (64,), (1,), (3, 5, 7), (63,), (65,)]  # around and across block boundaries
WAIT = 20.0
POSITIONS = ("before-the-valid-ones", "between-them", "after-them")

Refusal = Callable[["AggregatorContract", RoundAggregation], None]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``refusal``: each of the class's refusals (they differ between float and masked results)."""
    if "refusal" in metafunc.fixturenames and metafunc.cls is not None:
        metafunc.parametrize("refusal", list(metafunc.cls.REFUSALS))


class AggregatorContract(ABC):
    """What every aggregator's round does with the uploads it receives (see the module doc)."""

    REFUSALS: ClassVar[dict[str, Refusal]]
    CLIENTS: ClassVar[tuple[str, ...]] = ("v0", "v1", "x")  # two valid results, and one to refuse

    @abstractmethod
    def aggregator(self, slots: Slots) -> Aggregator:
        """The factory: the aggregator under test, with ``slots``."""

    @abstractmethod
    def valid(self) -> list[tuple[str, bytes, float]]:
        """The round's two valid results: (client, wire bytes, header weight)."""

    @abstractmethod
    def observe(self, rnd: RoundAggregation) -> list[np.ndarray]:
        """What the committed results made of the round, as arrays whose bits are compared."""

    def open(self, slots: int = 2) -> RoundAggregation:
        agg = self.aggregator(Slots(slots))
        return agg.open_round(agg.initial_state())

    # ---- helpers ------------------------------------------------------------------------------
    @staticmethod
    def stream(rnd: RoundAggregation, client: str, data: bytes, weight: float, chunk: int = 4096) -> Upload:
        upload = rnd.receive(client, weight, timeout=WAIT)
        for part in chunks(data, chunk):
            upload.feed(part)
        return upload

    def deliver(self, rnd: RoundAggregation, client: str, data: bytes, weight: float, chunk: int = 4096) -> None:
        """A result streamed in, finished and committed (what the servicer does for an accepted one)."""
        upload = self.stream(rnd, client, data, weight, chunk)
        upload.finish()
        rnd.commit(upload)

    def expected(self) -> list[np.ndarray]:
        rnd = self.open()
        for client, data, weight in self.valid():
            self.deliver(rnd, client, data, weight)
        return self.observe(rnd)

    # ---- the refusal matrix -------------------------------------------------------------------
    @pytest.mark.parametrize("position", POSITIONS)
    def test_an_upload_that_is_not_committed_leaves_the_round_exactly_as_without_it(self, refusal: str,
                                                                                    position: str) -> None:
        """The correctness bug of the streaming fold: a refused or cut-off upload's delivered chunks
        stayed in the round's sum, so the model moved towards it. Now the round is bit for bit the
        one without it, and every staged upload gave its slot back."""
        expected = self.expected()
        rnd = self.open()
        (c0, d0, w0), (c1, d1, w1) = self.valid()
        refuse = type(self).REFUSALS[refusal]
        if position == "before-the-valid-ones":
            refuse(self, rnd)
        self.deliver(rnd, c0, d0, w0)
        if position == "between-them":
            refuse(self, rnd)
        self.deliver(rnd, c1, d1, w1)
        if position == "after-them":
            refuse(self, rnd)
        assert rnd.count == 2
        assert free_slots(rnd.aggregator.slots) == 2
        assert same_bits(self.observe(rnd), expected)

    # ---- commit semantics ---------------------------------------------------------------------
    def test_a_resent_result_after_a_cut_off_counts_once_in_full(self) -> None:
        """Clients resend a result whose stream broke: the resend is staged afresh and counts once,
        exactly as if the first stream had not broken."""
        expected = self.expected()
        rnd = self.open()
        (c0, d0, w0), (c1, d1, w1) = self.valid()
        first = rnd.receive(c0, w0, timeout=WAIT)
        first.feed(d0[:1030])  # 257 numbers and half of the next
        first.discard()
        self.deliver(rnd, c0, d0, w0, chunk=999)
        self.deliver(rnd, c1, d1, w1)
        assert same_bits(self.observe(rnd), expected)

    def test_an_upload_streaming_when_the_round_closes_is_refused_and_leaves_nothing(self) -> None:
        rnd = self.open(slots=3)
        (c0, d0, w0), (c1, d1, w1) = self.valid()
        self.deliver(rnd, c0, d0, w0)
        before = [a.copy() for a in self.sums(rnd)]
        late = rnd.receive(c1, w1, timeout=WAIT)
        parts = chunks(d1, 512)
        late.feed(parts[0])
        finished = self.stream(rnd, "x", d1, w1)
        finished.finish()
        rnd.close()
        with pytest.raises(RoundClosed, match="closed while this"):
            late.feed(parts[1])
        with pytest.raises(RoundClosed):  # complete, but the round closed before it was accepted
            rnd.commit(finished)
        late.discard()
        finished.discard()
        # (secure: one masked input is below its threshold, so the close refused the round)
        with pytest.raises(RoundClosed, match="closed before this result arrived|secure round was refused"):
            rnd.receive(c1, w1, timeout=WAIT)
        assert free_slots(rnd.aggregator.slots) == 3
        assert rnd.count == 1 and same_bits(self.sums(rnd), before)

    def test_commit_needs_a_finished_upload_and_counts_once(self) -> None:
        (c0, d0, w0), _ = self.valid()
        alone = self.open()
        self.deliver(alone, c0, d0, w0)
        rnd = self.open()
        upload = self.stream(rnd, c0, d0, w0)
        with pytest.raises(RuntimeError, match="only a finished upload"):
            rnd.commit(upload)
        upload.finish()
        rnd.commit(upload)
        upload.discard()  # what the servicer's finally does: a no-op now
        with pytest.raises(RuntimeError, match="only a finished upload"):
            rnd.commit(upload)
        assert rnd.count == 1 and free_slots(rnd.aggregator.slots) == 2
        assert same_bits(self.observe(rnd), self.observe(alone))

    # ---- upload slots ---------------------------------------------------------------------------
    def test_at_most_upload_slots_are_staged_and_a_wait_can_end_at_the_deadline(self) -> None:
        rnd = self.open(slots=2)
        (c0, _, w0), (c1, d1, w1) = self.valid()
        a = rnd.receive(c0, w0, timeout=WAIT)
        b = rnd.receive(c1, w1, timeout=WAIT)
        with pytest.raises(RoundClosed, match="waited for an upload slot"):
            rnd.receive("x", 1.0, timeout=0.05)
        got: list[Any] = []
        waiter = threading.Thread(target=lambda: got.append(rnd.receive("x", 1.0, timeout=WAIT)), daemon=True)
        waiter.start()
        a.discard()  # a slot comes free: the waiting one takes it
        waiter.join(WAIT)
        assert got and free_slots(rnd.aggregator.slots) == 0
        for part in chunks(d1, 1000):
            b.feed(part)
        b.finish()
        rnd.commit(b)  # committing gives the slot back too
        assert free_slots(rnd.aggregator.slots) == 1
        got[0].discard()
        assert free_slots(rnd.aggregator.slots) == 2

    def test_a_result_waiting_for_a_slot_when_the_round_closes_gets_none(self) -> None:
        rnd = self.open(slots=1)
        holder = rnd.receive("v0", 1.0, timeout=WAIT)
        outcome: list[BaseException] = []

        def wait() -> None:
            try:
                rnd.receive("v1", 1.0, timeout=0.3)
            except RoundClosed as exc:
                outcome.append(exc)

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        rnd.close()
        waiter.join(WAIT)
        holder.discard()
        assert len(outcome) == 1 and free_slots(rnd.aggregator.slots) == 1

    def sums(self, rnd: RoundAggregation) -> list[np.ndarray]:
        """The round's running sum, as it stands (before the round finishes)."""
        assert rnd.sums is not None
        return rnd.sums


# ---- float results: mean, robust, dp ---------------------------------------------------------------
LAYOUT = layout_of(SHAPES)


def _nan_in_the_third_chunk(t: AggregatorContract, rnd: RoundAggregation) -> None:
    """NaN in the third of four chunks, after finite numbers in the same chunk: refused there."""
    update, w = results([9.0], LAYOUT, seed=12)[0]
    data = bytearray(payload(update, w, LAYOUT))
    at = 2 * 64 + 10  # an element of update.1
    data[4 * at : 4 * at + 4] = np.float32(np.nan).tobytes()
    upload = rnd.receive("x", w, timeout=WAIT)
    parts = chunks(bytes(data), 256)
    upload.feed(parts[0])
    upload.feed(parts[1])
    with pytest.raises(LayoutError, match="update.1 holds NaN or Inf"):
        upload.feed(parts[2])
    upload.discard()


def _cut_off(t: AggregatorContract, rnd: RoundAggregation) -> None:
    """The stream stops after 3 of its chunks (the client died, the stream broke)."""
    update, w = results([9.0], LAYOUT, seed=13)[0]
    upload = rnd.receive("x", w, timeout=WAIT)
    for part in chunks(payload(update, w, LAYOUT), 256)[:3]:
        upload.feed(part)
    with pytest.raises(PayloadError, match="stream ended after 768 of"):
        upload.finish()
    upload.discard()


def _weight_not_the_headers(t: AggregatorContract, rnd: RoundAggregation) -> None:
    """A whole, finite update whose trailing weight (4) is not the header's (9)."""
    update, _ = results([9.0], LAYOUT, seed=14)[0]
    upload = t.stream(rnd, "x", payload(update, 4.0, LAYOUT), 9.0)
    with pytest.raises(LayoutError, match="is not the header's"):
        upload.finish()
    upload.discard()


def _refused_by_the_coordinator(t: AggregatorContract, rnd: RoundAggregation) -> None:
    """A complete, valid result that the coordinator then refuses (stale, duplicate, ...): the
    servicer discards it instead of committing it."""
    update, w = results([9.0], LAYOUT, seed=16)[0]
    upload = t.stream(rnd, "x", payload(update, w, LAYOUT), w)
    upload.finish()
    upload.discard()


def _too_long(t: AggregatorContract, rnd: RoundAggregation) -> None:
    update, w = results([9.0], LAYOUT, seed=17)[0]
    upload = rnd.receive("x", w, timeout=WAIT)
    with pytest.raises(PayloadError, match="more than the announced"):
        for part in chunks(payload(update, w, LAYOUT) + b"\0\0\0\0", 300):
            upload.feed(part)
    upload.discard()


def _weighted_overflow(t: AggregatorContract, rnd: RoundAggregation) -> None:
    """``mean``: finite numbers that overflow float32 once multiplied by the weight, refused as the
    chunk is staged (the weight is known from the header). The others clip or zero such an update."""
    update, _ = results([1.0], LAYOUT, seed=15)[0]
    update[1][3] = np.float32(1e30)
    upload = rnd.receive("x", 1e10, timeout=WAIT)
    with pytest.raises(LayoutError, match="overflows"):
        for part in chunks(payload(update, 1e10, LAYOUT), 4096):
            upload.feed(part)
        upload.finish()
    upload.discard()


FLOAT_REFUSALS: dict[str, Refusal] = {
    "NaN in the third chunk": _nan_in_the_third_chunk,
    "cut off after three chunks": _cut_off,
    "payload weight not the header's": _weight_not_the_headers,
    "complete but refused by the coordinator": _refused_by_the_coordinator,
    "stream longer than the layout": _too_long,
}


class FloatResults(AggregatorContract):
    """The contract for aggregators of float results: and what they refuse of a header alone."""

    REFUSALS = FLOAT_REFUSALS

    def valid(self) -> list[tuple[str, bytes, float]]:
        return [(f"v{i}", payload(u, w, LAYOUT), w) for i, (u, w) in enumerate(results([5.0, 2.0], LAYOUT, seed=11))]

    def observe(self, rnd: RoundAggregation) -> list[np.ndarray]:
        """The update, the next state and the measurements, all bit for bit."""
        outcome = rnd.finish()
        state = [np.float32(outcome.state[k]) for k in sorted(outcome.state)]
        measured = [np.float64(outcome.measurements[k]) for k in sorted(outcome.measurements)]
        return [*outcome.update, np.array(state, np.float32), np.array(measured, np.float64)]

    @pytest.mark.parametrize("weight", [0.0, -1.0, float("nan"), float("inf"), 1e39])
    def test_header_weights_must_be_finite_and_positive(self, weight: float) -> None:
        with pytest.raises(LayoutError, match="finite number > 0"):
            self.open().receive("c", weight, timeout=WAIT)

    def test_a_round_with_no_results_has_no_update(self) -> None:
        with pytest.raises(RuntimeError, match="no results"):
            self.open().finish()

    def test_updates_must_be_floating(self) -> None:
        with pytest.raises(TypeError, match="floating"):
            self.aggregator_for_layout(layout_of([(3,)], ["<i4"]))

    def aggregator_for_layout(self, layout: tensors.Layout) -> Aggregator:
        return type(self.aggregator(Slots(1)))(layout, Slots(1))  # type: ignore[call-arg]


class TestMean(FloatResults):
    REFUSALS = {**FLOAT_REFUSALS, "update x weight overflows": _weighted_overflow}

    def aggregator(self, slots: Slots) -> Aggregator:
        return Mean(LAYOUT, slots)


class TestRobust(FloatResults):
    def aggregator(self, slots: Slots) -> Aggregator:
        return Robust(LAYOUT, slots)


class TestDpAdaptiveClip(FloatResults):
    def aggregator(self, slots: Slots) -> Aggregator:
        return DifferentiallyPrivate(LAYOUT, slots, noise_multiplier=0.0, clients_per_round=3)

    def aggregator_for_layout(self, layout: tensors.Layout) -> Aggregator:
        return DifferentiallyPrivate(layout, Slots(1), noise_multiplier=0.0, clients_per_round=3)


class TestDpFixedClip(TestDpAdaptiveClip):
    def aggregator(self, slots: Slots) -> Aggregator:
        return DifferentiallyPrivate(LAYOUT, slots, noise_multiplier=0.0, clients_per_round=3, clip=0.5)


# ---- masked results: secure ------------------------------------------------------------------------
SECURE_LAYOUT = layout_of([(300,), (7,)])
BITS = 20


def _masked(seed: int) -> bytes:
    words = np.random.default_rng(seed).integers(0, 1 << BITS, SECURE_AGGREGATOR_WORDS, dtype=np.uint32)
    return words.astype("<u4").tobytes()


def _masked_cut_off(t: AggregatorContract, rnd: RoundAggregation) -> None:
    upload = rnd.receive("x", 1.0, timeout=WAIT)
    for part in chunks(_masked(21), 256)[:3]:
        upload.feed(part)
    with pytest.raises(PayloadError, match="stream ended after 768 of"):
        upload.finish()
    upload.discard()


def _masked_too_long(t: AggregatorContract, rnd: RoundAggregation) -> None:
    upload = rnd.receive("x", 1.0, timeout=WAIT)
    with pytest.raises(PayloadError, match="more than the announced"):
        for part in chunks(_masked(22) + b"\0\0\0\0", 300):
            upload.feed(part)
    upload.discard()


def _masked_word_past_the_bits(t: AggregatorContract, rnd: RoundAggregation) -> None:
    """A word >= 2^bits cannot be a masked input of this round: refused when the stream ends."""
    data = bytearray(_masked(23))
    data[40:44] = np.uint32(1 << BITS).astype("<u4").tobytes()
    upload = t.stream(rnd, "x", bytes(data), 1.0)
    with pytest.raises(LayoutError, match=f"must be < 2\\^{BITS}"):
        upload.finish()
    upload.discard()


def _masked_refused_by_the_coordinator(t: AggregatorContract, rnd: RoundAggregation) -> None:
    upload = t.stream(rnd, "x", _masked(24), 1.0)
    upload.finish()
    upload.discard()


SECURE_AGGREGATOR_WORDS = SecureAggregator(SECURE_LAYOUT, Slots(1), SecureSettings()).masked.words


class TestSecure(AggregatorContract):
    """Masked inputs, in a round whose key phases are over (every client advertised and shared)."""

    REFUSALS = {
        "cut off after three chunks": _masked_cut_off,
        "stream longer than the layout": _masked_too_long,
        "a word past the round's bits": _masked_word_past_the_bits,
        "complete but refused by the coordinator": _masked_refused_by_the_coordinator,
    }

    def aggregator(self, slots: Slots) -> Aggregator:
        return SecureAggregator(SECURE_LAYOUT, slots, SecureSettings(bits=BITS, phase_timeout_s=5.0))

    def open(self, slots: int = 2) -> RoundAggregation:
        rnd = super().open(slots)
        assert isinstance(rnd, SecureRound)
        rnd.bind(1, "t", self.CLIENTS)
        rnd.keys = {i: Keys(bytes([2 * i + 1]) * 32, bytes([2 * i + 2]) * 32) for i in range(len(self.CLIENTS))}
        rnd.shares = {i: {} for i in range(len(self.CLIENTS))}
        assert rnd.expects("v0") and rnd.u2 is not None and len(rnd.u2) == len(self.CLIENTS)
        return rnd

    def valid(self) -> list[tuple[str, bytes, float]]:
        return [("v0", _masked(1), 1.0), ("v1", _masked(2), 1.0)]

    def sums(self, rnd: RoundAggregation) -> list[np.ndarray]:
        assert isinstance(rnd, SecureRound) and rnd.total is not None
        return [rnd.total]

    def observe(self, rnd: RoundAggregation) -> list[np.ndarray]:
        """The round's masked sum mod 2^32 (unmasking it needs the clients' shares)."""
        rnd.close()
        return [a.copy() for a in self.sums(rnd)]
