"""The aggregation seam: what the servicer, the coordinator and the round loop know of the server's
aggregator (TFF's part of that name), whichever it is (services/common/aggregators.py names them;
every one keeps the contract of tests/services/test_aggregator_contract.py).

A round's aggregation (:class:`RoundAggregation`) is opened from the aggregator's state at the
round's start. For each result it ``receive``-s the header (the client and its weight: the upload
waits for an upload slot), the chunks (``Upload.feed``: staged and checked as they arrive), the end
of the stream (``Upload.finish``: complete, with the header's weight), and then either ``commit``-s
it (the result was accepted: only now does it count, whole) or discards it (refused, cut off,
stale: the aggregate is exactly as if it was never sent). ``finish`` turns what was committed into
the server update and the aggregator's next state (:class:`Outcome`).

Each aggregator (:class:`Aggregator`) is its math: how a complete result counts (``admit``: a
factor its update is multiplied by before it is added to the round's running sum, from the
result's weight and norms) and how the sum becomes the update (``finish``). TFF's aggregators are
built the same way (weighted mean, clipping and zeroing wrappers, DP queries: a per-client
preprocessing, a sum, a server-side post-processing), which is why one running sum serves
``mean``, ``robust`` and ``dp``; the server holds the round's sum plus at most
``server.upload_slots`` staged results, never one per client. ``secure`` refines the round itself
(its result layout, who gets the task and may still send, its phases: ``open_round`` returns its
own RoundAggregation) and sums masked words instead of floats."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from services.common import tensors
from services.common.tensors import LayoutError
from services.server.aggregation.staging import (
    ONE,
    Contribution,
    Norms,
    RoundClosed,
    Slots,
    Upload,
    check_result_layout,
    check_weight,
)

if TYPE_CHECKING:
    from services.common.config import TrainingSettings

State = dict[str, np.float32]  # an aggregator's state between rounds: named float32 scalars


@dataclass
class Outcome:
    """A finished round: the server update (aligned arrays, handed to the optimizer step, which
    consumes them), the aggregator's state for the next round, and what to log about the round."""

    update: list[np.ndarray]
    state: State
    measurements: dict[str, float]


class Aggregator(ABC):
    """One per server. ``needs_l2``: results' L2 norms are taken while they stream in."""

    name: ClassVar[str]
    state_names: tuple[str, ...] = ()  # the state's scalars, in checkpoint order
    needs_l2: ClassVar[bool] = False
    # The factor is the header's weight times something only the whole result tells (``mean``: 1),
    # so the weight is applied to each chunk as it is staged.
    weight_first: ClassVar[bool] = False
    # The header's update_weight is the result's weight (secure: the real weight travels masked).
    weights_in_clear: ClassVar[bool] = True

    def __init__(self, layout: tensors.Layout, slots: Slots) -> None:
        check_result_layout(layout)
        self.layout = layout
        self.slots = slots

    @classmethod
    def from_settings(cls, training: TrainingSettings, layout: tensors.Layout, slots: Slots) -> Aggregator:
        """The aggregator as ``training`` configures it (services.server.aggregation.aggregator_for);
        one that reads no setting of its own is built from the layout and the slots alone."""
        return cls(layout, slots)

    def open_round(self, state: State) -> RoundAggregation:
        return RoundAggregation(self, state)

    @abstractmethod
    def initial_state(self) -> State: ...

    @abstractmethod
    def admit(self, state: State, norms: Norms) -> Contribution:
        """How a complete result counts this round (its factor may be 0: zeroed)."""

    @abstractmethod
    def finish(self, state: State, total: list[np.ndarray], contributions: list[Contribution]) -> Outcome:
        """The update from the running sum of the committed results (``total``, which may be
        used in place) and how each counted."""

    # ---- the checkpoint form: the state's scalars in ``state_names`` order, float32 ------------
    def encode_state(self, state: State) -> bytes:
        return np.array([state[name] for name in self.state_names], "<f4").tobytes()

    def decode_state(self, data: bytes | memoryview) -> State:
        raw = bytes(data)
        if len(raw) != 4 * len(self.state_names):
            raise LayoutError(f"the {self.name} aggregator's state is {len(self.state_names)} float32 numbers, "
                              f"got {len(raw)} bytes")
        values = np.frombuffer(raw, "<f4")
        if not (np.isfinite(values).all() and (values > 0).all()):
            raise LayoutError(f"the {self.name} aggregator's state must be finite numbers > 0, got {values.tolist()}")
        return {name: np.float32(v) for name, v in zip(self.state_names, values, strict=True)}


