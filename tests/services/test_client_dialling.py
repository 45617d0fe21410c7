"""A client dials until ``client.give_up_after_s`` whatever stands in the way, and says why each dial
failed at warning level: the only trace a silo's operator has of a hub it cannot reach (issue #28)."""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures

import grpc
import pytest
from test_readiness import free_port, session_to
from test_transport import EchoFederation

from services.client.session import ServerGone
from services.common.proto import federation_pb2_grpc as pb_grpc

GIVE_UP_S = 1.0  # session_to's client.give_up_after_s


def retries(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "services.client.session" and r.getMessage().startswith("server unavailable")]


def test_a_client_with_no_server_keeps_dialling_until_it_gives_up_and_warns_why_each_time(
        caplog: pytest.LogCaptureFixture) -> None:
    session = session_to(free_port(), lambda _reachable: None)  # nothing listens there
    caplog.set_level(logging.INFO, logger="services.client.session")
    started = time.monotonic()
    try:
        with pytest.raises(ServerGone, match="no server for"):
            session.join()
    finally:
        session.close()
    assert time.monotonic() - started >= GIVE_UP_S
    seen = retries(caplog)
    assert len(seen) >= 3, [r.getMessage() for r in seen]
    assert all(r.levelno == logging.WARNING for r in seen)
    # why: the call, the status and gRPC's own account of the failed connection
    whys = [r.fields["why"] for r in seen]  # type: ignore[attr-defined]
    assert all(w.startswith("join: UNAVAILABLE: ") and "connect" in w.lower() for w in whys), whys


def test_a_client_that_dials_before_the_server_is_up_joins_once_it_is() -> None:
    port = free_port()
    session = session_to(port, lambda _reachable: None)
    session.backoff.give_up_after_s = 30.0
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_FederationServicer_to_server(EchoFederation(), server)
    assert server.add_insecure_port(f"127.0.0.1:{port}") == port

    def later() -> None:
        time.sleep(2.0)  # several refused dials first
        server.start()

    threading.Thread(target=later, daemon=True).start()
    try:
        assert session.join().client_id == "id-client-a"
    finally:
        session.close()
        server.stop(grace=None)
