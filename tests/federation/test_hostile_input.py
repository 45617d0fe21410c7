"""Hostile input: whatever a peer sends, the server answers with a precise gRPC status, the open
round keeps only valid results, no NaN or Inf a peer sends (and nothing outside the layout)
reaches the round's aggregate, and the global model is untouched.

In-process but real: the server's own FederationServicer, Coordinator, Telemetry, wire layout
(``tensors.Layout`` of the task's ``ClientResult`` type) and aggregation seam
(services/server/aggregation, here with the default ``mean`` aggregator: each result is staged
chunk by chunk as it arrives, every chunk checked, and added to the round's running sum only once
it is complete and accepted), served by a gRPC server on loopback and driven through a gRPC stub,
so every request goes through gRPC framing and deserialization.

A result is the ClientResult's tensors back to back in the server's layout (float32
update.0[64,32], update.1[32], update.2[32,10], update.3[10], then update_weight), announced by a
header that names the layout's fingerprint, the exact byte count and the update_weight (which the
payload's last float32 must equal). The peer chooses no type, shape or dtype, and nothing it sends
is parsed beyond protobuf framing: the cases that attacked the old TFF Value-proto decoding (wrong
types, lying shapes, a tf.data GraphDef) are now either a size or fingerprint mismatch or plain
numbers, which the tests below show.

A refused upload is never a result, and nothing of it counts: whatever it delivered before it was
refused (or cut off, or the round closed) was only staged, and the round's sum, count and total
weight are exactly what they would be had it never been sent. The tests check exactly that."""

from __future__ import annotations

import collections
import pickle
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.config import ModelSettings, TrainingSettings
from services.common.proto import federation_pb2 as pb
from services.common.proto import federation_pb2_grpc as pb_grpc
from services.common.transport import SERVICE_NAME

tff = pytest.importorskip("tensorflow_federated")

from support.aggregation import free_slots  # noqa: E402
from support.digits import task as digits_task  # noqa: E402

from services.common import tensors  # noqa: E402  (after TFF: the layout is derived from TFF types)
from services.server.aggregation import RoundAggregation, Slots  # noqa: E402
from services.server.aggregation.mean import Mean  # noqa: E402
from services.server.coordinator import Coordinator, RoundTask  # noqa: E402
from services.server.servicer import MAX_METRICS, FederationServicer, add_to_server  # noqa: E402
from services.server.telemetry import Telemetry  # noqa: E402

AREA = "hostile input"
MAX_PAYLOAD = 64 * 1024  # server.max_payload_bytes for these tests (a valid result is 9644 bytes)
UPLOAD_SLOTS = 2  # server.upload_slots (its default)
CHUNK = 4096
UPDATE_ELEMENTS = 2410  # float32 numbers in a ClientResult's update (64*32 + 32 + 32*10 + 10)
WEIGHT = 10.0  # the update_weight of the valid results below
CALL_TIMEOUT_S = 20  # a hang is a failure (DEADLINE_EXCEEDED is not an allowed answer)
OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
}


@dataclass
class Wire:
    servicer: FederationServicer
    telemetry: Telemetry
    stub: pb_grpc.FederationStub
    channel: grpc.Channel
    layout: tensors.Layout  # of the ClientResult the server expects
    weights_layout: tensors.Layout  # of the ModelWeights it sends
    global_parts: tuple[memoryview, ...]  # the initial global model as the server holds it: a view per tensor
    global_weights: bytes  # the same, joined: its wire layout
    other_layout: tensors.Layout  # a ClientResult of another model (hidden_units 16)
    aggregator: Mean  # the server's aggregator (its upload slots span rounds)

    def raw(self, method: str, streaming: bool) -> Callable[..., Any]:
        """A call that sends bytes as they are, so they can be anything but protobuf."""
        path = f"/{SERVICE_NAME}/{method}"
        ident: Callable[[bytes], bytes] = lambda b: b  # noqa: E731
        if streaming:
            return self.channel.stream_unary(path, request_serializer=ident, response_deserializer=ident)
        return self.channel.unary_unary(path, request_serializer=ident, response_deserializer=ident)

    def leaf(self, path: str) -> tensors.Leaf:
        return next(leaf for leaf in self.layout.leaves if leaf.path == path)

    def free_slots(self) -> int:
        """Upload slots not held right now (all of them when no upload is in flight)."""
        return free_slots(self.aggregator.slots)


@pytest.fixture(scope="module")
def wire() -> Iterator[Wire]:
    task = digits_task(TrainingSettings())
    layout = tensors.Layout.of(task.result_type)
    weights_layout = tensors.Layout.of(task.weights_type)
    initial = tensors.flatten(task.initial_weights())
    global_parts = weights_layout.parts([tensors.aligned_copy(a, leaf.dtype)
                                         for a, leaf in zip(initial, weights_layout.leaves, strict=True)])
    global_weights = b"".join(global_parts)
    assert global_weights == bytes(weights_layout.encode(initial))
    other_layout = tensors.Layout.of(digits_task(TrainingSettings(), ModelSettings(hidden_units=16)).result_type)
    assert [leaf.path for leaf in layout.leaves] == ["update.0", "update.1", "update.2", "update.3", "update_weight"]
    assert layout.nbytes == 9644 and weights_layout.nbytes == 9640 and other_layout.fingerprint != layout.fingerprint
    assert sum(int(np.prod(leaf.shape)) for leaf in layout.leaves[:-1]) == UPDATE_ELEMENTS
    telemetry = Telemetry()
    servicer = FederationServicer(new_coordinator(), layout, telemetry, chunk_bytes=CHUNK,
                                  max_payload_bytes=MAX_PAYLOAD, poll_s=0.2)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    add_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Wire(servicer, telemetry, pb_grpc.FederationStub(channel), channel, layout, weights_layout,
                   global_parts, global_weights, other_layout, Mean(layout, Slots(UPLOAD_SLOTS)))
    finally:
        channel.close()
        server.stop(None).wait()


def new_coordinator(clients: int = 2, deadline_s: float = 600) -> Coordinator:
    return Coordinator(min_clients=clients, clients_per_round=clients, round_deadline_s=deadline_s,
                       num_shards=clients, rng=np.random.default_rng(0))


@dataclass
class Round:
    """An open round with two sampled clients (alice, bob) and a third, unsampled one (carol),
    whose results stream into a real ``mean`` aggregation (as the server's default aggregator)."""

    wire: Wire
    coordinator: Coordinator
    alice: str
    bob: str
    carol: str
    task: RoundTask = field(init=False)
    aggregation: RoundAggregation = field(init=False)

    def open(self, number: int) -> RoundTask:
        self.aggregation = self.wire.aggregator.open_round(self.wire.aggregator.initial_state())
        self.task = self.coordinator.open_round(number, self.wire.global_parts,
                                                self.wire.weights_layout.fingerprint, self.aggregation)
        assert self.task.aggregation is self.aggregation
        return self.task

    def close(self, task: RoundTask) -> dict[str, Any]:
        """What the server's round loop does: wait for the round to close (which closes its
        aggregation: uploads still streaming in are refused from then on)."""
        return self.coordinator.wait_round(task)

    def current(self) -> RoundTask:
        task = self.coordinator._task
        assert task is not None
        return task


def open_round(wire: Wire) -> Round:
    coordinator = new_coordinator()
    wire.servicer.coordinator = coordinator
    alice, bob = coordinator.join("alice").client_id, coordinator.join("bob").client_id
    rnd = Round(wire, coordinator, alice, bob, "")
    task = rnd.open(1)
    assert task.sampled == {alice, bob}
    rnd.carol = coordinator.join("carol").client_id
    return rnd


@pytest.fixture
def rnd(wire: Wire) -> Round:
    return open_round(wire)


# ---- building results ---------------------------------------------------------------------------
def update_arrays(wire: Wire, fill: float = 0.01) -> list[np.ndarray]:
    return [np.full(leaf.shape, fill, leaf.dtype) for leaf in wire.layout.leaves[:-1]]


def valid_bytes(wire: Wire, fill: float = 0.01, weight: float = WEIGHT) -> bytes:
    return bytes(wire.layout.encode([*update_arrays(wire, fill), np.float32(weight)]))


def trailing_weight(data: bytes) -> float:
    """What a truthful header says the update_weight is: the payload's last float32 (or WEIGHT for
    a payload too short to hold one)."""
    return float(np.frombuffer(data[-4:], "<f4")[0]) if len(data) >= 4 else WEIGHT


