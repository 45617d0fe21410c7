"""What Ready means (services/common/health.py): the health endpoint answers before anything else,
a client is ready only once it has joined and while it reaches the server, and readiness is a
service of its own, so a probe on it and a liveness probe on the process can disagree."""

from __future__ import annotations

import socket

import pytest
from support.grpc_health import health_status
from test_transport import start

from services.client.session import ServerGone, Session
from services.common.config import load_config
from services.common.health import LIVE, READY, start_health


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_to(port: int, on_reachable) -> Session:
    cfg = load_config(None, environ={}, overrides={
        "client.server_address": f"127.0.0.1:{port}", "security.tls": False, "security.token_file": None,
        "client.reconnect_initial_s": 0.05, "client.reconnect_max_s": 0.1, "client.give_up_after_s": 1.0,
    })
    return Session(cfg, "client-a", on_reachable)


def test_health_endpoint_is_live_at_once_and_ready_only_when_told() -> None:
    port = free_port()
    health = start_health("127.0.0.1", port)
    try:
        address = f"127.0.0.1:{port}"
        assert health_status(address, LIVE) == "SERVING"
        assert health_status(address, READY) == "NOT_SERVING"
        health.ready(True)
        assert health_status(address, READY) == "SERVING"
        health.ready(False)
        assert health_status(address, READY) == "NOT_SERVING"
        assert health_status(address, LIVE) == "SERVING"
    finally:
        health.stop()


def test_a_client_that_cannot_reach_the_server_is_not_ready() -> None:
    seen: list[bool] = []
    session = session_to(free_port(), seen.append)  # nothing listens there
    try:
        with pytest.raises(ServerGone):
            session.join()
    finally:
        session.close()
    assert seen and not any(seen)


def test_a_client_is_ready_once_it_has_joined() -> None:
    running = start([])
    seen: list[bool] = []
    session = session_to(running.port, seen.append)
    try:
        assert seen == []
        joined = session.join()
        assert joined.client_id == "id-client-a" and seen == [True]
    finally:
        session.close()
        running.server.stop(grace=None)
