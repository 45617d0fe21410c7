"""A client's result as it streams in, staged in a buffer of its own: each chunk is copied into
the upload's buffer and its whole numbers are checked at once (no NaN / Inf, the stream no longer
than the layout), so a bad chunk is refused when it arrives; nothing of an upload reaches the
round's aggregate before the whole result was received, checked and accepted (committed).

The buffer is the result's wire layout (``services/common/tensors.py``): the update's tensors and
then ``update_weight``, whatever the chunking (a number split across two chunks is checked once
both halves are in). While the chunks arrive the upload also takes what the aggregators need of the
whole update, so no second pass over it is needed: its largest magnitude (the L-inf norm, and the
bound for ``update x factor`` overflowing) and, if asked, its squared L2 norm.

At most ``server.upload_slots`` uploads are staged at a time (:class:`Slots`); an upload waits for a
slot before its first byte is read, and gives it back when it is committed or discarded. The slots
keep their buffers for the round's next uploads (a fresh model-sized buffer costs a page fault per
4 KiB on every upload) and let them go when the round finishes, before the optimizer step.

Speed: each chunk is copied once into the buffer and checked there while it is in the CPU's
cache; a factor known from the header (``mean``'s weight) is applied there too, and one known only
at the end (``dp`` / ``robust`` clipping) block by block as the result is added to the sum."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from services.common import tensors
from services.common.chunking import PayloadError
from services.common.tensors import LayoutError

ONE = np.float32(1)


class RoundClosed(RuntimeError):
    """The round closed before this result was complete (or before it could start)."""


class RoundRefused(RuntimeError):
    """The round's aggregate cannot be finished (``secure``: too few survivors to rebuild a secret
    it needs): nothing of it is applied; the round runner retries the round."""


class Slots:
    """The server's upload slots: how many results may be staged at once, across rounds, and the
    staging buffers they keep for reuse (never more than ``count``)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._semaphore = threading.BoundedSemaphore(count)
        self._buffers: list[np.ndarray] = []
        self._buffers_lock = threading.Lock()

    def buffer(self, nbytes: int) -> np.ndarray:
        """A staging buffer of ``nbytes`` (aligned; its bytes are whatever the last upload left)."""
        with self._buffers_lock:
            for i, b in enumerate(self._buffers):
                if b.nbytes == nbytes:
                    return self._buffers.pop(i)
        return tensors.aligned_zeros((nbytes,), np.uint8)

    def keep(self, buffer: np.ndarray) -> None:
        with self._buffers_lock:
            if len(self._buffers) < self.count:
                self._buffers.append(buffer)

    def drop_buffers(self) -> None:
        """Let the kept buffers go (the round is over: nothing is staged until the next one)."""
        with self._buffers_lock:
            self._buffers.clear()

    def acquire(self, timeout: float) -> bool:
        return self._semaphore.acquire(timeout=max(0.0, timeout))

    def release(self) -> None:
        self._semaphore.release()


@dataclass(frozen=True)
class Norms:
    """What an aggregator may weigh a complete result by."""

    weight: np.float32  # the header's update_weight, equal to the payload's
    linf: float  # max |x| over the update
    l2: float  # sqrt(sum x^2) over the update (float32 dot products, as TensorFlow's norm); nan if not asked


@dataclass(frozen=True)
class Contribution:
    """How one result counts: its update is multiplied by ``factor`` (0: nothing of it is added)
    before it is added to the round's sum; ``notes`` is what the aggregator's ``finish`` needs of it."""

    factor: float
    notes: dict[str, float] = field(default_factory=dict)


def check_result_layout(layout: tensors.Layout) -> None:
    *update, weight = layout.leaves
    if weight.path != "update_weight" or weight.shape != ():
        raise TypeError(f"expected a ClientResult layout ending in a scalar update_weight, got {weight.path}")
    for leaf in update:
        if leaf.dtype.kind != "f":
            raise TypeError(f"aggregators need floating updates; {leaf.path} is {leaf.dtype}")


def check_weight(weight: float) -> np.float32:
    """A result header's ``update_weight`` as the float32 it counts as: finite and > 0 (a weight
    past float32's range is Inf, one below it 0), else LayoutError."""
    with np.errstate(over="ignore"):
        w = np.float32(weight)
    if not (np.isfinite(w) and w > 0):
        raise LayoutError(f"update_weight must be a finite number > 0, got {weight}")
    return w


def stage(buffer: np.ndarray, received: int, data: bytes | bytearray | memoryview) -> int:
    """Copy a chunk into a staging ``buffer`` (uint8, the whole result's size) after the ``received``
    bytes already there; the new count. Refuses a stream longer than the buffer (nothing copied)."""
    view = memoryview(data).cast("B")
    end = received + len(view)
    if end > buffer.nbytes:
        raise PayloadError(f"stream carries more than the announced {buffer.nbytes} bytes")
    buffer[received:end] = np.frombuffer(view, np.uint8)
    return end


