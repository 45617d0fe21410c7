"""Streamed payloads: chunks put back together give exactly the bytes sent, and a stream that
disagrees with its header (size) or breaks the limit is refused before it is trusted: the buffer
is allocated once at the announced size, an overrun stops the read at once and an over-limit
announcement is refused without reading anything. Data chunks are framed and read by hand
(:func:`data_messages`, :func:`data_of`): the framing must be byte for byte protobuf's, and the
reader must accept nothing that protobuf would read differently."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.chunking import (
    DATA_TAG,
    PayloadError,
    assemble,
    check_size,
    data_messages,
    data_of,
    payload_nbytes,
    segments,
)
from services.common.proto import federation_pb2 as pb
from services.common.tensors import ALIGN

CHUNK = 1024


Buffer = bytes | bytearray | memoryview


def parts_of(data: Buffer | Sequence[Buffer], chunk: int) -> list[memoryview]:
    """What the receiver sees: the data of each framed message, read by hand."""
    out = []
    for message in data_messages(data, chunk):
        view = data_of(message)
        assert view is not None
        out.append(view)
    return out


def roundtrip(data: bytes, chunk: int = CHUNK, max_bytes: int | None = None) -> memoryview:
    return assemble(iter(parts_of(data, chunk)), expected_bytes=len(data),
                    max_bytes=len(data) if max_bytes is None else max_bytes)


@pytest.mark.parametrize("size", [0, 1, 127, 128, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 5 * 1024 * 1024 + 7])
def test_round_trip_sizes(size: int) -> None:
    data = os.urandom(size)
    parts = parts_of(data, CHUNK)
    assert len(parts) == -(-size // CHUNK)  # ceil: no empty trailing chunk
    assert all(len(p) == CHUNK for p in parts[:-1])
    assert all(0 < len(p) <= CHUNK for p in parts)
    out = roundtrip(data)
    assert isinstance(out, memoryview) and not out.readonly and out.format == "B" and bytes(out) == data
    if size:  # writable and aligned: TensorFlow may read a tensor at its start in place
        assert np.frombuffer(out, np.uint8).ctypes.data % ALIGN == 0


@pytest.mark.parametrize("chunk", [1, 100, 127, 128, 16383, 16384, 3 * 1024 * 1024])
def test_framing_is_protobufs(chunk: int) -> None:
    """Each framed message is exactly what protobuf serializes for a chunk holding only ``data``
    (for both streams' messages), with varint lengths of one, two and more bytes."""
    data = os.urandom(2 * chunk + 1)
    messages = list(data_messages(data, chunk))
    assert all(isinstance(m, bytes) for m in messages)  # what gRPC sends
    for i, message in enumerate(messages):
        part = data[i * chunk : (i + 1) * chunk]
        assert message == pb.ResultChunk(data=part).SerializeToString()
        assert message == pb.TaskChunk(data=part).SerializeToString()
        parsed = pb.TaskChunk.FromString(message)
        assert parsed.WhichOneof("part") == "data" and parsed.data == part


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_messages_of_any_buffer(kind: type) -> None:
    data = os.urandom(3 * CHUNK + 5)
    source = kind(data) if kind is not memoryview else memoryview(data).toreadonly()
    assert b"".join(bytes(p) for p in parts_of(source, CHUNK)) == data


def test_messages_of_a_memoryview_slice() -> None:
    data = os.urandom(5000)
    assert b"".join(bytes(p) for p in parts_of(memoryview(data)[1000:3500], 700)) == data[1000:3500]


def test_data_of_is_a_view_of_the_message() -> None:
    message = pb.ResultChunk(data=b"x" * 300).SerializeToString()
    view = data_of(message)
    assert view is not None and view.obj is message and bytes(view) == b"x" * 300  # no copy


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(pb.ResultChunk(data=b"").SerializeToString(), id="empty-data"),
        pytest.param(b"\x12\x00", id="empty-data-by-hand"),
        pytest.param(b"\x12\x83\x00abc", id="non-minimal-length"),  # protobuf reads it as 3 too
    ],
)
def test_data_of_accepts_what_protobuf_reads_as_data(message: bytes) -> None:
    view = data_of(message)
    parsed = pb.ResultChunk.FromString(message)
    assert view is not None and parsed.WhichOneof("part") == "data" and bytes(view) == parsed.data


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(b"", id="empty"),
        pytest.param(pb.ResultChunk(header=pb.ResultHeader(client_id="c", payload_bytes=3)).SerializeToString(),
                     id="header"),
        pytest.param(pb.ResultChunk(data=b"abc").SerializeToString() + b"\x12\x01d", id="two-data-fields"),
        pytest.param(pb.ResultChunk(data=b"abc").SerializeToString()
                     + pb.ResultChunk(header=pb.ResultHeader(client_id="c")).SerializeToString(), id="data-then-header"),
        pytest.param(b"\x12\x04abc", id="length-over"),
        pytest.param(b"\x12\x02abc", id="length-short"),
        pytest.param(b"\x12", id="no-length"),
        pytest.param(b"\x12\x80", id="cut-varint"),
        pytest.param(b"\x12" + b"\xff" * 11 + b"\x01", id="varint-too-long"),
        pytest.param(b"\x12" + b"\x80" * 10 + b"\x00", id="varint-11-bytes"),
        pytest.param(b"\x0a\x00", id="other-field"),
        pytest.param(b"\x10\x03abc", id="data-tag-wrong-wire-type"),
    ],
)
def test_data_of_leaves_everything_else_to_protobuf(message: bytes) -> None:
    assert data_of(message) is None