# ---- what the round's running sum holds ----------------------------------------------------------
def sums(aggregation: RoundAggregation) -> np.ndarray:
    """The running sum of the committed results, flattened over the update's leaves (a copy)."""
    assert aggregation.sums is not None
    return np.concatenate([s.reshape(-1) for s in aggregation.sums])


def total_weight(aggregation: RoundAggregation) -> float:
    return sum(c.notes["weight"] for c in aggregation.contributions)


def scaled(data: bytes, weight: float, elements: int = UPDATE_ELEMENTS) -> np.ndarray:
    """What committing the first ``elements`` update numbers of ``data`` with ``weight`` adds to an
    empty sum, computed as the server does (float32 times float32, added to zeros)."""
    values = np.frombuffer(data, "<f4", elements)
    with np.errstate(over="ignore"):  # a huge finite weight may overflow to Inf, on the server too
        return np.zeros(elements, np.float32) + values * np.float32(weight)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.all(a.view("<u4") == b.view("<u4")))


def nothing_counted(aggregation: RoundAggregation) -> bool:
    """No result committed, no weight, and the running sum all zeros: as if nothing was sent."""
    return aggregation.count == 0 and total_weight(aggregation) == 0 and not sums(aggregation).any()


def assert_sum_after_one_upload(rnd: Round, accepted: bool, data: bytes, weight: float) -> None:
    """The round's aggregate after one upload whose data (as the server read it, in order) was
    ``data`` under a header with ``weight``. Accepted: one result whose update, times its weight, is
    the sum bit for bit. Refused: nothing at all (whatever it delivered was only staged)."""
    aggregation = rnd.aggregation
    if accepted:
        assert aggregation.count == 1 and total_weight(aggregation) == np.float32(weight)
        assert same_bits(sums(aggregation), scaled(data, weight))
    else:
        assert nothing_counted(aggregation)


def with_bits(wire: Wire, path: str, index: int, *, value: float | None = None, bits: int | None = None) -> bytes:
    """A valid result whose element ``index`` of leaf ``path`` is ``value`` (or the float32 bit
    pattern ``bits``): the layout's encoder does not check values, the server's decoder does."""
    leaf = wire.leaf(path)
    count = int(np.prod(leaf.shape, dtype=np.int64))
    data = bytearray(valid_bytes(wire))
    at = leaf.offset + (index % count) * leaf.dtype.itemsize
    data[at : at + 4] = struct.pack("<f", value) if bits is None else struct.pack("<I", bits)
    return bytes(data)


def header(rnd: Round, data: bytes, **override: Any) -> pb.ResultHeader:
    """A truthful header for ``data`` (size, layout, update_weight), from alice; ``override``
    changes fields."""
    task = rnd.current()
    fields: dict[str, Any] = dict(
        client_id=rnd.alice, task_id=task.task_id, round=task.round, payload_bytes=len(data),
        layout=rnd.wire.layout.fingerprint, metrics={"num_examples": 10.0, "train_loss": 0.5},
        update_weight=trailing_weight(data),
    )
    fields.update(override)
    return pb.ResultHeader(**fields)


def stream(hdr: pb.ResultHeader | None, data: bytes, chunk: int = CHUNK) -> list[pb.ResultChunk]:
    out = [pb.ResultChunk(header=hdr)] if hdr is not None else []
    return out + [pb.ResultChunk(data=data[i : i + chunk]) for i in range(0, len(data), chunk)]


