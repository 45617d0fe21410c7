"""``server``: where the server listens, what it writes and how much it stages at once."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from services.common.config.base import MiB, Strict


class ServerSettings(Strict):
    host: str = Field("0.0.0.0", description="Address the gRPC server binds to.")
    port: int = Field(50051, ge=1, le=65535, description="gRPC port clients dial.")
    metrics_port: int = Field(9090, ge=1, le=65535, description="Prometheus text endpoint port.")
    health_port: int = Field(
        8080, ge=1, le=65535,
        description="Plaintext grpc.health.v1 port for kubelet probes (the kubelet's gRPC prober cannot "
        "speak TLS, and server.port serves TLS in prod). It answers health checks only.",
    )
    output_dir: str = Field(
        "/var/lib/tff-k8s",
        description="Checkpoints, metrics.jsonl and model.keras go here (a persistent volume in k8s).",
    )
    chunk_bytes: int = Field(
        1 * MiB, ge=1024, le=3 * MiB, description="Size of one streamed chunk of a model or update."
    )
    max_payload_bytes: int = Field(
        1024 * MiB, ge=1024, description="Largest model update a client may send, in bytes."
    )
    upload_slots: int = Field(
        2, ge=1, le=64,
        description="Client results the server receives at once. Each is staged whole until it is accepted "
        "(then added to the round's aggregate) or refused (then nothing of it counts); others wait for a slot. "
        "The server holds about (3 + upload_slots) x the model, whatever the number of clients.",
    )
    tff_startup_timeout_s: float = Field(
        120.0, gt=0, description="How long a service may take to start (TensorFlow and TFF load) before its "
        "startup probe fails it.",
    )
    on_finish: Literal["serve", "exit"] = Field(
        "serve",
        description="After the last round: serve (stay up in the finished state: health SERVING, the "
        "tff_k8s_training_finished gauge at 1, every client told DONE; a restart stays finished) or exit "
        "(exit 0, for process supervisors such as the local runner).",
    )

    @model_validator(mode="after")
    def _ports_differ(self) -> ServerSettings:
        ports = {"port": self.port, "metrics_port": self.metrics_port, "health_port": self.health_port}
        if len(set(ports.values())) < len(ports):
            raise ValueError(
                f"server ports must differ, got {ports}: set server.port, server.metrics_port and "
                "server.health_port to three different ports"
            )
        return self


