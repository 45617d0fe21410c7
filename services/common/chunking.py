"""Cut a payload into chunks for a gRPC stream and put it back together, checking what a peer
claims (size, SHA-256, limit) before trusting it. No TensorFlow here."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


class PayloadError(ValueError):
    """A streamed payload does not match its header or breaks a limit."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


@dataclass(frozen=True)
class Payload:
    """Bytes to send, with the size and digest the stream header announces."""

    data: bytes
    sha256: bytes

    @classmethod
    def of(cls, data: bytes) -> Payload:
        return cls(data, hashlib.sha256(data).digest())

    def chunks(self, chunk_bytes: int) -> Iterator[bytes]:
        view = memoryview(self.data)
        for start in range(0, len(view), chunk_bytes):
            yield bytes(view[start : start + chunk_bytes])


def assemble(parts: Iterable[bytes], *, expected_bytes: int, expected_sha256: bytes, max_bytes: int) -> bytes:
    """Join streamed parts; refuse a stream that is larger than announced or than ``max_bytes``,
    shorter than announced, or whose digest differs."""
    if expected_bytes < 0:
        raise PayloadError(f"payload_bytes is negative ({expected_bytes})")
    if expected_bytes > max_bytes:
        raise PayloadError(f"payload of {expected_bytes} bytes exceeds the limit of {max_bytes}", too_large=True)
    if len(expected_sha256) != hashlib.sha256().digest_size:
        raise PayloadError("payload_sha256 must be 32 bytes")
    buf = bytearray()
    for part in parts:
        if len(buf) + len(part) > expected_bytes:
            raise PayloadError(f"stream carries more than the announced {expected_bytes} bytes")
        buf += part
    if len(buf) != expected_bytes:
        raise PayloadError(f"stream ended after {len(buf)} of {expected_bytes} announced bytes")
    data = bytes(buf)
    if hashlib.sha256(data).digest() != expected_sha256:
        raise PayloadError("payload SHA-256 does not match its header")
    return data
