"""The aggregation seam (services/server/aggregation): results are staged chunk by chunk as they
stream in and count only once committed, whole. Whatever an upload that is refused, cut off or
stale delivered, the round's update is bit for bit what it is without that upload; committed
results come out as numpy's float64 weighted mean whatever the chunking and the interleaving of
concurrent uploads; at most ``upload_slots`` uploads are staged at a time. No TensorFlow here:
the layouts are made by hand (the aggregators are numpy)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from support.aggregation import free_slots

from services.common import tensors
from services.common.chunking import PayloadError
from services.common.tensors import LayoutError
from services.server.aggregation import RoundAggregation, RoundClosed, Slots, Upload
from services.server.aggregation.mean import Mean

SHAPES = [(9, 13), (64,), (1,), (3, 5, 7), (63,), (65,)]  # around and across block boundaries
WAIT = 20.0


def layout_of(shapes: list[tuple[int, ...]], dtypes: list[str] | None = None) -> tensors.Layout:
    """A ClientResult layout (update leaves, then update_weight), as Layout.of(TFF type) makes it."""
    leaves, offset = [], 0
    for i, (shape, dtype) in enumerate(zip(shapes, dtypes or ["<f4"] * len(shapes), strict=True)):
        leaf = tensors.Leaf(f"update.{i}", np.dtype(dtype), shape, offset)
        leaves.append(leaf)
        offset += leaf.nbytes
    leaves.append(tensors.Leaf("update_weight", np.dtype("<f4"), (), offset))
    return tensors.Layout(tuple(leaves), offset + 4, "0123456789abcdef")


LAYOUT = layout_of(SHAPES)


def results(weights: list[float], seed: int = 0, layout: tensors.Layout = LAYOUT) -> list[tuple[list[np.ndarray], float]]:
    rng = np.random.default_rng(seed)
    return [([rng.standard_normal(leaf.shape).astype(leaf.dtype) for leaf in layout.leaves[:-1]], w) for w in weights]


def payload(update: list[np.ndarray], weight: float, layout: tensors.Layout = LAYOUT) -> bytes:
    return bytes(layout.encode([*update, np.float32(weight)]))


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def stream(rnd: RoundAggregation, data: bytes, weight: float, chunk: int = 4096, client: str = "c") -> Upload:
    upload = rnd.receive(client, weight, timeout=WAIT)
    for part in chunks(data, chunk):
        upload.feed(part)
    return upload


def deliver(rnd: RoundAggregation, data: bytes, weight: float, chunk: int = 4096, client: str = "c") -> None:
    """A result streamed in, finished and committed (what the servicer does for an accepted one)."""
    upload = stream(rnd, data, weight, chunk, client)
    upload.finish()
    rnd.commit(upload)


def reference(rs: list[tuple[list[np.ndarray], float]]) -> list[np.ndarray]:
    total = sum(w for _, w in rs)
    return [sum(w * u[i].astype(np.float64) for u, w in rs) / total for i in range(len(rs[0][0]))]


def max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    return max(float(np.max(np.abs(x - y), initial=0.0)) for x, y in zip(a, b, strict=True))


def same_bits(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(x.dtype == y.dtype and x.tobytes() == y.tobytes() for x, y in zip(a, b, strict=True))


def mean_round(slots: int = 2, layout: tensors.Layout = LAYOUT) -> RoundAggregation:
    agg = Mean(layout, Slots(slots))
    return agg.open_round(agg.initial_state())


def update_of(rnd: RoundAggregation) -> list[np.ndarray]:
    return rnd.finish().update


# ---- the weighted mean ------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 3, 7, 100, 4096, 1 << 20])
def test_mean_equals_the_weighted_mean_for_any_chunking(chunk: int) -> None:
    rs = results([3.0, 1.5, 7.0, 0.25, 11.0], seed=chunk)
    rnd = mean_round()
    for i, (update, w) in enumerate(rs):
        deliver(rnd, payload(update, w), w, chunk, client=f"c{i}")
    assert rnd.count == 5
    outcome = rnd.finish()
    assert outcome.measurements["weight_sum"] == 22.75 and outcome.state == {}
    assert all(m.dtype == np.float32 and m.ctypes.data % tensors.ALIGN == 0 for m in outcome.update)
    assert max_diff(outcome.update, reference(rs)) < 1e-5


def test_concurrent_uploads_interleave_chunk_by_chunk() -> None:
    layout = layout_of([(300, 101), (7,)])
    rs = results([float(i + 1) for i in range(8)], seed=1, layout=layout)
    rnd = mean_round(slots=8, layout=layout)
    start = threading.Barrier(len(rs))

    def one(i: int) -> None:
        update, w = rs[i]
        upload = rnd.receive(f"c{i}", w, timeout=WAIT)
        start.wait(WAIT)
        for part in chunks(payload(update, w, layout), 1000 + 37 * i):
            upload.feed(part)
        upload.finish()
        rnd.commit(upload)

    with ThreadPoolExecutor(len(rs)) as pool:
        list(pool.map(one, range(len(rs)), timeout=WAIT))
    assert max_diff(update_of(rnd), reference(rs)) < 1e-5


def test_an_element_split_across_chunks_at_a_leaf_boundary_of_mixed_dtypes() -> None:
    layout = layout_of([(3,), (2,), (5,)], ["<f4", "<f8", "<f2"])
    rs = results([2.0, 3.0], seed=3, layout=layout)
    rnd = mean_round(layout=layout)
    for i, (update, w) in enumerate(rs):
        deliver(rnd, payload(update, w, layout), w, chunk=5, client=f"c{i}")  # 5: every split there is
    ref = reference(rs)
    out = update_of(rnd)
    assert [o.dtype for o in out] == [np.float32, np.float64, np.float16]
    assert max(float(np.max(np.abs(o.astype(np.float64) - r))) for o, r in zip(out, ref, strict=True)) < 1e-2


# ---- commit semantics: what is not committed leaves no trace ----------------------------------------
def with_value(data: bytes, at_element: int, value: float) -> bytes:
    out = bytearray(data)
    out[4 * at_element : 4 * at_element + 4] = np.float32(value).tobytes()
    return bytes(out)


VALID = results([5.0, 2.0], seed=11)


def outcome_without_extra() -> list[np.ndarray]:
    rnd = mean_round()
    for i, (update, w) in enumerate(VALID):
        deliver(rnd, payload(update, w), w, client=f"v{i}")
    return update_of(rnd)


def refused_mid_stream(rnd: RoundAggregation) -> None:
    """NaN in the third of four chunks, after finite numbers in the same chunk: refused there."""
    update, w = results([9.0], seed=12)[0]
    data = with_value(payload(update, w), at_element=2 * 64 + 10, value=float("nan"))
    upload = rnd.receive("x", w, timeout=WAIT)
    parts = chunks(data, 256)
    upload.feed(parts[0])
    upload.feed(parts[1])
    with pytest.raises(LayoutError, match="update.1 holds NaN or Inf"):
        upload.feed(parts[2])
    upload.discard()


def cut_off(rnd: RoundAggregation) -> None:
    """The stream stops after 3 of its chunks (the client died, the stream broke)."""
    update, w = results([9.0], seed=13)[0]
    upload = rnd.receive("x", w, timeout=WAIT)
    for part in chunks(payload(update, w), 256)[:3]:
        upload.feed(part)
    with pytest.raises(PayloadError, match="stream ended after 768 of"):
        upload.finish()
    upload.discard()


def header_weight_differs(rnd: RoundAggregation) -> None:
    """A whole, finite update whose trailing weight (4) is not the header's (9)."""
    update, _ = results([9.0], seed=14)[0]
    upload = stream(rnd, payload(update, 4.0), 9.0, client="x")
    with pytest.raises(LayoutError, match="is not the header's"):
        upload.finish()
    upload.discard()


