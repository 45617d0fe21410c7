"""The settings every federation of local processes shares (the local runner, the multi-process
tests, the benchmarks): distinct free ports on loopback, plaintext without a token, and services
that exit when training is done, so the supervisor that started them sees them finish."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any


def free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports on 127.0.0.1 (all held open together while choosing)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def loopback_overrides(output_dir: Path | str) -> dict[str, Any]:
    """Config overrides (dotted keys) for one server and its clients as processes on this machine."""
    port, metrics_port, health_port = free_ports(3)
    return {
        "server.host": "127.0.0.1",
        "server.port": port,
        "server.metrics_port": metrics_port,
        "server.health_port": health_port,
        "server.output_dir": str(output_dir),
        # A process supervisor, not Kubernetes, restarts these: exit 0 when training is done.
        "server.on_finish": "exit",
        "client.on_done": "exit",
        # Local runs only: plaintext on loopback, no token (the containers default to TLS + token).
        "security.tls": False,
        "security.mutual_tls": False,
        "security.token_file": None,
        "client.health_port": 0,
        "client.server_address": f"127.0.0.1:{port}",
        "client.reconnect_max_s": 2.0,  # the server takes a while to import TensorFlow; poll it often
    }
