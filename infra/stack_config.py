"""The stack's one typed, validated config object.

Two structured Pulumi config keys feed it: ``tff-k8s:deployment`` (how the federation is laid out on
Kubernetes) and ``tff-k8s:federation`` (the services' own :class:`FederationConfig`). Every field has
a default; :func:`parse` fails with :class:`StackConfigError` naming each bad key and the fix, before
the program declares any resource. Imports pydantic only (no Pulumi, no TensorFlow).
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from infra import layout
from infra.image_ref import check_image
from infra.quantity import byte_count, cpu_millis
from services.common.config import FederationConfig, from_mapping

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]"}


class StackConfigError(ValueError):
    """Invalid stack config. The message names each bad key (``deployment.clients.replicas: ...``)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _dns_label(value: str) -> str:
    if not _DNS_LABEL.match(value):
        raise ValueError(f"{value!r} must be a DNS-1123 label (lowercase letters, digits, '-'; <= 63 chars)")
    return value


DnsLabel = Annotated[str, AfterValidator(_dns_label)]


def _dns_subdomain(value: str) -> str:
    if len(value) > 253 or not all(_DNS_LABEL.match(part) for part in value.split(".")):
        raise ValueError(
            f"{value!r} must be a DNS-1123 subdomain (lowercase letters, digits, '-', '.'; <= 253 chars)"
        )
    return value


DnsSubdomain = Annotated[str, AfterValidator(_dns_subdomain)]


class Compute(_Strict):
    cpu: str = Field(description="CPU quantity, e.g. 500m or 2.")
    memory: str = Field(description="Memory quantity, e.g. 512Mi or 4Gi.")

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, v: str) -> str:
        cpu_millis(v)
        return v

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str) -> str:
        byte_count(v)
        return v


class Resources(_Strict):
    requests: Compute
    limits: Compute

    @model_validator(mode="after")
    def _limits_cover_requests(self) -> Resources:
        if cpu_millis(self.limits.cpu) < cpu_millis(self.requests.cpu):
            raise ValueError(
                f"limits.cpu ({self.limits.cpu}) is below requests.cpu ({self.requests.cpu}): raise it"
            )
        if byte_count(self.limits.memory) < byte_count(self.requests.memory):
            raise ValueError(
                f"limits.memory ({self.limits.memory}) is below requests.memory ({self.requests.memory}): raise it"
            )
        return self


def _resources(cpu: str, memory: str, cpu_limit: str, memory_limit: str) -> Resources:
    return Resources(
        requests=Compute(cpu=cpu, memory=memory), limits=Compute(cpu=cpu_limit, memory=memory_limit)
    )


class KubernetesTarget(_Strict):
    context: str | None = Field(default=None, description="kubeconfig context (default: the current one).")
    kubeconfig: str | None = Field(
        default=None, description="Path to (or contents of) a kubeconfig (default: ~/.kube/config)."
    )