def _protobuf_reads_as(message: bytes) -> bytes | None:
    try:
        parsed = pb.ResultChunk.FromString(message)
    except DecodeError:
        return None
    return parsed.data if parsed.WhichOneof("part") == "data" else None


@settings(max_examples=400, deadline=None)
@given(body=st.binary(max_size=40), raw=st.booleans())
def test_data_of_never_disagrees_with_protobuf(body: bytes, raw: bool) -> None:
    """Whatever a peer sends: when data_of reads a data chunk, protobuf reads the same data."""
    message = body if raw else bytes((DATA_TAG,)) + body
    view = data_of(message)
    if view is not None:
        assert _protobuf_reads_as(message) == bytes(view)


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=4096), chunk=st.integers(1, 5000))
def test_round_trip_property(data: bytes, chunk: int) -> None:
    parts = parts_of(data, chunk)
    assert b"".join(bytes(p) for p in parts) == data
    assert all(0 < len(p) <= chunk for p in parts)
    assert roundtrip(data, chunk) == data


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=2048), cuts=st.lists(st.integers(0, 2048), max_size=8))
def test_any_split_of_the_stream_assembles(data: bytes, cuts: list[int]) -> None:
    """The receiver must not depend on how the sender (or the network) cut the stream, empty
    parts and memoryviews included."""
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    parts = [b""] + [memoryview(data)[a:b] for a, b in zip(bounds, bounds[1:], strict=False)] + [b""]
    assert assemble(iter(parts), expected_bytes=len(data), max_bytes=len(data)) == data


@settings(max_examples=100, deadline=None)
@given(data=st.binary(min_size=1, max_size=2048), announced=st.integers(0, 2048))
def test_any_wrong_announced_size_is_refused(data: bytes, announced: int) -> None:
    if announced == len(data):
        assert assemble(iter([data]), expected_bytes=announced, max_bytes=4096) == data
        return
    with pytest.raises(PayloadError) as info:
        assemble(iter(parts_of(data, 100)), expected_bytes=announced, max_bytes=4096)
    assert not info.value.too_large


def test_messages_can_be_made_twice() -> None:
    data = os.urandom(3000)
    assert list(data_messages(data, 1000)) == list(data_messages(data, 1000))
    pieces = [data[:1500], b"", data[1500:]]
    assert list(data_messages(pieces, 1000)) == list(data_messages(pieces, 1000))


# ---- payloads of several buffers (a model's tensors, sent without joining them first) ----------
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_segments_of_one_buffer(kind: type) -> None:
    data = os.urandom(100)
    views = segments(kind(data))
    assert len(views) == 1  # one buffer, never read as a sequence of its bytes
    assert isinstance(views[0], memoryview) and views[0].format == "B" and views[0].ndim == 1
    assert bytes(views[0]) == data


def test_segments_are_byte_views_without_a_copy() -> None:
    kernel = np.arange(12, dtype=np.float32).reshape(3, 4)
    raw = bytearray(b"abc")
    views = segments((memoryview(kernel), raw, b"", memoryview(kernel[1:]).toreadonly()))
    assert [len(v) for v in views] == [48, 3, 0, 32]  # bytes, not items
    assert all(isinstance(v, memoryview) and v.format == "B" and v.ndim == 1 for v in views)
    assert bytes(views[0]) == kernel.tobytes() and bytes(views[3]) == kernel[1:].tobytes()
    kernel[2, 3] = 99.0  # the views are the buffers themselves: a write shows through
    raw[0] = ord("z")
    assert bytes(views[0][-4:]) == np.float32(99).tobytes() == bytes(views[3][-4:])
    assert bytes(views[1]) == b"zbc"
    assert views[3].readonly


