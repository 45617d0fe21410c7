"""How both sides talk: TLS (optionally mutual) credentials from mounted files, the bearer token
clients present, and the gRPC options both ends use. No TensorFlow."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from services.common.config import SecuritySettings
from services.common.proto import federation_pb2 as pb

log = logging.getLogger(__name__)

AUTH_HEADER = "authorization"
# The gRPC service both sides name in their method paths (/<SERVICE_NAME>/<Method>), from the .proto.
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Federation"].full_name  # tff_k8s.v1.Federation
OPEN_METHODS = ("/grpc.health.v1.Health/",)  # kubelet probes carry no token
# Streams carry chunks of at most server.chunk_bytes (<= 3 MiB): gRPC's 4 MiB default stays the cap.
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_OPTIONS = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.so_reuseport", 0),
]


class SecurityError(ValueError):
    """Security material that is missing or unusable."""


def _read(path: str | None, what: str, key: str) -> bytes:
    if not path:
        raise SecurityError(f"{key}: {what} path is not set")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SecurityError(f"{key}: cannot read {what} at {path} ({exc.strerror})") from None
    if not data.strip():
        raise SecurityError(f"{key}: {what} at {path} is empty")
    return data


def read_token(sec: SecuritySettings) -> str | None:
    if sec.token_file is None:
        return None
    return _read(sec.token_file, "client token", "security.token_file").decode().strip()


def server_credentials(sec: SecuritySettings) -> grpc.ServerCredentials | None:
    if not sec.tls:
        return None
    key = _read(sec.key_file, "server key", "security.key_file")
    cert = _read(sec.cert_file, "server certificate", "security.cert_file")
    ca = _read(sec.ca_file, "CA certificate", "security.ca_file") if sec.mutual_tls else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=sec.mutual_tls)


def channel(address: str, sec: SecuritySettings, reconnect_max_s: float = 10.0) -> grpc.Channel:
    """``reconnect_max_s`` caps gRPC's own reconnect backoff too (its default cap is 120 s): a client
    would otherwise reach a restarted server long after it is back, whatever its retry loop does."""
    cap_ms = max(100, int(reconnect_max_s * 1000))
    options = [*CHANNEL_OPTIONS, ("grpc.initial_reconnect_backoff_ms", min(1000, cap_ms)),
               ("grpc.min_reconnect_backoff_ms", min(1000, cap_ms)), ("grpc.max_reconnect_backoff_ms", cap_ms)]
    if not sec.tls:
        return grpc.insecure_channel(address, options=options)
    ca = _read(sec.ca_file, "CA certificate", "security.ca_file")
    key = cert = None
    if sec.mutual_tls:
        key = _read(sec.key_file, "client key", "security.key_file")
        cert = _read(sec.cert_file, "client certificate", "security.cert_file")
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    return grpc.secure_channel(address, creds, options=options)


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return ((AUTH_HEADER, f"Bearer {token}"),) if token else ()


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Refuses calls without ``authorization: Bearer <token>`` with UNAUTHENTICATED (and logs them)."""

    def __init__(self, token: str, on_reject: Callable[[str], None] | None = None) -> None:
        self._expected = f"Bearer {token}".encode()
        self._on_reject = on_reject

        def deny(request: Any, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream_in = grpc.stream_unary_rpc_method_handler(deny)
        self._deny_stream_out = grpc.unary_stream_rpc_method_handler(deny)

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        method = handler_call_details.method
        if method.startswith(OPEN_METHODS):
            return continuation(handler_call_details)
        got = dict(handler_call_details.invocation_metadata or ()).get(AUTH_HEADER, "")
        if hmac.compare_digest(got.encode(), self._expected):
            return continuation(handler_call_details)
        log.warning("refused unauthenticated call to %s", method)
        if self._on_reject:
            self._on_reject("unauthenticated")
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        if handler.request_streaming:
            return self._deny_stream_in
        if handler.response_streaming:
            return self._deny_stream_out
        return self._deny_unary
