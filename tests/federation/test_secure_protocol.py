"""Secure aggregation over gRPC, in one process but real: the server's FederationServicer,
Coordinator and SecureAggregator on loopback, and the client's own Session and secure exchange
(services/client/secure_exchange.py) on threads, with a small hand-made ClientResult layout (no
TensorFlow). A full round comes out within 1 / S of ``mean``; the key phases and the unmasking
refuse, with a precise gRPC status, replayed, reordered, truncated, malformed and foreign-round
messages; and a client that a lying server asks for both secrets of one peer reveals nothing."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
from support.aggregation import layout_of

from services.client import secure_exchange
from services.client.secure import SecureProtocolError
from services.client.session import Session
from services.common.config import SecureSettings, from_mapping
from services.common.proto import federation_pb2 as pb
from services.common.proto import federation_pb2_grpc as pb_grpc
from services.common.transport import SERVICE_NAME
from services.server.aggregation import RoundRefused, Slots
from services.server.aggregation.interface import Outcome
from services.server.aggregation.mean import Mean
from services.server.aggregation.secure import SecureAggregator, SecureRound
from services.server.coordinator import Coordinator, RoundTask
from services.server.servicer import FederationServicer, add_to_server
from services.server.telemetry import Telemetry

pytestmark = pytest.mark.slow  # with the federation suite, which writes docs/faults.md

AREA = "secure aggregation"
SHAPES = [(40, 8), (8,)]
LAYOUT = layout_of(SHAPES)
WAIT = 30.0


def result(i: int) -> tuple[list[np.ndarray], float]:
    rng = np.random.default_rng(i)
    return [rng.uniform(-0.5, 0.5, s).astype(np.float32) for s in SHAPES], float(10 + i)


@dataclass(frozen=True)
class Trained:
    """What the client's trainer hands the secure exchange (services/client/trainer.py's Trained,
    without TensorFlow)."""

    result: tuple[memoryview, ...]
    weight: float
    metrics: dict[str, float]


@dataclass
class Federation:
    address: str
    coordinator: Coordinator
    task: RoundTask
    ids: list[str]
    stub: pb_grpc.FederationStub
    finished: list[Outcome | BaseException] = field(default_factory=list)

    def session(self, i: int) -> Session:
        cfg = from_mapping({"security": {"tls": False, "token_file": None},
                            "client": {"server_address": self.address, "name": f"c{i}"}})
        return Session(cfg, f"c{i}")

    def request(self, i: int, **phase: object) -> pb.SecureRequest:
        return pb.SecureRequest(client_id=self.ids[i], task_id=self.task.task_id, round=1, **phase)

    @property
    def aggregation(self) -> SecureRound:
        assert isinstance(self.task.aggregation, SecureRound)
        return self.task.aggregation


@contextmanager
def federation(clients: int = 4, phase_timeout_s: float = 2.0) -> Iterator[Federation]:
    coordinator = Coordinator(min_clients=clients, clients_per_round=clients, round_deadline_s=WAIT,
                              num_shards=clients, rng=np.random.default_rng(0))
    servicer = FederationServicer(coordinator, LAYOUT, Telemetry(), chunk_bytes=1024, max_payload_bytes=1 << 20)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
    add_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        ids = [coordinator.join(f"c{i}").client_id for i in range(clients)]
        agg = SecureAggregator(LAYOUT, Slots(2), SecureSettings(phase_timeout_s=phase_timeout_s))
        task = coordinator.open_round(1, b"\0" * 64, "model-fp", agg.open_round({}))
        fed = Federation(f"127.0.0.1:{port}", coordinator, task, ids, pb_grpc.FederationStub(channel))

        def round_loop() -> None:
            coordinator.wait_round(task)
            try:
                fed.finished.append(task.aggregation.finish())
            except BaseException as exc:  # noqa: BLE001 - the test looks at it
                fed.finished.append(exc)

        loop = threading.Thread(target=round_loop, daemon=True)
        loop.start()
        yield fed
        coordinator.stop()
        loop.join(WAIT)
    finally:
        channel.close()
        server.stop(0)


def take_part(fed: Federation, i: int, errors: dict[int, BaseException]) -> None:
    session = fed.session(i)
    try:
        header, _ = session.get_task(fed.ids[i])
        update, weight = result(i)

        def train() -> Trained:
            return Trained(LAYOUT.parts([*update, np.float32(weight)]), weight, {"num_examples": weight})

        secure_exchange.take_part(session, fed.ids[i], header, LAYOUT, train)
    except BaseException as exc:  # noqa: BLE001
        errors[i] = exc
    finally:
        session.close()


def run_clients(fed: Federation, which: list[int]) -> dict[int, BaseException]:
    errors: dict[int, BaseException] = {}
    threads = [threading.Thread(target=take_part, args=(fed, i, errors), daemon=True) for i in which]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    return errors


def mean_update(which: list[int]) -> list[np.ndarray]:
    rnd = Mean(LAYOUT, Slots(2)).open_round({})
    for i in which:
        update, weight = result(i)
        upload = rnd.receive(str(i), weight, WAIT)
        upload.feed(bytes(LAYOUT.encode([*update, np.float32(weight)])))
        upload.finish()
        rnd.commit(upload)
    return rnd.finish().update


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def test_a_secure_round_over_grpc_equals_mean_within_the_bound(faults) -> None:
    with federation() as fed:
        errors = run_clients(fed, [0, 1, 2, 3])
        assert not errors
        deadline_hit = threading.Event()
        threading.Timer(WAIT, deadline_hit.set).start()
        while not fed.finished and not deadline_hit.is_set():
            deadline_hit.wait(0.05)
        outcome = fed.finished[0]
        assert isinstance(outcome, Outcome), outcome
        bound = 1 / fed.aggregation.params.scale
        for got, want in zip(outcome.update, mean_update([0, 1, 2, 3]), strict=True):
            assert np.abs(got - want).max() <= bound + 1e-6


def test_a_client_killed_after_its_masked_input_is_unmasked_from_shares(faults) -> None:
    """Client 3 takes part up to its masked input and vanishes before unmasking (as a client killed
    there): the round completes with all four inputs, from the three survivors' shares."""
    with federation() as fed:
        original = secure_exchange.SecureClientRound.reveal
        killed = threading.local()

        def reveal(self, survivors, dropped):  # noqa: ANN001, ANN202
            if getattr(killed, "me", False):
                raise SystemExit("killed")
            return original(self, survivors, dropped)

        secure_exchange.SecureClientRound.reveal = reveal
        try:
            errors: dict[int, BaseException] = {}

            def doomed() -> None:
                killed.me = True
                take_part(fed, 3, errors)

            t = threading.Thread(target=doomed, daemon=True)
            t.start()
            errors.update(run_clients(fed, [0, 1, 2]))
            t.join(WAIT)
        finally:
            secure_exchange.SecureClientRound.reveal = original
        assert set(errors) == {3}
        fed.coordinator.stop()
        for _ in range(600):
            if fed.finished:
                break
            threading.Event().wait(0.05)
        outcome = fed.finished[0]
        assert isinstance(outcome, Outcome), outcome
        for got, want in zip(outcome.update, mean_update([0, 1, 2, 3]), strict=True):
            assert np.abs(got - want).max() <= 1 / fed.aggregation.params.scale + 1e-6
    faults.record(AREA, "client gone after its masked input (before unmasking)",
                  "4 clients over gRPC; client 3 sends its masked input and never reveals its shares",
                  "round completes from the 3 survivors' shares (t = 3), update within 1/S of mean of all 4",
                  f"completed, max |secure - mean| <= 1/S = {1 / fed.aggregation.params.scale:.2e}")


