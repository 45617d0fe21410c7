"""Hostile input: whatever a peer sends, the server answers with a precise gRPC status, the open
round keeps only valid results and the global model is untouched.

In-process but real: the server's own FederationServicer, Coordinator, Telemetry and wire codec
(``codec.decode`` for the task's ``ClientResult`` type), served by a gRPC server on loopback and
driven through a gRPC stub, so every request goes through gRPC framing and deserialization."""

from __future__ import annotations

import collections
import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.chunking import Payload
from services.common.config import TrainingSettings
from services.common.proto import federation_pb2 as pb
from services.common.proto import federation_pb2_grpc as pb_grpc

tff = pytest.importorskip("tensorflow_federated")

from services.common import codec  # noqa: E402  (after TFF, which it imports)
from services.common.task import Task  # noqa: E402
from services.server.coordinator import Coordinator, RoundTask  # noqa: E402
from services.server.servicer import SERVICE_NAME, FederationServicer, add_to_server  # noqa: E402
from services.server.telemetry import Telemetry  # noqa: E402

AREA = "hostile input"
MAX_PAYLOAD = 64 * 1024  # server.max_payload_bytes for these tests (a valid result is ~10 KB)
CHUNK = 4096
GLOBAL_WEIGHTS = b"the global model the round was opened with"
CALL_TIMEOUT_S = 20  # a hang is a failure (DEADLINE_EXCEEDED is not an allowed answer)
OK = grpc.StatusCode.OK
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
    result_type: Any
    weights_type: Any

    def raw(self, method: str, streaming: bool) -> Callable[..., Any]:
        """A call that sends bytes as they are, so they can be anything but protobuf."""
        path = f"/{SERVICE_NAME}/{method}"
        ident: Callable[[bytes], bytes] = lambda b: b  # noqa: E731
        if streaming:
            return self.channel.stream_unary(path, request_serializer=ident, response_deserializer=ident)
        return self.channel.unary_unary(path, request_serializer=ident, response_deserializer=ident)


