"""services/server/broadcast.py: every sampled client's stream gets exactly the chunk messages
``data_messages`` would make for it, while each chunk is framed once for all of them and at most
``window`` chunks are held."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from services.common.chunking import Segments, data_messages
from services.server.broadcast import Broadcast

PAYLOADS = {
    "one buffer": [bytes(range(256)) * 41],
    "leaves": [np.arange(1000, dtype=np.float32).data, b"", np.ones(7, np.float32).data, b"abc"],
    "tiny": [b"x"],
}


@pytest.mark.parametrize("name", PAYLOADS)
@pytest.mark.parametrize("chunk", [1, 100, 1024, 1 << 20])
def test_segments_frame_any_range_as_data_messages_does(name: str, chunk: int) -> None:
    payload = PAYLOADS[name]
    expected = list(data_messages(payload, chunk))
    seg = Segments(payload)
    got = [seg.data_message(i * chunk, min((i + 1) * chunk, seg.nbytes)) for i in range(len(expected))]
    assert got == expected


@pytest.mark.parametrize("name", PAYLOADS)
@pytest.mark.parametrize("readers", [1, 4])
def test_readers_in_step_share_each_framed_chunk(name: str, readers: int) -> None:
    payload, chunk = PAYLOADS[name], 100
    expected = list(data_messages(payload, chunk))
    b = Broadcast("t", payload, chunk, readers)
    streams = [b.messages() for _ in range(readers)]
    got: list[list[bytes]] = [[] for _ in range(readers)]
    for _ in expected:
        for r, s in enumerate(streams):
            got[r].append(next(s))
    assert all(g == expected for g in got)
    assert all(next(s, None) is None for s in streams)
    assert b.framed == len(expected)  # once each, whatever the number of readers
    assert not b._held  # every chunk was dropped once all readers took it
    if readers > 1:
        assert all(got[0][i] is got[-1][i] for i in range(len(expected)))  # the same object


def test_a_straggler_gets_its_own_copies_and_memory_stays_bounded() -> None:
    payload, chunk, window = [bytes(range(256)) * 40], 100, 4
    expected = list(data_messages(payload, chunk))
    b = Broadcast("t", payload, chunk, readers=2, window=window)
    fast = list(b.messages())
    assert len(b._held) == window
    slow = list(b.messages())
    assert fast == expected and slow == expected
    assert b.framed == 2 * len(expected) - window and not b._held


def test_concurrent_readers_all_get_the_payload() -> None:
    payload = [np.random.default_rng(0).bytes(50_000), np.arange(3000, dtype=np.float64).data]
    expected = list(data_messages(payload, 999))
    b = Broadcast("t", payload, 999, readers=6, window=3)
    got: list[list[bytes]] = []
    lock = threading.Lock()

    def read() -> None:
        out = list(b.messages())
        with lock:
            got.append(out)

    threads = [threading.Thread(target=read) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 6 and all(g == expected for g in got)
    assert len(b._held) <= 3