class Image(_Strict):
    ref: str = Field(
        default="tff-k8s:dev",
        description="The one image both roles run (services/Dockerfile; the Pod's command picks the role): "
        "a tag or digest, never latest.",
    )
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    pull_secrets: tuple[DnsSubdomain, ...] = Field(
        default=(),
        description="Secrets (type kubernetes.io/dockerconfigjson, in the federation's namespace, created "
        "outside this program) the kubelet pulls the image with: imagePullSecrets of both Pod specs.",
    )

    @field_validator("ref")
    @classmethod
    def _pinned(cls, v: str) -> str:
        return check_image(v, require_digest=False)

    @field_validator("pull_secrets")
    @classmethod
    def _unique(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if repeated := sorted({name for name in v if v.count(name) > 1}):
            raise ValueError(f"{repeated} listed more than once")
        return v


class Storage(_Strict):
    size: str = Field(default="1Gi", description="Checkpoint volume size.")
    storage_class: str | None = Field(
        default=None, description="StorageClass of the checkpoint claim (default: the cluster's)."
    )

    @field_validator("size")
    @classmethod
    def _size(cls, v: str) -> str:
        byte_count(v)
        return v


class Scratch(_Strict):
    tmp_size: str = Field(default="1Gi", description="sizeLimit of the /tmp emptyDir.")

    @field_validator("tmp_size")
    @classmethod
    def _size(cls, v: str) -> str:
        byte_count(v)
        return v


class ServerDeployment(Scratch):
    name: DnsLabel = Field(
        default="tff-server", description="Name of the server Pod and of the Service clients dial."
    )
    resources: Resources = _resources("500m", "1Gi", "2", "2Gi")
    storage: Storage = Storage()


class ClientDeployment(Scratch):
    name: DnsLabel = Field(default="tff-client", description="Name of the client Deployment.")
    replicas: int = Field(
        default=3, ge=1, le=10_000, description="Client Pods (>= federation.training.min_clients)."
    )
    max_surge: int = Field(
        default=1, ge=0, description="Extra client Pods a rollout may start (counted in the quota)."
    )
    max_unavailable: int = Field(default=0, ge=0, description="Client Pods a rollout may take down at once.")
    max_disrupted: int = Field(
        default=1,
        ge=1,
        description="Client Pods a voluntary disruption (a node drain) may evict at once: the "
        "PodDisruptionBudget's maxUnavailable. At least 1, so a drain always progresses; the Deployment "
        "recreates evicted clients elsewhere and rounds wait for them (training.round_deadline_s).",
    )
    topology_key: str = Field(
        default="kubernetes.io/hostname", description="Spread client Pods across this node label."
    )
    resources: Resources = _resources("250m", "1Gi", "1", "2Gi")

    @model_validator(mode="after")
    def _rollout_moves(self) -> ClientDeployment:
        if self.max_surge == 0 and self.max_unavailable == 0:
            raise ValueError(
                "max_surge and max_unavailable cannot both be 0 (a rollout could never progress)"
            )
        return self


def _cidr_block(text: str, example: str, what: str, name: str) -> str:
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a CIDR block (e.g. {example}): {exc}") from None
    if network.prefixlen == 0:
        raise ValueError(f"{text!r} would allow {what} to every address: name {name}")
    return str(network)  # a bare address becomes /32 (/128): ipBlock needs a prefix


def _cidr_blocks(v: tuple[str, ...], example: str, what: str, name: str) -> tuple[str, ...]:
    cidrs = [_cidr_block(text, example, what, name) for text in v]
    if repeated := sorted({c for c in cidrs if cidrs.count(c) > 1}):
        raise ValueError(f"{repeated} listed more than once")
    return tuple(cidrs)


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r} must be host:port (e.g. hub.example.org:443 or 203.0.113.7:50051)")
    return host, int(port)


def ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class PeerSelector(_Strict):
    namespace: DnsLabel = Field(description="Namespace (by name) allowed in.")
    pod_labels: dict[str, str] = Field(
        default_factory=dict, description="Pods in it allowed in (empty: all)."
    )


class Network(_Strict):
    dns: PeerSelector = PeerSelector(namespace="kube-system", pod_labels={"k8s-app": "kube-dns"})
    dns_cidrs: tuple[str, ...] = Field(
        default=(),
        description="Address ranges DNS egress (port 53) may also go to, for resolvers that are not Pods "
        "a selector can name: node-local DNS caches (e.g. 169.254.20.10/32), a DNS Service's IP.",
    )
    metrics_from: PeerSelector | None = Field(
        default=None, description="Who may scrape the server's metrics port (null: nobody)."
    )
    @field_validator("dns_cidrs")
    @classmethod
    def _cidrs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _cidr_blocks(v, "169.254.20.10/32", "port 53", "the resolvers' range")

    allow_load_balancer: bool = Field(
        default=False,
        description="Permit Services of type LoadBalancer in this stack. The policy pack (policy/) "
        "rejects them otherwise; this program itself declares ClusterIP Services only.",
    )


class HubSettings(_Strict):
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
            _host_port(v)
        return v

    @field_validator("silo_cidrs")
    @classmethod
    def _cidrs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _cidr_blocks(v, "198.51.100.0/24", "the server port", "the silos' egress ranges")

    @property
    def host(self) -> str:
        return _host_port(self.public_address)[0] if self.public_address else ""

    @property
    def port(self) -> int:
        return _host_port(self.public_address)[1] if self.public_address else 0


class SiloData(_Strict):
    pvc: DnsSubdomain | None = Field(
        default=None,
        description="An existing PersistentVolumeClaim in the silo's namespace holding the silo's .npz files "
        "(mounted read-only); null: the bundled digits, a shard per client handed out by the server (demos).",
    )
    path: str = Field(default="", description="Directory of the .npz files inside the claim ('' : its root).")

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        if v.startswith("/") or ".." in v.split("/"):
            raise ValueError(f"{v!r} must be a path inside the claim (relative, no '..')")
        return v.strip("/")


class SiloIdentityConfig(_Strict):
    generate: bool = Field(
        default=False,
        description="true: the program makes the silo's client key and certificate (signed by the hub's CA); "
        "false: stack secrets tlsClientCert-<silo> and tlsClientKey-<silo>.",
    )