@pytest.fixture(scope="module")
def wire() -> Iterator[Wire]:
    task = Task(TrainingSettings())
    result_type = task.result_type
    telemetry = Telemetry()
    servicer = FederationServicer(
        new_coordinator(), lambda data: codec.decode(data, result_type), telemetry,
        chunk_bytes=CHUNK, max_payload_bytes=MAX_PAYLOAD, poll_s=0.2,
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    add_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Wire(servicer, telemetry, pb_grpc.FederationStub(channel), channel, result_type, task.weights_type)
    finally:
        channel.close()
        server.stop(None).wait()


def new_coordinator() -> Coordinator:
    return Coordinator(min_clients=2, clients_per_round=2, round_deadline_s=600, num_shards=2,
                       rng=np.random.default_rng(0))


@dataclass
class Round:
    """An open round 1 with two sampled clients (alice, bob) and a third, unsampled one (carol)."""

    coordinator: Coordinator
    task: RoundTask
    alice: str
    bob: str
    carol: str

    def current(self) -> RoundTask:
        task = self.coordinator._task
        assert task is not None
        return task


def open_round(wire: Wire) -> Round:
    coordinator = new_coordinator()
    wire.servicer.coordinator = coordinator
    alice, bob = coordinator.join("alice").client_id, coordinator.join("bob").client_id
    task = coordinator.open_round(1, Payload.of(GLOBAL_WEIGHTS))
    assert task.sampled == {alice, bob}
    carol = coordinator.join("carol").client_id
    return Round(coordinator, task, alice, bob, carol)


@pytest.fixture
def rnd(wire: Wire) -> Round:
    return open_round(wire)


# ---- building results ---------------------------------------------------------------------------
def update_arrays(wire: Wire, fill: float = 0.01) -> list[np.ndarray]:
    return [np.full(t.shape, fill, dtype=t.dtype.type) for t in wire.result_type.update]


def result_value(wire: Wire, fill: float = 0.01, weight: float = 10.0) -> collections.OrderedDict:
    return collections.OrderedDict(update=update_arrays(wire, fill), update_weight=np.float32(weight))


def valid_bytes(wire: Wire, fill: float = 0.01, weight: float = 10.0) -> bytes:
    return codec.encode(result_value(wire, fill, weight), wire.result_type)


def encode_as(value: Any, type_spec: Any) -> bytes:
    proto, _ = tff.framework.serialize_value(value, type_spec)
    return proto.SerializeToString()


def tensor(dtype: Any, shape: Sequence[int]) -> Any:
    return tff.TensorType(dtype, shape)


def header(rnd: Round, data: bytes, **override: Any) -> pb.ResultHeader:
    task = rnd.current()
    fields: dict[str, Any] = dict(
        client_id=rnd.alice, task_id=task.task_id, round=task.round, payload_bytes=len(data),
        payload_sha256=hashlib.sha256(data).digest(), metrics={"num_examples": 10.0, "train_loss": 0.5},
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
    """A status detail without ids or TFF type reprs, short enough for the table."""
    while re.search(r"<[^<>]*>", detail):
        detail = re.sub(r"<[^<>]*>", "T", detail)
    detail = detail.replace("type T", "type").replace("got T", "got another type")
    detail = re.sub(r"'[0-9a-f]{16}'", "'<id>'", detail)
    return detail if len(detail) <= 100 else detail[:97] + "..."


def assert_unaffected(wire: Wire, rnd: Round, client: str) -> str:
    """The refused request left nothing in the round; the global model is what the round began
    with; the same client's valid result is still accepted afterwards (and is what is stored)."""
    task = rnd.current()
    assert client not in task.results
    assert task.payload.data == GLOBAL_WEIGHTS
    if client not in task.sampled:
        client = min(task.sampled - set(task.results))
    assert send_valid(wire, rnd, client, fill=0.02) == (OK, "")
    stored = task.results[client]
    assert float(stored.value.update_weight) == 10.0
    assert all(np.all(np.asarray(a) == np.float32(0.02)) for a in stored.value.update)
    return "round unchanged; a valid result was accepted afterwards"


def rejected(wire: Wire) -> dict[str, int]:
    return dict(wire.telemetry.rejected)


# ---- the cases: (name, what is sent, expected status) -----------------------------------------
@dataclass(frozen=True)
class Case:
    name: str
    done: str
    build: Callable[[Wire, Round], list[pb.ResultChunk]]
    expected: grpc.StatusCode


def payload_case(name: str, done: str, data: Callable[[Wire], bytes],
                 expected: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> Case:
    """A truthful header (size, SHA-256) around a bad payload."""

    def build(wire: Wire, rnd: Round) -> list[pb.ResultChunk]:
        body = data(wire)
        return stream(header(rnd, body), body)

    return Case(name, done, build, expected)


def header_case(name: str, done: str, expected: grpc.StatusCode, **override: Any) -> Case:
    def build(wire: Wire, rnd: Round) -> list[pb.ResultChunk]:
        body = valid_bytes(wire)
        resolved = {k: (v(wire, rnd) if callable(v) else v) for k, v in override.items()}
        return stream(header(rnd, body, **resolved), body)

    return Case(name, done, build, expected)


def with_update(wire: Wire, index: int, array: np.ndarray, weight: float = 10.0) -> bytes:
    """A ClientResult whose update[index] is ``array`` (typed as what it really is)."""
    arrays = update_arrays(wire)
    arrays[index] = array
    types = [tensor(a.dtype.type, a.shape) for a in arrays]
    value = collections.OrderedDict(update=arrays, update_weight=np.float32(weight))
    return encode_as(value, tff.StructType([("update", tff.StructType(types)),
                                            ("update_weight", tensor(np.float32, []))]))


def non_finite(where: str, number: float) -> Callable[[Wire], bytes]:
    def data(wire: Wire) -> bytes:
        if where == "weight":
            return valid_bytes(wire, weight=number)
        arrays = update_arrays(wire)
        arrays[0] = arrays[0].copy()
        arrays[0][3, 5] = number
        return codec.encode(collections.OrderedDict(update=arrays, update_weight=np.float32(10)), wire.result_type)

    return data


def lying_shape(wire: Wire) -> bytes:
    """The array proto says float32[64,32] but carries fewer numbers."""
    from tensorflow_federated.proto.v0 import executor_pb2

    proto = executor_pb2.Value.FromString(valid_bytes(wire))
    array = proto.struct.element[0].value.struct.element[0].value.array
    array.content = array.content[:100]
    return proto.SerializeToString()


def sequence_value(wire: Wire) -> bytes:
    """A tf.data dataset (a serialized GraphDef the server would have to load to deserialize it)."""
    import tensorflow as tf

    return encode_as(tf.data.Dataset.range(3), tff.SequenceType(np.int64))


def weights_value(wire: Wire) -> bytes:
    from services.common.task import initial_weights

    return codec.encode(initial_weights(0), wire.weights_type)


def renamed(wire: Wire) -> bytes:
    rt = wire.result_type
    value = collections.OrderedDict(upd=update_arrays(wire), update_weight=np.float32(10))
    return encode_as(value, tff.StructType([("upd", rt.update), ("update_weight", rt.update_weight)]))


def unnamed(wire: Wire) -> bytes:
    rt = wire.result_type
    return encode_as([update_arrays(wire), np.float32(10)], tff.StructType([rt.update, rt.update_weight]))


def extra_field(wire: Wire) -> bytes:
    rt = wire.result_type
    value = collections.OrderedDict(update=update_arrays(wire), update_weight=np.float32(10), extra=np.float32(1))
    return encode_as(value, tff.StructType([("update", rt.update), ("update_weight", rt.update_weight),
                                            ("extra", tensor(np.float32, []))]))


def float64_weight(wire: Wire) -> bytes:
    rt = wire.result_type
    value = collections.OrderedDict(update=update_arrays(wire), update_weight=np.float64(10))
    return encode_as(value, tff.StructType([("update", rt.update), ("update_weight", tensor(np.float64, []))]))


def oversized(wire: Wire) -> bytes:
    return with_update(wire, 0, np.zeros((64, 400), np.float32))  # ~100 KB > MAX_PAYLOAD


INVALID = grpc.StatusCode.INVALID_ARGUMENT
CASES = [
    payload_case("malformed protobuf payload", "payload bytes that are not a TFF Value proto",
                 lambda w: b"\x0a\xff\xff\xff\xff\x0fnot a protobuf at all"),
    payload_case("empty payload", "a zero-byte payload (an empty Value proto)", lambda w: b""),
    payload_case("wrong TFF type: model weights", "the global ModelWeights sent back instead of a ClientResult",
                 weights_value),
    payload_case("wrong TFF type: dataset", "a Value of kind sequence (a tf.data GraphDef)", sequence_value),
    payload_case("wrong TFF type: bare scalar", "a float32 scalar instead of the ClientResult struct",
                 lambda w: encode_as(np.float32(1), tensor(np.float32, []))),
    payload_case("wrong TFF type: unnamed struct", "the right tensors in a struct without field names", unnamed),
    payload_case("wrong TFF type: renamed field", "field `update` renamed to `upd`", renamed),
    payload_case("wrong TFF type: extra field", "a third field next to update and update_weight", extra_field),
    payload_case("wrong shape: transposed kernel", "update[0] as float32[32,64] instead of float32[64,32]",
                 lambda w: with_update(w, 0, np.zeros((32, 64), np.float32))),
    payload_case("wrong shape: missing dimension", "update[1] as float32[] instead of float32[32]",
                 lambda w: with_update(w, 1, np.zeros((), np.float32))),
    payload_case("wrong dtype: float64 update", "update[0] as float64[64,32]",
                 lambda w: with_update(w, 0, np.zeros((64, 32), np.float64))),
    payload_case("wrong dtype: int32 update", "update[3] as int32[10]",
                 lambda w: with_update(w, 3, np.zeros((10,), np.int32))),
    payload_case("wrong dtype: float64 weight", "update_weight as float64", float64_weight),
    payload_case("shape lies about content", "array proto claims float32[64,32] but carries 25 numbers",
                 lying_shape),
    payload_case("NaN in update", "one NaN in update[0]", non_finite("update", float("nan"))),
    payload_case("+Inf in update", "one +Inf in update[0]", non_finite("update", float("inf"))),
    payload_case("-Inf in update", "one -Inf in update[0]", non_finite("update", float("-inf"))),
    payload_case("NaN weight", "update_weight = NaN", non_finite("weight", float("nan"))),
    payload_case("Inf weight", "update_weight = +Inf", non_finite("weight", float("inf"))),
    payload_case("zero weight", "update_weight = 0", lambda w: valid_bytes(w, weight=0.0)),
    payload_case("negative weight", "update_weight = -5", lambda w: valid_bytes(w, weight=-5.0)),
    payload_case("payload over max_payload_bytes", f"a truthful ~100 KB result (limit {MAX_PAYLOAD} bytes)",
                 oversized, grpc.StatusCode.RESOURCE_EXHAUSTED),
    header_case("announced size over max_payload_bytes", "header announces 1 GiB, then a valid payload",
                grpc.StatusCode.RESOURCE_EXHAUSTED, payload_bytes=1 << 30),
    header_case("negative announced size", "header payload_bytes = -1", INVALID, payload_bytes=-1),
    header_case("stream longer than announced", "header announces 100 bytes, ~10 KB follow", INVALID,
                payload_bytes=100),
    header_case("stream shorter than announced", "header announces 1 byte more than is sent", INVALID,
                payload_bytes=lambda w, r: len(valid_bytes(w)) + 1),
    header_case("SHA-256 mismatch", "a valid payload with another payload's digest", INVALID,
                payload_sha256=hashlib.sha256(b"other").digest()),
    header_case("SHA-256 of wrong length", "payload_sha256 of 5 bytes", INVALID, payload_sha256=b"short"),
    header_case("NaN metric", "metrics {train_loss: NaN}", INVALID, metrics={"train_loss": float("nan")}),
    header_case("Inf metric", "metrics {train_loss: +Inf}", INVALID, metrics={"train_loss": float("inf")}),
    header_case("too many metrics", "33 metrics (limit 32)", INVALID, metrics={f"m{i}": 1.0 for i in range(33)}),
    header_case("bad metric name", "metric named `rm -rf /`", INVALID, metrics={"rm -rf /": 1.0}),
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
    Case("stream without header", "only data chunks", lambda w, r: stream(None, valid_bytes(w)), INVALID),
    Case("empty stream", "no chunks at all", lambda w, r: [], INVALID),
    Case("data before header", "a data chunk, then the header and payload",
         lambda w, r: [pb.ResultChunk(data=b"x"), *stream(header(r, valid_bytes(w)), valid_bytes(w))], INVALID),
    Case("second header", "header, a second header, then the payload",
         lambda w, r: [pb.ResultChunk(header=header(r, valid_bytes(w))),
                       *stream(header(r, valid_bytes(w)), valid_bytes(w))], INVALID),
    Case("empty chunk oneof", "header, then a chunk with neither header nor data",
         lambda w, r: [pb.ResultChunk(header=header(r, b"")), pb.ResultChunk()], INVALID),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_result_is_refused_and_round_unaffected(wire: Wire, rnd: Round, case: Case, faults) -> None:
    before = rejected(wire)
    code, detail = submit(wire, case.build(wire, rnd))
    assert code == case.expected, detail
    assert rnd.current().results == {}
    assert sum(rejected(wire).values()) == sum(before.values()) + 1  # counted in the server's metrics
    faults.record(AREA, case.name, case.done, case.expected.name,
                  f"{code.name} ({stable(detail)}); {assert_unaffected(wire, rnd, rnd.alice)}")


def test_chunk_over_grpc_message_limit(wire: Wire, rnd: Round, faults) -> None:
    body = valid_bytes(wire)
    code, detail = submit(wire, [pb.ResultChunk(header=header(rnd, body)), pb.ResultChunk(data=b"\0" * (5 << 20))])
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, detail
    faults.record(AREA, "chunk over gRPC's 4 MiB message limit", "one 5 MiB data chunk after a valid header",
                  "RESOURCE_EXHAUSTED", f"{code.name} (gRPC refuses the message); {assert_unaffected(wire, rnd, rnd.alice)}")


def test_dataset_payload_is_refused_before_tff_deserializes_it(wire: Wire, rnd: Round, monkeypatch) -> None:
    """A peer must not make the server build a tf.data dataset from the peer's GraphDef."""
    from tensorflow_federated.python.core.impl.executors import value_serialization

    built: list[object] = []
    real = value_serialization._deserialize_dataset_from_graph_def
    monkeypatch.setattr(value_serialization, "_deserialize_dataset_from_graph_def",
                        lambda *a, **k: built.append(a) or real(*a, **k))
    body = sequence_value(wire)
    code, detail = submit(wire, stream(header(rnd, body), body))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, detail
    assert built == []


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


def test_replayed_result(wire: Wire, rnd: Round, faults) -> None:
    first = valid_bytes(wire, fill=0.5)
    assert submit(wire, stream(header(rnd, first), first)) == (OK, "")
    # The same stream again, then a different result under the same client and task.
    code1, _ = submit(wire, stream(header(rnd, first), first))
    other = valid_bytes(wire, fill=-0.5)
    code2, detail = submit(wire, stream(header(rnd, other), other))
    assert code1 == code2 == grpc.StatusCode.ALREADY_EXISTS, detail
    stored = rnd.current().results[rnd.alice]
    assert all(np.all(np.asarray(a) == np.float32(0.5)) for a in stored.value.update)
    assert list(rnd.current().results) == [rnd.alice]
    assert send_valid(wire, rnd, rnd.bob) == (OK, "")  # the round goes on
    faults.record(AREA, "replayed result", "an accepted result sent again, then a different one for the same task",
                  "ALREADY_EXISTS", f"{code1.name}, {code2.name}; the first result is kept; other clients still accepted")


def test_result_for_a_closed_round(wire: Wire, rnd: Round, faults) -> None:
    late = valid_bytes(wire)
    late_header = header(rnd, late)  # round 1's task
    rnd.task.deadline = rnd.coordinator.clock()  # round 1 passes its deadline with no results ...
    rnd.coordinator.wait_round(rnd.task)
    task2 = rnd.coordinator.open_round(2, Payload.of(GLOBAL_WEIGHTS))  # ... and round 2 opens
    code, detail = submit(wire, stream(late_header, late))
    assert code == grpc.StatusCode.FAILED_PRECONDITION, detail
    assert rnd.task.results == {} and task2.results == {}
    faults.record(AREA, "result for a closed round", "round 1's result sent after round 1 closed and round 2 opened",
                  "FAILED_PRECONDITION", f"{code.name} ({stable(detail)}); {assert_unaffected(wire, rnd, rnd.alice)}")


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
def valid_accepted_value(wire: Wire, value: Any) -> None:
    """An accepted result must be a valid value of exactly the ClientResult type."""
    rt = wire.result_type
    arrays = list(value.update)
    assert len(arrays) == len(rt.update)
    for array, t in zip(arrays, rt.update, strict=True):
        array = np.asarray(array)
        assert array.dtype == np.dtype(t.dtype.type) and array.shape == tuple(t.shape)
        assert np.all(np.isfinite(array))
    weight = np.asarray(value.update_weight)
    assert weight.dtype == np.float32 and weight.shape == () and np.isfinite(weight) and weight > 0
    codec.decode(codec.encode(value, rt), rt)  # and it round-trips as that type


EXAMPLES = 150
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ALLOWED = "a status from the allowed set; only exact, finite ClientResults accepted"


def fuzz_submit(wire: Wire, rnd: Round, chunks: list[pb.ResultChunk]) -> grpc.StatusCode:
    code, detail = submit(wire, chunks)
    assert code in REFUSALS | {OK}, (code, detail)
    results = rnd.current().results
    if code == OK:
        assert len(results) == 1
        valid_accepted_value(wire, next(iter(results.values())).value)
    else:
        assert results == {}, detail
    return code


def seen(codes: set[str]) -> str:
    return f"statuses seen: {', '.join(sorted(codes))}; no crash, no hang, nothing invalid accepted"


@pytest.fixture(scope="module")
def fuzz_payload(wire: Wire) -> bytes:
    """A valid result with non-trivial numbers, so mutations of the content land on real values."""
    arrays = [np.linspace(-1, 1, int(np.prod(t.shape)), dtype=np.float32).reshape(t.shape)
              for t in wire.result_type.update]
    return codec.encode(collections.OrderedDict(update=arrays, update_weight=np.float32(7)), wire.result_type)


def mutated(valid: bytes) -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = bytearray(valid)
        for _ in range(draw(st.integers(1, 6))):
            op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
            pos = draw(st.integers(0, max(0, len(data) - 1)))
            if op == "flip" and data:
                data[pos] ^= 1 << draw(st.integers(0, 7))
            elif op == "set" and data:
                data[pos] = draw(st.integers(0, 255))
            elif op == "insert":
                data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
            elif op == "delete":
                del data[pos : pos + draw(st.integers(1, 16))]
            elif op == "truncate":
                del data[pos:]
        return bytes(data)

    return build()


def test_fuzz_mutated_payloads(wire: Wire, fuzz_payload: bytes, faults) -> None:
    """Bit flips, overwrites, insertions, deletions and truncations of a valid payload, under a
    truthful header and random chunking: refused as INVALID_ARGUMENT, or accepted only when the
    mutation still leaves an exact, finite ClientResult (e.g. a flipped bit in a weight's mantissa)."""
    codes: set[str] = set()

    @FUZZ
    @given(payload=mutated(fuzz_payload), chunk=st.integers(1, 20_000))
    def run(payload: bytes, chunk: int) -> None:
        rnd = open_round(wire)
        code = fuzz_submit(wire, rnd, stream(header(rnd, payload), payload, chunk=chunk))
        assert code in {OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
        codes.add(code.name)

    run()
    assert "INVALID_ARGUMENT" in codes  # the fuzzer did reach the decoder's refusals
    faults.record(AREA, "fuzz: mutated payloads", f"{EXAMPLES} valid payloads with 1-6 bit flips, overwrites, "
                  "insertions, deletions or truncations; truthful header; random chunking", ALLOWED, seen(codes))


metric_maps = st.dictionaries(st.text(max_size=70), st.floats(allow_nan=True, allow_infinity=True), max_size=40)
int64s = st.integers(-(2**63), 2**63 - 1)


def test_fuzz_random_streams(wire: Wire, fuzz_payload: bytes, faults) -> None:
    """Random ResultChunk sequences: random headers (some quoting the real client, task and round),
    random data chunks, in any order. Every answer is a refusal from the allowed set (or an accepted,
    valid result), never a crash or a hang."""
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
            payload_bytes=int64s | st.integers(0, 20_000),
            payload_sha256=st.binary(max_size=40),
            metrics=metric_maps,
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
                  "headers (client, task, round, size, digest, metrics), random or real data, any order",
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
        assert rnd.current().results == {}
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