def test_phase_messages_that_break_the_protocol_are_refused(faults) -> None:
    with federation(clients=3, phase_timeout_s=5.0) as fed:  # n = 3: t = 2
        stub = fed.stub
        raw = grpc.insecure_channel(fed.address)
        keys = [pb.AdvertiseKeys(cipher_key=bytes([i]) * 32, mask_key=bytes([i + 100]) * 32) for i in range(3)]

        def send(request: pb.SecureRequest) -> pb.SecureReply:
            return stub.SecureAggregation(request, timeout=WAIT)

        cases: list[tuple[str, str, grpc.StatusCode, Callable[[], object]]] = [
            ("foreign-round AdvertiseKeys", "the task id of another round", grpc.StatusCode.FAILED_PRECONDITION,
             lambda: send(pb.SecureRequest(client_id=fed.ids[0], task_id="0" * 16, round=1, advertise=keys[0]))),
            ("next-round AdvertiseKeys", "this round's task id with round + 1", grpc.StatusCode.FAILED_PRECONDITION,
             lambda: send(pb.SecureRequest(client_id=fed.ids[0], task_id=fed.task.task_id, round=2,
                                           advertise=keys[0]))),
            ("truncated public key", "a 31-byte X25519 mask key", grpc.StatusCode.INVALID_ARGUMENT,
             lambda: send(fed.request(0, advertise=pb.AdvertiseKeys(cipher_key=b"c" * 32, mask_key=b"m" * 31)))),
            ("ShareKeys before AdvertiseKeys", "phase 2 first", grpc.StatusCode.FAILED_PRECONDITION,
             lambda: send(fed.request(0, share=pb.ShareKeys()))),
            ("UnmaskRequest before the masked input", "phase 4 first", grpc.StatusCode.FAILED_PRECONDITION,
             lambda: send(fed.request(0, unmask=pb.UnmaskRequest()))),
            ("RevealShares before UnmaskRequest", "phase 4's second half first", grpc.StatusCode.FAILED_PRECONDITION,
             lambda: send(fed.request(0, reveal=pb.RevealShares()))),
            ("SecureRequest without a phase", "no oneof member set", grpc.StatusCode.INVALID_ARGUMENT,
             lambda: send(fed.request(0))),
            ("SecureRequest from an unknown client", "a client id that never joined", grpc.StatusCode.NOT_FOUND,
             lambda: send(pb.SecureRequest(client_id="f" * 16, task_id=fed.task.task_id, round=1,
                                           advertise=keys[0]))),
            ("malformed SecureRequest", "bytes that are not protobuf", grpc.StatusCode.INVALID_ARGUMENT,
             lambda: raw.unary_unary(f"/{SERVICE_NAME}/SecureAggregation")(b"\xff\xff\xff", timeout=WAIT)),
            ("plain result in a secure round", "a SubmitResult laid out as the float ClientResult",
             grpc.StatusCode.INVALID_ARGUMENT,
             lambda: stub.SubmitResult(iter([pb.ResultChunk(header=pb.ResultHeader(
                 client_id=fed.ids[0], task_id=fed.task.task_id, round=1, payload_bytes=LAYOUT.nbytes,
                 layout=LAYOUT.fingerprint, update_weight=1.0))]), timeout=WAIT)),
        ]
        for name, done, expected, call in cases:
            got = code_of(call)
            assert got == expected, (name, got)
            faults.record(AREA, name, done, f"{expected.name}, nothing recorded", f"{got.name}, nothing recorded")
        assert not fed.aggregation.keys  # none of it was taken

        # Replayed while the first waits for the phase to end.
        first = stub.SecureAggregation.future(fed.request(0, advertise=keys[0]), timeout=WAIT)
        for _ in range(500):
            if fed.aggregation.keys:
                break
            threading.Event().wait(0.01)
        got = code_of(lambda: send(fed.request(0, advertise=keys[0])))
        assert got == grpc.StatusCode.ALREADY_EXISTS
        faults.record(AREA, "replayed AdvertiseKeys", "the same AdvertiseKeys again while the first waits",
                      "ALREADY_EXISTS", got.name)
        others = [stub.SecureAggregation.future(fed.request(i, advertise=keys[i]), timeout=WAIT) for i in (1, 2)]
        roster = first.result().roster
        assert [o.result().WhichOneof("phase") for o in others] == ["roster", "roster"]
        peers = [p.index for p in roster.neighbours]
        assert len(peers) == 2

        def shares(size: int, to: list[int]) -> pb.SecureRequest:
            return fed.request(0, share=pb.ShareKeys(shares=[pb.EncryptedShare(peer=j, ciphertext=b"x" * size)
                                                             for j in to]))

        from services.server.aggregation.secure import SHARE_CIPHERTEXT_BYTES as FULL
        for name, request in [("truncated share ciphertext", shares(FULL - 1, peers)),
                              ("share ciphertext with a byte too many", shares(FULL + 1, peers)),
                              ("shares for one neighbour only", shares(FULL, peers[:1])),
                              ("two shares for one neighbour", shares(FULL, [peers[0], peers[0], peers[1]])),
                              ("share for a client outside the round", shares(FULL, [peers[0], 7]))]:
            got = code_of(lambda r=request: send(r))
            assert got == grpc.StatusCode.INVALID_ARGUMENT, name
            faults.record(AREA, name, "ShareKeys after a valid AdvertiseKeys", "INVALID_ARGUMENT, nothing recorded",
                          f"{got.name}, nothing recorded")
        assert not fed.aggregation.shares
        raw.close()


