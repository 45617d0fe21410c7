"""Cross-silo identity (services/server/identity.py): with ``security.silos`` a caller's silo is the
one whose certificate it presented over mutual TLS, found by the certificate's SHA-256; a
certificate the CA signed that is not one of the silos is refused with UNAUTHENTICATED, a client
id works only from the silo that joined it, a name is unique only within its silo, and each
applied round is counted per silo (metrics.jsonl rows and /metrics). Real in-process gRPC over
mutual TLS on 127.0.0.1, the real servicer and coordinator."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from support.pki import Pki, issue_client, make_pki

from services.common import tensors
from services.common.config import ConfigError, SecuritySettings, SiloIdentity, from_mapping
from services.common.proto import federation_pb2 as pb
from services.common.proto import federation_pb2_grpc as pb_grpc
from services.common.transport import SERVER_OPTIONS, channel, server_credentials
from services.server.coordinator import Coordinator
from services.server.identity import SiloGate, cert_sha256
from services.server.rounds import silo_rows
from services.server.servicer import FederationServicer, add_to_server
from services.server.telemetry import Telemetry

LAYOUT = tensors.Layout((tensors.Leaf("update.0", np.dtype("<f4"), (2,), 0),
                         tensors.Leaf("update_weight", np.dtype("<f4"), (), 8)), 12, "0123456789abcdef")
TIMEOUT = 10


@dataclass
class Hub:
    port: int
    pki: Pki
    certs: dict[str, tuple[Path, Path]]  # silo-a, silo-b (in the stack), stray (signed, not in it)
    telemetry: Telemetry
    coordinator: Coordinator


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    certs = {name: issue_client(pki, name) for name in ("silo-a", "silo-b", "stray")}
    silos = tuple(SiloIdentity(name=n, cert_sha256=cert_sha256(certs[n][0].read_bytes())) for n in ("silo-a", "silo-b"))
    sec = SecuritySettings(tls=True, mutual_tls=True, ca_file=str(pki.ca), cert_file=str(pki.server_cert),
                           key_file=str(pki.server_key), token_file=None, silos=silos)
    coordinator = Coordinator(min_clients=2, clients_per_round=2, round_deadline_s=60, num_shards=2,
                              rng=np.random.default_rng(0))
    telemetry = Telemetry()
    servicer = FederationServicer(coordinator, LAYOUT, telemetry, chunk_bytes=1024, max_payload_bytes=1 << 20,
                                  poll_s=0.2, gate=SiloGate(sec.silos))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=SERVER_OPTIONS)
    add_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(sec))
    server.start()
    try:
        yield Hub(port, pki, certs, telemetry, coordinator)
    finally:
        server.stop(grace=None)


def stub_as(hub: Hub, who: str) -> tuple[pb_grpc.FederationStub, grpc.Channel]:
    cert, key = hub.certs[who]
    sec = SecuritySettings(tls=True, mutual_tls=True, ca_file=str(hub.pki.ca), cert_file=str(cert),
                           key_file=str(key), token_file=None)
    ch = channel(f"localhost:{hub.port}", sec)
    return pb_grpc.FederationStub(ch), ch


def test_a_silo_in_the_stack_joins_and_polls(hub: Hub) -> None:
    stub, ch = stub_as(hub, "silo-a")
    with ch:
        reply = stub.Join(pb.JoinRequest(name="client-0"), timeout=TIMEOUT)
        chunks = list(stub.GetTask(pb.TaskRequest(client_id=reply.client_id), timeout=TIMEOUT))
    assert reply.client_id and chunks[0].header.kind == pb.TaskHeader.WAIT


@pytest.mark.parametrize("call", ["join", "get_task", "submit"])
def test_a_certificate_not_in_the_stack_is_unauthenticated(hub: Hub, call: str) -> None:
    """The stray certificate is signed by the federation's CA (the TLS handshake succeeds): only the
    silo list refuses it, on every call."""
    stub, ch = stub_as(hub, "stray")
    before = hub.telemetry.rejected["unauthenticated"]
    with ch, pytest.raises(grpc.RpcError) as err:
        if call == "join":
            stub.Join(pb.JoinRequest(name="client-0"), timeout=TIMEOUT)
        elif call == "get_task":
            list(stub.GetTask(pb.TaskRequest(client_id="0123456789abcdef"), timeout=TIMEOUT))
        else:
            stub.SubmitResult(iter([pb.ResultChunk(header=pb.ResultHeader(client_id="x", task_id="t", round=1))]),
                              timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "not one of this federation's silos" in (err.value.details() or "")
    assert hub.telemetry.rejected["unauthenticated"] == before + 1


def test_a_client_id_works_only_from_the_silo_that_joined_it(hub: Hub) -> None:
    a, ch_a = stub_as(hub, "silo-a")
    b, ch_b = stub_as(hub, "silo-b")
    with ch_a, ch_b:
        id_a = a.Join(pb.JoinRequest(name="client-1"), timeout=TIMEOUT).client_id
        with pytest.raises(grpc.RpcError) as err:
            list(b.GetTask(pb.TaskRequest(client_id=id_a), timeout=TIMEOUT))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            b.SubmitResult(iter([pb.ResultChunk(header=pb.ResultHeader(client_id=id_a, task_id="t", round=1))]),
                           timeout=TIMEOUT)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_same_name_in_two_silos_is_two_clients(hub: Hub) -> None:
    """A name is what the client states: silo-b cannot take over silo-a's client by naming it."""
    a, ch_a = stub_as(hub, "silo-a")
    b, ch_b = stub_as(hub, "silo-b")
    with ch_a, ch_b:
        id_a = a.Join(pb.JoinRequest(name="shared-name"), timeout=TIMEOUT).client_id
        id_b = b.Join(pb.JoinRequest(name="shared-name"), timeout=TIMEOUT).client_id
        again = a.Join(pb.JoinRequest(name="shared-name"), timeout=TIMEOUT).client_id
    assert id_a != id_b and again == id_a
    assert hub.coordinator.silos_of([id_a, id_b]) == {id_a: "silo-a", id_b: "silo-b"}


