"""``client``: how a client finds the server, retries, and what it does when training is done."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from services.common.config.base import Strict


class ClientSettings(Strict):
    server_address: str = Field(
        "localhost:50051", description="host:port of the server (env SERVER_ADDRESS overrides it)."
    )
    name: str = Field("", description="A label for logs; defaults to the host name.")
    health_port: int = Field(8081, ge=0, le=65535, description="gRPC health port for probes (0: off).")
    reconnect_initial_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(10.0, gt=0)
    give_up_after_s: float = Field(600.0, gt=0, description="Exit non-zero after this long without a server.")
    on_done: Literal["idle", "exit"] = Field(
        "idle",
        description="When the server says training is done: idle (stay up and Ready until stopped, as a "
        "Deployment's Pod must) or exit (exit 0, for process supervisors such as the local runner).",
    )
    tf_threads: int = Field(
        0, ge=0, le=256,
        description="TensorFlow's intra- and inter-op threads in a client process; 0: the CPUs the container "
        "may use (its cgroup CPU limit, else the CPUs it may run on).",
    )

    @model_validator(mode="after")
    def _address_has_port(self) -> ClientSettings:
        host, sep, port = self.server_address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(
                f"server_address {self.server_address!r} must be host:port (e.g. tff-server.tff.svc:50051)"
            )
        return self


