"""The mean aggregator's streaming fold (services/server/fold.py): results are added chunk by chunk
as they stream in, and must come out as the weighted mean numpy computes in float64, whatever
the chunking, the interleaving of concurrent uploads, or where an upload stops; every chunk is
checked before it is added."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import tensorflow_federated as tff

from services.common import tensors
from services.common.chunking import PayloadError
from services.common.tensors import LayoutError
from services.server import fold as fold_module
from services.server.fold import RoundClosed, StreamingMean

SHAPES = [(9, 13), (64,), (1,), (3, 5, 7), (63,), (65,)]  # around and across block boundaries


def layout_of(shapes: list[tuple[int, ...]], dtype: type = np.float32) -> tensors.Layout:
    update = tff.StructType([tff.TensorType(dtype, s) for s in shapes])
    return tensors.Layout.of(tff.StructType([("update", update), ("update_weight", tff.TensorType(np.float32))]))


def results(shapes: list[tuple[int, ...]], weights: list[float], seed: int = 0) -> list[tuple[list[np.ndarray], float]]:
    rng = np.random.default_rng(seed)
    return [([rng.standard_normal(s).astype(np.float32) for s in shapes], w) for w in weights]


def payload(layout: tensors.Layout, update: list[np.ndarray], weight: float) -> bytes:
    return bytes(layout.encode([*update, np.float32(weight)]))


def stream(fold: StreamingMean, data: bytes, weight: float, chunk: int, client: str = "c") -> fold_module.Upload:
    upload = fold.begin(client, weight)
    for start in range(0, len(data), chunk):
        upload.feed(data[start : start + chunk])
    return upload


def reference(rs: list[tuple[list[np.ndarray], float]]) -> list[np.ndarray]:
    total = sum(w for _, w in rs)
    return [sum(w * u[i].astype(np.float64) for u, w in rs) / total for i in range(len(rs[0][0]))]


def max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    return max(float(np.max(np.abs(x - y), initial=0.0)) for x, y in zip(a, b, strict=True))


def complete(fold: StreamingMean, layout: tensors.Layout, rs: list[tuple[list[np.ndarray], float]],
             chunk: int) -> None:
    for i, (update, w) in enumerate(rs):
        upload = stream(fold, payload(layout, update, w), w, chunk, client=f"c{i}")
        upload.finish()
        upload.commit()


@pytest.mark.parametrize("chunk", [1, 3, 7, 100, 4096, 1 << 20])
def test_equals_the_weighted_mean_for_any_chunking(chunk: int) -> None:
    layout, rs = layout_of(SHAPES), results(SHAPES, [3.0, 1.5, 7.0, 0.25, 11.0], seed=chunk)
    fold = StreamingMean(layout)
    complete(fold, layout, rs, chunk)
    assert fold.count == 5 and fold.weight == np.float32(22.75)
    mean = fold.mean()
    assert all(m.dtype == np.float32 and m.ctypes.data % tensors.ALIGN == 0 for m in mean)
    assert max_diff(mean, reference(rs)) < 1e-5


def test_concurrent_uploads_interleave_chunk_by_chunk() -> None:
    layout = layout_of([(300, 101), (7,)])
    rs = results([(300, 101), (7,)], [float(i + 1) for i in range(8)], seed=1)
    fold = StreamingMean(layout)
    start = threading.Barrier(len(rs))
    errors: list[BaseException] = []

    def one(update: list[np.ndarray], w: float) -> None:
        try:
            start.wait()
            upload = stream(fold, payload(layout, update, w), w, 997, client=str(w))
            upload.finish()
            upload.commit()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=r) for r in rs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and fold.count == len(rs)
    assert max_diff(fold.mean(), reference(rs)) < 1e-5


def per_coordinate_reference(layout: tensors.Layout, full: list[tuple[list[np.ndarray], float]],
                             cut: list[tuple[list[np.ndarray], float, int]]) -> list[np.ndarray]:
    """Each coordinate: the weighted mean over the results that delivered it (``cut``: update,
    weight, elements delivered, flattened over the leaves)."""
    out, start = [], 0
    for i, leaf in enumerate(layout.leaves[:-1]):
        size = int(np.prod(leaf.shape))
        num, den = np.zeros(size), np.zeros(size)
        for update, w in full:
            num += w * update[i].reshape(-1).astype(np.float64)
            den += w
        for update, w, delivered in cut:
            reached = np.arange(start, start + size) < delivered
            num += np.where(reached, w * update[i].reshape(-1).astype(np.float64), 0.0)
            den += np.where(reached, w, 0.0)
        out.append(np.divide(num, den, out=np.zeros(size), where=den > 0).reshape(leaf.shape))
        start += size
    return out


@pytest.mark.parametrize("stop_after_bytes", [0, 3, 4, 41, 9 * 13 * 4, 9 * 13 * 4 + 64 * 4 + 2])
def test_an_upload_cut_off_counts_for_what_it_delivered(stop_after_bytes: int) -> None:
    layout = layout_of(SHAPES)
    full, (cut_update, cut_w) = results(SHAPES, [2.0, 5.0], seed=3), results(SHAPES, [9.0], seed=4)[0]
    fold = StreamingMean(layout)
    complete(fold, layout, full, 100)
    data = payload(layout, cut_update, cut_w)
    upload = fold.begin("cut", cut_w)
    upload.feed(data[:stop_after_bytes])
    upload.abort()
    upload.abort()  # idempotent
    assert fold.count == 2 and fold.weight == np.float32(7.0)
    delivered = stop_after_bytes // 4
    expected = per_coordinate_reference(layout, full, [(cut_update, cut_w, delivered)])
    assert max_diff(fold.mean(), expected) < 1e-5


def test_closing_the_round_stops_uploads_mid_stream() -> None:
    layout = layout_of(SHAPES)
    (update, w), (late, late_w) = results(SHAPES, [4.0, 6.0], seed=5)
    fold = StreamingMean(layout)
    streaming = fold.begin("slow", w)
    data = payload(layout, update, w)
    streaming.feed(data[:400])  # 100 elements
    complete(fold, layout, [(late, late_w)], 512)
    fold.close()
    with pytest.raises(RoundClosed):
        streaming.feed(data[400:800])
    with pytest.raises(RoundClosed):
        streaming.commit()
    with pytest.raises(RoundClosed):
        fold.begin("late", 1.0)
    expected = per_coordinate_reference(layout, [(late, late_w)], [(update, w, 100)])
    assert max_diff(fold.mean(), expected) < 1e-5


def test_only_complete_results_count_in_the_total_weight_and_count() -> None:
    layout = layout_of([(10,)])
    fold = StreamingMean(layout)
    (u, w), = results([(10,)], [3.0])
    upload = stream(fold, payload(layout, u, w)[:20], w, 7)  # 5 elements
    upload.abort()
    assert fold.count == 0 and fold.weight == 0
    mean = fold.mean()[0]
    np.testing.assert_allclose(mean[:5], u[0][:5], rtol=1e-6)
    assert not mean[5:].any()  # reached by no one: zero, as TFF's mean of a zero total weight


def test_a_chunk_with_nan_is_refused_before_it_is_added() -> None:
    layout = layout_of(SHAPES)
    (update, w), = results(SHAPES, [2.0], seed=6)
    update[1][10] = np.nan  # element 117 + 10 of the flattened update
    fold = StreamingMean(layout)
    upload = fold.begin("nan", w)
    data = payload(layout, update, w)
    upload.feed(data[:400])  # 100 elements, all finite
    with pytest.raises(LayoutError, match=r"update\.1 holds NaN or Inf"):
        upload.feed(data[400:])
    upload.abort()
    mean = fold.mean()
    assert all(np.isfinite(m).all() for m in mean)
    assert max_diff(mean, per_coordinate_reference(layout, [], [(update, w, 100)])) < 1e-6


def test_the_stream_must_be_exactly_the_layout_with_the_headers_weight() -> None:
    layout = layout_of([(6,)])
    (u, w), = results([(6,)], [5.0])
    data = payload(layout, u, w)
    fold = StreamingMean(layout)
    with pytest.raises(PayloadError, match="more than the announced"):
        stream(fold, data + b"\0", w, 4096)
    short = stream(fold, data[:-1], w, 3, client="short")
    with pytest.raises(PayloadError, match="ended after 27 of 28"):
        short.finish()
    other = stream(fold, data, 4.0, 5, client="other")  # the header said 4, the payload says 5
    with pytest.raises(LayoutError, match="update_weight"):
        other.finish()


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan"), float("inf"), 1e39])
def test_weights_must_be_finite_and_positive(weight: float) -> None:
    with pytest.raises(LayoutError, match="update_weight"):
        StreamingMean(layout_of([(2,)])).begin("c", weight)


def test_commit_counts_once_and_abort_after_commit_changes_nothing() -> None:
    layout = layout_of([(4,)])
    (u, w), = results([(4,)], [2.0])
    fold = StreamingMean(layout)
    upload = stream(fold, payload(layout, u, w), w, 8)
    upload.finish()
    upload.commit()
    upload.abort()
    with pytest.raises(RoundClosed):
        upload.commit()
    assert fold.count == 1 and fold.weight == np.float32(2.0) and fold.partial == {}
    np.testing.assert_allclose(fold.mean()[0], u[0], rtol=1e-6)


def test_updates_must_be_floating() -> None:
    with pytest.raises(TypeError, match="floating"):
        StreamingMean(layout_of([(3,)], np.int32))


@pytest.mark.parametrize("first_try_bytes", [0, 5, 400, 9 * 13 * 4 + 64 * 4 + 1])
def test_a_retry_resumes_where_the_cut_off_attempt_stopped(first_try_bytes: int) -> None:
    """Clients resend a result whose stream broke: the retry must not add the delivered part
    twice, and once it completes the client counts exactly once, in full."""
    layout = layout_of(SHAPES)
    rs = results(SHAPES, [2.0, 5.0], seed=8)
    (update, w), other = rs[0], rs[1:]
    fold = StreamingMean(layout)
    complete(fold, layout, other, 333)
    data = payload(layout, update, w)
    first = stream(fold, data[:first_try_bytes], w, 64, client="retrying")
    first.abort()
    retry = stream(fold, data, w, 1000, client="retrying")
    retry.finish()
    retry.commit()
    assert fold.count == 2 and fold.weight == np.float32(7.0) and fold.partial == {}
    assert max_diff(fold.mean(), reference([*other, (update, w)])) < 1e-5


def test_a_retry_that_is_cut_off_again_counts_for_the_furthest_point() -> None:
    layout = layout_of(SHAPES)
    (update, w), = results(SHAPES, [3.0], seed=9)
    fold = StreamingMean(layout)
    data = payload(layout, update, w)
    stream(fold, data[:800], w, 100, client="flaky").abort()  # 200 elements
    stream(fold, data[:400], w, 100, client="flaky").abort()  # 100: nothing new
    assert fold.partial == {"flaky": (200, np.float32(3.0))}
    stream(fold, data[:1200], w, 100, client="flaky").abort()  # 300
    assert fold.partial == {"flaky": (300, np.float32(3.0))}
    assert max_diff(fold.mean(), per_coordinate_reference(layout, [], [(update, w, 300)])) < 1e-6


def test_a_retry_must_keep_its_weight() -> None:
    layout = layout_of([(8,)])
    (u, w), = results([(8,)], [2.0])
    fold = StreamingMean(layout)
    stream(fold, payload(layout, u, w)[:12], w, 4, client="c").abort()
    with pytest.raises(LayoutError, match="earlier attempt"):
        fold.begin("c", 3.0)


def test_an_element_split_across_chunks_at_a_leaf_boundary_of_mixed_dtypes() -> None:
    """A float64 update followed by the float32 weight: a chunk boundary inside the weight (or
    inside a float64) must still be read as the right leaf."""
    layout = layout_of([(3,)], np.float64)
    update = [np.array([0.5, -1.25, 2.0])]
    data = bytes(layout.encode([*update, np.float32(4.0)]))
    assert len(data) == 28
    for cut in (1, 5, 22, 24, 26, 27):
        fold = StreamingMean(layout)
        upload = fold.begin("c", 4.0)
        upload.feed(data[:cut])
        upload.feed(data[cut:])
        upload.finish()
        upload.commit()
        mean = fold.mean()[0]
        assert mean.dtype == np.float64 and np.array_equal(mean, update[0]), cut


def test_a_split_element_is_checked_with_the_rest_of_its_chunk() -> None:
    """Nothing of a chunk is added before all of it is checked, including an element that began
    in the previous chunk."""
    layout = layout_of([(4,)])
    fold = StreamingMean(layout)
    data = payload(layout, [np.array([1.0, 2.0, np.nan, 4.0], np.float32)], 1.0)
    upload = fold.begin("c", 1.0)
    upload.feed(data[:6])  # one element and half of the next
    with pytest.raises(LayoutError, match="NaN"):
        upload.feed(data[6:])
    upload.abort()
    assert fold.partial == {"c": (1, np.float32(1.0))}


def test_a_weighted_value_that_overflows_is_refused_before_it_is_added() -> None:
    layout = layout_of([(4,)])
    fold = StreamingMean(layout)
    upload = fold.begin("huge", 3e38)
    with pytest.raises(LayoutError, match="overflows"):
        upload.feed(payload(layout, [np.array([0.5, 2.0, 1.0, 1.0], np.float32)], 3e38))
    upload.abort()
    assert fold.partial == {} and all(np.isfinite(m).all() for m in fold.mean())