class Silo(_Strict):
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
        return None if v is None else _cidr_block(v, "203.0.113.7/32", "client egress", "the hub's range")


class DeploymentSettings(_Strict):
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
    network: Network = Network()
    hub: HubSettings = HubSettings()
    silos: tuple[Silo, ...] = Field(
        default=(),
        description="Cross-silo: clusters that run clients and dial the hub (this stack's server). "
        "Empty: one cluster, the server and deployment.clients in deployment.namespace.",
    )


class StackConfig(_Strict):
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
            dumped["data"] |= {"source": "npz", "npz_dir": posixpath.join(layout.DATA_DIR, silo.data.path).rstrip("/")}
        return from_mapping(dumped)


def _cross_checks(cfg: StackConfig) -> list[tuple[str, str]]:
    d, fed = cfg.deployment, cfg.federation
    training, clients = fed.training, d.clients
    problems: list[tuple[str, str]] = []
    if cfg.cross_silo:
        from infra.cross_silo_checks import cross_silo_problems  # it reads this module's types

        problems += cross_silo_problems(cfg)
    elif clients.replicas < training.min_clients:
        problems.append(
            (
                "deployment.clients.replicas",
                f"{clients.replicas} is below federation.training.min_clients ({training.min_clients}); "
                "no round could start: raise replicas or lower min_clients",
            )
        )
    if not cfg.cross_silo and clients.max_disrupted > clients.replicas:
        problems.append(
            ("deployment.clients.max_disrupted", f"{clients.max_disrupted} exceeds replicas ({clients.replicas})")
        )
    if fed.server.host not in _WILDCARD_HOSTS:
        problems.append(
            ("federation.server.host", f"{fed.server.host!r}: in a Pod the server must bind 0.0.0.0")
        )
    if fed.client.health_port == 0:
        problems.append(("federation.client.health_port", "0 turns off the health server the probes need"))
    if fed.data.source == "npz":
        problems.append(
            ("federation.data.source", "'npz' needs a data volume this program does not mount; use digits")
        )
    problems += layout.mount_problems(fed)
    if d.environment == "prod":
        try:
            check_image(d.image.ref, require_digest=True)
        except ValueError as exc:
            problems.append(("deployment.image.ref", str(exc)))
        if not fed.security.tls:
            problems.append(("federation.security.tls", "prod requires TLS: set it to true"))
        if not fed.security.token_file:
            problems.append(("federation.security.token_file", "prod requires client auth: set a token path"))
    return problems


# Keys earlier versions had, and what replaced them.
_REPLACED = {
    "deployment.images": "replaced by deployment.image: one image serves both roles; set deployment.image.ref "
    "(and deployment.image.pull_policy) instead",
    "deployment.clients.min_available": "replaced by deployment.clients.max_disrupted (the PodDisruptionBudget's "
    "maxUnavailable, at least 1): a floor as high as replicas let no node drain finish; set how many clients "
    "a drain may evict at once, e.g. replicas - min_available",
}


def _pydantic_problems(err: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = _REPLACED.get(key) or (
                "unknown key (check its spelling against infra/stack_config.py or services/common/config.py)"
            )
        problems.append((key, msg))
    return problems


def _fail(problems: list[tuple[str, str]]) -> StackConfigError:
    return StackConfigError("invalid stack config:\n  " + "\n  ".join(f"{k}: {m}" for k, m in problems))


def parse(deployment: Mapping[str, Any] | None, federation: Mapping[str, Any] | None) -> StackConfig:
    """Validate both sections; the federation's client.server_address becomes the Service address."""
    federation = dict(federation or {})
    problems: list[tuple[str, str]] = []
    client = federation.get("client")
    if isinstance(client, Mapping) and "server_address" in client:
        problems.append(
            (
                "federation.client.server_address",
                "set by the program to the Service's DNS address; remove it from stack config",
            )
        )
        federation["client"] = {k: v for k, v in client.items() if k != "server_address"}
    try:
        cfg = StackConfig.model_validate({"deployment": dict(deployment or {}), "federation": federation})
    except ValidationError as err:
        raise _fail(problems + _pydantic_problems(err)) from None
    if problems := problems + _cross_checks(cfg):
        raise _fail(problems)
    dumped = cfg.federation.model_dump(mode="json")
    dumped["client"]["server_address"] = cfg.server_address
    return cfg.model_copy(update={"federation": from_mapping(dumped)})
