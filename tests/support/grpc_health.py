"""Ask a grpc.health.v1 endpoint as the kubelet's gRPC prober does: plaintext, one Check."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def health_status(address: str, service: str = "", timeout: float = 5.0) -> str:
    """The status name (``SERVING``, ``NOT_SERVING``...) at ``address``, or the gRPC error code's name."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as err:
            return err.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
