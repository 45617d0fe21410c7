"""Checkpoints: what is saved loads back unchanged, part by part; a save replaces the old file
atomically (a crash leaves the old or the new checkpoint, never a mix); damage is detected, not
resumed from. The background :class:`Writer` keeps the order, runs ``then`` only once the file is
durable, holds at most one pending checkpoint and reports a failed write to the round loop."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from services.server import checkpoint
from services.server.checkpoint import CHECKPOINT_NAME, MAGIC, Buffer, Checkpoint, CheckpointError, Writer

WEIGHTS = b"\x00weights\xffbytes" * 100
PARTS: tuple[bytes, ...] = (WEIGHTS, b"optimizer", b"", b"aggregator")


def sample(round_number: int = 3, parts: Sequence[Buffer | Sequence[Buffer]] = PARTS) -> Checkpoint:
    return Checkpoint({"round": round_number, "rng": {"state": [1, 2]}, "assignments": {"c-0": 0, "c-1": 1},
                       "fingerprint": "abc"}, parts)


def loaded_parts(directory: Path) -> list[bytes]:
    ck = checkpoint.load(directory)
    assert ck is not None
    return [bytes(p) for p in ck.parts]


def test_empty_dir_loads_none(tmp_path: Path) -> None:
    assert checkpoint.load(tmp_path) is None
    assert checkpoint.load(tmp_path / "not-created") is None


def test_round_trip(tmp_path: Path) -> None:
    saved = sample()
    path = checkpoint.save(tmp_path / "out", saved)
    assert path == tmp_path / "out" / CHECKPOINT_NAME
    loaded = checkpoint.load(tmp_path / "out")
    assert loaded is not None
    assert [bytes(p) for p in loaded.parts] == list(PARTS)
    assert all(isinstance(p, memoryview) for p in loaded.parts)
    assert loaded.header == saved.header  # the part sizes are the file's business, not the caller's
    assert list(tmp_path.joinpath("out").iterdir()) == [path]  # no temporary file left behind


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param([], id="no-parts"),
        pytest.param([b""], id="one-empty"),
        pytest.param([b"", b"", b""], id="all-empty"),
        pytest.param([b"", b"x", b""], id="empty-around"),
        pytest.param([os.urandom(70_000), os.urandom(3), os.urandom(1)], id="uneven"),
    ],
)
def test_parts_round_trip(tmp_path: Path, parts: list[bytes]) -> None:
    checkpoint.save(tmp_path, sample(parts=parts))
    assert loaded_parts(tmp_path) == parts


def test_buffer_kinds_round_trip(tmp_path: Path) -> None:
    """Parts go in as the round loop holds them: read-only memoryviews (the encoded layouts),
    slices of a larger buffer, bytearrays and bytes, without being joined first."""
    big = bytearray(os.urandom(10_000))
    parts = [memoryview(bytes(big)).toreadonly(), memoryview(big)[100:5100], bytearray(b"opt"), b"agg"]
    checkpoint.save(tmp_path, sample(parts=parts))
    assert loaded_parts(tmp_path) == [bytes(big), bytes(big[100:5100]), b"opt", b"agg"]


def test_typed_memoryview_part_round_trips(tmp_path: Path) -> None:
    weights = np.arange(12, dtype=np.float32).reshape(3, 4)
    checkpoint.save(tmp_path, sample(parts=[memoryview(weights), b"opt"]))
    assert loaded_parts(tmp_path) == [weights.tobytes(), b"opt"]


def test_save_replaces_previous(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, sample(1, [b"one", b"1"]))
    checkpoint.save(tmp_path, sample(2, [b"two"]))
    loaded = checkpoint.load(tmp_path)
    assert loaded is not None and loaded.header["round"] == 2
    assert [bytes(p) for p in loaded.parts] == [b"two"]


def test_leftover_tmp_file_does_not_break_load_or_save(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, sample(1, [b"one"]))
    tmp = tmp_path / f".{CHECKPOINT_NAME}.tmp"
    tmp.write_bytes(MAGIC + b"half a checkp")  # a crash mid-write
    assert loaded_parts(tmp_path) == [b"one"]
    checkpoint.save(tmp_path, sample(2, [b"two"]))
    assert loaded_parts(tmp_path) == [b"two"]


def test_final_file_is_replaced_by_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint.save(tmp_path, sample(1, [b"one"]))
    final = tmp_path / CHECKPOINT_NAME
    calls = []
    real_replace = os.replace

    def spy(src: os.PathLike[str], dst: os.PathLike[str]) -> None:
        # When the rename happens, the new file is complete and the old one is still in place.
        assert loaded_parts(tmp_path) == [b"one"]
        assert Path(src).read_bytes().endswith(b"two")
        calls.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", spy)
    checkpoint.save(tmp_path, sample(2, [b"two"]))
    assert len(calls) == 1
    src, dst = calls[0]
    assert dst == final and src.parent == tmp_path and src != final


def test_crash_before_rename_keeps_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint.save(tmp_path, sample(1, [b"one"]))

    def crash(fd: int) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(checkpoint.os, "fsync", crash)
    with pytest.raises(OSError, match="disk gone"):
        checkpoint.save(tmp_path, sample(2, [b"two"]))
    monkeypatch.undo()
    loaded = checkpoint.load(tmp_path)
    assert loaded is not None and loaded.header["round"] == 1
    assert [bytes(p) for p in loaded.parts] == [b"one"]


# ---- damage ------------------------------------------------------------------------------------
def _blob(tmp_path: Path, ck: Checkpoint | None = None) -> bytes:
    checkpoint.save(tmp_path, ck or sample())
    return (tmp_path / CHECKPOINT_NAME).read_bytes()


def _write(tmp_path: Path, blob: bytes) -> None:
    (tmp_path / CHECKPOINT_NAME).write_bytes(blob)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b"X" + b[1:], id="magic"),
        pytest.param(lambda b: MAGIC.replace(b"\x04", b"\x03") + b[len(MAGIC):], id="older-version"),
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: b[: len(MAGIC) + 4], id="cut-in-digest"),
        pytest.param(lambda b: b"some other file entirely", id="foreign"),
    ],
)
def test_not_a_checkpoint(tmp_path: Path, damage: Callable[[bytes], bytes]) -> None:
    _write(tmp_path, damage(_blob(tmp_path)))
    with pytest.raises(CheckpointError, match="not a tff-k8s checkpoint"):
        checkpoint.load(tmp_path)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[:-1], id="truncated-last-part"),
        pytest.param(lambda b: b[:-500], id="truncated-more"),
        pytest.param(lambda b: b + b"\0", id="extended"),
        pytest.param(lambda b: b[:-3] + bytes([b[-3] ^ 0x10]) + b[-2:], id="flipped-bit-last-part"),
    ],
)
def test_damaged_state_fails_digest(tmp_path: Path, damage: Callable[[bytes], bytes]) -> None:
    _write(tmp_path, damage(_blob(tmp_path)))
    with pytest.raises(CheckpointError, match="digest"):
        checkpoint.load(tmp_path)


def test_digest_covers_every_byte(tmp_path: Path) -> None:
    """A flipped bit anywhere (magic, digest, header length, header, any part) is refused."""
    blob = _blob(tmp_path, sample(7, [b"w" * 40, b"", b"o" * 9, b"a"]))
    for i in range(len(blob)):
        for bit in (0x01, 0x80):
            _write(tmp_path, blob[:i] + bytes([blob[i] ^ bit]) + blob[i + 1 :])
            with pytest.raises(CheckpointError):
                checkpoint.load(tmp_path)
    _write(tmp_path, blob)
    assert checkpoint.load(tmp_path) is not None  # the loop above did write damaged copies


def test_moving_bytes_between_parts_is_refused(tmp_path: Path) -> None:
    """Same bytes, same header, parts cut elsewhere: the sizes in the header are covered too."""
    good = _blob(tmp_path, sample(1, [b"ab", b"cd"]))
    moved = good.replace(b'"parts": [2, 2]', b'"parts": [3, 1]')
    assert moved != good
    _write(tmp_path, moved)
    with pytest.raises(CheckpointError, match="digest"):
        checkpoint.load(tmp_path)


LENGTH_AT = len(MAGIC) + 32  # magic, SHA-256 of the rest, then the header length


def _frame(head: bytes, *parts: bytes) -> bytes:
    """A well-formed file around any header bytes (valid digest), to test what load does with them."""
    body = head + b"".join(parts)
    return MAGIC + hashlib.sha256(body).digest() + len(head).to_bytes(8, "big") + body


def test_frame_matches_save(tmp_path: Path) -> None:
    """The helper below writes what save writes (so the tests that use it test load, not the helper)."""
    ck = sample(1, [b"ab", b"", b"c"])
    head = json.dumps({**ck.header, "parts": [2, 0, 1]}, sort_keys=True).encode()
    assert _blob(tmp_path, ck) == _frame(head, b"ab", b"c")


def test_part_of_several_buffers_round_trips_as_one(tmp_path: Path) -> None:
    """A part may be several buffers (a model's tensors, as ``Layout.parts`` gives them): they are
    written back to back and read back as one part, in a file byte for byte the one the joined
    part makes."""
    kernel = np.arange(12, dtype=np.float32).reshape(3, 4)
    bias = np.arange(4, dtype=np.float64)
    model = (memoryview(kernel).toreadonly(), b"", bytearray(b"xyz"), memoryview(bias))
    joined = kernel.tobytes() + b"xyz" + bias.tobytes()
    parts = [model, b"opt", [], [b"", b""], [b"agg"]]
    blob = _blob(tmp_path, sample(parts=parts))
    loaded = checkpoint.load(tmp_path)
    assert loaded is not None and len(loaded.parts) == 5
    assert [bytes(p) for p in loaded.parts] == [joined, b"opt", b"", b"", b"agg"]
    assert f'"parts": [{len(joined)}, 3, 0, 0, 3]'.encode() in blob  # one size per part, in bytes
    assert blob == _blob(tmp_path, sample(parts=[joined, b"opt", b"", b"", b"agg"]))


def test_frame_of_a_part_of_several_buffers(tmp_path: Path) -> None:
    ck = sample(1, [[b"ab", b"", b"c"], b"d"])
    head = json.dumps({**ck.header, "parts": [3, 1]}, sort_keys=True).encode()
    assert _blob(tmp_path, ck) == _frame(head, b"abc", b"d")


def test_digest_covers_every_buffer_of_a_part(tmp_path: Path) -> None:
    """A flipped bit in any of a part's buffers, or a cut anywhere, is refused as damage."""
    blob = _blob(tmp_path, sample(7, [[b"w" * 5, b"", b"v" * 4], b"o", [b"x", b"y"]]))
    start = len(blob) - len(b"wwwwwvvvvoxy")
    assert blob[start:] == b"wwwwwvvvvoxy"
    for i in range(start, len(blob)):
        _write(tmp_path, blob[:i] + bytes([blob[i] ^ 0x01]) + blob[i + 1 :])
        with pytest.raises(CheckpointError, match="digest"):
            checkpoint.load(tmp_path)
        _write(tmp_path, blob[:i])
        with pytest.raises(CheckpointError, match="digest"):
            checkpoint.load(tmp_path)
    _write(tmp_path, blob)
    assert loaded_parts(tmp_path) == [b"wwwwwvvvv", b"o", b"xy"]  # the loop above did write damaged copies


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


@pytest.mark.parametrize(
    ("sizes", "parts"),
    [
        pytest.param(None, [b"abc"], id="no-sizes"),
        pytest.param("3", [b"abc"], id="sizes-not-a-list"),
        pytest.param([2], [b"abc"], id="sum-short"),
        pytest.param([4], [b"abc"], id="sum-over"),
        pytest.param([1, 1], [b"abc"], id="parts-missing-bytes"),
        pytest.param([], [b"abc"], id="bytes-without-parts"),
        pytest.param([-1, 4], [b"abc"], id="negative"),
        pytest.param([1.5, 1.5], [b"abc"], id="not-integers"),
        pytest.param(["3"], [b"abc"], id="string-size"),
        pytest.param([None], [b""], id="null-size"),
        pytest.param([1 << 62], [b"abc"], id="huge"),
    ],
)
def test_damaged_part_sizes_are_refused(tmp_path: Path, sizes: object, parts: list[bytes]) -> None:
    """A header whose part sizes do not describe the bytes that follow is refused, even with a
    valid digest (a bug or a hand-made file, not a flipped bit)."""
    header: dict[str, object] = {"round": 1}
    if sizes is not None:
        header["parts"] = sizes
    _write(tmp_path, _frame(json.dumps(header).encode(), *parts))
    with pytest.raises(CheckpointError, match="does not describe"):
        checkpoint.load(tmp_path)


def test_valid_hand_made_frame_loads(tmp_path: Path) -> None:
    """The control for the test above: the same frame with the right sizes loads."""
    _write(tmp_path, _frame(json.dumps({"round": 1, "parts": [1, 0, 2]}).encode(), b"a", b"bc"))
    assert loaded_parts(tmp_path) == [b"a", b"", b"bc"]


@pytest.mark.parametrize("head", [b"[1, 2]", b"3", b'"text"', b"null"])
def test_header_that_is_not_an_object(tmp_path: Path, head: bytes) -> None:
    _write(tmp_path, _frame(head, b"state"))
    with pytest.raises(CheckpointError):
        checkpoint.load(tmp_path)


def test_checkpoint_error_is_not_swallowed_as_missing(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINT_NAME).mkdir()  # unreadable as a file: must not look like "no checkpoint"
    with pytest.raises(OSError):
        checkpoint.load(tmp_path)


# ---- Writer ------------------------------------------------------------------------------------
WAIT = 10.0  # seconds a test waits for the writer thread before calling it stuck


@pytest.fixture
def writer(tmp_path: Path) -> Writer:
    w = Writer(tmp_path)
    yield w  # type: ignore[misc]
    w.close()


def _round(n: int) -> Checkpoint:
    return sample(n, [f"weights-{n}".encode(), b"", f"opt-{n}".encode()])


def test_writer_writes_in_order_and_then_sees_the_durable_file(tmp_path: Path, writer: Writer) -> None:
    seen: list[tuple[int, int, list[bytes], float]] = []

    def then_for(n: int) -> Callable[[float], None]:
        def then(seconds: float) -> None:
            ck = checkpoint.load(tmp_path)  # runs after the write: the file already holds round n
            assert ck is not None
            seen.append((n, ck.header["round"], [bytes(p) for p in ck.parts], seconds))
        return then

    for n in range(1, 8):
        writer.submit(_round(n), then_for(n))
    writer.flush()
    assert [s[0] for s in seen] == list(range(1, 8))  # in order, each exactly once
    for n, on_disk, parts, seconds in seen:
        assert on_disk == n and parts == [f"weights-{n}".encode(), b"", f"opt-{n}".encode()]
        assert isinstance(seconds, float) and seconds >= 0
    assert loaded_parts(tmp_path)[0] == b"weights-7"


def test_then_runs_after_fsync_and_rename(tmp_path: Path, writer: Writer, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(checkpoint.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(checkpoint.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    writer.submit(_round(1), lambda s: events.append("then"))
    writer.flush()
    assert events == ["fsync", "replace", "fsync", "then"]  # file, rename, directory, then the callback


def test_flush_with_nothing_submitted_returns(writer: Writer) -> None:
    done = threading.Event()
    threading.Thread(target=lambda: (writer.flush(), done.set()), daemon=True).start()
    assert done.wait(WAIT)


class Gate:
    """A ``save`` that blocks until released, to hold the writer mid-write."""

    def __init__(self) -> None:
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()
        self.saved: list[int] = []
        self.real = checkpoint.save

    def __call__(self, directory: Path, ck: Checkpoint) -> Path:
        self.entered.release()
        assert self.release.wait(WAIT), "the test never released the gate"
        self.saved.append(ck.header["round"])
        return self.real(directory, ck)


def _in_thread(fn: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # handed to the test
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, errors


def test_submit_blocks_while_one_is_pending(tmp_path: Path, writer: Writer, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate()
    monkeypatch.setattr(checkpoint, "save", gate)
    order: list[int] = []
    writer.submit(_round(1), lambda s: order.append(1))
    assert gate.entered.acquire(timeout=WAIT)  # round 1 is being written (slowly)

    t2, errors2 = _in_thread(lambda: writer.submit(_round(2), lambda s: order.append(2)))
    t2.join(WAIT)
    assert not t2.is_alive() and not errors2  # round 2 is queued behind the running write

    t3, errors3 = _in_thread(lambda: writer.submit(_round(3), lambda s: order.append(3)))
    t3.join(0.3)
    assert t3.is_alive(), "a third submit must wait while round 2 is still pending"
    assert gate.saved == [] and order == []

    gate.release.set()
    t3.join(WAIT)
    assert not t3.is_alive() and not errors3
    writer.flush()
    assert gate.saved == [1, 2, 3] and order == [1, 2, 3]
    assert checkpoint.load(tmp_path).header["round"] == 3  # type: ignore[union-attr]


def test_flush_waits_for_the_running_write(tmp_path: Path, writer: Writer, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate()
    monkeypatch.setattr(checkpoint, "save", gate)
    writer.submit(_round(1), lambda s: None)
    assert gate.entered.acquire(timeout=WAIT)
    t, errors = _in_thread(writer.flush)
    t.join(0.3)
    assert t.is_alive(), "flush must wait for the write in progress"
    gate.release.set()
    t.join(WAIT)
    assert not t.is_alive() and not errors
    assert checkpoint.load(tmp_path).header["round"] == 1  # type: ignore[union-attr]


def test_failed_save_is_raised_by_the_next_flush(tmp_path: Path, writer: Writer,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(directory: Path, ck: Checkpoint) -> Path:
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save", broken)
    called = []
    writer.submit(_round(1), called.append)
    with pytest.raises(CheckpointError, match="disk full") as info:
        writer.flush()
    assert isinstance(info.value.__cause__, OSError)
    assert called == []  # then() reports a durable write: never after a failed one
    assert checkpoint.load(tmp_path) is None
    with pytest.raises(CheckpointError):  # and it stays failed: the round loop must not go on
        writer.submit(_round(2), called.append)


def test_failed_save_is_raised_by_the_next_submit(tmp_path: Path, writer: Writer,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate()

    def fails_once(directory: Path, ck: Checkpoint) -> Path:
        gate.entered.release()
        assert gate.release.wait(WAIT)
        if ck.header["round"] == 1:
            raise OSError("disk full")
        return gate.real(directory, ck)

    monkeypatch.setattr(checkpoint, "save", fails_once)
    called: list[int] = []
    writer.submit(_round(1), lambda s: called.append(1))
    assert gate.entered.acquire(timeout=WAIT)
    writer.submit(_round(2), lambda s: called.append(2))  # queued behind the write that will fail
    gate.release.set()
    with pytest.raises(CheckpointError, match="disk full"):
        writer.submit(_round(3), lambda s: called.append(3))
    assert 1 not in called and 3 not in called


def test_failing_then_is_reported(writer: Writer) -> None:
    def then(seconds: float) -> None:
        raise RuntimeError("metrics sink gone")

    writer.submit(_round(1), then)
    with pytest.raises(CheckpointError, match="metrics sink gone"):
        writer.flush()


def test_close_writes_what_is_pending(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = Writer(tmp_path)
    real = checkpoint.save
    monkeypatch.setattr(checkpoint, "save", lambda d, ck: (time.sleep(0.2), real(d, ck))[1])
    order: list[int] = []
    w.submit(_round(1), lambda s: order.append(1))
    w.submit(_round(2), lambda s: order.append(2))
    w.close()
    assert order == [1, 2]
    assert checkpoint.load(tmp_path).header["round"] == 2  # type: ignore[union-attr]
    w.close()  # a second close is harmless
