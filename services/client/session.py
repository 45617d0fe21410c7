"""The client's conversation with the server: join, long-poll for tasks, stream results back and,
in a secure round, send each secure-aggregation phase once (never retried: a resend is refused as a
replay). Calls that fail because the server is away are retried with exponential backoff and
jitter, up to ``client.give_up_after_s`` (then ServerGone); credentials the server refuses end the
client at once (Refused). ``on_reachable`` hears whether the server answered (the readiness probe)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from google.protobuf.message import DecodeError

from services.common.chunking import Buffer, assemble, data_messages, data_of, payload_nbytes, serialize_chunk
from services.common.config import FederationConfig
from services.common.logs import fields
from services.common.proto import federation_pb2 as pb
from services.common.proto import federation_pb2_grpc as pb_grpc
from services.common.transport import SERVICE_NAME, call_metadata, channel, read_token

if TYPE_CHECKING:  # the trainer pulls in TensorFlow
    from services.client.trainer import Trained

log = logging.getLogger(__name__)

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
             grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.RESOURCE_EXHAUSTED}
POLL_TIMEOUT_S = 60.0  # the server answers a long poll within ~10 s
MAX_TASK_BYTES = 4 * 1024 * 1024 * 1024
SUBMIT_TIMEOUT_S = 600.0  # a large update may wait for one of the server's upload slots (server.upload_slots)


class ServerGone(RuntimeError):
    """No server for longer than ``client.give_up_after_s``."""


@dataclass(frozen=True)
class Joined:
    client_id: str
    shard_index: int
    num_shards: int


class Backoff:
    """Exponential backoff with full jitter, reset by any success."""

    def __init__(self, initial_s: float, max_s: float, give_up_after_s: float,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.initial_s, self.max_s, self.give_up_after_s = initial_s, max_s, give_up_after_s
        self.sleep = sleep
        self.attempt = 0
        self.failing_since: float | None = None

    def success(self) -> None:
        self.attempt = 0
        self.failing_since = None

    def wait(self, why: str) -> None:
        now = time.monotonic()
        self.failing_since = self.failing_since or now
        if now - self.failing_since > self.give_up_after_s:
            raise ServerGone(f"no server for {now - self.failing_since:.0f}s ({why}); giving up")
        delay = random.uniform(0, min(self.max_s, self.initial_s * 2**self.attempt))
        self.attempt += 1
        # A warning each time, with gRPC's reason: a client that cannot reach its server (a silo
        # behind a firewall, a wrong name) must say so where operators look, not at info.
        log.warning("server unavailable, retrying", extra=fields(
            why=why, delay_s=round(delay, 2), failing_for_s=round(now - self.failing_since, 1)))
        self.sleep(delay)


class Stopped(RuntimeError):
    """The client was asked to stop (SIGTERM)."""


class OtherTask(RuntimeError):
    """The server trains another learning task (or with other client settings): this client cannot
    take part until both are deployed with the same task (the message names the parts that differ)."""


class Refused(RuntimeError):
    """The server refused this client's credentials (UNAUTHENTICATED / PERMISSION_DENIED): retrying
    cannot help, the token or certificate must be fixed."""


REFUSED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


class Session:
    """``on_reachable(bool)`` hears whether the last call reached the server (the client's readiness)."""

    def __init__(self, cfg: FederationConfig, name: str,
                 on_reachable: Callable[[bool], None] | None = None) -> None:
        self.stopping = False
        self.on_reachable = on_reachable or (lambda _reachable: None)
        self.cfg = cfg
        self.name = name
        self.metadata = call_metadata(read_token(cfg.security))
        self.channel = channel(cfg.client.server_address, cfg.security, cfg.client.reconnect_max_s)
        self.stub = pb_grpc.FederationStub(self.channel)
        # The streaming calls carry data chunks framed by hand (services.common.chunking): the same
        # protobuf on the wire, one copy fewer on each side.
        self._get_task = self.channel.unary_stream(
            f"/{SERVICE_NAME}/GetTask", request_serializer=pb.TaskRequest.SerializeToString,
            response_deserializer=_raw)
        self._submit = self.channel.stream_unary(
            f"/{SERVICE_NAME}/SubmitResult", request_serializer=serialize_chunk,
            response_deserializer=pb.SubmitReply.FromString)
        c = cfg.client
        self.backoff = Backoff(c.reconnect_initial_s, c.reconnect_max_s, c.give_up_after_s)

    def close(self) -> None:
        self.channel.close()

    def stop(self) -> None:
        """From a signal handler: end any call in flight and make every later call raise Stopped."""
        self.stopping = True
        self.channel.close()

    def retrying(self, call: Callable[[], object], what: str) -> object:
        while True:
            if self.stopping:
                raise Stopped(what)
            try:
                result = call()
                self.backoff.success()
                self.on_reachable(True)
                return result
            except (grpc.RpcError, ValueError) as err:  # ValueError: the channel was closed by stop()
                if self.stopping:
                    raise Stopped(what) from None
                if isinstance(err, grpc.RpcError) and err.code() in REFUSED:
                    raise Refused(
                        f"{what}: the server refused this client with {err.code().name} ({err.details()}); "
                        "check the bearer token (security.token_file) and client certificate"
                    ) from None
                if not isinstance(err, grpc.RpcError) or err.code() not in RETRYABLE:
                    raise
                self.on_reachable(False)
                self.backoff.wait(f"{what}: {err.code().name}: {err.details()}")

    def join(self, task: Mapping[str, str] | None = None) -> Joined:
        """``task``: this client's task contract (services/tasks/contract.py), which the server checks."""
        request = pb.JoinRequest(name=self.name, task=dict(task or {}))
        try:
            reply = self.retrying(lambda: self.stub.Join(request, metadata=self.metadata, timeout=30), "join")
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise OtherTask(f"join refused: {err.details()}") from None
            raise
        assert isinstance(reply, pb.JoinReply)
        return Joined(reply.client_id, reply.shard_index, reply.num_shards)

    def get_task(self, client_id: str) -> tuple[pb.TaskHeader, memoryview]:
        """One long poll: (header, model bytes) for TRAIN, (header, empty) otherwise."""

        def call() -> tuple[pb.TaskHeader, memoryview]:
            stream = self._get_task(pb.TaskRequest(client_id=client_id), metadata=self.metadata,
                                    timeout=POLL_TIMEOUT_S)
            first = _task_chunk(next(stream, None))
            if first is None or first.WhichOneof("part") != "header":
                raise ProtocolError("task stream did not start with a header")
            header = first.header
            if header.kind != pb.TaskHeader.TRAIN:
                return header, memoryview(b"")
            data = assemble((_task_data(raw) for raw in stream), expected_bytes=header.payload_bytes,
                            max_bytes=MAX_TASK_BYTES)
            return header, data

        result = self.retrying(call, "get task")
        assert isinstance(result, tuple)
        return result

    def secure(self, request: pb.SecureRequest, timeout: float) -> pb.SecureReply:
        """One secure-aggregation phase. Not retried: a phase is sent once (a resend is refused
        as a replay); a failure ends this client's part in the round."""
        if self.stopping:
            raise Stopped("secure aggregation")
        try:
            reply = self.stub.SecureAggregation(request, metadata=self.metadata, timeout=timeout)
        except ValueError:  # the channel was closed by stop()
            raise Stopped("secure aggregation") from None
        self.on_reachable(True)
        return reply

    def submit(self, client_id: str, header: pb.TaskHeader, trained: Trained, layout: str) -> pb.SubmitReply:
        return self.submit_payload(client_id, header, trained.result, layout, trained.weight, trained.metrics)

    def submit_payload(self, client_id: str, header: pb.TaskHeader, result: Buffer | Sequence[Buffer], layout: str,
                       weight: float,
                       metrics: dict[str, float]) -> pb.SubmitReply:
        """Stream a result payload (its wire layout's bytes, one buffer or several) for ``header``'s task."""

        def messages() -> Iterator[pb.ResultChunk | bytes]:
            yield pb.ResultChunk(header=pb.ResultHeader(
                client_id=client_id, task_id=header.task_id, round=header.round,
                payload_bytes=payload_nbytes(result),
                layout=layout, metrics=metrics, update_weight=weight))
            yield from data_messages(result, self.cfg.server.chunk_bytes)

        reply = self.retrying(lambda: self._submit(messages(), metadata=self.metadata, timeout=SUBMIT_TIMEOUT_S),
                              "submit")
        assert isinstance(reply, pb.SubmitReply)
        return reply


class ProtocolError(RuntimeError):
    """The server broke the protocol."""



def _raw(data: bytes) -> bytes:
    return data


def _task_chunk(raw: bytes | None) -> pb.TaskChunk | None:
    if raw is None:
        return None
    try:
        return pb.TaskChunk.FromString(raw)
    except DecodeError as exc:
        raise ProtocolError(f"malformed TaskChunk from the server ({exc})") from None


def _task_data(raw: bytes) -> bytes | memoryview:
    view = data_of(raw)
    if view is not None:
        return view
    chunk = _task_chunk(raw)
    if chunk is None or chunk.WhichOneof("part") != "data":
        raise ProtocolError("only data chunks may follow the TaskHeader")
    return chunk.data
