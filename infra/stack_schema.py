"""The stack's one typed config object: ``deployment`` (how the federation is laid out on Kubernetes:
the hub, the silos, and what each cluster runs, infra/stack_workloads.py) and ``federation`` (the
services' own :class:`FederationConfig`). Every field has a default; the checks across fields, and the
messages that name each bad key, are infra/stack_config.py's. Imports pydantic only."""

from __future__ import annotations

import ipaddress
import posixpath
from typing import Literal

from pydantic import Field, field_validator

from infra import layout
from infra.stack_fields import DnsLabel, DnsSubdomain, Strict, cidr_block, cidr_blocks, host_port, ip_literal
from infra.stack_workloads import (
    ClientDeployment,
    DataVolume,
    Image,
    KubernetesTarget,
    Network,
    ServerDeployment,
    inside_claim,
)
from services.common.config import FederationConfig, from_mapping


class HubSettings(Strict):
    """Cross-silo only: how silos in other clusters reach the server (the hub's cluster and namespace are
    deployment.kubernetes and deployment.namespace, as in a single-cluster stack)."""

    public_address: str | None = Field(
        default=None,
        description="host:port silos dial: the load balancer's (or a node's) address. The server certificate "
        "must name the host (generated certificates do).",
    )
    service_type: Literal["LoadBalancer", "NodePort"] = Field(
        default="LoadBalancer",
        description="How the server's gRPC port leaves the cluster: a Service of this type (Layer 4, so "
        "mutual TLS reaches the server end to end; an Ingress that terminates TLS would hide the silos' "
        "certificates). LoadBalancer needs deployment.network.allow_load_balancer.",
    )
    node_port: int | None = Field(
        default=None, ge=30000, le=32767, description="The node port (service_type NodePort only; required there)."
    )
    annotations: dict[str, str] = Field(
        default_factory=dict,
        description="Annotations of the public Service: the cloud's load balancer settings "
        "(e.g. service.beta.kubernetes.io/aws-load-balancer-type: nlb).",
    )
    silo_cidrs: tuple[str, ...] = Field(
        default=(),
        description="Source ranges allowed to the server port (NetworkPolicy ingress and the load balancer's "
        "loadBalancerSourceRanges); empty: any source (the server still refuses certificates of no silo).",
    )
    ca: Literal["secrets", "generate"] = Field(
        default="secrets",
        description="secrets: the CA and server certificate are stack secrets (tlsCaCert, tlsServerCert, "
        "tlsServerKey; tlsCaKey too when a silo's certificate is generated); generate: the program makes the "
        "CA, the server certificate and every silo's certificate (the tls provider; keys live in the state).",
    )
    validity_hours: int = Field(default=8760, ge=1, description="Lifetime of generated certificates.")

    @field_validator("public_address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is not None:
            host_port(v)
        return v

    @field_validator("silo_cidrs")
    @classmethod
    def _cidrs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return cidr_blocks(v, "198.51.100.0/24", "the server port", "the silos' egress ranges")

    @property
    def host(self) -> str:
        return host_port(self.public_address)[0] if self.public_address else ""

    @property
    def port(self) -> int:
        return host_port(self.public_address)[1] if self.public_address else 0


class SiloData(Strict):
    pvc: DnsSubdomain | None = Field(
        default=None,
        description="An existing PersistentVolumeClaim in the silo's namespace holding the silo's own data "
        "(mounted read-only): the digits task's .npz files, or any other task's data in its format "
        "(federation.data becomes source files, sharded false: a silo holds its own data); null: the bundled "
        "digits, a shard per client handed out by the server (demos; the digits task only).",
    )
    path: str = Field(default="", description="The data's folder inside the claim ('' : its root).")

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        return inside_claim(v)


class SiloIdentityConfig(Strict):
    generate: bool = Field(
        default=False,
        description="true: the program makes the silo's client key and certificate (signed by the hub's CA); "
        "false: stack secrets tlsClientCert-<silo> and tlsClientKey-<silo>.",
    )


class Silo(Strict):
    name: DnsLabel = Field(description="The silo's name: its identity in the server's allowlist and in metrics.")
    kubernetes: KubernetesTarget = KubernetesTarget()
    namespace: DnsLabel = "tff-k8s"
    clients: ClientDeployment = ClientDeployment()
    data: SiloData = SiloData()
    identity: SiloIdentityConfig = SiloIdentityConfig()
    hub_cidr: str | None = Field(
        default=None,
        description="Where the hub's address lives (client egress): default the public_address's IP as /32; "
        "required when public_address is a name.",
    )

    @field_validator("hub_cidr")
    @classmethod
    def _cidr(cls, v: str | None) -> str | None:
        return None if v is None else cidr_block(v, "203.0.113.7/32", "client egress", "the hub's range")


class DeploymentSettings(Strict):
    environment: Literal["dev", "prod"] = Field(
        default="dev",
        description="prod requires images pinned by digest, TLS and client auth; set it on real clusters.",
    )
    namespace: DnsLabel = "tff-k8s"
    instance: DnsLabel = Field(
        default="tff-k8s", description="app.kubernetes.io/instance and the prefix of shared names."
    )
    kubernetes: KubernetesTarget = KubernetesTarget()
    image: Image = Image()
    run_as_user: int = Field(default=10001, ge=1, description="Non-root UID/GID the images are built for.")
    server: ServerDeployment = ServerDeployment()
    clients: ClientDeployment = ClientDeployment()
    data: DataVolume | None = Field(
        default=None,
        description="One cluster: the clients' data set on a PersistentVolumeClaim (null: the task's bundled "
        "data, digits only). Cross-silo: each silo's own deployment.silos.<i>.data instead.",
    )
    network: Network = Network()
    hub: HubSettings = HubSettings()
    silos: tuple[Silo, ...] = Field(
        default=(),
        description="Cross-silo: clusters that run clients and dial the hub (this stack's server). "
        "Empty: one cluster, the server and deployment.clients in deployment.namespace.",
    )


class StackConfig(Strict):
    deployment: DeploymentSettings = DeploymentSettings()
    federation: FederationConfig = FederationConfig()

    @property
    def server_address(self) -> str:
        """The Service's cluster DNS name and gRPC port: what clients dial."""
        d = self.deployment
        return f"{d.server.name}.{d.namespace}.svc:{self.federation.server.port}"

    @property
    def cross_silo(self) -> bool:
        return bool(self.deployment.silos)

    def hub_cidr(self, silo: Silo) -> str:
        """The block a silo's clients may dial the hub in (validated to exist by :func:`parse`)."""
        if silo.hub_cidr is not None:
            return silo.hub_cidr
        ip = ip_literal(self.deployment.hub.host)
        assert ip is not None
        return str(ipaddress.ip_network(ip))

    def for_silo(self, silo: Silo) -> StackConfig:
        """The stack as one silo's cluster sees it: its namespace, target, clients and federation config."""
        deployment = self.deployment.model_copy(
            update={"namespace": silo.namespace, "kubernetes": silo.kubernetes, "clients": silo.clients}
        )
        return self.model_copy(update={"deployment": deployment, "federation": self.silo_federation(silo)})

    def silo_federation(self, silo: Silo) -> FederationConfig:
        """The federation config a silo's clients read: the hub's public address, the silo's own data, and
        no allowlist (the server's alone; a silo need not know the others)."""
        dumped = self.federation.model_dump(mode="json")
        dumped["client"]["server_address"] = self.deployment.hub.public_address
        dumped["security"]["silos"] = []
        if silo.data.pvc is not None:
            where = posixpath.join(layout.DATA_DIR, silo.data.path).rstrip("/")
            if self.federation.task.kind == "builtin":
                dumped["data"] |= {"source": "npz", "npz_dir": where}
            else:
                dumped["data"] |= {"source": "files", "path": where, "sharded": False}
        return from_mapping(dumped)