def test_the_fingerprint_is_the_sha256_of_the_der_certificate(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    pki = make_pki(tmp_path)
    pem = pki.client_cert.read_bytes()
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    assert cert_sha256(pem) == cert_sha256(pem.decode()) == hashlib.sha256(der).hexdigest()


# ---- config ------------------------------------------------------------------------------------
SILO = {"name": "silo-a", "cert_sha256": "a" * 64}


@pytest.mark.parametrize(("security", "names"), [
    ({"silos": [SILO]}, ["security.silos", "security.mutual_tls"]),  # default: TLS, not mutual
    ({"mutual_tls": True, "silos": [SILO, {**SILO, "cert_sha256": "b" * 64}]}, ["name silo-a appears more than once"]),
    ({"mutual_tls": True, "silos": [SILO, {**SILO, "name": "silo-b"}]}, ["cert_sha256", "more than once"]),
    ({"mutual_tls": True, "silos": [{**SILO, "cert_sha256": "A" * 64}]}, ["security.silos.0.cert_sha256"]),
    ({"mutual_tls": True, "silos": [{**SILO, "name": "Silo_A"}]}, ["security.silos.0.name"]),
])
def test_bad_silo_config_names_the_key(security: dict, names: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        from_mapping({"security": security})
    for name in names:
        assert name in str(err.value)


# ---- per-silo rows -------------------------------------------------------------------------------
def test_each_round_is_counted_per_silo() -> None:
    results = {
        "c1": {"num_examples": 100.0, "update_weight": 100.0, "seconds": 2.0},
        "c2": {"num_examples": 50.0, "update_weight": 50.0, "seconds": 3.5},
        "c3": {"num_examples": 70.0, "update_weight": 70.0, "seconds": 1.0},
    }
    rows = silo_rows(results, {"c1": "silo-a", "c2": "silo-a", "c3": "silo-b"})
    assert rows == {
        "silo-a": {"clients": 2, "num_examples": 150.0, "weight": 150.0, "seconds_max": 3.5},
        "silo-b": {"clients": 1, "num_examples": 70.0, "weight": 70.0, "seconds_max": 1.0},
    }
    assert silo_rows(results, {"c1": "", "c2": "", "c3": ""}) == {}  # single-cluster: no rows
    hidden = {cid: {k: v for k, v in m.items() if k != "update_weight"} for cid, m in results.items()}
    assert "weight" not in silo_rows(hidden, {"c1": "silo-a", "c2": "silo-a", "c3": "silo-b"})["silo-a"]  # secure
    telemetry = Telemetry()
    telemetry.silo_round(rows)
    telemetry.silo_round({"silo-b": {"clients": 1, "num_examples": 30.0, "weight": 30.0, "seconds_max": 0.5}})
    text = telemetry.render()
    assert 'tff_k8s_silo_results_total{silo="silo-a"} 2' in text
    assert 'tff_k8s_silo_results_total{silo="silo-b"} 2' in text
    assert 'tff_k8s_silo_examples_total{silo="silo-b"} 100.0' in text
    assert 'tff_k8s_silo_round_seconds{silo="silo-b"} 0.5' in text
    assert "tff_k8s_silo_" not in Telemetry().render()
    secure = Telemetry()
    secure.silo_round({"silo-a": {"clients": 2, "num_examples": 150.0, "seconds_max": 3.5}})
    assert 'tff_k8s_silo_results_total{silo="silo-a"} 2' in secure.render()
    assert "tff_k8s_silo_weight_total" not in secure.render()


def test_silos_load_from_yaml_and_survive_the_configmap_round_trip(tmp_path: Path) -> None:
    from services.common.config import load_config

    cfg = from_mapping({"security": {"mutual_tls": True, "silos": [SILO, {"name": "silo-b", "cert_sha256": "b" * 64}]}})
    path = tmp_path / "federation.yaml"
    path.write_text(cfg.to_yaml())
    loaded = load_config(path, environ={})
    assert loaded == cfg and [s.name for s in loaded.security.silos] == ["silo-a", "silo-b"]
