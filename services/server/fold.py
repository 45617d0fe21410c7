"""The ``mean`` aggregator's weighted mean, folded in *while* results stream in: each chunk of a
client's ``ClientResult`` is checked and added to the running sum as it arrives, so no result is
ever held whole and the server's memory does not depend on how many clients upload at once.

The math is ``tff.aggregators.MeanFactory``'s weighted mean: sum(weight * update) and sum(weight)
in the update's dtype, divided at the end, the same as TFF's federated computation up to the order
of the additions. The client's weight travels in the ``ResultHeader`` (so it is known before the
first chunk) and again as the payload's last tensor; the two must agree.

An upload that stops part-way (the client died, the stream broke, a chunk held NaN, the round
closed) has already been added up to where it stopped. Its weight then counts for exactly the
coordinates it delivered: every coordinate of the mean is still the weighted mean of the client
updates that reached it, and no coordinate holds a partial sum without its weight. Such a client
does not count as a result (its metrics are dropped, and it does not count towards
``min_results``). When the same client tries again in the same round (clients resend a result
whose stream broke), the new attempt resumes where the cut-off one stopped: what was already
added is skipped, not added twice, and once the attempt completes the client counts in full.
"""

from __future__ import annotations

import threading

import numpy as np

from services.common import tensors
from services.common.chunking import PayloadError
from services.common.tensors import LayoutError


class RoundClosed(RuntimeError):
    """The round closed while this result was streaming in."""


class StreamingMean:
    """The running sum of one round. :meth:`begin` an :class:`Upload` per result stream; after
    the round closed, :meth:`close` and take the :meth:`mean`."""

    def __init__(self, layout: tensors.Layout) -> None:
        *update, weight = layout.leaves
        if weight.path != "update_weight" or weight.shape != ():
            raise TypeError(f"expected a ClientResult layout ending in a scalar update_weight, got {weight.path}")
        for leaf in update:
            if leaf.dtype.kind != "f":
                raise TypeError(f"the mean aggregator needs floating updates; {leaf.path} is {leaf.dtype}")
        self.layout = layout
        self.sums = [tensors.aligned_zeros(leaf.shape, leaf.dtype.newbyteorder("=")) for leaf in update]
        self._flat = [s.reshape(-1) for s in self.sums]
        sizes = [s.size for s in self.sums]
        self.starts = [int(x) for x in np.cumsum([0, *sizes[:-1]])]  # first element of each leaf, flattened
        self.weight = np.float32(0)  # sum of the weights of the complete results
        self.count = 0  # complete results
        # Cut-off uploads, by client: (update elements delivered, weight).
        self.partial: dict[str, tuple[int, np.float32]] = {}
        self.lock = threading.Lock()
        self.closed = False
        self._active: set[Upload] = set()

    def begin(self, client: str, weight: float) -> Upload:
        """A result stream from ``client`` (at most one at a time per client: the coordinator
        refuses a second) with the header's ``weight``."""
        with np.errstate(over="ignore"):
            w = np.float32(weight)
        if not (np.isfinite(w) and w > 0):
            raise LayoutError(f"update_weight must be a finite number > 0, got {weight}")
        with self.lock:
            if self.closed:
                raise RoundClosed("the round closed before this result arrived")
            delivered, earlier = self.partial.get(client, (0, w))
            if earlier != w:
                raise LayoutError(f"update_weight {weight} differs from this client's earlier attempt ({earlier})")
            upload = Upload(self, client, w, skip=delivered)
            self._active.add(upload)
        return upload

    def close(self) -> None:
        """No more data: uploads still streaming count for what they delivered so far."""
        with self.lock:
            self.closed = True
            for upload in self._active:
                upload._settle_partial()
            self._active.clear()

    def mean(self) -> list[np.ndarray]:
        """The weighted mean, computed in place (the fold is spent afterwards)."""
        self.close()
        sums, self.sums, self._flat = self.sums, [], []
        for start, part in zip(self.starts, sums, strict=True):
            flat, size = part.reshape(-1), part.size
            # The weight of element j: the complete results, plus each cut-off upload that reached j.
            base = self.weight
            cuts: list[tuple[int, np.float32]] = []
            for delivered, w in self.partial.values():
                if delivered >= start + size:
                    base = np.float32(base + w)
                elif delivered > start:
                    cuts.append((delivered - start, w))
            cuts.sort()
            bounds = [0, *(k for k, _ in cuts), size]
            weight = base
            for i in range(len(cuts), -1, -1):  # from the last segment (fewest contributors) back
                segment = flat[bounds[i] : bounds[i + 1]]
                if weight == 0:
                    segment[...] = 0
                else:
                    segment /= weight
                if i:
                    weight = np.float32(weight + cuts[i - 1][1])
        return sums

    def _add(self, leaf_index: int, first: int, values: np.ndarray, upload: Upload) -> None:
        with self.lock:
            if self.closed or upload.settled:
                raise RoundClosed("the round closed while this result was streaming in")
            target = self._flat[leaf_index][first : first + values.size]
            target += values
            upload.delivered = self.starts[leaf_index] + first + values.size


