"""Atomic checkpoints: after every round the server writes its whole state to one file
(magic, a SHA-256 of the rest, a JSON header, then the TFF Value bytes of the model, aggregator and optimizer state),
via a temporary file, fsync and rename, so a crash leaves either the old or the new checkpoint."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAGIC = b"TFFK8S-CKPT\x02\n"
_DIGEST = hashlib.sha256().digest_size
CHECKPOINT_NAME = "checkpoint.bin"


class CheckpointError(RuntimeError):
    """A checkpoint file that is damaged or belongs to another configuration."""


@dataclass(frozen=True)
class Checkpoint:
    header: dict[str, Any]  # round, rng state, shard assignments, config fingerprint
    state: bytes  # the encoded ServerState (see ServerAlgorithm.encode_state)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(directory: Path, checkpoint: Checkpoint) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    head = json.dumps(checkpoint.header, sort_keys=True).encode()
    final = directory / CHECKPOINT_NAME
    tmp = directory / f".{CHECKPOINT_NAME}.tmp"
    with open(tmp, "wb") as f:
        # The digest covers the header and the state: a flipped bit in either is caught on load.
        f.write(MAGIC + hashlib.sha256(head + checkpoint.state).digest() + struct.pack(">Q", len(head)))
        f.write(head + checkpoint.state)
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
        raise CheckpointError(f"{path} is not a tff-k8s checkpoint")
    digest = blob[len(MAGIC) : len(MAGIC) + _DIGEST]
    (size,) = struct.unpack(">Q", blob[fixed - 8 : fixed])
    body = blob[fixed:]
    if size > len(body) or hashlib.sha256(body).digest() != digest:
        raise CheckpointError(f"{path}: contents do not match their digest (truncated or damaged)")
    try:
        header = json.loads(body[:size])
    except ValueError as exc:
        raise CheckpointError(f"{path}: damaged header ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header is not a mapping")
    state = body[size:]
    return Checkpoint(header, state)
