"""Phase 3 of a secure round (services/server/aggregation/secure): each client in U2 streams its
masked input through SubmitResult; it is staged in an upload slot's buffer and added to the running
sum mod 2^32 only once accepted (committed, as every aggregator's results), anything else counts for
nothing. The round's close fixes U3 (who committed) and refuses the round at once when the
survivors cannot rebuild every secret the sum needs."""

from __future__ import annotations

import numpy as np

from services.common.chunking import PayloadError
from services.common.secagg.layout import MaskedLayout
from services.common.tensors import LayoutError
from services.server.aggregation.secure.keys import KeyPhases
from services.server.aggregation.staging import Contribution, RoundClosed, stage


class MaskedUpload:
    """One client's masked input as it streams in (the servicer's Upload protocol): staged in an
    upload slot's buffer, added to the sum only when committed."""

    def __init__(self, secure_round: MaskedInputs, index: int) -> None:
        self.round = secure_round
        self.index = index
        self.layout = secure_round.aggregator.masked
        self._slots = secure_round.aggregator.slots
        self.buffer: np.ndarray | None = self._slots.buffer(self.layout.nbytes)
        self.received = 0
        self.state = "streaming"

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self.state != "streaming":
            raise RuntimeError(f"feed() on a {self.state} upload")
        if self.round.closed:
            raise RoundClosed("the round closed while this masked input was streaming in")
        assert self.buffer is not None
        self.received = stage(self.buffer, self.received, data)

    def finish(self) -> None:
        if self.received != self.layout.nbytes:
            raise PayloadError(f"stream ended after {self.received} of {self.layout.nbytes} announced bytes")
        bits = self.round.params.bits if self.round.params else 32
        if bits < 32 and int(self.words().max()) >> bits:
            raise LayoutError(f"a masked input's words must be < 2^{bits}")
        self.state = "finished"

    def words(self) -> np.ndarray:
        assert self.buffer is not None
        return self.buffer.view("<u4")

    def release(self, state: str) -> None:
        if self.state in ("committed", "discarded"):
            return
        self.state = state
        buffer, self.buffer = self.buffer, None
        if buffer is not None:
            self._slots.keep(buffer)
        self._slots.release()

    def discard(self) -> None:
        self.release("discarded")



class MaskedInputs(KeyPhases):
    """A secure round's masked inputs: what the servicer's SubmitResult and the round loop call."""

    @property
    def result_layout(self) -> MaskedLayout:  # type: ignore[override]
        return self.aggregator.masked

    def receive(self, client: str, weight: float, timeout: float) -> MaskedUpload:  # type: ignore[override]
        with self._cv:
            i = self.index.get(client)
            self._advance()
            if self.failed is not None:
                raise RoundClosed(f"the secure round was refused: {self.failed}")
            if self.closed:
                raise RoundClosed("the round closed before this result arrived")
            if i is None or self.u2 is None or i not in self.u2:
                raise RoundClosed("a masked input is only taken from a client whose keys were shared")
        if not self.aggregator.slots.acquire(timeout):
            raise RoundClosed("the round closed while the result waited for an upload slot")
        return MaskedUpload(self, i)

    def commit(self, upload: MaskedUpload) -> None:  # type: ignore[override]
        if upload.state != "finished":
            raise RuntimeError(f"only a finished upload can be committed, this one is {upload.state}")
        with self._cv:
            if self.closed or self.failed is not None:
                raise RoundClosed("the round closed while this result was streaming in")
            assert self.total is not None  # finish() closed the round first
            np.add(self.total, upload.words(), out=self.total)
            self.committed.add(upload.index)
            self.contributions.append(Contribution(1.0))
        upload.release("committed")

    def close(self) -> None:
        with self._cv:
            if self.closed:
                return
            self.closed = True
            self.u3, self.closed_at = frozenset(self.committed), self.clock()
            if self.params is not None and self.failed is None:
                why = self._infeasible()
                if why:
                    self._fail(why)
            self._cv.notify_all()

    def _infeasible(self) -> str | None:
        """Why the survivors cannot rebuild every secret the sum needs (before anything is revealed)."""
        assert self.params is not None and self.u3 is not None
        t, u3 = self.params.threshold, self.u3
        if len(u3) < t:
            return f"{len(u3)} masked inputs, {t} needed"
        for u in u3:
            if len((self.neighbours_of(u) | {u}) & u3) < t:
                return f"client {u}'s self mask has fewer than {t} surviving holders"
        for u in self._dropped():
            if self.neighbours_of(u) & u3 and len(self.neighbours_of(u) & u3) < t:
                return f"dropped client {u}'s mask key has fewer than {t} surviving holders"
        return None

    def _dropped(self) -> frozenset[int]:
        assert self.u2 is not None and self.u3 is not None
        return self.u2 - self.u3

