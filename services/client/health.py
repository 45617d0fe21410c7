"""The client's gRPC health endpoint (``client.health_port``) for kubelet probes. Light imports only,
so it is up before TensorFlow finishes loading."""

from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def start_health(port: int) -> tuple[grpc.Server, health.HealthServicer] | None:
    if port == 0:
        return None
    servicer = health.HealthServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if not server.add_insecure_port(f"0.0.0.0:{port}"):
        raise RuntimeError(f"cannot bind the client health port {port} (client.health_port)")
    server.start()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, servicer