class RoundAggregation:
    """One round's aggregate (see the module doc). Thread-safe: uploads stream in on gRPC threads."""

    def __init__(self, aggregator: Aggregator, state: State) -> None:
        self.aggregator = aggregator
        self.state = state
        update = aggregator.layout.leaves[:-1]
        self.sums: list[np.ndarray] | None = [tensors.aligned_zeros(leaf.shape, leaf.dtype.newbyteorder("="))
                                              for leaf in update]
        self.contributions: list[Contribution] = []
        self.closed = False
        self._lock = threading.Lock()
        self._preparing: threading.Thread | None = None
        self._prepare_error: BaseException | None = None

    @property
    def count(self) -> int:
        """Results committed."""
        return len(self.contributions)

    # ---- what a protocol with more than one step per result refines (``secure``) ---------------
    @property
    def result_layout(self) -> tensors.Layout | Any:
        """What a result's stream is laid out as (its fingerprint and size)."""
        return self.aggregator.layout

    def hands_task(self, client: str) -> bool:
        """Whether a sampled client that (re)polls gets the round's task."""
        return True

    def expects(self, client: str) -> bool:
        """Whether a result may still come from this sampled client that has not sent one."""
        return True

    def receive(self, client: str, weight: float, timeout: float) -> Upload:
        """A result's header: wait up to ``timeout`` seconds for an upload slot, then stage it."""
        w = check_weight(weight)
        if self.closed:
            raise RoundClosed("the round closed before this result arrived")
        slots = self.aggregator.slots
        if not slots.acquire(timeout):
            raise RoundClosed("the round closed while the result waited for an upload slot")
        if self.closed:
            slots.release()
            raise RoundClosed("the round closed while the result waited for an upload slot")
        return Upload(self.aggregator.layout, client, w, slots=slots, closed=lambda: self.closed,
                      admit=lambda norms: self.aggregator.admit(self.state, norms), l2=self.aggregator.needs_l2,
                      prescale=w if self.aggregator.weight_first else ONE)

    def commit(self, upload: Upload) -> None:
        """The finished ``upload`` was accepted: it counts, whole (added to the sum as its
        aggregator weighs it). Refused with RoundClosed once the round has closed."""
        contribution, factor, update = upload.prepared()
        with self._lock:
            if self.closed or self.sums is None:
                raise RoundClosed("the round closed while this result was streaming in")
            for total, part in zip(self.sums, update, strict=False):
                _add_scaled(total.reshape(-1), part.reshape(-1), factor)
            self.contributions.append(contribution)
        upload.release("committed")

    def prepare(self, work: Callable[[list[np.ndarray], threading.Lock], None]) -> None:
        """Run ``work(sums, lock)`` on a thread of its own while results stream in (the DP noise,
        whose size is fixed when the round opens); it adds to the sums under ``lock``, a block at a
        time, between commits. ``finish`` waits for it."""
        assert self.sums is not None and self._preparing is None
        sums = list(self.sums)

        def run() -> None:
            try:
                work(sums, self._lock)
            except BaseException as exc:  # raised again by finish()
                self._prepare_error = exc

        self._preparing = threading.Thread(target=run, name="round-prepare", daemon=True)
        self._preparing.start()

    def close(self) -> None:
        """No more results: uploads still streaming in are refused from here on."""
        with self._lock:
            self.closed = True

    def finish(self) -> Outcome:
        """The round's server update and the aggregator's next state (the round is spent)."""
        with self._lock:
            self.closed = True
            total, self.sums = self.sums, None
        self.aggregator.slots.drop_buffers()  # the step that follows holds three models: nothing else
        if total is None:
            raise RuntimeError("finish() twice")
        if not self.contributions:
            raise RuntimeError("a round with no results has no update")
        if self._preparing is not None:
            self._preparing.join()
            if self._prepare_error is not None:
                raise self._prepare_error
        return self.aggregator.finish(self.state, total, list(self.contributions))


BLOCK = 1 << 18  # numbers scaled and added at a time, while they are in the CPU's cache


def _add_scaled(total: np.ndarray, part: np.ndarray, factor: np.float32) -> None:
    """``total += part * factor`` (float32; ``part`` is used in place), a block at a time."""
    if factor == 1:
        np.add(total, part, out=total)
        return
    for start in range(0, part.size, BLOCK):
        block = part[start : start + BLOCK]
        np.multiply(block, factor, out=block)
        np.add(total[start : start + BLOCK], block, out=total[start : start + BLOCK])
