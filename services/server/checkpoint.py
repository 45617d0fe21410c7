"""Atomic checkpoints: after every round the server writes its whole state to one file (magic, a
SHA-256 of the rest, a JSON header, then the state's parts: the model weights, the optimizer and
the aggregator state), via a temporary file, fsync and rename, so a crash leaves either the old or
the new checkpoint.

:class:`Writer` does this on its own thread, off the round's critical path: the round loop hands
it round N's state (immutable buffers, nothing is copied) and goes on with round N+1; it waits
only while an earlier state is still queued, so at most two are held (one being written, one
queued). After a crash the
server resumes from the last completed write and redoes what followed; ``then`` (the metrics
line) runs after the write, so the metrics never run ahead of the checkpoint."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.chunking import segments

log = logging.getLogger(__name__)

MAGIC = b"TFFK8S-CKPT\x04\n"  # 4: the aggregator state as float32 scalars (was a TFF Value)
_DIGEST = hashlib.sha256().digest_size
CHECKPOINT_NAME = "checkpoint.bin"
Buffer = bytes | bytearray | memoryview


class CheckpointError(RuntimeError):
    """A checkpoint file that is damaged or belongs to another configuration."""


@dataclass(frozen=True)
class Checkpoint:
    header: dict[str, Any]  # round, rng state, shard assignments, config fingerprint
    # The encoded ServerState (see ServerAlgorithm.encode_state): each part one buffer, or several
    # written back to back (read back as one).
    parts: Sequence[Buffer | Sequence[Buffer]]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(directory: Path, checkpoint: Checkpoint) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    parts = [segments(part) for part in checkpoint.parts]
    sizes = [sum(len(view) for view in part) for part in parts]
    head = json.dumps({**checkpoint.header, "parts": sizes}, sort_keys=True).encode()
    # The digest covers the header and the state: a flipped bit in either is caught on load.
    digest = hashlib.sha256(head)
    for part in parts:
        for view in part:
            digest.update(view)
    final = directory / CHECKPOINT_NAME
    tmp = directory / f".{CHECKPOINT_NAME}.tmp"
    with open(tmp, "wb") as f:
        f.write(MAGIC + digest.digest() + struct.pack(">Q", len(head)))
        f.write(head)
        for part in parts:
            for view in part:
                f.write(view)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_dir(directory)
    return final


def load(directory: Path) -> Checkpoint | None:
    path = directory / CHECKPOINT_NAME
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return None
    fixed = len(MAGIC) + _DIGEST + 8
    if not blob.startswith(MAGIC) or len(blob) < fixed:
        raise CheckpointError(f"{path} is not a tff-k8s checkpoint (of this version)")
    digest = blob[len(MAGIC) : len(MAGIC) + _DIGEST]
    (size,) = struct.unpack(">Q", blob[fixed - 8 : fixed])
    body = memoryview(blob)[fixed:]
    if size > len(body) or hashlib.sha256(body).digest() != digest:
        raise CheckpointError(f"{path}: contents do not match their digest (truncated or damaged)")
    try:
        header = json.loads(bytes(body[:size]))
    except ValueError as exc:
        raise CheckpointError(f"{path}: damaged header ({exc})") from None
    sizes = header.pop("parts", None) if isinstance(header, dict) else None
    if not isinstance(sizes, list) or not all(type(n) is int and n >= 0 for n in sizes) \
            or size + sum(sizes) != len(body):
        raise CheckpointError(f"{path}: header does not describe the state that follows")
    parts, offset = [], size
    for n in sizes:
        parts.append(body[offset : offset + n])
        offset += n
    return Checkpoint(header, parts)


class Writer:
    """Writes checkpoints on a background thread, one at a time, in order (see the module doc)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._cv = threading.Condition()
        self._pending: tuple[Checkpoint | Callable[[], Checkpoint], Callable[[float], None]] | None = None
        self._busy = False
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="checkpoint-writer", daemon=True)
        self._thread.start()

    def submit(self, checkpoint: Checkpoint | Callable[[], Checkpoint], then: Callable[[float], None]) -> None:
        """Queue ``checkpoint`` (or a function that makes it, run on the writer thread);
        ``then(seconds_the_write_took)`` runs after it is durable. Blocks while an earlier one is
        still queued; raises if an earlier write failed."""
        with self._cv:
            self._cv.wait_for(lambda: self._pending is None or self._error is not None)
            self._raise_error()
            self._pending = (checkpoint, then)
            self._cv.notify_all()

    def flush(self) -> None:
        """Wait until everything submitted is written; raise if a write failed."""
        with self._cv:
            self._cv.wait_for(lambda: (self._pending is None and not self._busy) or self._error is not None)
            self._raise_error()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=60)

    def _raise_error(self) -> None:
        if self._error is not None:
            raise CheckpointError(f"writing a checkpoint to {self.directory} failed: {self._error}") from self._error

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._pending is not None or self._closed)
                if self._pending is None:
                    return
                (checkpoint, then), self._pending = self._pending, None
                self._busy = True
                self._cv.notify_all()
            try:
                made = checkpoint() if callable(checkpoint) else checkpoint
                started = time.monotonic()
                save(self.directory, made)
                then(time.monotonic() - started)
            except BaseException as exc:  # reported to the round loop at its next submit / flush
                log.exception("checkpoint write failed")
                with self._cv:
                    self._error = exc
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()