def weighted_overflow(rnd: RoundAggregation) -> None:
    """Finite numbers that overflow float32 once multiplied by the weight."""
    update, _ = results([1.0], seed=15)[0]
    update[1][3] = np.float32(1e30)
    upload = rnd.receive("x", 1e10, timeout=WAIT)
    with pytest.raises(LayoutError, match="overflows"):  # mean: as the chunk is staged (the weight is known)
        for part in chunks(payload(update, 1e10), 4096):
            upload.feed(part)
        upload.finish()
    upload.discard()


def refused_by_the_coordinator(rnd: RoundAggregation) -> None:
    """A complete, valid result that the coordinator then refuses (stale, duplicate, ...): the
    servicer discards it instead of committing it."""
    update, w = results([9.0], seed=16)[0]
    upload = stream(rnd, payload(update, w), w, client="x")
    upload.finish()
    upload.discard()


def too_long(rnd: RoundAggregation) -> None:
    update, w = results([9.0], seed=17)[0]
    upload = rnd.receive("x", w, timeout=WAIT)
    with pytest.raises(PayloadError, match="more than the announced"):
        for part in chunks(payload(update, w) + b"\0\0\0\0", 300):
            upload.feed(part)
    upload.discard()


REFUSALS: dict[str, Callable[[RoundAggregation], None]] = {
    "NaN in the third chunk": refused_mid_stream,
    "cut off after three chunks": cut_off,
    "payload weight not the header's": header_weight_differs,
    "update x weight overflows": weighted_overflow,
    "complete but refused by the coordinator": refused_by_the_coordinator,
    "stream longer than the layout": too_long,
}


