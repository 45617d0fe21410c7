"""The upload slots bound the server's memory on the buffered path (the robust and dp aggregators,
whose results are received whole and kept until the round ends; the round is opened with
``fold=None``): however many clients submit at once, at most ``upload_slots`` results are being
received and decoded at a time; the others wait for a slot and are then accepted, a slot is given
back when a result is refused, and a result still waiting when its round closes is refused as
stale. (The default ``mean`` aggregator takes no slot: it folds each chunk in as it arrives, see
tests/federation/test_hostile_input.py and tests/services/test_fold.py.) The round-deadline cutoff
of a stalled upload is checked here too. Drives ``FederationServicer.SubmitResult`` directly from
threads (no gRPC server, no TensorFlow)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest

from services.common.chunking import data_messages, data_of
from services.common.proto import federation_pb2 as pb
from services.common.tensors import Layout, LayoutError
from services.server.coordinator import Coordinator, RoundTask
from services.server.servicer import FederationServicer
from services.server.telemetry import Telemetry

NBYTES = 4096
CHUNK = 1024
LAYOUT = Layout(leaves=(), nbytes=NBYTES, fingerprint="0123456789abcdef")  # only size and fingerprint matter here
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


@dataclass
class Value:
    weight: float
    payload: bytes


def weight_of(payload: bytes) -> float:
    """The update_weight the fake decoder reads from a payload (see ``Harness.decode``)."""
    return 1.0 + payload[0]


class CountingCoordinator(Coordinator):
    """A Coordinator that reports each result it accepts (before the servicer gives back the
    result's upload slot: ``submit`` returns first)."""

    def __init__(self, on_accept: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.on_accept = on_accept

    def submit(self, *args: Any, **kwargs: Any) -> None:
        super().submit(*args, **kwargs)
        self.on_accept()


class Live:
    """Counts what is alive at once and remembers the most."""

    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.now = 0
        self.max = 0
        self.done = 0

    def enter(self) -> None:
        with self.cv:
            self.now += 1
            self.max = max(self.max, self.now)
            self.cv.notify_all()

    def leave(self) -> None:
        with self.cv:
            self.now -= 1
            self.done += 1
            self.cv.notify_all()

    def gather(self, target: int, total: int) -> None:
        """Wait until ``target`` are alive at once (or all that are left of ``total`` are), so that
        the contention the test is about does happen however the threads are scheduled."""
        with self.cv:
            assert self.cv.wait_for(lambda: self.now >= target or self.done + self.now >= total, timeout=WAIT)


class Harness:
    def __init__(self, clients: int, slots: int, *, deadline_s: float = 60.0, decode_s: float = 0.05,
                 chunk_s: float = 0.01, fast: bool = True) -> None:
        self.fast = fast  # data chunks as the server's deserializer hands them over: views (or messages)
        self.held = Live()  # from the first byte of a result received until the coordinator accepted it
        self.coordinator = CountingCoordinator(self.held.leave, min_clients=clients, clients_per_round=clients,
                                               round_deadline_s=deadline_s, num_shards=clients,
                                               rng=np.random.default_rng(0))
        self.ids = [self.coordinator.join(f"client-{i}").client_id for i in range(clients)]
        self.decoding = Live()  # inside decode_result
        self.decode_s, self.chunk_s = decode_s, chunk_s
        self.clients, self.slots = clients, slots
        self.telemetry = Telemetry()
        self.servicer = FederationServicer(self.coordinator, LAYOUT, self.decode, self.telemetry,
                                           chunk_bytes=CHUNK, max_payload_bytes=1 << 20, upload_slots=slots)
        # fold=None: the buffered path (robust, dp), the only one the upload slots apply to.
        self.task: RoundTask = self.coordinator.open_round(1, b"global", "fp", fold=None)
        assert self.task.sampled == frozenset(self.ids) and self.task.fold is None

    def decode(self, data: bytearray) -> Value:
        self.decoding.enter()
        try:
            self.decoding.gather(min(self.slots, self.clients), self.clients)
            time.sleep(self.decode_s)
            if data[:3] == b"bad":
                raise LayoutError("update.0 holds NaN or Inf")
            return Value(weight_of(data), bytes(data))
        finally:
            self.decoding.leave()

    @property
    def kept(self) -> list[Value]:
        """The values of the results the coordinator accepted (the buffered path keeps them whole)."""
        return [r.value for r in self.task.results.values()]

    def stream(self, client: int, payload: bytes, *, announced: int | None = None, weight: float | None = None,
               on_first_data: Callable[[], None] | None = None) -> Iterator[pb.ResultChunk | memoryview]:
        header = pb.ResultHeader(client_id=self.ids[client], task_id=self.task.task_id, round=1,
                                 payload_bytes=len(payload) if announced is None else announced,
                                 layout=LAYOUT.fingerprint, metrics={"num_examples": 10.0},
                                 update_weight=weight_of(payload) if weight is None else weight)
        yield pb.ResultChunk(header=header)
        first = True
        for message in data_messages(payload, CHUNK):
            if first:
                self.held.enter()
                if on_first_data is not None:
                    on_first_data()
                first = False
            time.sleep(self.chunk_s)
            view = data_of(message)  # what the servicer's deserializer does (see servicer._lenient_chunk)
            assert view is not None
            yield view if self.fast else pb.ResultChunk.FromString(message)

    def submit(self, client: int, payload: bytes, context: FakeContext | None = None,
               **kwargs: Any) -> pb.SubmitReply:
        return self.servicer.SubmitResult(self.stream(client, payload, **kwargs), context or FakeContext())


def payload(client: int) -> bytes:
    return bytes([client]) * NBYTES


@pytest.mark.parametrize(("clients", "slots", "fast"), [(6, 2, True), (6, 1, True), (4, 4, True), (6, 2, False)])
def test_upload_slots_bound_live_results(clients: int, slots: int, fast: bool) -> None:
    """Clients submitting all at once: at most ``slots`` results are received and decoded at a time
    (and the bound is reached), and every result is accepted and kept as sent."""
    h = Harness(clients, slots, fast=fast)
    start = threading.Barrier(clients)

    def one(i: int) -> pb.SubmitReply:
        start.wait(WAIT)
        return h.submit(i, payload(i))

    with ThreadPoolExecutor(max_workers=clients) as pool:
        replies = list(pool.map(one, range(clients), timeout=WAIT))
    assert all(r.accepted for r in replies)
    assert h.decoding.max <= slots, f"{h.decoding.max} decodes at once with {slots} upload slots"
    assert h.held.max <= slots, f"{h.held.max} results held at once with {slots} upload slots"
    # the bound was reached: the clients did contend (otherwise this test shows nothing)
    assert h.decoding.max == slots and h.held.max == slots
    assert sorted(v.payload for v in h.kept) == sorted(payload(i) for i in range(clients))
    assert sorted(h.task.results) == sorted(h.ids)
    assert all(h.task.results[h.ids[i]].value.weight == weight_of(payload(i)) for i in range(clients))
    assert h.held.now == 0 and h.decoding.now == 0 and h.decoding.done == clients


def test_slot_is_given_back_when_a_result_is_refused() -> None:
    """One slot; three results refused after taking it (cut short, refused by decode, a payload
    weight that is not the header's): the slot comes back each time, so a valid result is then
    received at once, and only it is kept."""
    h = Harness(4, 1, decode_s=0.0, chunk_s=0.0, fast=False)
    with pytest.raises(Aborted) as short:  # the stream ends early: refused while assembling
        h.submit(0, payload(0)[:-1], announced=NBYTES)
    assert short.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(Aborted) as bad:  # refused by decode
        h.submit(1, b"bad" + bytes(NBYTES - 3))
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT and "NaN or Inf" in bad.value.details
    with pytest.raises(Aborted) as other:  # decoded, but its weight (2.0) is not the header's
        h.submit(1, payload(1), weight=5.0)
    assert other.value.code == grpc.StatusCode.INVALID_ARGUMENT and "update_weight" in other.value.details
    assert h.decoding.done == 2  # the last two were decoded, so they did hold the slot
    done: list[pb.SubmitReply] = []
    t = threading.Thread(target=lambda: done.append(h.submit(2, payload(2))), daemon=True)
    t.start()
    t.join(WAIT)  # with a leaked slot this would wait for the round's 60 s deadline
    assert done and done[0].accepted
    assert [v.payload for v in h.kept] == [payload(2)] and list(h.task.results) == [h.ids[2]]
    assert h.servicer.upload_slots.acquire(timeout=0), "a refused result kept its slot"
    h.servicer.upload_slots.release()


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
def test_header_is_refused_without_a_slot_or_a_read(announced: int, layout: str, weight: float,
                                                    code: grpc.StatusCode) -> None:
    """A result whose header cannot be right is refused before it takes a slot or a byte is read."""
    h = Harness(2, 1)
    assert h.servicer.upload_slots.acquire(timeout=1)  # all slots busy: a refusal must not wait for one

    def stream() -> Iterator[pb.ResultChunk]:
        yield pb.ResultChunk(header=pb.ResultHeader(client_id=h.ids[0], task_id=h.task.task_id, round=1,
                                                    payload_bytes=announced, layout=layout, update_weight=weight))
        raise AssertionError("the payload must not be read")

    started = time.monotonic()
    with pytest.raises(Aborted) as info:
        h.servicer.SubmitResult(stream(), FakeContext())
    assert info.value.code == code
    assert time.monotonic() - started < 5  # did not wait for the slot (the round deadline is 60 s)
    assert h.task.results == {} and h.decoding.done == 0
    assert h.task.uploading == set()  # the client may upload again


def test_result_waiting_for_a_slot_when_the_round_closes_is_stale() -> None:
    """A result that waits for the only slot until its round's deadline is refused as stale
    (FAILED_PRECONDITION); the upload that held the slot is not disturbed by it."""
    h = Harness(2, 1, deadline_s=0.5, decode_s=0.0, chunk_s=0.0)
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
    assert h.decoding.max <= 1
    assert h.ids[1] not in h.task.results


def test_stalled_upload_is_cancelled_at_the_deadline_and_gives_back_its_slot() -> None:
    """A client that stops sending mid-upload is cancelled at its round's deadline (not at its own
    call timeout); its slot is given back and nothing of it is kept."""
    h = Harness(2, 1, deadline_s=0.5, decode_s=0.0, chunk_s=0.0)
    context = FakeContext()

    def stall() -> None:  # the client stops sending; gRPC fails the read once the call is cancelled
        if context.cancelled.wait(WAIT):
            raise grpc.RpcError()

    started = time.monotonic()
    with pytest.raises(grpc.RpcError):
        h.submit(0, payload(0), context=context, on_first_data=stall)
    assert context.cancelled.is_set()
    assert 0.3 < time.monotonic() - started < WAIT
    assert h.decoding.max == 0 and h.task.results == {}
    assert h.task.uploading == set()
    assert h.servicer.upload_slots.acquire(timeout=0), "the cancelled upload kept its slot"
    h.servicer.upload_slots.release()


def test_finished_upload_is_not_cancelled_later() -> None:
    """The deadline cutoff is stopped once the upload is done: it never cancels a finished call."""
    h = Harness(1, 1, deadline_s=0.3, decode_s=0.0, chunk_s=0.0)
    context = FakeContext()
    assert h.submit(0, payload(0), context=context).accepted
    assert [v.payload for v in h.kept] == [payload(0)]
    time.sleep(0.6)  # past the deadline: the cutoff timer must have been stopped
    assert not context.cancelled.is_set()