def test_a_client_asked_for_both_secrets_of_a_peer_reveals_nothing(faults) -> None:
    """A server that lies about dropouts: it names a peer both a survivor and dropped (split over
    what it asks, as a malicious server would to get both its self mask and its mask key)."""
    with federation() as fed:
        original = SecureRound.unmask

        def lying(self, client, timeout):  # noqa: ANN001, ANN202
            survivors, dropped = original(self, client, timeout)
            peer = min(survivors - {self.index[client]})
            return survivors, dropped | {peer}

        SecureRound.unmask = lying
        try:
            errors = run_clients(fed, [0, 1, 2, 3])
        finally:
            SecureRound.unmask = original
        assert errors and all(isinstance(e, SecureProtocolError) and "both" in str(e) for e in errors.values())
        assert len(errors) == 4
        assert not fed.aggregation.self_mask_shares and not fed.aggregation.mask_key_shares
        fed.coordinator.stop()
        for _ in range(600):
            if fed.finished:
                break
            threading.Event().wait(0.05)
        assert isinstance(fed.finished[0], RoundRefused)
    faults.record(AREA, "server asks for both secrets of one peer",
                  "the server's unmask reply names a surviving neighbour as dropped too",
                  "every client refuses and reveals nothing; the round is refused",
                  f"{len(errors)} of 4 clients refused, 0 shares revealed, round refused")