def call(fn: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    try:
        fn()
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return OK, ""


def submit(wire: Wire, chunks: Sequence[pb.ResultChunk]) -> tuple[grpc.StatusCode, str]:
    return call(lambda: wire.stub.SubmitResult(iter(list(chunks)), timeout=CALL_TIMEOUT_S))


def send_valid(wire: Wire, rnd: Round, client: str, fill: float = 0.02) -> tuple[grpc.StatusCode, str]:
    data = valid_bytes(wire, fill)
    return submit(wire, stream(header(rnd, data, client_id=client), data))


def stable(detail: str) -> str:
    """A status detail without ids or fingerprints, short enough for the table."""
    detail = re.sub(r"'[0-9a-f]{16}'", "'<16 hex>'", detail)
    return detail if len(detail) <= 110 else detail[:107] + "..."


def assert_unaffected(wire: Wire, rnd: Round, client: str) -> str:
    """The refused request left no result in the round and nothing in its aggregate (no count, no
    weight, the running sum all zeros), and held no upload slot; the global model is what the
    round began with. Then the same client's valid result is still accepted, and the round's
    update is exactly that result's (the aggregation is finished afterwards)."""
    task, aggregation = rnd.current(), rnd.aggregation
    assert task.results == {} and task.uploading == set()
    assert nothing_counted(aggregation)
    assert b"".join(task.payload) == wire.global_weights and task.layout == wire.weights_layout.fingerprint
    assert wire.free_slots() == UPLOAD_SLOTS
    if client not in task.sampled:
        client = min(task.sampled - set(task.results))
    assert send_valid(wire, rnd, client, fill=0.02) == (OK, "")
    assert list(task.results) == [client]
    assert aggregation.count == 1 and total_weight(aggregation) == np.float32(WEIGHT)
    assert same_bits(sums(aggregation), scaled(valid_bytes(wire, 0.02), WEIGHT))  # exactly that result, once
    assert wire.free_slots() == UPLOAD_SLOTS
    aggregation.close()
    update = np.concatenate([u.reshape(-1) for u in aggregation.finish().update])
    assert np.all(update == np.float32(0.02))  # 0.02 x 10 / 10: the valid result alone, bit for bit
    return "round and aggregate unchanged; a valid result was accepted afterwards"


def rejected(wire: Wire) -> dict[str, int]:
    return dict(wire.telemetry.rejected)


# ---- the cases: (name, what is sent, expected status) -----------------------------------------
@dataclass(frozen=True)
class Case:
    name: str
    done: str
    build: Callable[[Wire, Round], list[pb.ResultChunk]]
    expected: grpc.StatusCode
    on_header: bool = False  # refused on the header alone: not a byte of data is read


def payload_case(name: str, done: str, data: Callable[[Wire], bytes],
                 expected: grpc.StatusCode = INVALID, **override: Any) -> Case:
    """A truthful header (the server's layout fingerprint, the exact size sent) around a bad
    payload; ``override`` changes header fields (a callable gets the wire)."""

    def build(wire: Wire, rnd: Round) -> list[pb.ResultChunk]:
        body = data(wire)
        resolved = {k: (v(wire) if callable(v) else v) for k, v in override.items()}
        return stream(header(rnd, body, **resolved), body)

    return Case(name, done, build, expected)


def header_case(name: str, done: str, expected: grpc.StatusCode, **override: Any) -> Case:
    """A valid payload under a header with ``override`` (a callable gets the wire and the round)."""

    def build(wire: Wire, rnd: Round) -> list[pb.ResultChunk]:
        body = valid_bytes(wire)
        resolved = {k: (v(wire, rnd) if callable(v) else v) for k, v in override.items()}
        return stream(header(rnd, body, **resolved), body)

    return Case(name, done, build, expected, on_header=True)


def sent_case(name: str, done: str, sent: Callable[[bytes], bytes]) -> Case:
    """A header announcing exactly a valid result, followed by ``sent(valid)`` instead."""

    def build(wire: Wire, rnd: Round) -> list[pb.ResultChunk]:
        body = valid_bytes(wire)
        return stream(header(rnd, body), sent(body))

    return Case(name, done, build, INVALID)


def other_model_result(wire: Wire) -> bytes:
    """A valid ClientResult of another model (hidden_units 16, 4844 bytes)."""
    return bytes(wire.other_layout.encode([np.full(leaf.shape, 0.01, leaf.dtype) for leaf in wire.other_layout.leaves]))


def float64_update(wire: Wire) -> bytes:
    """update.0 as float64 (the same numbers, twice the bytes), the rest as the layout says."""
    arrays = update_arrays(wire)
    return arrays[0].astype("<f8").tobytes() + valid_bytes(wire)[wire.leaf("update.1").offset :]


def oversized(wire: Wire) -> bytes:
    return valid_bytes(wire) * 11  # ~104 KB > MAX_PAYLOAD


def flipped(fingerprint: str) -> str:
    return fingerprint[:-1] + ("0" if fingerprint[-1] != "0" else "1")


CASES = [
    # The layout: the fingerprint and the exact size are checked before a byte is received.
    payload_case("result of another model", "a valid ClientResult of a 16-unit model (4844 bytes) under that "
                 "model's layout fingerprint", other_model_result, layout=lambda w: w.other_layout.fingerprint),
    header_case("layout fingerprint altered", "a valid result; the header's layout fingerprint has its last "
                "hex digit changed", INVALID, layout=lambda w, r: flipped(w.layout.fingerprint)),
    header_case("no layout fingerprint", "a valid result; the header's layout is empty (as from a client of "
                "the previous wire format)", INVALID, layout=""),
    payload_case("model weights sent back", "the global ModelWeights (9640 bytes) under the ModelWeights layout "
                 "fingerprint", lambda w: w.global_weights, layout=lambda w: w.weights_layout.fingerprint),
    payload_case("model weights under the result's fingerprint", "the global ModelWeights (9640 bytes, 4 short "
                 "of a ClientResult) under the ClientResult fingerprint", lambda w: w.global_weights),
    payload_case("another model's result under this fingerprint", "a 16-unit model's ClientResult (4844 bytes) "
                 "under this model's fingerprint", other_model_result),
    payload_case("float64 update", "update.0 as float64 (8192 more bytes), truthfully announced", float64_update),
    payload_case("payload_bytes one short", "the valid result less its last byte, announced as such",
                 lambda w: valid_bytes(w)[:-1]),
    payload_case("payload_bytes one over", "the valid result and one more byte, announced as such",
                 lambda w: valid_bytes(w) + b"\0"),
    payload_case("empty payload", "a zero-byte payload, announced as such", lambda w: b""),
    # The stream against its own header.
    sent_case("stream shorter than announced", "header announces 9644 bytes, 9643 follow", lambda b: b[:-1]),
    sent_case("stream longer than announced", "header announces 9644 bytes, 9645 follow", lambda b: b + b"\0"),
    sent_case("stream twice as long as announced", "header announces 9644 bytes, the payload follows twice",
              lambda b: b + b),
    sent_case("header without data", "header announces 9644 bytes, no data chunk follows", lambda b: b""),
    header_case("announced size over max_payload_bytes", "header announces 1 GiB, then a valid payload",
                grpc.StatusCode.RESOURCE_EXHAUSTED, payload_bytes=1 << 30),
    payload_case("payload over max_payload_bytes", f"a truthfully announced ~104 KB payload (limit {MAX_PAYLOAD} "
                 "bytes)", oversized, grpc.StatusCode.RESOURCE_EXHAUSTED),
    header_case("negative announced size", "header payload_bytes = -1", INVALID, payload_bytes=-1),
    header_case("most negative announced size", "header payload_bytes = -2^63", INVALID, payload_bytes=-(2**63)),
    # The numbers: floats must be finite, the weight > 0. Each data chunk is checked before any of
    # it is added to the round's sum, so a refused upload leaves at most the chunks before the bad one.
    payload_case("NaN in update", "update.0[0] = NaN", lambda w: with_bits(w, "update.0", 0, value=float("nan"))),
    payload_case("+Inf in update", "the last element of update.1 = +Inf",
                 lambda w: with_bits(w, "update.1", -1, value=float("inf"))),
    payload_case("-Inf in update", "update.3[4] = -Inf", lambda w: with_bits(w, "update.3", 4, value=float("-inf"))),
    payload_case("signalling NaN in update", "update.2[100] = bit pattern 0x7f800001",
                 lambda w: with_bits(w, "update.2", 100, bits=0x7F800001)),
    payload_case("negative NaN with payload bits", "update.0[2047] = bit pattern 0xffc00bad",
                 lambda w: with_bits(w, "update.0", 2047, bits=0xFFC00BAD)),
    # The weight travels twice: in the header (checked before any data is read) and as the
    # payload's last float32 (which must equal the header's).
    payload_case("NaN weight", "update_weight = NaN, in the payload and the header",
                 lambda w: valid_bytes(w, weight=float("nan"))),
    payload_case("+Inf weight", "update_weight = +Inf, in the payload and the header",
                 lambda w: valid_bytes(w, weight=float("inf"))),
    payload_case("-Inf weight", "update_weight = -Inf, in the payload and the header",
                 lambda w: valid_bytes(w, weight=float("-inf"))),
    payload_case("zero weight", "update_weight = 0, in the payload and the header", lambda w: valid_bytes(w, weight=0.0)),
    payload_case("negative zero weight", "update_weight = -0.0, in the payload and the header",
                 lambda w: valid_bytes(w, weight=-0.0)),
    payload_case("negative weight", "update_weight = -5, in the payload and the header",
                 lambda w: valid_bytes(w, weight=-5.0)),
    header_case("header without update_weight", "a valid result (weight 10); the header leaves update_weight "
                "unset (0, as from a client of the previous version)", INVALID, update_weight=0.0),
    header_case("negative header weight", "a valid result (weight 10); header update_weight = -10", INVALID,
                update_weight=-10.0),
    header_case("NaN header weight", "a valid result (weight 10); header update_weight = NaN", INVALID,
                update_weight=float("nan")),
    header_case("+Inf header weight", "a valid result (weight 10); header update_weight = +Inf", INVALID,
                update_weight=float("inf")),
    header_case("header weight past float32", "a valid result (weight 10); header update_weight = 1e39 (Inf as "
                "float32)", INVALID, update_weight=1e39),
    header_case("header weight below float32", "a valid result (weight 10); header update_weight = 1e-46 (0 as "
                "float32)", INVALID, update_weight=1e-46),
    payload_case("NaN weight in the payload only", "update_weight = NaN in the payload; the header says 10",
                 lambda w: valid_bytes(w, weight=float("nan")), update_weight=WEIGHT),
    payload_case("zero weight in the payload only", "update_weight = 0 in the payload; the header says 10",
                 lambda w: valid_bytes(w, weight=0.0), update_weight=WEIGHT),
    # The metrics in the header.
    header_case("NaN metric", "metrics {train_loss: NaN}", INVALID, metrics={"train_loss": float("nan")}),
    header_case("Inf metric", "metrics {train_loss: +Inf}", INVALID, metrics={"train_loss": float("inf")}),
    header_case("too many metrics", f"{MAX_METRICS + 1} metrics (limit {MAX_METRICS})", INVALID,
                metrics={f"m{i}": 1.0 for i in range(MAX_METRICS + 1)}),
    header_case("evaluation metrics unasked", "a valid result with ev_loss_0 = 1 in a round that asked for no "
                "federated evaluation", INVALID, metrics={"ev_loss_0": 1.0}),
    header_case("bad metric name", "metric named `rm -rf /`", INVALID, metrics={"rm -rf /": 1.0}),
    header_case("metric name too long", "a metric name of 65 characters (limit 64)", INVALID,
                metrics={"m" * 65: 1.0}),
    # Who sends it, for which task.
    header_case("unknown client id", "a client id the server never issued", grpc.StatusCode.NOT_FOUND,
                client_id="0123456789abcdef"),
    header_case("empty client id", "client_id = ''", grpc.StatusCode.NOT_FOUND, client_id=""),
    header_case("stale task id", "the round's number with another task id", grpc.StatusCode.FAILED_PRECONDITION,
                task_id="feedfacefeedface"),
    header_case("stale round number", "the open task id with round 0", grpc.StatusCode.FAILED_PRECONDITION,
                round=0),
    header_case("future round number", "the open task id with round 2", grpc.StatusCode.FAILED_PRECONDITION,
                round=2),
    header_case("client not sampled", "a joined client that was not sampled submits",
                grpc.StatusCode.FAILED_PRECONDITION, client_id=lambda w, r: r.carol),
    # The order of the stream's messages.
    Case("stream without header", "only data chunks", lambda w, r: stream(None, valid_bytes(w)), INVALID),
    Case("empty stream", "no chunks at all", lambda w, r: [], INVALID),
    Case("data before header", "a data chunk, then the header and payload",
         lambda w, r: [pb.ResultChunk(data=b"x"), *stream(header(r, valid_bytes(w)), valid_bytes(w))], INVALID),
    Case("second header", "header, a second header, then the payload",
         lambda w, r: [pb.ResultChunk(header=header(r, valid_bytes(w))),
                       *stream(header(r, valid_bytes(w)), valid_bytes(w))], INVALID),
    Case("empty chunk oneof", "header, then a chunk with neither header nor data",
         lambda w, r: [pb.ResultChunk(header=header(r, valid_bytes(w))), pb.ResultChunk()], INVALID),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_result_is_refused_and_round_unaffected(wire: Wire, rnd: Round, case: Case, faults) -> None:
    """Each bad result is refused with its status, counted in the server's metrics, and leaves
    nothing in the round (no result, no weight, nothing in the sum, whatever it delivered before it
    was refused); one refused on its header was not read at all."""
    before, received = rejected(wire), wire.telemetry.bytes_in
    code, detail = submit(wire, case.build(wire, rnd))
    assert code == case.expected, detail
    assert rnd.current().results == {} and nothing_counted(rnd.aggregation)
    assert sum(rejected(wire).values()) == sum(before.values()) + 1  # counted in the server's metrics
    if case.on_header:
        assert wire.telemetry.bytes_in == received
    faults.record(AREA, case.name, case.done, case.expected.name,
                  f"{code.name} ({stable(detail)}); {assert_unaffected(wire, rnd, rnd.alice)}")


def test_chunk_over_grpc_message_limit(wire: Wire, rnd: Round, faults) -> None:
    body = valid_bytes(wire)
    code, detail = submit(wire, [pb.ResultChunk(header=header(rnd, body)), pb.ResultChunk(data=b"\0" * (5 << 20))])
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, detail
    faults.record(AREA, "chunk over gRPC's 4 MiB message limit", "one 5 MiB data chunk after a valid header",
                  "RESOURCE_EXHAUSTED", f"{code.name} (gRPC refuses the message); {assert_unaffected(wire, rnd, rnd.alice)}")


def test_result_from_a_client_of_the_previous_wire_format(wire: Wire, rnd: Round, faults) -> None:
    """A client of the previous version: its result is a serialized TFF Value proto and its header
    carries payload_sha256 (field 5, now reserved) and no layout. The server must refuse it on the
    layout alone (never parse the payload), however the unknown field is treated."""
    value = collections.OrderedDict(update=update_arrays(wire), update_weight=np.float32(10))
    proto, _ = tff.framework.serialize_value(value, tff.StructType([
        ("update", tff.StructType([tff.TensorType(np.float32, leaf.shape) for leaf in wire.layout.leaves[:-1]])),
        ("update_weight", tff.TensorType(np.float32, ())),
    ]))
    body = proto.SerializeToString()
    # No layout and no update_weight (field 8): neither existed then.
    old = header(rnd, body, layout="", update_weight=0.0).SerializeToString() + b"\x2a\x20" + bytes(32)  # field 5
    old_header = pb.ResultHeader.FromString(old)
    assert old_header.layout == "" and old_header.payload_bytes == len(body) != wire.layout.nbytes
    assert old_header.update_weight == 0
    code, detail = submit(wire, stream(old_header, body))
    assert code == INVALID and "layout ''" in detail, detail
    faults.record(AREA, "result from a client of the previous wire format", f"a ClientResult as a serialized TFF "
                  f"Value proto ({len(body)} bytes) under a header with payload_sha256 (field 5, now reserved) and "
                  "no layout", "INVALID_ARGUMENT, on the header alone",
                  f"{code.name} ({stable(detail)}); {assert_unaffected(wire, rnd, rnd.alice)}")


# ---- no type, shape or dtype on the wire: foreign bytes of the right size are only numbers -------
class _Unpickled:
    """Pickles to a program that creates ``path`` when unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def fit(blob: bytes, size: int) -> bytes:
    """``blob`` repeated and cut to ``size`` bytes."""
    return (blob * (size // max(1, len(blob)) + 1))[:size]


def as_result(wire: Wire, update_region: bytes, weight: float = 1.0) -> bytes:
    return fit(update_region, wire.leaf("update_weight").offset) + struct.pack("<f", weight)


def graphdef_bytes(wire: Wire, tmp: Path) -> bytes:
    """The old attack: a TFF Value proto of kind sequence (a serialized tf.data GraphDef, which the
    Value-proto decoder had to load to build the dataset), filling the update."""
    import tensorflow as tf

    proto, _ = tff.framework.serialize_value(tf.data.Dataset.range(3), tff.SequenceType(np.int64))
    return as_result(wire, proto.SerializeToString())


def pickle_bytes(wire: Wire, tmp: Path) -> bytes:
    """A pickle that creates a file when unpickled, zero-padded into the update."""
    blob = pickle.dumps(_Unpickled(tmp / "unpickled"))
    return as_result(wire, blob + bytes(wire.layout.nbytes))


def random_bytes(wire: Wire, tmp: Path) -> bytes:
    return np.random.default_rng(1).bytes(wire.layout.nbytes)


FOREIGN = [
    ("tf.data GraphDef as a result", "a TFF Value proto of a tf.data dataset (the GraphDef the old Value-proto "
     "decoder loaded), repeated to fill the update; weight 1", graphdef_bytes),
    ("pickle as a result", "a pickle that creates a file when unpickled, zero-padded to fill the update; weight 1",
     pickle_bytes),
    ("random bytes of the right size", "9644 random bytes (fixed seed) under a truthful header", random_bytes),
]


@pytest.mark.parametrize("name, done, make", FOREIGN, ids=[f[0] for f in FOREIGN])
def test_foreign_bytes_are_only_numbers(wire: Wire, rnd: Round, tmp_path: Path, monkeypatch, name: str,
                                        done: str, make: Callable[[Wire, Path], bytes], faults) -> None:
    """Any bytes of the right size are a ClientResult's float32 numbers in the server's layout (the
    header truthfully states their last float32 as the weight): accepted exactly when they are
    finite with a weight > 0, and then added in bit for bit; nothing is parsed, loaded or run (no
    GraphDef import, no dataset, no unpickling)."""
    import tensorflow as tf
    from tensorflow_federated.python.core.impl.executors import value_serialization

    loaded: list[str] = []
    real_dataset, real_import = value_serialization._deserialize_dataset_from_graph_def, tf.graph_util.import_graph_def
    monkeypatch.setattr(value_serialization, "_deserialize_dataset_from_graph_def",
                        lambda *a, **k: loaded.append("dataset") or real_dataset(*a, **k))
    monkeypatch.setattr(tf.graph_util, "import_graph_def", lambda *a, **k: loaded.append("graph") or real_import(*a, **k))
    body = make(wire, tmp_path)
    numbers = np.frombuffer(body, "<f4")
    finite, weight = bool(np.isfinite(numbers).all()), float(numbers[-1])
    expected = OK if finite and weight > 0 else INVALID
    code, detail = submit(wire, stream(header(rnd, body), body))
    assert code == expected, detail
    assert loaded == [] and not (tmp_path / "unpickled").exists()
    assert_sum_after_one_upload(rnd, code == OK, body, weight)  # accepted: the update times its weight, bit for bit
    if code == OK:
        observed = "OK: read as finite float32 numbers and added to the round's sum bit for bit"
    elif weight > 0:
        assert "NaN or Inf" in detail, detail
        observed = f"{code.name} ({stable(detail)}): read as float32 numbers, some of them not finite"
    else:
        assert "update_weight must be a finite number > 0" in detail, detail
        observed = f"{code.name} ({stable(detail)}): read as float32 numbers, the last one (the weight) not > 0"
    faults.record(AREA, name, done, "no parsing: the bytes are float32 numbers, accepted iff finite with weight > 0",
                  f"{observed}; nothing loaded, unpickled or run")


def test_shape_and_dtype_are_the_servers(wire: Wire, rnd: Round, faults) -> None:
    """Shapes and dtypes come from the server's type, never from the peer: a transposed kernel or
    an int32 tensor of the same byte size are read as the float32 tensors the layout says."""
    transposed = np.arange(32 * 64, dtype=np.float32).reshape(32, 64) / 4096
    ints = np.arange(1, 11, dtype=np.int32)
    arrays = update_arrays(wire)
    body = bytearray(valid_bytes(wire))
    for leaf, array in ((wire.leaf("update.0"), transposed), (wire.leaf("update.3"), ints)):
        raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
        assert len(raw) == leaf.nbytes
        body[leaf.offset : leaf.offset + len(raw)] = raw
    code, detail = submit(wire, stream(header(rnd, bytes(body)), bytes(body)))
    assert code == OK, detail
    assert_sum_after_one_upload(rnd, True, bytes(body), WEIGHT)
    rnd.aggregation.close()
    mean = rnd.aggregation.finish().update  # of this one result: its update (x * 10 / 10 is exact for these)
    assert [(u.shape, u.dtype) for u in mean] == [(a.shape, np.dtype(np.float32)) for a in arrays]
    np.testing.assert_array_equal(mean[0], transposed.reshape(64, 32))
    assert mean[3].view(np.int32).tolist() == ints.tolist()  # 1.4e-45 ... 1.4e-44 as float32
    faults.record(AREA, "wrong shape or dtype", "update.0 as a transposed float32[32,64] and update.3 as int32[10] "
                  "(the same byte sizes)", "no shape or dtype on the wire: read as the server's float32 tensors",
                  "OK: update.0 read as float32[64,32] (the same numbers in C order), update.3's int32 bits read "
                  "as float32 (denormals); nothing the peer sends selects a type")


# ---- protobuf-level and protocol-level attacks ---------------------------------------------------
@pytest.mark.parametrize("raw, name", [
    (b"\xff\xff\xff\xff", "garbage bytes"),
    (b"\x0a\x05\x0a\x03", "truncated nested message"),
    (b"\x12\x80\x80\x80\x80\x10", "length prefix past the end"),
])
def test_malformed_request_messages(wire: Wire, rnd: Round, raw: bytes, name: str, faults) -> None:
    """Request messages that are not protobuf at all, on every method."""
    observed = []
    for method, streaming, args in (
        ("Join", False, raw),
        ("GetTask", False, raw),
        ("SubmitResult", True, iter([raw])),
    ):
        code, detail = call(lambda m=method, s=streaming, a=args: wire.raw(m, s)(a, timeout=CALL_TIMEOUT_S))
        assert code == INVALID, (method, code, detail)
        observed.append(f"{method}: {code.name}")
    # A valid header followed by a chunk that is not a ResultChunk.
    body = valid_bytes(wire)
    code, detail = call(lambda: wire.raw("SubmitResult", True)(
        iter([pb.ResultChunk(header=header(rnd, body)).SerializeToString(), raw]), timeout=CALL_TIMEOUT_S))
    assert code == INVALID, detail
    observed.append(f"data chunk: {code.name}")
    faults.record(AREA, f"malformed request message ({name})", f"{raw!r} as the request message of Join, "
                  "GetTask, SubmitResult (first and later chunk)", "INVALID_ARGUMENT",
                  f"{', '.join(observed)}; {assert_unaffected(wire, rnd, rnd.alice)}")


# ---- how data chunks are framed ---------------------------------------------------------------------
# The server reads a data chunk that is exactly ``data`` (tag 0x12, a varint length, the bytes) by
# hand, without protobuf, and hands any other message to protobuf. Whatever the framing, it must
# read what protobuf would: these are the framings a peer may use for the same chunk.
def varint(n: int, pad: int = 0) -> bytes:
    """Protobuf's varint for ``n``; ``pad`` extra (non-canonical, still valid) continuation bytes."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n or pad else 0))
        if not n:
            break
    for i in range(pad):
        out.append(0x80 if i < pad - 1 else 0)
    return bytes(out)


def data_field(part: bytes, pad: int = 0) -> bytes:
    return b"\x12" + varint(len(part), pad) + part


FRAMINGS: dict[str, Callable[[bytes], bytes]] = {
    "canonical": data_field,
    "overlong varint length": lambda part: data_field(part, pad=3),
    "data field twice (the last one wins)": lambda part: data_field(b"decoy") + data_field(part),
    "unknown field after the data": lambda part: data_field(part) + b"\x18\x01",
    "unknown field before the data": lambda part: b"\x18\x01" + data_field(part),
    "header then data in one message (the oneof keeps the last)": lambda part: b"\x0a\x00" + data_field(part),
}
BAD_FRAMINGS: dict[str, Callable[[bytes], bytes]] = {
    "length one past the end": lambda part: b"\x12" + varint(len(part) + 1) + part,
    "varint length of 11 bytes": lambda part: b"\x12" + b"\x80" * 10 + b"\x00" + part,
    "truncated varint length": lambda part: b"\x12\x80",
    "data then a header (the oneof keeps the last)": lambda part: data_field(part) + b"\x0a\x00",
}


def framed_submit(wire: Wire, rnd: Round, body: bytes, frames: Sequence[Callable[[bytes], bytes]],
                  chunk: int = CHUNK) -> tuple[grpc.StatusCode, str, list[bytes]]:
    """``body`` under a truthful header, its i-th chunk framed by ``frames[i % len(frames)]``."""
    parts = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    messages = [frames[i % len(frames)](part) for i, part in enumerate(parts)]
    head = pb.ResultChunk(header=header(rnd, body)).SerializeToString()
    code, detail = call(lambda: wire.raw("SubmitResult", True)(iter([head, *messages]), timeout=CALL_TIMEOUT_S))
    return code, detail, messages


def acceptable(wire: Wire, body: bytes, weight: float) -> bool:
    """Whether ``body`` under a header announcing the layout's size and ``weight`` (finite, > 0)
    is a result to accept."""
    if len(body) != wire.layout.nbytes:
        return False
    numbers = np.frombuffer(body, "<f4")
    return bool(np.isfinite(numbers).all()) and numbers[-1] == np.float32(weight)


def protobuf_reading(messages: Sequence[bytes]) -> bytes | None:
    """What protobuf makes of the data chunks: their bytes joined, or None if any is not one."""
    out = []
    for message in messages:
        try:
            chunk = pb.ResultChunk.FromString(message)
        except Exception:  # noqa: BLE001  (protobuf's DecodeError, whatever the implementation)
            return None
        if chunk.WhichOneof("part") != "data":
            return None
        out.append(chunk.data)
    return b"".join(out)


@pytest.mark.parametrize("name", list(FRAMINGS))
def test_data_chunk_framings_read_as_protobuf_reads_them(wire: Wire, rnd: Round, name: str, faults) -> None:
    body = valid_bytes(wire, fill=0.03)
    code, detail, messages = framed_submit(wire, rnd, body, [FRAMINGS[name]])
    assert protobuf_reading(messages) == body
    assert code == OK, detail
    assert_sum_after_one_upload(rnd, True, body, WEIGHT)
    faults.record(AREA, f"data chunk framing: {name}", f"a valid result whose every data chunk is framed so ({name})",
                  "read exactly as protobuf reads it", "OK: the result protobuf reads was accepted and added in "
                  "bit for bit")


@pytest.mark.parametrize("name", list(BAD_FRAMINGS))
def test_malformed_data_chunk_framings_are_refused(wire: Wire, rnd: Round, name: str, faults) -> None:
    body = valid_bytes(wire)
    code, detail, messages = framed_submit(wire, rnd, body, [FRAMINGS["canonical"], BAD_FRAMINGS[name]])
    assert protobuf_reading(messages) is None
    assert code == INVALID, detail
    # The first chunk (canonical) was read and staged before the second one was refused: nothing counts.
    assert_sum_after_one_upload(rnd, False, body, WEIGHT)
    faults.record(AREA, f"data chunk framing: {name}", f"a valid result whose second data chunk is framed so "
                  f"({name})", "INVALID_ARGUMENT", f"{code.name} ({stable(detail)}); "
                  f"{assert_unaffected(wire, rnd, rnd.alice)}")


def test_replayed_result(wire: Wire, rnd: Round, faults) -> None:
    first = valid_bytes(wire, fill=0.5)
    assert submit(wire, stream(header(rnd, first), first)) == (OK, "")
    # The same stream again, then a different result under the same client and task.
    code1, _ = submit(wire, stream(header(rnd, first), first))
    other = valid_bytes(wire, fill=-0.5)
    code2, detail = submit(wire, stream(header(rnd, other), other))
    assert code1 == code2 == grpc.StatusCode.ALREADY_EXISTS, detail
    assert_sum_after_one_upload(rnd, True, first, WEIGHT)  # counted once, and it is the first
    assert list(rnd.current().results) == [rnd.alice]
    assert send_valid(wire, rnd, rnd.bob) == (OK, "")  # the round goes on
    assert rnd.aggregation.count == 2 and wire.free_slots() == UPLOAD_SLOTS
    faults.record(AREA, "replayed result", "an accepted result sent again, then a different one for the same task",
                  "ALREADY_EXISTS", f"{code1.name}, {code2.name}; the first result is counted once; other "
                  "clients still accepted")


def test_result_for_a_closed_round(wire: Wire, rnd: Round, faults) -> None:
    late = valid_bytes(wire)
    late_header = header(rnd, late)  # round 1's task
    round1, aggregation1 = rnd.task, rnd.aggregation
    round1.deadline = rnd.coordinator.clock()  # round 1 passes its deadline with no results ...
    assert rnd.close(round1) == {}
    task2 = rnd.open(2)  # ... and round 2 opens
    code, detail = submit(wire, stream(late_header, late))
    assert code == grpc.StatusCode.FAILED_PRECONDITION, detail
    assert round1.results == {} and task2.results == {}
    assert nothing_counted(aggregation1) and aggregation1 is not rnd.aggregation
    faults.record(AREA, "result for a closed round", "round 1's result sent after round 1 closed and round 2 opened",
                  "FAILED_PRECONDITION", f"{code.name} ({stable(detail)}); {assert_unaffected(wire, rnd, rnd.alice)}")


STALL_DEADLINE_S = 3.0
FIRST_CHUNK = CHUNK // 4  # update elements in a result's first data chunk


def wait_until(condition: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + CALL_TIMEOUT_S
    while not condition():
        assert time.monotonic() < end, f"timed out waiting until {what}"
        time.sleep(0.02)


def paused_after(chunks: list[pb.ResultChunk], count: int, release: threading.Event) -> Iterator[pb.ResultChunk]:
    """``chunks``, pausing after the first ``count`` until ``release`` is set."""
    yield from chunks[:count]
    release.wait(CALL_TIMEOUT_S)
    yield from chunks[count:]


def test_stalled_uploads_are_cut_off_when_the_round_closes(wire: Wire, faults) -> None:
    """Two sampled clients send a header and 100 bytes, then nothing (a slow-loris upload, or a
    client frozen or cut off mid-upload). They hold all ``upload_slots``: unless the server cuts
    them off when their round closes at its deadline, no other client's result could ever be
    received again. Nothing of what they delivered counts."""
    coordinator = new_coordinator(clients=3, deadline_s=STALL_DEADLINE_S)
    wire.servicer.coordinator = coordinator
    ids = [coordinator.join(name).client_id for name in ("xavier", "yvonne", "zoe")]
    rnd = Round(wire, coordinator, ids[0], ids[1], ids[2])
    round1 = rnd.open(1)
    aggregation1 = rnd.aggregation
    assert round1.sampled == set(ids)
    closer = futures.ThreadPoolExecutor(1)
    closed = closer.submit(rnd.close, round1)  # the server's round loop: close at the deadline
    body = valid_bytes(wire)
    release = threading.Event()
    headers = {client: header(rnd, body, client_id=client) for client in ids}

    def stalled(client: str) -> Iterator[pb.ResultChunk]:
        yield pb.ResultChunk(header=headers[client])
        yield pb.ResultChunk(data=body[:100])
        release.wait(CALL_TIMEOUT_S)  # then stop sending, without ending the stream

    started, before = time.monotonic(), wire.telemetry.bytes_in
    try:
        calls = [wire.stub.SubmitResult.future(stalled(c), timeout=CALL_TIMEOUT_S) for c in ids[:UPLOAD_SLOTS]]
        wait_until(lambda: wire.free_slots() == 0 and wire.telemetry.bytes_in == before + 200,
                   "the stalled uploads took the upload slots and sent their 100 bytes")
        assert nothing_counted(aggregation1)  # staged, not counted
        assert closed.result(CALL_TIMEOUT_S) == {}
        codes = {call(f.result)[0] for f in calls}
        cut_after = time.monotonic() - started
        round2 = rnd.open(2)
        code, detail = send_valid(wire, rnd, ids[2])
    finally:
        release.set()
        closer.shutdown()
    assert codes == {grpc.StatusCode.CANCELLED}, codes
    assert cut_after < STALL_DEADLINE_S + 2, cut_after  # at the deadline, not at the client's own timeout
    assert code == OK, detail
    assert list(round2.results) == [ids[2]] and round1.results == {} and round1.uploading == set()
    assert wire.free_slots() == UPLOAD_SLOTS
    assert nothing_counted(aggregation1)
    assert_sum_after_one_upload(rnd, True, valid_bytes(wire, 0.02), WEIGHT)  # round 2's own
    faults.record(AREA, "stalled uploads holding every upload slot", f"{UPLOAD_SLOTS} sampled clients send a "
                  f"header and 100 bytes, then nothing (server.upload_slots {UPLOAD_SLOTS}, round_deadline_s "
                  f"{STALL_DEADLINE_S:g})", "cut off when their round closes; the slots are freed for the next round; "
                  "nothing of them counts", "both uploads were cancelled at the round's deadline (CANCELLED); "
                  "nothing of their 100 bytes reached the round's sum; the next round's result was accepted at once")


def test_upload_streaming_when_the_round_closes_is_stale(wire: Wire, rnd: Round, faults) -> None:
    """Alice's upload is one chunk in when her round closes (its deadline passes and the round loop
    closes it): her next chunk is refused FAILED_PRECONDITION, she is not a result, and nothing of
    the chunk she delivered counts. The next round's aggregation is untouched."""
    body = valid_bytes(wire)
    release = threading.Event()
    round1, aggregation1 = rnd.task, rnd.aggregation
    before = wire.telemetry.bytes_in
    future = wire.stub.SubmitResult.future(paused_after(stream(header(rnd, body), body), 2, release),
                                           timeout=CALL_TIMEOUT_S)
    try:
        wait_until(lambda: round1.uploading == {rnd.alice} and wire.telemetry.bytes_in == before + CHUNK,
                   "the first chunk was received")
        round1.deadline = rnd.coordinator.clock()
        assert rnd.close(round1) == {}
        round2 = rnd.open(2)
    finally:
        release.set()
    code, detail = call(future.result)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "closed while this result was streaming in" in detail, detail
    assert round1.results == {} and round1.uploading == set()
    assert nothing_counted(aggregation1)
    assert round2.results == {} and rnd.aggregation is not aggregation1 and nothing_counted(rnd.aggregation)
    faults.record(AREA, "round closed mid-upload", "a result paused after its first 4 KiB chunk while its round "
                  "passes the deadline and closes, then the rest of it", "FAILED_PRECONDITION; not a result; "
                  "nothing of it counts",
                  f"{code.name} ({stable(detail)}); the chunk delivered before the close was only staged: that round's "
                  f"sum, count and weight stayed empty; the next round: {assert_unaffected(wire, rnd, rnd.alice)}")


def test_header_weight_must_be_the_payloads(wire: Wire, faults) -> None:
    """The header's update_weight (what the upload is admitted with, before the payload's own
    weight arrives) must be the payload's last float32: a result whose header says 10 and whose
    payload says 5 is refused INVALID_ARGUMENT once its whole update was received, is not a result,
    and nothing of it counts (before, its whole update stayed in the running sum)."""
    rnd = open_round(wire)
    body = valid_bytes(wire, fill=0.01, weight=5.0)
    received = wire.telemetry.bytes_in
    code, detail = submit(wire, stream(header(rnd, body, update_weight=WEIGHT), body))
    assert code == INVALID and "is not the header's" in detail, detail
    assert wire.telemetry.bytes_in == received + len(body)  # refused after the whole payload was read
    assert rnd.current().results == {} and rnd.current().uploading == set()
    assert wire.free_slots() == UPLOAD_SLOTS and nothing_counted(rnd.aggregation)
    faults.record(AREA, "header weight is not the payload's", "a valid result with update_weight 5 under a header "
                  "whose update_weight is 10", "INVALID_ARGUMENT when the stream ends; not a result; nothing of it "
                  "counts", f"{code.name} ({stable(detail)}); its 2410 elements were only staged: count, weight and "
                  f"sum unchanged; {assert_unaffected(wire, rnd, rnd.bob)}")


def test_chunk_with_nan_mid_stream_adds_nothing_of_itself(wire: Wire, rnd: Round, faults) -> None:
    """A result whose third 4 KiB chunk holds one NaN (update.2[100], after the finite update.1 and
    update.2[:100] in the same chunk) is refused INVALID_ARGUMENT when that chunk arrives. Nothing
    of it counts: not the two chunks before (the streaming fold used to keep those, with the
    client's weight for those coordinates, so a refused result still moved the model), not the
    finite numbers of the third. The round's update is then bob's alone, bit for bit."""
    body = with_bits(wire, "update.2", 100, value=float("nan"))
    assert (wire.leaf("update.2").offset + 100 * 4) // CHUNK == 2
    code, detail = submit(wire, stream(header(rnd, body), body))
    assert code == INVALID and "update.2 holds NaN or Inf" in detail, detail
    assert nothing_counted(rnd.aggregation)
    faults.record(AREA, "NaN in the third chunk", "update.2[100] = NaN: the third of three 4 KiB chunks, after "
                  "finite numbers in the same chunk", "INVALID_ARGUMENT; nothing of the result counts",
                  f"{code.name} ({stable(detail)}); the two chunks before were only staged: the round's sum, count and "
                  f"weight stayed empty; {assert_unaffected(wire, rnd, rnd.bob)}")


def test_second_concurrent_upload_from_a_client_is_refused(wire: Wire, faults) -> None:
    """A client whose result is still streaming in may not start a second upload (a client bug, or
    a replay racing the original): the second is refused ALREADY_EXISTS at once, before a byte of
    it is read or a slot taken, and the first goes on and is accepted, once, as it was sent."""
    rnd = open_round(wire)
    first, second = valid_bytes(wire, fill=0.01), valid_bytes(wire, fill=-0.01)
    release = threading.Event()
    task = rnd.current()
    before = wire.telemetry.bytes_in
    future = wire.stub.SubmitResult.future(paused_after(stream(header(rnd, first), first), 2, release),
                                           timeout=CALL_TIMEOUT_S)
    try:  # the first holds a slot, waiting for the rest of its data
        wait_until(lambda: wire.free_slots() == UPLOAD_SLOTS - 1 and wire.telemetry.bytes_in == before + CHUNK,
                   "the first upload took a slot and its first chunk was read")
        assert task.uploading == {rnd.alice}
        received, slots = wire.telemetry.bytes_in, wire.free_slots()
        code, detail = submit(wire, stream(header(rnd, second), second))
        assert wire.telemetry.bytes_in == received and wire.free_slots() == slots
    finally:
        release.set()
    assert code == grpc.StatusCode.ALREADY_EXISTS and "already streaming in" in detail, detail
    assert call(future.result) == (OK, "")
    assert list(task.results) == [rnd.alice] and task.uploading == set() and wire.free_slots() == UPLOAD_SLOTS
    assert_sum_after_one_upload(rnd, True, first, WEIGHT)  # the first, once; nothing of the second
    faults.record(AREA, "second upload while the first streams in", "a client starts a second upload of a different "
                  "result while its first is paused mid-stream", "ALREADY_EXISTS; the first accepted",
                  f"{code.name} ({stable(detail)}), before a byte of it was read; the first was then accepted and "
                  "counted once")


CONCURRENT = 8


def test_concurrent_uploads_wait_for_upload_slots(wire: Wire, faults) -> None:
    """8 sampled clients stream their results at once: at most ``upload_slots`` are staged at a
    time (the others wait for a slot before a byte of theirs is read), all 8 are accepted, and
    the round's mean is numpy's weighted mean of the 8 updates."""
    coordinator = new_coordinator(clients=CONCURRENT)
    wire.servicer.coordinator = coordinator
    ids = [coordinator.join(f"client-{i}").client_id for i in range(CONCURRENT)]
    rnd = Round(wire, coordinator, ids[0], ids[1], "")
    task, aggregation = rnd.open(1), rnd.aggregation
    assert task.sampled == set(ids)
    rng = np.random.default_rng(7)
    updates = [[rng.standard_normal(leaf.shape).astype(np.float32) for leaf in wire.layout.leaves[:-1]]
               for _ in range(CONCURRENT)]
    weights = [1.5 * (i + 1) for i in range(CONCURRENT)]
    bodies = [bytes(wire.layout.encode([*u, np.float32(w)])) for u, w in zip(updates, weights, strict=True)]
    release = threading.Event()
    before = wire.telemetry.bytes_in
    try:
        calls = [wire.stub.SubmitResult.future(
            paused_after(stream(header(rnd, bodies[i], client_id=ids[i]), bodies[i]), 2, release),
            timeout=CALL_TIMEOUT_S) for i in range(CONCURRENT)]
        wait_until(lambda: len(task.uploading) == CONCURRENT and wire.free_slots() == 0,
                   "every client is uploading and every slot is taken")
        time.sleep(0.2)
        staged_at_once = UPLOAD_SLOTS - wire.free_slots()
        assert wire.telemetry.bytes_in - before <= UPLOAD_SLOTS * CHUNK  # only the staged ones were read
        release.set()
        codes = [call(f.result) for f in calls]
    finally:
        release.set()
    assert task.results.keys() == set(ids) and codes == [(OK, "")] * CONCURRENT
    assert aggregation.count == CONCURRENT and total_weight(aggregation) == np.float32(sum(weights))
    assert wire.free_slots() == UPLOAD_SLOTS
    reference = [sum(w * u[k].astype(np.float64) for u, w in zip(updates, weights, strict=True)) / sum(weights)
                 for k in range(len(updates[0]))]
    aggregation.close()
    for mean, ref in zip(aggregation.finish().update, reference, strict=True):
        np.testing.assert_allclose(mean, ref, rtol=1e-5, atol=1e-6)
    faults.record(AREA, "many uploads at once", f"{CONCURRENT} sampled clients stream their results at once "
                  f"(server.upload_slots {UPLOAD_SLOTS})", "at most upload_slots staged at a time; all accepted; the "
                  "mean exact", f"{staged_at_once} were staged at once while the others waited for a slot, unread; all "
                  f"{CONCURRENT} were accepted (OK); the mean equals numpy's weighted mean (float64, within 1e-5)")


JOIN_CASES = [
    ("empty client name", lambda stub: stub.Join(pb.JoinRequest(name=""), timeout=CALL_TIMEOUT_S), INVALID),
    ("client name of 300 characters", lambda stub: stub.Join(pb.JoinRequest(name="x" * 300),
                                                             timeout=CALL_TIMEOUT_S), INVALID),
    ("client name with control characters", lambda stub: stub.Join(pb.JoinRequest(name="a\nb\x1b[2J"),
                                                                   timeout=CALL_TIMEOUT_S), INVALID),
    ("GetTask for an unknown client id", lambda stub: list(stub.GetTask(
        pb.TaskRequest(client_id="0123456789abcdef"), timeout=CALL_TIMEOUT_S)), grpc.StatusCode.NOT_FOUND),
]


@pytest.mark.parametrize("name, fn, expected", JOIN_CASES, ids=[c[0] for c in JOIN_CASES])
def test_join_and_get_task_refuse_bad_requests(wire: Wire, rnd: Round, name: str, fn, expected, faults) -> None:
    code, detail = call(lambda: fn(wire.stub))
    assert code == expected, detail
    assert len(rnd.coordinator.live_clients()) == 3  # no client was registered
    faults.record(AREA, name, name, expected.name,
                  f"{code.name} ({stable(detail)}); no client registered; {assert_unaffected(wire, rnd, rnd.alice)}")


# ---- fuzzing ------------------------------------------------------------------------------------
EXAMPLES = 150
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ALLOWED = ("a status from the allowed set; only exact, finite ClientResults accepted; a refused upload "
           "leaves nothing in the round's aggregate")


def assert_sum_after(rnd: Round, code: grpc.StatusCode, data: bytes, weight: float) -> None:
    """:func:`assert_sum_after_one_upload`, and the round's results agree with ``code``."""
    results = rnd.current().results
    assert len(results) == (1 if code == OK else 0), (code, list(results))
    assert rnd.current().uploading == set()
    assert_sum_after_one_upload(rnd, code == OK, data, weight)


def fuzz_submit(wire: Wire, rnd: Round, chunks: list[pb.ResultChunk]) -> grpc.StatusCode:
    code, detail = submit(wire, chunks)
    assert code in REFUSALS | {OK}, (code, detail)
    if chunks and chunks[0].WhichOneof("part") == "header":
        data = []  # what the server reads: the data chunks after the header, up to anything else
        for chunk in chunks[1:]:
            if chunk.WhichOneof("part") != "data":
                break
            data.append(chunk.data)
        assert_sum_after(rnd, code, b"".join(data), chunks[0].header.update_weight)
    else:  # refused before any upload began
        assert code != OK and rnd.current().results == {} and nothing_counted(rnd.aggregation)
    assert wire.free_slots() == UPLOAD_SLOTS
    return code


def seen(codes: set[str]) -> str:
    return f"statuses seen: {', '.join(sorted(codes))}; no crash, no hang, nothing invalid accepted"


@pytest.fixture(scope="module")
def fuzz_payload(wire: Wire) -> bytes:
    """A valid result with non-trivial numbers, so mutations of the content land on real values."""
    arrays = [np.linspace(-1, 1, int(np.prod(leaf.shape)), dtype=np.float32).reshape(leaf.shape)
              for leaf in wire.layout.leaves[:-1]]
    return bytes(wire.layout.encode([*arrays, np.float32(7)]))


def mutated(valid: bytes) -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = bytearray(valid)
        for _ in range(draw(st.integers(1, 6))):
            op = draw(st.sampled_from(["flip", "set", "exponent", "insert", "delete", "truncate"]))
            pos = draw(st.integers(0, max(0, len(data) - 1)))
            if op == "flip" and data:
                data[pos] ^= 1 << draw(st.integers(0, 7))
            elif op == "set" and data:
                data[pos] = draw(st.integers(0, 255))
            elif op == "exponent" and len(data) >= 4:  # a float's exponent bits all ones: Inf or NaN
                at = pos - pos % 4
                data[at + 2] |= 0x80
                data[at + 3] |= 0x7F
            elif op == "insert":
                data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
            elif op == "delete":
                del data[pos : pos + draw(st.integers(1, 16))]
            elif op == "truncate":
                del data[pos:]
        return bytes(data)

    return build()


def test_fuzz_mutated_payloads(wire: Wire, fuzz_payload: bytes, faults) -> None:
    """Bit flips, byte overwrites, non-finite exponents, insertions, deletions and truncations of a
    valid payload, under a truthful header and random chunking: refused as INVALID_ARGUMENT
    (size, NaN / Inf, weight), or accepted only as exactly the bytes sent, finite, weight > 0. A
    refused upload leaves nothing in the round's aggregate."""
    codes: set[str] = set()

    @FUZZ
    @given(payload=mutated(fuzz_payload), chunk=st.integers(1, 20_000))
    def run(payload: bytes, chunk: int) -> None:
        rnd = open_round(wire)
        code = fuzz_submit(wire, rnd, stream(header(rnd, payload), payload, chunk=chunk))
        assert code in {OK, INVALID}
        codes.add(code.name)

    run()
    assert codes == {"OK", "INVALID_ARGUMENT"}  # the fuzzer reached both the accept path and the refusals
    faults.record(AREA, "fuzz: mutated payloads", f"{EXAMPLES} valid payloads with 1-6 bit flips, byte overwrites, "
                  "non-finite exponents, insertions, deletions or truncations; truthful header; random chunking",
                  ALLOWED, seen(codes))


def test_fuzz_data_chunk_framings(wire: Wire, fuzz_payload: bytes, faults) -> None:
    """A valid payload in random chunks, each framed at random (every framing above, good or bad,
    or a bit flipped in a chunk's first bytes): the server's answer and what it adds to the round
    (the whole result, or nothing) must be what protobuf's reading of the same messages implies."""
    codes: set[str] = set()
    framings = [*FRAMINGS.values(), *BAD_FRAMINGS.values()]

    @st.composite
    def flipped_framing(draw: st.DrawFn) -> Callable[[bytes], bytes]:
        at, bit = draw(st.integers(0, 5)), draw(st.integers(0, 7))

        def frame(part: bytes) -> bytes:
            message = bytearray(data_field(part))
            message[min(at, len(message) - 1)] ^= 1 << bit
            return bytes(message)

        return frame

    @FUZZ
    @given(frames=st.lists(st.sampled_from(framings) | flipped_framing(), min_size=1, max_size=5),
           chunk=st.integers(1, 12_000))
    def run(frames: list[Callable[[bytes], bytes]], chunk: int) -> None:
        rnd = open_round(wire)
        code, detail, messages = framed_submit(wire, rnd, fuzz_payload, frames, chunk)
        reading = protobuf_reading(messages)
        weight = trailing_weight(fuzz_payload)
        assert code == (OK if reading is not None and acceptable(wire, reading, weight) else INVALID), (code, detail)
        # A flipped bit may land in the data itself: what was added is what protobuf reads.
        assert_sum_after(rnd, code, reading if code == OK and reading is not None else b"", weight)
        assert wire.free_slots() == UPLOAD_SLOTS
        codes.add(code.name)

    run()
    assert codes == {"OK", "INVALID_ARGUMENT"}
    faults.record(AREA, "fuzz: data chunk framings", f"{EXAMPLES} valid payloads in random chunks, each framed at "
                  "random (canonical, overlong varint, repeated field, unknown fields, header and data in one message, "
                  "bad lengths, a flipped framing bit)", "the answer and the counted result are what protobuf's "
                  "reading of the same messages implies", seen(codes))


metric_maps = st.dictionaries(st.text(max_size=70), st.floats(allow_nan=True, allow_infinity=True), max_size=40)
int64s = st.integers(-(2**63), 2**63 - 1)


def test_fuzz_random_streams(wire: Wire, fuzz_payload: bytes, faults) -> None:
    """Random ResultChunk sequences: random headers (some quoting the real client, task, round,
    layout, size and weight), random data chunks, in any order. Every answer is a refusal from the
    allowed set (or an accepted, exact result), never a crash or a hang."""
    codes: set[str] = set()

    @FUZZ
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        rnd = open_round(wire)
        random_header = st.builds(
            pb.ResultHeader,
            client_id=st.sampled_from([rnd.alice, rnd.carol, ""]) | st.text(max_size=40),
            task_id=st.just(rnd.task.task_id) | st.text(max_size=40),
            round=st.just(rnd.task.round) | int64s,
            payload_bytes=st.just(wire.layout.nbytes) | int64s | st.integers(0, 20_000),
            layout=st.just(wire.layout.fingerprint) | st.text(max_size=20),
            metrics=metric_maps,
            update_weight=st.just(trailing_weight(fuzz_payload)) | st.floats(),
        )
        body = data.draw(st.sampled_from([fuzz_payload, b""]) | st.binary(max_size=2000), label="body")
        kinds = st.one_of(
            random_header.map(lambda h: pb.ResultChunk(header=h)),
            st.binary(max_size=3000).map(lambda b: pb.ResultChunk(data=b)),
            st.just(pb.ResultChunk(header=header(rnd, body))),
            st.just(pb.ResultChunk(data=body)),
            st.just(pb.ResultChunk()),
        )
        codes.add(fuzz_submit(wire, rnd, data.draw(st.lists(kinds, max_size=6), label="chunks")).name)

    run()
    faults.record(AREA, "fuzz: random streams", f"{EXAMPLES} random ResultChunk sequences: random or real "
                  "headers (client, task, round, size, layout, metrics, update_weight), random or real data, any order",
                  ALLOWED, seen(codes))


def test_fuzz_raw_messages(wire: Wire, faults) -> None:
    """Random bytes as the serialized request messages themselves (protobuf parsing on the server)."""
    codes: set[str] = set()
    join_codes: set[str] = set()

    @FUZZ
    @given(messages=st.lists(st.binary(max_size=300), max_size=4), prefix_header=st.booleans())
    def run(messages: list[bytes], prefix_header: bool) -> None:
        rnd = open_round(wire)
        if prefix_header:
            messages = [pb.ResultChunk(header=header(rnd, b"")).SerializeToString(), *messages]
        code, detail = call(lambda: wire.raw("SubmitResult", True)(iter(messages), timeout=CALL_TIMEOUT_S))
        assert code in REFUSALS, (code, detail)  # nothing random is a valid result
        assert rnd.current().results == {} and rnd.current().uploading == set()
        assert nothing_counted(rnd.aggregation)  # no upload began
        assert wire.free_slots() == UPLOAD_SLOTS
        codes.add(code.name)
        join = messages[0] if messages else b""
        join_code, detail = call(lambda: wire.raw("Join", False)(join, timeout=CALL_TIMEOUT_S))
        assert join_code in {OK, grpc.StatusCode.INVALID_ARGUMENT}, (join_code, detail)
        join_codes.add(join_code.name)

    run()
    faults.record(AREA, "fuzz: raw request messages", f"{EXAMPLES} streams of random bytes as ResultChunk "
                  "messages (half after a real header), and as JoinRequest messages",
                  "SubmitResult refused from the allowed set; Join OK or INVALID_ARGUMENT",
                  f"SubmitResult {seen(codes)}; Join: {', '.join(sorted(join_codes))}")


def test_a_resent_result_after_a_broken_stream_counts_once(wire: Wire, rnd: Round, faults) -> None:
    """Clients resend a result whose stream broke. Nothing of the broken stream counted; the resend
    is staged afresh and counts once, in full, exactly as if the first stream had not broken."""
    data = valid_bytes(wire, 0.02)
    cut = 4096 + 6  # 1025 elements and half of the next
    code, detail = submit(wire, stream(header(rnd, data, client_id=rnd.alice), data[:cut]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "stream ended after" in detail
    assert nothing_counted(rnd.aggregation) and rnd.current().results == {}
    assert send_valid(wire, rnd, rnd.alice, fill=0.02) == (OK, "")
    assert_sum_after_one_upload(rnd, True, data, WEIGHT)  # every element once
    faults.record(AREA, "resent result after a broken stream",
           "a client's stream ends after 4102 of its bytes; it resends the whole result",
           "counted once, in full", "INVALID_ARGUMENT for the broken stream, of which nothing counted; the resend "
           "was accepted; the sum holds every element exactly once")
