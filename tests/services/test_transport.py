"""How both sides talk: the bearer token guards every Federation call (health probes stay open),
credentials come from the configured files or fail naming the security.* key, and TLS lets in only
peers that trust (and, with mutual TLS, are trusted by) the configured CA. Real in-process gRPC
servers on 127.0.0.1."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.config import SecuritySettings
from services.common.proto import federation_pb2 as pb
from services.common.proto import federation_pb2_grpc as pb_grpc
from services.common.transport import (
    SERVER_OPTIONS,
    SecurityError,
    TokenAuthInterceptor,
    call_metadata,
    channel,
    read_token,
    server_credentials,
)

TOKEN = "s3cret-token"
CALL_TIMEOUT = 10


class EchoFederation(pb_grpc.FederationServicer):
    """The real Federation service shape (unary, server-streaming, client-streaming) with trivial bodies."""

    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:  # noqa: N802
        return pb.JoinReply(client_id=f"id-{request.name}", shard_index=1, num_shards=2)

    def GetTask(self, request: pb.TaskRequest, context: grpc.ServicerContext) -> Iterator[pb.TaskChunk]:  # noqa: N802
        yield pb.TaskChunk(header=pb.TaskHeader(kind=pb.TaskHeader.WAIT))
        yield pb.TaskChunk(data=request.client_id.encode())

    def SubmitResult(self, request_iterator: Iterator[pb.ResultChunk], context: grpc.ServicerContext) -> pb.SubmitReply:  # noqa: N802
        n = sum(1 for _ in request_iterator)
        return pb.SubmitReply(accepted=True, detail=f"{n} chunks")


@dataclass
class Running:
    server: grpc.Server
    port: int
    rejected: list[str]


def start(interceptors: list[grpc.ServerInterceptor], creds: grpc.ServerCredentials | None = None) -> Running:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=interceptors, options=SERVER_OPTIONS)
    pb_grpc.add_FederationServicer_to_server(EchoFederation(), server)
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    port = server.add_secure_port("127.0.0.1:0", creds) if creds else server.add_insecure_port("127.0.0.1:0")
    assert port
    server.start()
    return Running(server, port, [])


@pytest.fixture(scope="module")
def guarded() -> Iterator[Running]:
    rejected: list[str] = []
    running = start([TokenAuthInterceptor(TOKEN, on_reject=rejected.append)])
    running.rejected = rejected
    try:
        yield running
    finally:
        running.server.stop(grace=None)


@pytest.fixture(scope="module")
def stub(guarded: Running) -> Iterator[pb_grpc.FederationStub]:
    ch = channel(f"127.0.0.1:{guarded.port}", SecuritySettings(tls=False))
    try:
        yield pb_grpc.FederationStub(ch)
    finally:
        ch.close()


def join(stub: pb_grpc.FederationStub, metadata: tuple) -> pb.JoinReply:
    return stub.Join(pb.JoinRequest(name="a"), metadata=metadata, timeout=CALL_TIMEOUT)


def get_task(stub: pb_grpc.FederationStub, metadata: tuple) -> list[pb.TaskChunk]:
    return list(stub.GetTask(pb.TaskRequest(client_id="c"), metadata=metadata, timeout=CALL_TIMEOUT))


def submit(stub: pb_grpc.FederationStub, metadata: tuple) -> pb.SubmitReply:
    chunks = iter([pb.ResultChunk(header=pb.ResultHeader(client_id="c")), pb.ResultChunk(data=b"x")])
    return stub.SubmitResult(chunks, metadata=metadata, timeout=CALL_TIMEOUT)


CALLS = [join, get_task, submit]
BAD_METADATA = {
    "none": (),
    "wrong-token": call_metadata("wrong"),
    "token-prefix": call_metadata(TOKEN[:-1]),
    "token-extended": call_metadata(TOKEN + "x"),
    "no-bearer": (("authorization", TOKEN),),
    "lowercase-bearer": (("authorization", f"bearer {TOKEN}"),),
    "other-header": (("x-token", f"Bearer {TOKEN}"),),
}


# ---- bearer token --------------------------------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("call", CALLS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("metadata", list(BAD_METADATA.values()), ids=list(BAD_METADATA))
def test_missing_or_wrong_token_is_unauthenticated(guarded: Running, stub: pb_grpc.FederationStub, call,  # type: ignore[no-untyped-def]
                                                   metadata: tuple) -> None:
    before = len(guarded.rejected)
    with pytest.raises(grpc.RpcError) as info:
        call(stub, metadata)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert guarded.rejected[before:] == ["unauthenticated"]


@pytest.mark.timeout(60)
def test_right_token_passes(guarded: Running, stub: pb_grpc.FederationStub) -> None:
    md = call_metadata(TOKEN)
    before = len(guarded.rejected)
    assert join(stub, md).client_id == "id-a"
    chunks = get_task(stub, md)
    assert chunks[0].header.kind == pb.TaskHeader.WAIT and chunks[1].data == b"c"
    assert submit(stub, md).detail == "2 chunks"
    assert len(guarded.rejected) == before


@pytest.mark.timeout(60)
def test_health_check_needs_no_token(guarded: Running) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{guarded.port}") as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_call_metadata() -> None:
    assert call_metadata(None) == ()
    assert call_metadata("") == ()
    assert call_metadata("t") == (("authorization", "Bearer t"),)


# ---- token file ----------------------------------------------------------------------------------
def test_read_token(tmp_path: Path) -> None:
    assert read_token(SecuritySettings(token_file=None)) is None
    path = tmp_path / "token"
    path.write_text("  abc\n")
    assert read_token(SecuritySettings(token_file=str(path))) == "abc"


@pytest.mark.parametrize("content", [None, "", "  \n"])
def test_unusable_token_file_names_the_key(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SecurityError, match=r"security\.token_file") as info:
        read_token(SecuritySettings(token_file=str(path)))
    assert str(path) in str(info.value)


# ---- credentials without TLS ---------------------------------------------------------------------
def test_no_tls_means_no_server_credentials() -> None:
    assert server_credentials(SecuritySettings(tls=False, token_file=None)) is None


@pytest.mark.timeout(60)
def test_no_tls_channel_reaches_plaintext_server() -> None:
    running = start([])
    try:
        ch = channel(f"127.0.0.1:{running.port}", SecuritySettings(tls=False, ca_file="/nonexistent"))
        with ch:
            assert pb_grpc.FederationStub(ch).Join(pb.JoinRequest(name="b"), timeout=CALL_TIMEOUT).client_id == "id-b"
    finally:
        running.server.stop(grace=None)


# ---- missing or empty security material -----------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    crypto = pytest.importorskip("cryptography")
    del crypto
    return make_pki(tmp_path_factory.mktemp("pki"))


def files(pki: dict[str, Path], **override: str) -> dict[str, str]:
    base = {"ca_file": str(pki["ca.crt"]), "cert_file": str(pki["server.crt"]), "key_file": str(pki["server.key"])}
    return {**base, **override}


@pytest.mark.parametrize(
    ("missing", "mutual", "key"),
    [("key_file", False, "security.key_file"), ("cert_file", False, "security.cert_file"),
     ("ca_file", True, "security.ca_file")],
)
def test_server_credentials_name_missing_file(pki: dict[str, Path], tmp_path: Path, missing: str, mutual: bool,
                                              key: str) -> None:
    absent = str(tmp_path / "absent.pem")
    sec = SecuritySettings(tls=True, mutual_tls=mutual, **files(pki, **{missing: absent}))
    with pytest.raises(SecurityError, match=key.replace(".", r"\.")) as info:
        server_credentials(sec)
    assert absent in str(info.value)


@pytest.mark.parametrize(
    ("missing", "mutual", "key"),
    [("ca_file", False, "security.ca_file"), ("key_file", True, "security.key_file"),
     ("cert_file", True, "security.cert_file")],
)
def test_channel_names_missing_file(pki: dict[str, Path], tmp_path: Path, missing: str, mutual: bool, key: str) -> None:
    absent = str(tmp_path / "absent.pem")
    sec = SecuritySettings(tls=True, mutual_tls=mutual, **files(pki, **{missing: absent}))
    with pytest.raises(SecurityError, match=key.replace(".", r"\.")):
        channel("localhost:1", sec)


def test_default_paths_missing_name_the_key() -> None:
    if Path(SecuritySettings().key_file).exists():
        pytest.skip("this machine has the in-cluster TLS files mounted")
    with pytest.raises(SecurityError, match=r"security\.key_file"):
        server_credentials(SecuritySettings())
    with pytest.raises(SecurityError, match=r"security\.ca_file"):
        channel("localhost:1", SecuritySettings())


def test_empty_certificate_file_is_refused(pki: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty.crt"
    empty.write_text("\n")
    with pytest.raises(SecurityError, match=r"security\.cert_file.*empty"):
        server_credentials(SecuritySettings(tls=True, **files(pki, cert_file=str(empty))))


def test_security_error_is_not_a_config_error() -> None:
    from services.common.config import ConfigError

    assert not issubclass(SecurityError, ConfigError)  # the entrypoints map both to exit 2, separately


# ---- TLS round trip ------------------------------------------------------------------------------
def make_pki(out: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost / 127.0.0.1 and a client certificate, plus an unrelated CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        k = key()
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn)).public_key(k.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, encipher_only=False, decipher_only=False),
                               critical=True)
                .sign(k, hashes.SHA256()))
        return k, cert

    def leaf(cn: str, issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], usage: x509.ObjectIdentifier,
             sans: list[x509.GeneralName]) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        k = key()
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(issuer[1].subject)
                   .public_key(k.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return k, builder.sign(issuer[0], hashes.SHA256())

    def write(stem: str, pair: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]) -> None:
        (out / f"{stem}.key").write_bytes(pair[0].private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        (out / f"{stem}.crt").write_bytes(pair[1].public_bytes(serialization.Encoding.PEM))

    root, other = ca("tff-k8s test CA"), ca("unrelated CA")
    server = leaf("localhost", root, ExtendedKeyUsageOID.SERVER_AUTH,
                  [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client = leaf("client-0", root, ExtendedKeyUsageOID.CLIENT_AUTH, [])
    rogue = leaf("rogue", other, ExtendedKeyUsageOID.CLIENT_AUTH, [])
    for stem, pair in [("ca", root), ("other-ca", other), ("server", server), ("client", client), ("rogue", rogue)]:
        write(stem, pair)
    return {p.name: p for p in out.iterdir()}


def tls_server(pki: dict[str, Path], mutual: bool) -> Running:
    sec = SecuritySettings(tls=True, mutual_tls=mutual, **files(pki))
    creds = server_credentials(sec)
    assert creds is not None
    return start([TokenAuthInterceptor(TOKEN)], creds)


def join_over(address: str, sec: SecuritySettings) -> pb.JoinReply:
    with channel(address, sec) as ch:
        return pb_grpc.FederationStub(ch).Join(pb.JoinRequest(name="t"), metadata=call_metadata(TOKEN), timeout=5)


@pytest.fixture(scope="module")
def tls_running(pki: dict[str, Path]) -> Iterator[Running]:
    running = tls_server(pki, mutual=False)
    try:
        yield running
    finally:
        running.server.stop(grace=None)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_tls_client_trusting_the_ca_succeeds(pki: dict[str, Path], tls_running: Running, host: str) -> None:
    sec = SecuritySettings(tls=True, ca_file=str(pki["ca.crt"]), token_file=None)
    assert join_over(f"{host}:{tls_running.port}", sec).client_id == "id-t"


@pytest.mark.timeout(60)
def test_tls_client_without_the_ca_fails(pki: dict[str, Path], tls_running: Running) -> None:
    sec = SecuritySettings(tls=True, ca_file=str(pki["other-ca.crt"]), token_file=None)
    with pytest.raises(grpc.RpcError) as info:
        join_over(f"localhost:{tls_running.port}", sec)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.timeout(60)
def test_plaintext_client_cannot_talk_to_tls_server(tls_running: Running) -> None:
    with pytest.raises(grpc.RpcError) as info:
        join_over(f"localhost:{tls_running.port}", SecuritySettings(tls=False, token_file=None))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.timeout(60)
def test_mutual_tls(pki: dict[str, Path]) -> None:
    running = tls_server(pki, mutual=True)
    address = f"localhost:{running.port}"
    try:
        trusted = SecuritySettings(tls=True, mutual_tls=True, ca_file=str(pki["ca.crt"]),
                                   cert_file=str(pki["client.crt"]), key_file=str(pki["client.key"]))
        assert join_over(address, trusted).client_id == "id-t"
        for sec in (
            SecuritySettings(tls=True, mutual_tls=False, ca_file=str(pki["ca.crt"])),  # no client certificate
            SecuritySettings(tls=True, mutual_tls=True, ca_file=str(pki["ca.crt"]),  # signed by another CA
                             cert_file=str(pki["rogue.crt"]), key_file=str(pki["rogue.key"])),
        ):
            with pytest.raises(grpc.RpcError) as info:
                join_over(address, sec)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.server.stop(grace=None)


@pytest.mark.slow
def test_a_channel_reaches_a_server_that_came_back_within_the_reconnect_cap() -> None:
    """gRPC's own reconnect backoff grows to 120 s by default: after ~10 s without a server, a
    channel would wait seconds more before noticing it is back. ``channel`` caps it."""
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cap_s = 0.5
    ch = channel(f"127.0.0.1:{port}", SecuritySettings(tls=False), reconnect_max_s=cap_s)
    try:
        ch.subscribe(lambda _state: None, try_to_connect=True)
        time.sleep(10)  # several failed connection attempts: the default backoff would be at ~6 s now
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        back = time.monotonic()
        try:
            grpc.channel_ready_future(ch).result(timeout=30)
            assert time.monotonic() - back < 4 * cap_s + 1.0
        finally:
            server.stop(None)
    finally:
        ch.close()