@pytest.mark.parametrize("before", [True, False], ids=["before-the-valid-ones", "between-them"])
@pytest.mark.parametrize("name", list(REFUSALS))
def test_an_upload_that_is_not_committed_leaves_the_update_exactly_as_without_it(name: str, before: bool) -> None:
    """The correctness bug of the streaming fold: a refused or cut-off upload's delivered chunks
    stayed in the round's sum (with its weight counted for the coordinates it reached), so the
    model moved towards it. Now the round's update is bit for bit the one without it."""
    expected = outcome_without_extra()
    rnd = mean_round()
    (u0, w0), (u1, w1) = VALID
    if before:
        REFUSALS[name](rnd)
    deliver(rnd, payload(u0, w0), w0, client="v0")
    if not before:
        REFUSALS[name](rnd)
    deliver(rnd, payload(u1, w1), w1, client="v1")
    assert rnd.count == 2
    assert free_slots(rnd.aggregator.slots) == 2  # every staged upload gave its slot back
    assert same_bits(update_of(rnd), expected)


def test_a_resent_result_after_a_cut_off_counts_once_in_full() -> None:
    """Clients resend a result whose stream broke: the resend is staged afresh and counts once,
    exactly as if the first stream had not broken."""
    expected = outcome_without_extra()
    rnd = mean_round()
    (u0, w0), (u1, w1) = VALID
    first = rnd.receive("v0", w0, timeout=WAIT)
    first.feed(payload(u0, w0)[:1030])  # 257 numbers and half of the next
    first.discard()
    deliver(rnd, payload(u0, w0), w0, chunk=999, client="v0")
    deliver(rnd, payload(u1, w1), w1, client="v1")
    assert same_bits(update_of(rnd), expected)


def test_an_upload_streaming_when_the_round_closes_is_refused_and_leaves_nothing() -> None:
    expected = outcome_without_extra()
    rnd = mean_round(slots=3)
    for i, (update, w) in enumerate(VALID):
        deliver(rnd, payload(update, w), w, client=f"v{i}")
    late_update, late_w = results([3.0], seed=20)[0]
    late = rnd.receive("late", late_w, timeout=WAIT)
    parts = chunks(payload(late_update, late_w), 512)
    late.feed(parts[0])
    finished = stream(rnd, payload(late_update, late_w), late_w, client="finished-late")
    finished.finish()
    rnd.close()
    with pytest.raises(RoundClosed, match="closed while this result was streaming in"):
        late.feed(parts[1])
    with pytest.raises(RoundClosed):  # complete, but the round closed before it was accepted
        rnd.commit(finished)
    late.discard()
    finished.discard()
    with pytest.raises(RoundClosed, match="closed before this result arrived"):
        rnd.receive("after", 1.0, timeout=WAIT)
    assert free_slots(rnd.aggregator.slots) == 3
    assert same_bits(update_of(rnd), expected)


def test_commit_needs_a_finished_upload_and_counts_once() -> None:
    rnd = mean_round()
    (u0, w0), _ = VALID
    upload = stream(rnd, payload(u0, w0), w0)
    with pytest.raises(RuntimeError, match="only a finished upload"):
        rnd.commit(upload)
    upload.finish()
    rnd.commit(upload)
    upload.discard()  # what the servicer's finally does: a no-op now
    with pytest.raises(RuntimeError, match="only a finished upload"):
        rnd.commit(upload)
    assert rnd.count == 1 and free_slots(rnd.aggregator.slots) == 2
    assert max_diff(update_of(rnd), [u.astype(np.float64) for u in u0]) < 1e-6


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan"), float("inf"), 1e39])
def test_header_weights_must_be_finite_and_positive(weight: float) -> None:
    with pytest.raises(LayoutError, match="finite number > 0"):
        mean_round().receive("c", weight, timeout=WAIT)


def test_a_round_with_no_results_has_no_update() -> None:
    with pytest.raises(RuntimeError, match="no results"):
        mean_round().finish()


def test_updates_must_be_floating() -> None:
    with pytest.raises(TypeError, match="floating"):
        Mean(layout_of([(3,)], ["<i4"]), Slots(1))


# ---- upload slots -------------------------------------------------------------------------------
def test_at_most_upload_slots_are_staged_and_a_wait_can_end_at_the_deadline() -> None:
    rnd = mean_round(slots=2)
    (u0, w0), (u1, w1) = VALID
    a = rnd.receive("a", w0, timeout=WAIT)
    b = rnd.receive("b", w1, timeout=WAIT)
    with pytest.raises(RoundClosed, match="waited for an upload slot"):
        rnd.receive("c", 1.0, timeout=0.05)
    got: list[Upload] = []
    waiter = threading.Thread(target=lambda: got.append(rnd.receive("c", 1.0, timeout=WAIT)), daemon=True)
    waiter.start()
    a.discard()  # a slot comes free: the waiting one takes it
    waiter.join(WAIT)
    assert got and free_slots(rnd.aggregator.slots) == 0
    for part in chunks(payload(u1, w1), 1000):
        b.feed(part)
    b.finish()
    rnd.commit(b)  # committing gives the slot back too
    assert free_slots(rnd.aggregator.slots) == 1
    got[0].discard()
    assert free_slots(rnd.aggregator.slots) == 2


