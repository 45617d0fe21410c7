"""Checkpoints: what is saved loads back unchanged; a save replaces the old file atomically (a crash
leaves the old or the new checkpoint, never a mix); damage is detected, not resumed from."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from services.server import checkpoint
from services.server.checkpoint import CHECKPOINT_NAME, MAGIC, Checkpoint, CheckpointError


def sample(round_number: int = 3, state: bytes = b"\x00state\xffbytes" * 100) -> Checkpoint:
    return Checkpoint({"round": round_number, "rng": {"state": [1, 2]}, "assignments": {"c-0": 0, "c-1": 1},
                       "fingerprint": "abc"}, state)


def test_empty_dir_loads_none(tmp_path: Path) -> None:
    assert checkpoint.load(tmp_path) is None
    assert checkpoint.load(tmp_path / "not-created") is None


def test_round_trip(tmp_path: Path) -> None:
    saved = sample()
    path = checkpoint.save(tmp_path / "out", saved)
    assert path == tmp_path / "out" / CHECKPOINT_NAME
    loaded = checkpoint.load(tmp_path / "out")
    assert loaded is not None
    assert loaded.state == saved.state
    assert {k: v for k, v in loaded.header.items() if k != "state_sha256"} == saved.header
    assert list(tmp_path.joinpath("out").iterdir()) == [path]  # no temporary file left behind


def test_empty_state_round_trips(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, sample(state=b""))
    loaded = checkpoint.load(tmp_path)
    assert loaded is not None and loaded.state == b""


def test_save_replaces_previous(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, sample(1, b"one"))
    checkpoint.save(tmp_path, sample(2, b"two"))
    loaded = checkpoint.load(tmp_path)
    assert loaded is not None and loaded.header["round"] == 2 and loaded.state == b"two"


def test_leftover_tmp_file_does_not_break_load_or_save(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, sample(1, b"one"))
    tmp = tmp_path / f".{CHECKPOINT_NAME}.tmp"
    tmp.write_bytes(MAGIC + b"half a checkp")  # a crash mid-write
    loaded = checkpoint.load(tmp_path)
    assert loaded is not None and loaded.state == b"one"
    checkpoint.save(tmp_path, sample(2, b"two"))
    loaded = checkpoint.load(tmp_path)
    assert loaded is not None and loaded.state == b"two"


def test_final_file_is_replaced_by_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint.save(tmp_path, sample(1, b"one"))
    final = tmp_path / CHECKPOINT_NAME
    calls = []
    real_replace = os.replace

    def spy(src: os.PathLike[str], dst: os.PathLike[str]) -> None:
        # When the rename happens, the new file is complete and the old one is still in place.
        assert checkpoint.load(tmp_path).state == b"one"  # type: ignore[union-attr]
        assert Path(src).read_bytes().endswith(b"two")
        calls.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", spy)
    checkpoint.save(tmp_path, sample(2, b"two"))
    assert len(calls) == 1
    src, dst = calls[0]
    assert dst == final and src.parent == tmp_path and src != final


def test_crash_before_rename_keeps_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint.save(tmp_path, sample(1, b"one"))

    def crash(fd: int) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(checkpoint.os, "fsync", crash)
    with pytest.raises(OSError, match="disk gone"):
        checkpoint.save(tmp_path, sample(2, b"two"))
    monkeypatch.undo()
    loaded = checkpoint.load(tmp_path)
    assert loaded is not None and loaded.state == b"one" and loaded.header["round"] == 1


def _blob(tmp_path: Path) -> bytes:
    checkpoint.save(tmp_path, sample())
    return (tmp_path / CHECKPOINT_NAME).read_bytes()


def _write(tmp_path: Path, blob: bytes) -> None:
    (tmp_path / CHECKPOINT_NAME).write_bytes(blob)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b"X" + b[1:], id="magic"),
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: b[: len(MAGIC) + 4], id="cut-in-length"),
        pytest.param(lambda b: b"some other file entirely", id="foreign"),
    ],
)
def test_not_a_checkpoint(tmp_path: Path, damage) -> None:  # type: ignore[no-untyped-def]
    _write(tmp_path, damage(_blob(tmp_path)))
    with pytest.raises(CheckpointError, match="not a tff-k8s checkpoint"):
        checkpoint.load(tmp_path)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[:-1], id="truncated-state"),
        pytest.param(lambda b: b[:-500], id="truncated-more"),
        pytest.param(lambda b: b + b"\0", id="extended-state"),
        pytest.param(lambda b: b[:-3] + bytes([b[-3] ^ 0x10]) + b[-2:], id="flipped-state-bit"),
    ],
)
def test_damaged_state_fails_digest(tmp_path: Path, damage) -> None:  # type: ignore[no-untyped-def]
    _write(tmp_path, damage(_blob(tmp_path)))
    with pytest.raises(CheckpointError, match="digest"):
        checkpoint.load(tmp_path)


LENGTH_AT = len(MAGIC) + 32  # magic, SHA-256 of the rest, then the header length


def _frame(head: bytes, state: bytes) -> bytes:
    """A well-formed file around any header bytes (valid digest), to test what load does with them."""
    return MAGIC + hashlib.sha256(head + state).digest() + len(head).to_bytes(8, "big") + head + state


def test_truncated_header(tmp_path: Path) -> None:
    blob = _blob(tmp_path)
    _write(tmp_path, blob[: LENGTH_AT + 8 + 10])
    with pytest.raises(CheckpointError, match="digest"):
        checkpoint.load(tmp_path)


def test_unparseable_header_with_valid_digest(tmp_path: Path) -> None:
    _write(tmp_path, _frame(b'{"round": ', b"state"))
    with pytest.raises(CheckpointError, match="damaged header"):
        checkpoint.load(tmp_path)


@pytest.mark.parametrize("delta", [-1, 1, 1 << 40])
def test_damaged_header_length(tmp_path: Path, delta: int) -> None:
    blob = _blob(tmp_path)
    size = int.from_bytes(blob[LENGTH_AT : LENGTH_AT + 8], "big")
    _write(tmp_path, blob[:LENGTH_AT] + (size + delta).to_bytes(8, "big") + blob[LENGTH_AT + 8 :])
    with pytest.raises(CheckpointError):
        checkpoint.load(tmp_path)


def test_wrong_stored_digest(tmp_path: Path) -> None:
    blob = _blob(tmp_path)
    i = len(MAGIC)
    _write(tmp_path, blob[:i] + bytes([blob[i] ^ 0xFF]) + blob[i + 1 :])
    with pytest.raises(CheckpointError, match="digest"):
        checkpoint.load(tmp_path)


def test_single_bit_flip_in_header_is_detected(tmp_path: Path) -> None:
    blob = _blob(tmp_path)
    i = blob.index(b'"round": 3') + len(b'"round": ')
    _write(tmp_path, blob[:i] + bytes([blob[i] ^ 0x01]) + blob[i + 1 :])  # '3' (0x33) -> '2' (0x32)
    with pytest.raises(CheckpointError):
        checkpoint.load(tmp_path)


def test_header_that_is_not_an_object(tmp_path: Path) -> None:
    _write(tmp_path, _frame(b"[1, 2]", b"state"))
    with pytest.raises(CheckpointError, match="not a mapping"):
        checkpoint.load(tmp_path)


def test_checkpoint_error_is_not_swallowed_as_missing(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINT_NAME).mkdir()  # unreadable as a file: must not look like "no checkpoint"
    with pytest.raises(OSError):
        checkpoint.load(tmp_path)
