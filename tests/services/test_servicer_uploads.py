"""The upload slots bound the server's memory: every result is staged whole until it is committed
or discarded (services/server/aggregation/staging.py), so however many clients submit at once, at
most ``upload_slots`` results are staged at a time; the others wait for a slot and are then
accepted, a slot is given back when a result is refused, and a result still waiting when its
round closes is refused as stale. The round-deadline cutoff of a stalled upload is checked here
too. Drives ``FederationServicer.SubmitResult`` directly from threads (no gRPC server, no
TensorFlow), with the real coordinator and the real ``mean`` aggregation on a small layout (the
refusals also with ``robust`` and ``dp``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest

from services.common import tensors
from services.common.chunking import data_messages, data_of
from services.common.proto import federation_pb2 as pb
from services.server.aggregation import Aggregator, Slots
from services.server.aggregation.dp import DifferentiallyPrivate
from services.server.aggregation.mean import Mean
from services.server.aggregation.robust import Robust
from services.server.coordinator import Coordinator, RoundTask
from services.server.servicer import FederationServicer
from services.server.telemetry import Telemetry

ELEMENTS = 1023
LAYOUT = tensors.Layout((tensors.Leaf("update.0", np.dtype("<f4"), (ELEMENTS,), 0),
                         tensors.Leaf("update_weight", np.dtype("<f4"), (), 4 * ELEMENTS)), 4 * ELEMENTS + 4,
                        "0123456789abcdef")
NBYTES = LAYOUT.nbytes  # 4096
CHUNK = 1024
WAIT = 20.0  # seconds before a blocked thread counts as a hang


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details


class FakeContext:
    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def cancel(self) -> None:  # gRPC's: the request iterator then raises grpc.RpcError
        self.cancelled.set()

    def peer(self) -> str:
        return "ipv4:127.0.0.1:12345"

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


class CountingSlots(Slots):
    """Upload slots that count how many are held at once (the results staged) and the most."""

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.cv = threading.Condition()
        self.held = self.most = self.given_back = 0

    def acquire(self, timeout: float) -> bool:
        got = super().acquire(timeout)
        if got:
            with self.cv:
                self.held += 1
                self.most = max(self.most, self.held)
                self.cv.notify_all()
        return got

    def release(self) -> None:
        with self.cv:
            self.held -= 1
            self.given_back += 1
            self.cv.notify_all()
        super().release()

    def gather(self, target: int, total: int) -> None:
        """Wait until ``target`` are held at once (or all that are left of ``total`` are), so the
        contention the test is about does happen however the threads are scheduled."""
        with self.cv:
            assert self.cv.wait_for(lambda: self.held >= target or self.given_back + self.held >= total, timeout=WAIT)


def _dp(layout: tensors.Layout, slots: Slots) -> Aggregator:
    return DifferentiallyPrivate(layout, slots, noise_multiplier=0.0, clients_per_round=4)


# The float-result aggregators (secure's refusals of masked inputs: tests/services/test_aggregator_contract.py).
AGGREGATORS: dict[str, Callable[[tensors.Layout, Slots], Aggregator]] = {"mean": Mean, "robust": Robust, "dp": _dp}


def alone(aggregator: Callable[[tensors.Layout, Slots], Aggregator], data: bytes, weight: float) -> np.ndarray:
    """The aggregator's update of one result, delivered straight to a round of its own."""
    agg = aggregator(LAYOUT, Slots(1))
    rnd = agg.open_round(agg.initial_state())
    upload = rnd.receive("alone", weight, timeout=WAIT)
    upload.feed(data)
    upload.finish()
    rnd.commit(upload)
    return rnd.finish().update[0]


def payload(client: int, weight: float | None = None) -> bytes:
    """Client ``client``'s result: its update is all ``client + 1``, its weight ``client + 1``."""
    w = float(client + 1) if weight is None else weight
    return bytes(LAYOUT.encode([np.full(ELEMENTS, client + 1, np.float32), np.float32(w)]))