def test_a_result_waiting_for_a_slot_when_the_round_closes_gets_none() -> None:
    rnd = mean_round(slots=1)
    holder = rnd.receive("a", 1.0, timeout=WAIT)
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            rnd.receive("b", 1.0, timeout=0.3)
        except RoundClosed as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    rnd.close()
    waiter.join(WAIT)
    holder.discard()
    assert len(outcome) == 1 and free_slots(rnd.aggregator.slots) == 1


# ---- the aggregator's state in a checkpoint -------------------------------------------------------
def test_state_decoding_refuses_what_is_not_the_aggregators_state() -> None:
    from services.server.aggregation.robust import Robust

    agg = Robust(LAYOUT, Slots(1))
    state = agg.initial_state()
    assert agg.decode_state(agg.encode_state(state)) == state
    with pytest.raises(LayoutError, match="2 float32 numbers"):
        agg.decode_state(agg.encode_state(state)[:-1])
    with pytest.raises(LayoutError, match="finite numbers > 0"):
        agg.decode_state(np.array([1.0, np.nan], "<f4").tobytes())
    with pytest.raises(LayoutError, match="finite numbers > 0"):
        agg.decode_state(np.array([1.0, -2.0], "<f4").tobytes())
    assert Mean(LAYOUT, Slots(1)).decode_state(b"") == {}


# ---- work on the round's sum while results stream in (the DP noise) --------------------------------
def test_prepared_work_adds_to_the_sum_between_commits_and_finish_waits_for_it() -> None:
    """Work started with the round (dp draws its noise so) adds to the sum block by block under the
    round's lock while results are committed: nothing is lost either way, and finish waits for it."""
    rnd = mean_round()
    started, release = threading.Event(), threading.Event()

    def add_ones(sums: list[np.ndarray], lock: threading.Lock) -> None:
        started.set()
        assert release.wait(WAIT)
        for part in sums:
            flat = part.reshape(-1)
            for i in range(flat.size):
                with lock:
                    flat[i] += np.float32(1)

    rnd.prepare(add_ones)
    assert started.wait(WAIT)
    (u0, w0), (u1, w1) = VALID
    deliver(rnd, payload(u0, w0), w0, client="v0")
    release.set()
    deliver(rnd, payload(u1, w1), w1, client="v1")
    expected = [(w0 * a.astype(np.float64) + w1 * b + 1) / (w0 + w1) for a, b in zip(u0, u1, strict=True)]
    assert max_diff(update_of(rnd), expected) < 1e-5


def test_prepared_work_that_fails_fails_the_round() -> None:
    rnd = mean_round()

    def broken(sums: list[np.ndarray], lock: threading.Lock) -> None:
        raise OSError("no entropy")

    rnd.prepare(broken)
    (u0, w0), _ = VALID
    deliver(rnd, payload(u0, w0), w0)
    with pytest.raises(OSError, match="no entropy"):
        rnd.finish()


def test_slots_keep_at_most_their_count_of_staging_buffers_and_reuse_them() -> None:
    """Staging buffers are reused within a round (a fresh one page-faults on every upload), never
    more than the slots, and let go when the round finishes."""
    slots = Slots(2)
    first = slots.buffer(LAYOUT.nbytes)
    assert first.nbytes == LAYOUT.nbytes and first.ctypes.data % tensors.ALIGN == 0
    for b in (first, slots.buffer(LAYOUT.nbytes), slots.buffer(LAYOUT.nbytes)):
        slots.keep(b)
    assert len(slots._buffers) == 2
    assert slots.buffer(LAYOUT.nbytes) is first
    rnd = mean_round()
    (u0, w0), _ = VALID
    deliver(rnd, payload(u0, w0), w0)
    reused = rnd.receive("again", w0, timeout=WAIT)  # the committed upload's buffer, its bytes still there
    assert reused.buffer is not None and reused.buffer.tobytes()[:64] != bytes(64)
    with pytest.raises(PayloadError, match="stream ended after 0"):  # none of them counts: nothing was received
        reused.finish()
    reused.discard()
    assert rnd.aggregator.slots._buffers
    rnd.finish()  # the optimizer step follows: no staging buffer is kept through it
    assert rnd.aggregator.slots._buffers == []