def test_segments_of_a_typed_buffer_are_its_bytes() -> None:
    weights = np.arange(6, dtype=np.float64).reshape(2, 3)
    (view,) = segments(memoryview(weights))
    assert len(view) == weights.nbytes and bytes(view) == weights.tobytes()


def test_segments_refuse_a_strided_buffer() -> None:
    """A non-contiguous array has no back-to-back bytes to send: refused, not sent scrambled."""
    with pytest.raises(TypeError):
        segments([memoryview(np.zeros((4, 4), np.float32)[:, ::2])])


@pytest.mark.parametrize("empty", [[], ()])
def test_no_segments(empty: Sequence[bytes]) -> None:
    assert segments(empty) == [] and payload_nbytes(empty) == 0
    assert list(data_messages(empty, CHUNK)) == []


@pytest.mark.parametrize(
    ("data", "nbytes"),
    [
        pytest.param(b"", 0, id="empty"),
        pytest.param(b"abc", 3, id="bytes"),
        pytest.param(bytearray(7), 7, id="bytearray"),
        pytest.param([b"", b""], 0, id="empty-segments"),
        pytest.param([b"ab", bytearray(3), memoryview(b"x")], 6, id="mixed"),
        pytest.param(memoryview(np.zeros(5, np.float64)), 40, id="typed"),
        pytest.param((memoryview(np.zeros((2, 3), np.int16)), b"z"), 13, id="typed-2d-in-tuple"),
    ],
)
def test_payload_nbytes(data: Buffer | Sequence[Buffer], nbytes: int) -> None:
    assert payload_nbytes(data) == nbytes


