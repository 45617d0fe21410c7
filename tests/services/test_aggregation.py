"""The aggregation seam (services/server/aggregation): results are staged chunk by chunk as they
stream in and count only once committed, whole; committed results come out as numpy's float64
weighted mean whatever the chunking and the interleaving of concurrent uploads. What every
aggregator promises of refused uploads, commits and upload slots is the contract suite's
(tests/services/test_aggregator_contract.py). No TensorFlow here: the layouts are made by hand (the
aggregators are numpy)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from support.aggregation import chunks, layout_of
from support.aggregation import payload as support_payload
from support.aggregation import results as support_results

from services.common import tensors
from services.common.chunking import PayloadError
from services.common.tensors import LayoutError
from services.server.aggregation import RoundAggregation, Slots, Upload
from services.server.aggregation.mean import Mean

SHAPES = [(9, 13), (64,), (1,), (3, 5, 7), (63,), (65,)]  # around and across block boundaries
WAIT = 20.0
LAYOUT = layout_of(SHAPES)


def results(weights: list[float], seed: int = 0, layout: tensors.Layout = LAYOUT) -> list[tuple[list[np.ndarray], float]]:
    return support_results(weights, layout, seed)


def payload(update: list[np.ndarray], weight: float, layout: tensors.Layout = LAYOUT) -> bytes:
    return support_payload(update, weight, layout)


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


def mean_round(slots: int = 2, layout: tensors.Layout = LAYOUT) -> RoundAggregation:
    agg = Mean(layout, Slots(slots))
    return agg.open_round(agg.initial_state())


def update_of(rnd: RoundAggregation) -> list[np.ndarray]:
    return rnd.finish().update


VALID = results([5.0, 2.0], seed=11)


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