class Upload:
    """One result stream being folded in: :meth:`feed` its chunks, then :meth:`finish` (size and
    weight checks) and :meth:`commit` once the result is accepted, or :meth:`abort`."""

    def __init__(self, fold: StreamingMean, client: str, weight: np.float32, skip: int = 0) -> None:
        self.fold = fold
        self.client = client
        self.weight = weight
        self.skip = skip  # update elements an earlier attempt of this client already added
        self.offset = 0  # bytes of the payload consumed (whole elements only)
        self.delivered = skip  # update elements in the sum (flattened over the update's leaves)
        self.settled = False
        self._carry = b""  # the start of an element split across chunks
        self._trailing: np.ndarray | None = None  # the payload's own update_weight

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Check a chunk whole (size; no NaN / Inf, also once weighted), then add it."""
        view = memoryview(data).cast("B")
        if self._carry:  # only a peer that cuts chunks mid-number pays for this copy
            view, self._carry = memoryview(self._carry + bytes(view)), b""
        if self.offset + len(view) > self.fold.layout.nbytes:
            raise PayloadError(f"stream carries more than the announced {self.fold.layout.nbytes} bytes")
        pieces, taken = self._weighted(view)
        for index, first, scaled in pieces:
            self.fold._add(index, first, scaled, self)
        self.offset += taken
        self._carry = bytes(view[taken:])

    def _weighted(self, view: memoryview) -> tuple[list[tuple[int, int, np.ndarray]], int]:
        """The whole elements at the front of ``view``, checked, times the weight, as (leaf, first
        element, values) pieces still to be added (the payload's own update_weight is kept aside,
        and what an earlier attempt already added is skipped); and how many bytes they take."""
        leaves, pos, offset, index = self.fold.layout.leaves, 0, self.offset, 0
        pieces, used = [], 0
        scratch = np.empty(len(view) // 8 + 1, np.float64)  # the weighted values (any float dtype fits)
        while pos < len(view):
            while offset >= leaves[index].offset + leaves[index].nbytes:
                index += 1
            leaf = leaves[index]
            size = leaf.dtype.itemsize
            count = min((leaf.offset + leaf.nbytes - offset) // size, (len(view) - pos) // size)
            if count == 0:
                break
            values = np.frombuffer(view, leaf.dtype, count, pos)
            first = (offset - leaf.offset) // size
            offset += count * size
            pos += count * size
            if index == len(leaves) - 1:  # update_weight: compared with the header's in finish()
                if not np.isfinite(values).all():
                    raise LayoutError(f"{leaf.path} holds NaN or Inf")
                self._trailing = values.copy()
                continue
            start = self.fold.starts[index] + first
            if start + count <= self.skip:
                continue
            if start < self.skip:  # the part an earlier attempt already added
                values, first = values[self.skip - start :], first + self.skip - start
            dtype = self.fold.sums[index].dtype
            scaled = scratch.view(np.uint8)[used : used + values.size * dtype.itemsize].view(dtype)
            used += values.size * dtype.itemsize
            with np.errstate(over="ignore", invalid="ignore"):
                np.multiply(values, self.weight.astype(dtype), out=scaled)
            if not np.isfinite(scaled).all():  # NaN or Inf times the weight stays so: one check for both
                what = "holds NaN or Inf" if not np.isfinite(values).all() else "x update_weight overflows"
                raise LayoutError(f"{leaf.path} {what}")
            pieces.append((index, first, scaled))
        return pieces, pos

    def finish(self) -> None:
        """The stream ended: it must have been exactly the layout, with the header's weight."""
        nbytes = self.fold.layout.nbytes
        if self.offset + len(self._carry) != nbytes:
            raise PayloadError(f"stream ended after {self.offset + len(self._carry)} of {nbytes} announced bytes")
        if self._trailing is None or np.float32(self._trailing[0]) != self.weight:
            raise LayoutError(f"the payload's update_weight ({self._trailing}) is not the header's ({self.weight})")

    def commit(self) -> None:
        """The result was accepted: its weight counts in full."""
        with self.fold.lock:
            if self.settled:
                raise RoundClosed("the round closed while this result was streaming in")
            self.settled = True
            self.fold.weight = np.float32(self.fold.weight + self.weight)
            self.fold.count += 1
            self.fold.partial.pop(self.client, None)
            self.fold._active.discard(self)

    def abort(self) -> None:
        """The result was not accepted: its weight counts for what it delivered (see the module doc)."""
        with self.fold.lock:
            if not self.settled:
                self._settle_partial()
                self.fold._active.discard(self)

    def _settle_partial(self) -> None:  # the fold's lock is held
        self.settled = True
        if self.delivered:
            self.fold.partial[self.client] = (self.delivered, self.weight)