class Upload:
    """One result stream: :meth:`feed` its chunks, :meth:`finish` it (complete, the header's
    weight, scaled as its aggregator weighs it), then its round commits it or it is
    :meth:`discard`-ed. ``closed`` tells whether its round has closed; ``admit`` is its aggregator's
    say on how a complete result counts."""

    def __init__(self, layout: tensors.Layout, client: str, weight: np.float32, *, slots: Slots,
                 closed: Callable[[], bool], admit: Callable[[Norms], Contribution], l2: bool,
                 prescale: np.float32 = ONE) -> None:
        self.layout = layout
        self.client = client
        self.weight = weight
        self._slots = slots
        self._closed = closed
        self._admit = admit
        self._want_l2 = l2
        self.prescale = prescale  # the update is staged times this (a factor the header already gives)
        self.buffer: np.ndarray | None = slots.buffer(layout.nbytes)
        self.received = 0  # bytes in the buffer
        self._checked = 0  # bytes of whole numbers checked (always a number's boundary)
        self._leaf = 0  # the leaf holding byte _checked
        self._linf = 0.0
        self._squares = 0.0
        self._prepared: tuple[Contribution, np.float32, list[np.ndarray]] | None = None
        self.state = "streaming"  # -> finished -> committed | discarded

    # ---- receiving ------------------------------------------------------------------------------
    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self.state != "streaming":
            raise RuntimeError(f"feed() on a {self.state} upload")
        if self._closed():
            raise RoundClosed("the round closed while this result was streaming in")
        assert self.buffer is not None
        end = self.received = stage(self.buffer, self.received, data)
        self._check(end)

    def _check(self, upto: int) -> None:
        """Check the whole numbers in ``[_checked, upto)``, leaf by leaf."""
        assert self.buffer is not None
        leaves, pos, i = self.layout.leaves, self._checked, self._leaf
        while i < len(leaves):
            leaf = leaves[i]
            leaf_end = leaf.offset + leaf.nbytes
            count = (min(leaf_end, upto) - pos) // leaf.dtype.itemsize
            if count > 0:
                values = self.buffer[pos : pos + count * leaf.dtype.itemsize].view(leaf.dtype)
                self._inspect(leaf, values, last=i == len(leaves) - 1)
                pos += count * leaf.dtype.itemsize
            if pos < leaf_end:
                break
            i += 1
        self._checked, self._leaf = pos, i

    def _inspect(self, leaf: tensors.Leaf, values: np.ndarray, *, last: bool) -> None:
        lo, hi = values.min(), values.max()  # NaN propagates; an Inf is an extreme
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise LayoutError(f"{leaf.path} holds NaN or Inf")
        if last:  # update_weight: compared with the header's in finish()
            return
        self._linf = max(self._linf, float(-lo), float(hi))
        if self._want_l2:
            self._squares += float(np.dot(values, values))
        if self.prescale != 1:
            with np.errstate(over="ignore"):
                if not np.isfinite(np.float32(self._linf) * self.prescale):
                    raise LayoutError(f"{leaf.path} x update_weight overflows")
                np.multiply(values, self.prescale.astype(values.dtype), out=values)

    # ---- complete -------------------------------------------------------------------------------
    def finish(self) -> Contribution:
        """The stream ended: it must be exactly the layout, with the header's weight. Then its
        aggregator says how it counts (refused when the update times its factor overflows). What
        is left is to commit it or discard it."""
        if self.state != "streaming":
            raise RuntimeError(f"finish() on a {self.state} upload")
        nbytes = self.layout.nbytes
        if self.received != nbytes:
            raise PayloadError(f"stream ended after {self.received} of {nbytes} announced bytes")
        *update, trailing = self._arrays()
        if np.float32(trailing) != self.weight:
            raise LayoutError(f"the payload's update_weight ({trailing}) is not the header's ({self.weight})")
        l2 = float(np.sqrt(self._squares)) if self._want_l2 else float("nan")
        contribution = self._admit(Norms(self.weight, self._linf, l2))
        factor = np.float32(contribution.factor)
        with np.errstate(over="ignore"):
            if not np.isfinite(np.float32(self._linf) * factor):
                raise LayoutError("update x update_weight overflows")
        self._prepared = (contribution, np.float32(factor / self.prescale), update if factor else [])
        self.state = "finished"
        return contribution

    def prepared(self) -> tuple[Contribution, np.float32, list[np.ndarray]]:
        """How the finished upload counts, the factor its staged update is still to be multiplied
        by (1: none; TFF's float32 product), and the staged update."""
        if self.state != "finished" or self._prepared is None:
            raise RuntimeError(f"only a finished upload can be committed, this one is {self.state}")
        return self._prepared

    def _arrays(self) -> list[np.ndarray]:
        """The staged leaves (views of the buffer): the update's tensors, then update_weight."""
        assert self.buffer is not None
        return [np.ndarray(leaf.shape, leaf.dtype, buffer=self.buffer.data, offset=leaf.offset)
                for leaf in self.layout.leaves]

    def release(self, state: str) -> None:
        """Give the buffer and the slot back (once)."""
        if self.state in ("committed", "discarded"):
            return
        self.state = state
        buffer, self.buffer, self._prepared = self.buffer, None, None
        if buffer is not None:
            self._slots.keep(buffer)
        self._slots.release()

    def discard(self) -> None:
        """Not a result (refused, cut off, stale): nothing of it counts. A no-op once committed."""
        self.release("discarded")
