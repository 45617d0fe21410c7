"""Streamed payloads: chunks put back together give exactly the bytes sent, and a stream that
disagrees with its header (size, digest) or breaks the limit is refused before it is trusted."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.chunking import Payload, PayloadError, assemble

CHUNK = 1024


def roundtrip(data: bytes, chunk: int = CHUNK, max_bytes: int | None = None) -> bytes:
    p = Payload.of(data)
    return assemble(p.chunks(chunk), expected_bytes=len(data), expected_sha256=p.sha256,
                    max_bytes=len(data) if max_bytes is None else max_bytes)


def test_payload_digest() -> None:
    assert Payload.of(b"abc").sha256 == hashlib.sha256(b"abc").digest()


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 5 * 1024 * 1024 + 7])
def test_round_trip_sizes(size: int) -> None:
    data = os.urandom(size)
    parts = list(Payload.of(data).chunks(CHUNK))
    assert len(parts) == -(-size // CHUNK)  # ceil: no empty trailing chunk
    assert all(len(p) == CHUNK for p in parts[:-1])
    assert all(0 < len(p) <= CHUNK for p in parts)
    assert roundtrip(data) == data


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=4096), chunk=st.integers(1, 5000))
def test_round_trip_property(data: bytes, chunk: int) -> None:
    parts = list(Payload.of(data).chunks(chunk))
    assert b"".join(parts) == data
    assert all(0 < len(p) <= chunk for p in parts)
    assert roundtrip(data, chunk) == data


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=2048), cuts=st.lists(st.integers(0, 2048), max_size=8))
def test_any_split_of_the_stream_assembles(data: bytes, cuts: list[int]) -> None:
    """The receiver must not depend on how the sender (or the network) cut the stream."""
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    parts = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)] + [b""]
    assert assemble(iter(parts), expected_bytes=len(data), expected_sha256=Payload.of(data).sha256,
                    max_bytes=len(data)) == data


def test_chunks_can_be_iterated_twice() -> None:
    p = Payload.of(os.urandom(3000))
    assert list(p.chunks(1000)) == list(p.chunks(1000))


@pytest.mark.parametrize(
    ("parts", "announced", "match"),
    [
        ([b"abc", b"d"], 3, "more than the announced 3"),
        ([b"abcd"], 3, "more than the announced 3"),
        ([b"ab"], 3, "ended after 2 of 3"),
        ([], 3, "ended after 0 of 3"),
    ],
)
def test_size_mismatch_is_refused(parts: list[bytes], announced: int, match: str) -> None:
    with pytest.raises(PayloadError, match=match) as info:
        assemble(iter(parts), expected_bytes=announced, expected_sha256=hashlib.sha256(b"abc").digest(), max_bytes=100)
    assert not info.value.too_large


def test_oversized_stream_is_refused_before_reading_it_all() -> None:
    read = []

    def endless() -> Iterator[bytes]:
        while True:
            read.append(1)
            yield b"x" * 100

    with pytest.raises(PayloadError, match="more than the announced"):
        assemble(endless(), expected_bytes=250, expected_sha256=b"\0" * 32, max_bytes=1000)
    assert len(read) == 3


def test_wrong_digest_is_refused() -> None:
    data = b"hello world"
    with pytest.raises(PayloadError, match="SHA-256") as info:
        assemble(iter([data]), expected_bytes=len(data), expected_sha256=hashlib.sha256(b"hello World").digest(),
                 max_bytes=100)
    assert not info.value.too_large


def test_flipped_byte_is_refused() -> None:
    data = bytearray(os.urandom(5000))
    p = Payload.of(bytes(data))
    data[2500] ^= 0x01
    with pytest.raises(PayloadError, match="SHA-256"):
        assemble(Payload(bytes(data), p.sha256).chunks(1024), expected_bytes=len(data), expected_sha256=p.sha256,
                 max_bytes=10_000)


def test_over_limit_is_too_large_without_reading() -> None:
    def never() -> Iterator[bytes]:
        raise AssertionError("the stream must not be read")
        yield b""

    with pytest.raises(PayloadError, match="exceeds the limit of 100") as info:
        assemble(never(), expected_bytes=101, expected_sha256=b"\0" * 32, max_bytes=100)
    assert info.value.too_large


def test_exactly_at_limit_is_accepted() -> None:
    assert roundtrip(b"x" * 100, max_bytes=100) == b"x" * 100


def test_negative_size_is_refused() -> None:
    with pytest.raises(PayloadError, match="negative") as info:
        assemble(iter([]), expected_bytes=-1, expected_sha256=hashlib.sha256(b"").digest(), max_bytes=100)
    assert not info.value.too_large


@pytest.mark.parametrize("sha", [b"", b"\0" * 31, b"\0" * 33, hashlib.sha256(b"").hexdigest().encode()])
def test_bad_digest_length_is_refused(sha: bytes) -> None:
    with pytest.raises(PayloadError, match="32 bytes"):
        assemble(iter([]), expected_bytes=0, expected_sha256=sha, max_bytes=100)


def test_payload_error_is_a_value_error() -> None:
    assert issubclass(PayloadError, ValueError)
