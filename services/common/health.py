"""The plaintext gRPC health endpoint both services serve for kubelet probes (``server.health_port``,
``client.health_port``). Light imports only, so it answers before TensorFlow has loaded.

Two services, probed separately by the Pods (infra/pod_spec.py):
- ``""`` (liveness and start-up): SERVING as long as the process runs and answers;
- ``ready`` (readiness): SERVING only while the service does its job: the server once it has
  restored its state and listens for clients, a client once it has joined the server and while it
  reaches it. A Deployment whose clients cannot reach the server therefore never becomes ready, and
  ``pulumi up`` says so at once instead of after the clients give up.

The kubelet's gRPC prober dials without TLS, so this port is always plaintext and serves nothing
but health checks, whatever ``security`` says.
"""

from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

LIVE = ""
READY = "ready"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health:
    """The endpoint and the two statuses it reports."""

    def __init__(self, servicer: health.HealthServicer, server: grpc.Server | None) -> None:
        self.servicer, self.server = servicer, server
        self._ready: bool | None = None

    def ready(self, ready: bool) -> None:
        if ready != self._ready:
            self._ready = ready
            self.servicer.set(READY, SERVING if ready else NOT_SERVING)

    def stop(self) -> None:
        self.servicer.enter_graceful_shutdown()
        if self.server is not None:
            self.server.stop(grace=None)


def start_health(host: str, port: int) -> Health:
    """Serve health on ``host:port`` (port 0: no endpoint, the statuses are kept all the same)."""
    servicer = health.HealthServicer()
    servicer.set(LIVE, SERVING)
    servicer.set(READY, NOT_SERVING)
    server = None
    if port:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health"))
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        if not server.add_insecure_port(f"{host}:{port}"):
            raise RuntimeError(f"cannot bind the health port {host}:{port}")
        server.start()
    return Health(servicer, server)