class Harness:
    def __init__(self, clients: int, slots: int, *, deadline_s: float = 60.0, chunk_s: float = 0.01,
                 fast: bool = True, aggregator: Callable[[tensors.Layout, Slots], Aggregator] = Mean) -> None:
        self.fast = fast  # data chunks as the server's deserializer hands them over: views (or messages)
        self.coordinator = Coordinator(min_clients=clients, clients_per_round=clients, round_deadline_s=deadline_s,
                                       num_shards=clients, rng=np.random.default_rng(0))
        self.ids = [self.coordinator.join(f"client-{i}").client_id for i in range(clients)]
        self.chunk_s = chunk_s
        self.clients = clients
        self.slots = CountingSlots(slots)
        self.telemetry = Telemetry()
        self.servicer = FederationServicer(self.coordinator, LAYOUT, self.telemetry, chunk_bytes=CHUNK,
                                           max_payload_bytes=1 << 20)
        agg = aggregator(LAYOUT, self.slots)
        self.aggregation = agg.open_round(agg.initial_state())
        self.task: RoundTask = self.coordinator.open_round(1, b"global", "fp", self.aggregation)
        assert self.task.sampled == frozenset(self.ids)

    def stream(self, client: int, data: bytes, *, announced: int | None = None, weight: float | None = None,
               on_first_data: Callable[[], None] | None = None, gather: bool = False,
               ) -> Iterator[pb.ResultChunk | memoryview]:
        header = pb.ResultHeader(client_id=self.ids[client], task_id=self.task.task_id, round=1,
                                 payload_bytes=len(data) if announced is None else announced,
                                 layout=LAYOUT.fingerprint, metrics={"num_examples": 10.0},
                                 update_weight=float(client + 1) if weight is None else weight)
        yield pb.ResultChunk(header=header)
        first = True
        for message in data_messages(data, CHUNK):
            if first:  # the servicer holds this upload's slot by now
                if on_first_data is not None:
                    on_first_data()
                if gather:
                    self.slots.gather(min(self.slots.count, self.clients), self.clients)
                first = False
            time.sleep(self.chunk_s)
            view = data_of(message)  # what the servicer's deserializer does (see servicer._lenient_chunk)
            assert view is not None
            yield view if self.fast else pb.ResultChunk.FromString(message)

    def submit(self, client: int, data: bytes, context: FakeContext | None = None, **kwargs: Any) -> pb.SubmitReply:
        return self.servicer.SubmitResult(self.stream(client, data, **kwargs), context or FakeContext())

    def update(self) -> np.ndarray:
        task = self.task
        task.deadline = self.coordinator.clock()
        self.coordinator.wait_round(task)
        return self.aggregation.finish().update[0]


@pytest.mark.parametrize(("clients", "slots", "fast"), [(6, 2, True), (6, 1, True), (4, 4, True), (6, 2, False)])
def test_upload_slots_bound_staged_results(clients: int, slots: int, fast: bool) -> None:
    """Clients submitting all at once: at most ``slots`` results are staged at a time (and the
    bound is reached), and every result is accepted and counted as sent."""
    h = Harness(clients, slots, fast=fast)
    start = threading.Barrier(clients)

    def one(i: int) -> pb.SubmitReply:
        start.wait(WAIT)
        return h.submit(i, payload(i), gather=True)

    with ThreadPoolExecutor(max_workers=clients) as pool:
        replies = list(pool.map(one, range(clients), timeout=WAIT))
    assert all(r.accepted for r in replies)
    assert h.slots.most == slots, f"{h.slots.most} results staged at once with {slots} upload slots"
    assert h.slots.held == 0 and sorted(h.task.results) == sorted(h.ids)
    weights = np.arange(1, clients + 1, dtype=np.float64)
    np.testing.assert_allclose(h.update(), (weights * weights).sum() / weights.sum(), rtol=1e-6)


@pytest.mark.parametrize("aggregator", list(AGGREGATORS))
def test_slot_is_given_back_when_a_result_is_refused(aggregator: str) -> None:
    """One slot; three results refused after taking it (cut short, a NaN, a payload weight that is
    not the header's): the slot comes back each time, so a valid result is then received at once,
    and only it counts."""
    h = Harness(4, 1, chunk_s=0.0, fast=False, aggregator=AGGREGATORS[aggregator])
    with pytest.raises(Aborted) as short:
        h.submit(0, payload(0)[:-1], announced=NBYTES)
    assert short.value.code == grpc.StatusCode.INVALID_ARGUMENT and "stream ended after" in short.value.details
    nan = bytearray(payload(1))
    nan[3000:3004] = np.float32(np.nan).tobytes()
    with pytest.raises(Aborted) as bad:
        h.submit(1, bytes(nan))
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT and "NaN or Inf" in bad.value.details
    with pytest.raises(Aborted) as other:  # its weight (2) is not the header's (5)
        h.submit(1, payload(1), weight=5.0)
    assert other.value.code == grpc.StatusCode.INVALID_ARGUMENT and "update_weight" in other.value.details
    assert h.slots.given_back == 3  # all three did hold the slot
    done: list[pb.SubmitReply] = []
    t = threading.Thread(target=lambda: done.append(h.submit(2, payload(2))), daemon=True)
    t.start()
    t.join(WAIT)  # with a leaked slot this would wait for the round's 60 s deadline
    assert done and done[0].accepted
    assert list(h.task.results) == [h.ids[2]] and h.slots.held == 0
    update = h.update()
    assert update.tobytes() == alone(AGGREGATORS[aggregator], payload(2), 3.0).tobytes()  # client 2's alone
    if aggregator == "mean":
        assert np.all(update == np.float32(3))


