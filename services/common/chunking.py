"""Cut a payload into chunks for a gRPC stream and put it back together, checking what a peer
claims (size, limit) before trusting it: the receive buffer is allocated once, at the announced
size, and a stream that overruns or falls short of it is refused. No TensorFlow here.

Data chunks are ``TaskChunk`` / ``ResultChunk`` messages holding only their ``data`` field. On the
hot path they are framed and read here by hand (tag, length, bytes: the protobuf encoding of that
one field) instead of through protobuf, which saves a copy of the model on each side of every
transfer; anything that is not exactly such a message goes through protobuf as usual."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from services.common.tensors import aligned_zeros


class PayloadError(ValueError):
    """A streamed payload does not match its header or breaks a limit."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


# Field 2 (``data``), wire type 2 (length-delimited): the same in TaskChunk and ResultChunk.
DATA_TAG = (2 << 3) | 2
_MAX_VARINT = 10


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


Buffer = bytes | bytearray | memoryview


def segments(data: Buffer | Sequence[Buffer]) -> list[memoryview]:
    """A payload as byte views: one buffer, or several meant back to back (e.g. a model's tensors)."""
    if isinstance(data, bytes | bytearray | memoryview):
        return [memoryview(data).cast("B")]
    return [memoryview(part).cast("B") for part in data]


def payload_nbytes(data: Buffer | Sequence[Buffer]) -> int:
    return sum(len(view) for view in segments(data))


def data_messages(data: Buffer | Sequence[Buffer], chunk_bytes: int) -> Iterator[bytes]:
    """``data`` (one buffer or several back to back) as serialized chunk messages of at most
    ``chunk_bytes`` each; the only copy is the one that joins each message."""
    payload = Segments(data)
    for start in range(0, payload.nbytes, chunk_bytes):
        yield payload.data_message(start, min(start + chunk_bytes, payload.nbytes))


def _framed(pieces: Sequence[memoryview], nbytes: int) -> bytes:
    return b"".join((bytes((DATA_TAG,)), _varint(nbytes), *pieces))


class Segments:
    """A payload of several buffers back to back, with random access to byte ranges."""

    def __init__(self, data: Buffer | Sequence[Buffer]) -> None:
        self.views = [view for view in segments(data) if len(view)]
        self.starts = [0]
        for view in self.views:
            self.starts.append(self.starts[-1] + len(view))
        self.nbytes = self.starts[-1]

    def data_message(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` as one serialized data chunk message."""
        pieces, i = [], max(bisect.bisect_right(self.starts, start) - 1, 0)
        while start < end:
            view, first = self.views[i], self.starts[i]
            take = view[start - first : min(end, first + len(view)) - first]
            pieces.append(take)
            start += len(take)
            i += 1
        return _framed(pieces, sum(len(p) for p in pieces))


def serialize_chunk(message: Any) -> bytes:
    """A gRPC serializer for chunk streams: data chunks come already serialized
    (:func:`data_messages`), headers as protobuf messages."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def data_of(message: bytes) -> memoryview | None:
    """The ``data`` of a serialized chunk message that holds that field and nothing else, as a view
    (no copy); None for any other message, which the caller parses with protobuf."""
    if not message or message[0] != DATA_TAG:
        return None
    length, shift, pos = 0, 0, 1
    while True:
        if pos >= len(message) or pos > _MAX_VARINT:
            return None
        byte = message[pos]
        length |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            break
        shift += 7
    if pos + length != len(message):
        return None
    return memoryview(message)[pos:]


def check_size(announced: int, max_bytes: int) -> None:
    if announced < 0:
        raise PayloadError(f"payload_bytes is negative ({announced})")
    if announced > max_bytes:
        raise PayloadError(f"payload of {announced} bytes exceeds the limit of {max_bytes}", too_large=True)


def assemble(parts: Iterable[bytes | memoryview], *, expected_bytes: int, max_bytes: int) -> memoryview:
    """Join streamed parts into one buffer of the announced size; refuse a stream that is larger
    than announced or than ``max_bytes``, or shorter than announced. The buffer is writable and
    starts on a 64-byte boundary (so TensorFlow can read a tensor at its start in place)."""
    check_size(expected_bytes, max_bytes)
    view = memoryview(aligned_zeros((expected_bytes,), np.uint8).data)
    filled = 0
    for part in parts:
        end = filled + len(part)
        if end > expected_bytes:
            raise PayloadError(f"stream carries more than the announced {expected_bytes} bytes")
        view[filled:end] = part
        filled = end
    if filled != expected_bytes:
        raise PayloadError(f"stream ended after {filled} of {expected_bytes} announced bytes")
    return view
