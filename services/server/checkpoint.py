"""Atomic checkpoints: after every round the server writes its whole state to one file
(magic, a JSON header, then the TFF Value bytes of the model, aggregator and optimizer state),
via a temporary file, fsync and rename, so a crash leaves either the old or the new checkpoint."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAGIC = b"TFFK8S-CKPT\x01\n"
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
    header = dict(checkpoint.header, state_sha256=hashlib.sha256(checkpoint.state).hexdigest())
    head = json.dumps(header, sort_keys=True).encode()
    final = directory / CHECKPOINT_NAME
    tmp = directory / f".{CHECKPOINT_NAME}.tmp"
    with open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack(">Q", len(head)) + head + checkpoint.state)
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
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 8:
        raise CheckpointError(f"{path} is not a tff-k8s checkpoint")
    (size,) = struct.unpack(">Q", blob[len(MAGIC) : len(MAGIC) + 8])
    start = len(MAGIC) + 8
    try:
        header = json.loads(blob[start : start + size])
    except ValueError as exc:
        raise CheckpointError(f"{path}: damaged header ({exc})") from None
    state = blob[start + size :]
    if hashlib.sha256(state).hexdigest() != header.get("state_sha256"):
        raise CheckpointError(f"{path}: state does not match its digest (truncated or damaged)")
    return Checkpoint(header, state)