@pytest.mark.parametrize(
    ("announced", "layout", "weight", "code"),
    [
        (NBYTES - 1, LAYOUT.fingerprint, 1.0, grpc.StatusCode.INVALID_ARGUMENT),
        (NBYTES, "fedcba9876543210", 1.0, grpc.StatusCode.INVALID_ARGUMENT),
        (2 << 20, LAYOUT.fingerprint, 1.0, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (NBYTES, LAYOUT.fingerprint, 0.0, grpc.StatusCode.INVALID_ARGUMENT),
        (NBYTES, LAYOUT.fingerprint, float("nan"), grpc.StatusCode.INVALID_ARGUMENT),
    ],
    ids=["wrong-size", "wrong-layout", "over-limit", "no-weight", "nan-weight"],
)
@pytest.mark.parametrize("aggregator", list(AGGREGATORS))
def test_header_is_refused_without_a_slot_or_a_read(announced: int, layout: str, weight: float,
                                                    code: grpc.StatusCode, aggregator: str) -> None:
    """A result whose header cannot be right is refused before it takes a slot or a byte is read."""
    h = Harness(2, 1, aggregator=AGGREGATORS[aggregator])
    assert h.slots.acquire(timeout=1)  # all slots busy: a refusal must not wait for one

    def stream() -> Iterator[pb.ResultChunk]:
        yield pb.ResultChunk(header=pb.ResultHeader(client_id=h.ids[0], task_id=h.task.task_id, round=1,
                                                    payload_bytes=announced, layout=layout, update_weight=weight))
        raise AssertionError("the payload must not be read")

    started = time.monotonic()
    with pytest.raises(Aborted) as info:
        h.servicer.SubmitResult(stream(), FakeContext())
    assert info.value.code == code
    assert time.monotonic() - started < 5  # did not wait for the slot (the round deadline is 60 s)
    assert h.task.results == {} and h.slots.given_back == 0
    assert h.task.uploading == set()  # the client may upload again


def test_result_waiting_for_a_slot_when_the_round_closes_is_stale() -> None:
    """A result that waits for the only slot until its round's deadline is refused as stale
    (FAILED_PRECONDITION); the upload that held the slot is not disturbed by it."""
    h = Harness(2, 1, deadline_s=0.5, chunk_s=0.0)
    gate = threading.Event()
    holding = threading.Event()

    def slow_first() -> None:
        holding.set()
        assert gate.wait(WAIT)

    first: list[Any] = []

    def run_first() -> None:
        try:
            first.append(h.submit(0, payload(0), on_first_data=slow_first))
        except Aborted as exc:
            first.append(exc)

    t = threading.Thread(target=run_first, daemon=True)
    t.start()
    assert holding.wait(WAIT)  # client 0 holds the only slot, mid-upload
    with pytest.raises(Aborted) as info:
        h.submit(1, payload(1))
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "waited for an upload slot" in info.value.details
    assert h.task.uploading == {h.ids[0]}  # the refused client is no longer streaming
    gate.set()
    t.join(WAIT)
    assert not t.is_alive()
    assert h.slots.most == 1 and h.ids[1] not in h.task.results


def test_stalled_upload_is_cancelled_at_the_deadline_and_gives_back_its_slot() -> None:
    """A client that stops sending mid-upload is cancelled at its round's deadline (not at its own
    call timeout); its slot is given back and nothing of it counts."""
    h = Harness(2, 1, deadline_s=0.5, chunk_s=0.0)
    context = FakeContext()

    def stall() -> None:  # the client stops sending; gRPC fails the read once the call is cancelled
        if context.cancelled.wait(WAIT):
            raise grpc.RpcError()

    started = time.monotonic()
    with pytest.raises(grpc.RpcError):
        h.submit(0, payload(0), context=context, on_first_data=stall)
    assert context.cancelled.is_set()
    assert 0.3 < time.monotonic() - started < WAIT
    assert h.task.results == {} and h.task.uploading == set() and h.aggregation.count == 0
    assert h.slots.held == 0 and h.slots.given_back == 1


def test_finished_upload_is_not_cancelled_later() -> None:
    """The deadline cutoff is stopped once the upload is done: it never cancels a finished call."""
    h = Harness(1, 1, deadline_s=0.3, chunk_s=0.0)
    context = FakeContext()
    assert h.submit(0, payload(0), context=context).accepted
    time.sleep(0.6)  # past the deadline: the cutoff timer must have been stopped
    assert not context.cancelled.is_set()
    assert np.all(h.update() == np.float32(1))