SEGMENT_SIZES = [
    [0],
    [0, 0, 0],
    [1],
    [5, 0, 3],
    [CHUNK],
    [CHUNK, CHUNK],
    [CHUNK - 1, 1, CHUNK + 1],
    [0, 3 * CHUNK + 5, 0, 7, CHUNK, 0],
    [CHUNK // 2 + 1] * 7,
    [1] * (2 * CHUNK + 3),
    [10, 5 * CHUNK, 10],
]


@pytest.mark.parametrize("sizes", SEGMENT_SIZES, ids=lambda sizes: "-".join(map(str, sizes[:6])) + f"({len(sizes)})")
def test_messages_of_several_segments(sizes: list[int]) -> None:
    """Chunks are cut across segment boundaries: every chunk but the last is full, and the stream
    is byte for byte the one of the joined payload (the receiver cannot tell the difference)."""
    pieces = [os.urandom(n) for n in sizes]
    whole = b"".join(pieces)
    parts = parts_of(pieces, CHUNK)
    assert b"".join(bytes(p) for p in parts) == whole
    assert len(parts) == -(-len(whole) // CHUNK)
    assert all(len(p) == CHUNK for p in parts[:-1])
    assert all(0 < len(p) <= CHUNK for p in parts)
    assert list(data_messages(pieces, CHUNK)) == list(data_messages(whole, CHUNK))
    assert payload_nbytes(pieces) == len(whole)
    assert assemble(iter(parts), expected_bytes=payload_nbytes(pieces), max_bytes=len(whole)) == whole


def test_messages_of_tensors_and_other_buffers() -> None:
    kernel = np.random.default_rng(0).standard_normal((33, 7)).astype(np.float32)
    bias = np.arange(7, dtype=np.float64)
    raw = os.urandom(CHUNK + 3)
    pieces = [memoryview(kernel).toreadonly(), bytearray(raw), memoryview(raw)[5:10], memoryview(bias), b""]
    whole = kernel.tobytes() + raw + raw[5:10] + bias.tobytes()
    assert payload_nbytes(pieces) == len(whole)
    parts = parts_of(pieces, 100)
    assert b"".join(bytes(p) for p in parts) == whole
    assert [len(p) for p in parts] == [100] * (len(whole) // 100) + [len(whole) % 100]
    assert b"".join(bytes(p) for p in parts_of(memoryview(kernel), 100)) == kernel.tobytes()  # one typed buffer


@settings(max_examples=150, deadline=None)
@given(pieces=st.lists(st.binary(max_size=600), max_size=8), chunk=st.integers(1, 700))
def test_several_segments_property(pieces: list[bytes], chunk: int) -> None:
    whole = b"".join(pieces)
    messages = list(data_messages(pieces, chunk))
    assert len(messages) == -(-len(whole) // chunk)
    for i, message in enumerate(messages):  # the i-th full slice of the joined payload, as protobuf frames it
        assert message == pb.ResultChunk(data=whole[i * chunk : (i + 1) * chunk]).SerializeToString()


@pytest.mark.parametrize(
    ("parts", "announced", "match"),
    [
        ([b"abc", b"d"], 3, "more than the announced 3"),
        ([b"abcd"], 3, "more than the announced 3"),
        ([b"ab"], 3, "ended after 2 of 3"),
        ([], 3, "ended after 0 of 3"),
        ([b"", b""], 1, "ended after 0 of 1"),
        ([b"a"], 0, "more than the announced 0"),
    ],
)
def test_size_mismatch_is_refused(parts: list[bytes], announced: int, match: str) -> None:
    with pytest.raises(PayloadError, match=match) as info:
        assemble(iter(parts), expected_bytes=announced, max_bytes=100)
    assert not info.value.too_large


def test_overrun_stops_the_read_at_once() -> None:
    read = []

    def endless() -> Iterator[bytes]:
        while True:
            read.append(1)
            yield b"x" * 100

    with pytest.raises(PayloadError, match="more than the announced"):
        assemble(endless(), expected_bytes=250, max_bytes=1000)
    assert len(read) == 3  # 100 + 100 fit, the third part overruns: nothing after it is read


def test_overrun_leaves_the_buffer_size_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    """The receive buffer is the announced size, never grown by what the peer sends."""
    from services.common import chunking

    made: list[np.ndarray] = []
    real = chunking.aligned_zeros

    def spy(shape: tuple[int, ...], dtype: object) -> np.ndarray:
        buf = real(shape, dtype)
        made.append(buf)
        return buf

    monkeypatch.setattr(chunking, "aligned_zeros", spy)
    with pytest.raises(PayloadError):
        assemble(iter([b"x" * 60, b"y" * 60]), expected_bytes=100, max_bytes=1000)
    assert [b.nbytes for b in made] == [100]
    assert made[0].tobytes() == b"x" * 60 + b"\0" * 40  # the overrunning part was not copied in, even in part


def test_over_limit_is_too_large_without_reading() -> None:
    def never() -> Iterator[bytes]:
        raise AssertionError("the stream must not be read")
        yield b""

    with pytest.raises(PayloadError, match="exceeds the limit of 100") as info:
        assemble(never(), expected_bytes=101, max_bytes=100)
    assert info.value.too_large


def test_huge_announcement_allocates_nothing() -> None:
    """A peer announcing 1 TiB must be refused before any buffer of that size is made."""
    with pytest.raises(PayloadError, match="exceeds the limit") as info:
        assemble(iter([]), expected_bytes=1 << 40, max_bytes=1 << 20)
    assert info.value.too_large


def test_exactly_at_limit_is_accepted() -> None:
    assert roundtrip(b"x" * 100, max_bytes=100) == b"x" * 100
    check_size(100, 100)  # no exception


def test_negative_size_is_refused() -> None:
    def never() -> Iterator[bytes]:
        raise AssertionError("the stream must not be read")
        yield b""

    with pytest.raises(PayloadError, match="negative") as info:
        assemble(never(), expected_bytes=-1, max_bytes=100)
    assert not info.value.too_large


@pytest.mark.parametrize(
    ("announced", "limit", "too_large", "match"),
    [(-1, 100, False, "negative"), (-(1 << 62), 100, False, "negative"), (101, 100, True, "exceeds the limit"),
     (1 << 62, 100, True, "exceeds the limit")],
)
def test_check_size_refuses(announced: int, limit: int, too_large: bool, match: str) -> None:
    with pytest.raises(PayloadError, match=match) as info:
        check_size(announced, limit)
    assert info.value.too_large is too_large


@pytest.mark.parametrize(("announced", "limit"), [(0, 0), (0, 100), (99, 100), (100, 100)])
def test_check_size_accepts(announced: int, limit: int) -> None:
    assert check_size(announced, limit) is None


def test_zero_bytes_round_trip() -> None:
    assert list(data_messages(b"", CHUNK)) == []
    assert bytes(assemble(iter([]), expected_bytes=0, max_bytes=0)) == b""


def test_payload_error_is_a_value_error() -> None:
    assert issubclass(PayloadError, ValueError)
    assert PayloadError("x").too_large is False
