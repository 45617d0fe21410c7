"""The round's global model as the data chunks every sampled client downloads: each chunk message
is framed once and the same bytes object is handed to every client's stream, instead of being
framed again for each client (a copy of the whole model per client). A chunk is dropped once every
sampled client has taken it; at most ``window`` chunks are held, so a straggler far behind the
others frames its own copies and memory stays bounded whatever the number of clients."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

from services.common.chunking import Segments

WINDOW = 16  # chunks held at most (16 MiB at the default chunk size)


class Broadcast:
    def __init__(self, task_id: str, payload: Any | Sequence[Any], chunk_bytes: int, readers: int,
                 window: int = WINDOW) -> None:
        self.task_id = task_id
        self.payload = Segments(payload)
        self.chunk_bytes = chunk_bytes
        self.readers = readers
        self.window = window
        self.framed = 0  # chunk messages made (for tests and telemetry)
        self._lock = threading.Lock()
        self._held: OrderedDict[int, list[Any]] = OrderedDict()  # chunk -> [message, streams that took it]
        self._front = -1  # the furthest chunk framed so far

    @property
    def nbytes(self) -> int:
        return self.payload.nbytes

    def messages(self) -> Iterator[bytes]:
        for index in range(-(-self.nbytes // self.chunk_bytes)):
            yield self._message(index)

    def _message(self, index: int) -> bytes:
        with self._lock:
            held = self._held.get(index)
            if held is not None:
                held[1] += 1
                if held[1] >= self.readers:
                    del self._held[index]
                return held[0]
        start = index * self.chunk_bytes
        message = self.payload.data_message(start, min(start + self.chunk_bytes, self.nbytes))
        with self._lock:
            self.framed += 1
            # Only the leading stream's chunks are kept: a straggler's would push out the chunks
            # the others are about to need.
            if self.readers > 1 and index > self._front:
                self._front = index
                self._held[index] = [message, 1]
                while len(self._held) > self.window:
                    self._held.popitem(last=False)
        return message
