"""The gRPC face of the server: refuses, with a precise status, anything a peer sends that is not
exactly what the protocol allows, and hands the rest over: joins and task polls to the coordinator,
a result's header and chunks to its round's aggregation (services/server/aggregation), which
commits the result only once the coordinator accepts it whole."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError

from services.common.chunking import PayloadError, check_size, data_of, serialize_chunk
from services.common.logs import fields
from services.common.proto import federation_pb2 as pb
from services.common.proto import federation_pb2_grpc as pb_grpc
from services.common.tensors import Layout, LayoutError
from services.common.transport import SERVICE_NAME
from services.server import secure_phases
from services.server.aggregation import RoundClosed, Upload
from services.server.aggregation.staging import check_weight
from services.server.broadcast import Broadcast
from services.server.coordinator import Coordinator, RoundTask, TaskKind
from services.server.identity import NotASilo, SiloGate
from services.server.refusals import STATUS, Reason, Reject
from services.server.telemetry import Telemetry, memory_mb
from services.tasks.contract import Contract, check_peer
from services.tasks.evaluation import PREFIX as EVAL_PREFIX

log = logging.getLogger(__name__)

MAX_METRICS = 64
MAX_METRIC_NAME = 64


class Malformed:
    """Stands in for a request message that is not valid protobuf, so the servicer refuses it with
    INVALID_ARGUMENT (gRPC's own deserializer would answer INTERNAL, as if the server were broken)."""

    def __init__(self, error: str) -> None:
        self.error = error


def _lenient(message_type: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except DecodeError as exc:
            return Malformed(f"malformed {message_type.DESCRIPTOR.name} message ({exc})")

    return parse


def _lenient_chunk(message_type: Any) -> Callable[[bytes], Any]:
    """A data chunk as a view of its bytes (no protobuf copy), anything else as :func:`_lenient`."""
    parse = _lenient(message_type)

    def read(data: bytes) -> Any:
        view = data_of(data)
        return view if view is not None else parse(data)

    return read


def add_to_server(servicer: FederationServicer, server: grpc.Server) -> None:
    """Like the generated ``add_FederationServicer_to_server``, with deserializers that let the
    servicer refuse unparsable messages itself."""
    handlers = {
        "Join": grpc.unary_unary_rpc_method_handler(
            servicer.Join, request_deserializer=_lenient(pb.JoinRequest),
            response_serializer=pb.JoinReply.SerializeToString),
        "GetTask": grpc.unary_stream_rpc_method_handler(
            servicer.GetTask, request_deserializer=_lenient(pb.TaskRequest),
            response_serializer=serialize_chunk),
        "SubmitResult": grpc.stream_unary_rpc_method_handler(
            servicer.SubmitResult, request_deserializer=_lenient_chunk(pb.ResultChunk),
            response_serializer=pb.SubmitReply.SerializeToString),
        "SecureAggregation": grpc.unary_unary_rpc_method_handler(
            servicer.SecureAggregation, request_deserializer=_lenient(pb.SecureRequest),
            response_serializer=pb.SecureReply.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


class FederationServicer(pb_grpc.FederationServicer):
    def __init__(
        self,
        coordinator: Coordinator,
        result_layout: Layout,
        telemetry: Telemetry,
        *,
        chunk_bytes: int,
        max_payload_bytes: int,
        poll_s: float = 10.0,
        gate: SiloGate | None = None,
        contract: Contract | None = None,
        evaluate_every: int = 0,
        eval_keys: frozenset[str] = frozenset(),
    ) -> None:
        """``contract``: the server's task contract, a joining client's must equal it;
        ``evaluate_every`` / ``eval_keys``: federated evaluation every so many rounds, and the
        ``ev_`` metrics a result that reports it must carry, exactly."""
        self.coordinator = coordinator
        self.contract = contract
        self.evaluate_every = evaluate_every
        self.eval_keys = eval_keys
        self.gate = gate or SiloGate(())
        self.result_layout = result_layout
        self.telemetry = telemetry
        self._broadcast: Broadcast | None = None
        self._broadcast_lock = threading.Lock()
        self.chunk_bytes = chunk_bytes
        self.max_payload_bytes = max_payload_bytes
        self.poll_s = poll_s

    def _abort(self, context: grpc.ServicerContext, reason: Reason, message: str) -> NoReturn:
        self.telemetry.reject(reason)
        log.warning("rejected request: %s", message, extra=fields(reason=reason, peer=context.peer()))
        context.abort(grpc.StatusCode[STATUS[reason]], message)
        raise AssertionError("grpc's context.abort always raises")

    def _silo(self, context: grpc.ServicerContext, client_id: str | None = None) -> str:
        """The caller's silo (services/server/identity.py); with ``client_id``, also that the id
        joined from that silo."""
        try:
            silo = self.gate.silo_of(context)
            if client_id is not None:
                self.coordinator.check_silo(client_id, silo)
        except NotASilo as exc:
            self._abort(context, "unauthenticated", str(exc))
        except Reject as exc:
            self._abort(context, exc.reason, str(exc))
        return silo

    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:  # noqa: N802
        if isinstance(request, Malformed):
            self._abort(context, "invalid", request.error)
        silo = self._silo(context)
        self._check_contract(context, request)
        try:
            record = self.coordinator.join(request.name, silo)
        except Reject as exc:
            self._abort(context, exc.reason, str(exc))
        log.info("client joined", extra=fields(client=record.name, client_id=record.client_id, shard=record.shard,
                                                **({"silo": silo} if silo else {})))
        return pb.JoinReply(
            client_id=record.client_id, shard_index=record.shard, num_shards=self.coordinator.num_shards
        )

    def _check_contract(self, context: grpc.ServicerContext, request: pb.JoinRequest) -> None:
        """A joining client trains the server's task, or is refused saying which parts differ. A
        client that sends no contract is bound by the weights' layout check alone (every TRAIN
        header and result names it)."""
        if self.contract is None or not request.task:
            return
        try:
            theirs = check_peer(request.task)
        except ValueError as exc:
            self._abort(context, "invalid", str(exc))
        differs = self.contract.differences(theirs)
        if differs:
            self._abort(context, "other_task", "this client's learning task differs from the server's in: "
                        + "; ".join(differs) + " (deploy both with the same task and training settings)")

    def _evaluates(self, task: RoundTask) -> bool:
        return bool(self.evaluate_every) and task.round % self.evaluate_every == 0 \
            and task.aggregation.aggregator.weights_in_clear  # never in a secure round

    def GetTask(self, request: pb.TaskRequest, context: grpc.ServicerContext) -> Iterator[pb.TaskChunk | bytes]:  # noqa: N802
        if isinstance(request, Malformed):
            self._abort(context, "invalid", request.error)
        self._silo(context, request.client_id)
        try:
            kind, task = self.coordinator.next_task(request.client_id, self.poll_s)
        except Reject as exc:
            self._abort(context, exc.reason, str(exc))
        if kind is TaskKind.DONE:
            yield pb.TaskChunk(header=pb.TaskHeader(kind=pb.TaskHeader.DONE))
            return
        if kind is TaskKind.WAIT or task is None:
            yield pb.TaskChunk(header=pb.TaskHeader(kind=pb.TaskHeader.WAIT))
            return
        broadcast = self._broadcast_of(task)
        payload_bytes = broadcast.nbytes
        yield pb.TaskChunk(
            header=pb.TaskHeader(
                kind=pb.TaskHeader.TRAIN,
                round=task.round,
                task_id=task.task_id,
                payload_bytes=payload_bytes,
                layout=task.layout,
                deadline_s=task.remaining(self.coordinator.clock()),
                evaluate=self._evaluates(task),
                **secure_phases.header_fields(task),
            )
        )
        yield from broadcast.messages()
        self.telemetry.add_bytes(sent=payload_bytes)

    # ---- secure aggregation's key phases and unmasking (services/server/secure_phases.py) -------
    def SecureAggregation(self, request: pb.SecureRequest, context: grpc.ServicerContext) -> pb.SecureReply:  # noqa: N802
        if isinstance(request, Malformed):
            self._abort(context, "invalid", request.error)
        self._silo(context, request.client_id)
        try:
            return secure_phases.handle(self.coordinator, request, context.time_remaining())
        except Reject as exc:
            self._abort(context, exc.reason, str(exc))

    def _broadcast_of(self, task: RoundTask) -> Broadcast:
        """The round's chunk messages, shared by its sampled clients' streams."""
        with self._broadcast_lock:
            if self._broadcast is None or self._broadcast.task_id != task.task_id:
                self._broadcast = Broadcast(task.task_id, task.payload, self.chunk_bytes, len(task.sampled))
            return self._broadcast

    def SubmitResult(self, request_iterator: Iterator[pb.ResultChunk], context: grpc.ServicerContext) -> pb.SubmitReply:  # noqa: N802
        first = next(request_iterator, None)
        if isinstance(first, Malformed):
            self._abort(context, "invalid", first.error)
        if first is None or isinstance(first, memoryview) or first.WhichOneof("part") != "header":
            self._abort(context, "invalid", "a result stream must start with a ResultHeader")
        h = first.header
        self._silo(context, h.client_id)
        try:
            task = self.coordinator.begin_upload(h.client_id, h.task_id, h.round)
            try:
                metrics = _validate_metrics(h.metrics)
                self._check_eval_metrics(task, metrics)
                if task.aggregation.aggregator.weights_in_clear:  # the weight taken, for the per-silo rows
                    metrics["update_weight"] = float(h.update_weight)  # (it overrides a metric of that name)
                check_size(h.payload_bytes, self.max_payload_bytes)
                expected = task.aggregation.result_layout  # the masked layout in a secure round
                expected.check_fingerprint(h.layout, "this result")
                if h.payload_bytes != expected.nbytes:
                    raise LayoutError(f"expected {expected.nbytes} bytes for this model, "
                                      f"the header announces {h.payload_bytes}")
                _validate_weight(h.update_weight)
                # A stalled or slow upload must not outlive its round: cancel it at the deadline.
                cutoff = threading.Timer(task.remaining(self.coordinator.clock()), context.cancel)
                cutoff.daemon = True
                cutoff.start()
                try:
                    self._receive(task, h, metrics, _data_parts(request_iterator))
                finally:
                    cutoff.cancel()
            finally:
                self.coordinator.end_upload(task, h.client_id)
        except Reject as exc:
            self._abort(context, exc.reason, str(exc))
        except RoundClosed as exc:
            self._abort(context, "stale", f"round {h.round}: {exc}")
        except PayloadError as exc:
            self._abort(context, "too_large" if exc.too_large else "invalid", str(exc))
        except LayoutError as exc:
            self._abort(context, "invalid", f"client result rejected: {exc}")
        except grpc.RpcError:  # the stream broke, or the round-deadline cutoff cancelled it
            self.telemetry.reject("stale")
            log.warning("result upload ended early", extra=fields(client_id=h.client_id, round=h.round,
                                                                    peer=context.peer()))
            raise
        log.info("result accepted", extra=fields(client_id=h.client_id, round=h.round, bytes=h.payload_bytes, **memory_mb()))
        return pb.SubmitReply(accepted=True, detail=f"round {h.round} result accepted")

    def _check_eval_metrics(self, task: RoundTask, metrics: dict[str, float]) -> None:
        keys = {k for k in metrics if k.startswith(EVAL_PREFIX)}
        if keys and (not self._evaluates(task) or keys != self.eval_keys):
            raise Reject("invalid", "evaluation metrics (ev_*) only in a round that asks for them, exactly "
                         f"the task's {len(self.eval_keys)}")

    def _receive(self, task: RoundTask, h: pb.ResultHeader, metrics: dict[str, float], parts: Iterator[Any]) -> None:
        """Hand the result to its round's aggregation: staged (at most ``server.upload_slots`` at a
        time; this waits for a slot), checked chunk by chunk, and committed only if the coordinator
        accepts it. Anything else (a refusal, a broken stream, the round closing) discards it."""
        upload: Upload = task.aggregation.receive(h.client_id, h.update_weight,
                                                  timeout=task.remaining(self.coordinator.clock()))
        try:
            for part in parts:
                upload.feed(part)
                self.telemetry.add_bytes(received=len(part))
            upload.finish()
            self.coordinator.submit(h.client_id, h.task_id, h.round, metrics,
                                    on_accept=lambda: task.aggregation.commit(upload))
        finally:
            upload.discard()  # a no-op once committed


def _data_parts(chunks: Iterator[Any]) -> Iterator[bytes | memoryview]:
    for chunk in chunks:
        if isinstance(chunk, memoryview):  # the fast path: a data chunk read without protobuf
            yield chunk
            continue
        if isinstance(chunk, Malformed):
            raise Reject("invalid", chunk.error)
        if chunk.WhichOneof("part") != "data":
            raise Reject("invalid", "only data chunks may follow the ResultHeader")
        yield chunk.data


def _validate_metrics(metrics: Any) -> dict[str, float]:
    if len(metrics) > MAX_METRICS:
        raise Reject("invalid", f"at most {MAX_METRICS} metrics per result, got {len(metrics)}")
    out = {}
    for name, value in metrics.items():
        if not name or len(name) > MAX_METRIC_NAME or not name.isidentifier():
            raise Reject("invalid", f"metric name {name[:MAX_METRIC_NAME]!r} must be an identifier")
        if not math.isfinite(value):
            raise Reject("invalid", f"metric {name} is not finite")
        out[name] = float(value)
    return out


def _validate_weight(weight: float) -> None:
    """The aggregation's own check (staging.check_weight), before the result takes an upload slot."""
    try:
        check_weight(weight)
    except LayoutError as exc:  # refused as it is worded, without the payload refusals' prefix
        raise Reject("invalid", str(exc)) from None
