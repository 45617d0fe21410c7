"""What one cluster runs, as the stack config states it: the image, the server and the client
workloads (resources, storage, scratch space, rollout), the cluster to target and the network's peers.
Imports pydantic only."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from infra.image_ref import check_image
from infra.quantity import byte_count, cpu_millis
from infra.stack_fields import ByteQuantity, CpuQuantity, DnsLabel, DnsSubdomain, Strict, cidr_blocks


class Compute(Strict):
    cpu: CpuQuantity = Field(description="CPU quantity, e.g. 500m or 2.")
    memory: ByteQuantity = Field(description="Memory quantity, e.g. 512Mi or 4Gi.")


class Resources(Strict):
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


class KubernetesTarget(Strict):
    context: str | None = Field(default=None, description="kubeconfig context (default: the current one).")
    kubeconfig: str | None = Field(
        default=None, description="Path to (or contents of) a kubeconfig (default: ~/.kube/config)."
    )


class Image(Strict):
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


class Storage(Strict):
    size: ByteQuantity = Field(default="1Gi", description="Checkpoint volume size.")
    storage_class: str | None = Field(
        default=None, description="StorageClass of the checkpoint claim (default: the cluster's)."
    )


def inside_claim(v: str) -> str:
    if v.startswith("/") or ".." in v.split("/"):
        raise ValueError(f"{v!r} must be a path inside the claim (relative, no '..')")
    return v.strip("/")


class DataVolume(Strict):
    """The clients' data set: an existing PersistentVolumeClaim, mounted read-only into every client Pod
    at infra/layout.py's DATA_DIR; federation.data becomes source files, sharded, path at the mount."""

    claim: DnsSubdomain = Field(
        description="An existing PersistentVolumeClaim in deployment.namespace holding the data set, one "
        "folder per shard (shard-0, shard-1, ...) in the task's data format. Many client Pods mount it at "
        "once: ReadOnlyMany (or ReadWriteMany) unless every Pod runs on one node (kind)."
    )
    sub_path: str = Field(default="", description="The folder of the shard folders inside the claim ('': its root).")
    server_eval_sub_path: str | None = Field(
        default=None,
        description="A folder inside the claim the server evaluates each round's model on "
        "(federation.data.server_eval_path); the server then mounts the claim read-only too.",
    )
    size: ByteQuantity = Field(
        default="1Gi", description="The claim's storage request, which the namespace's quota must admit."
    )

    @field_validator("sub_path", "server_eval_sub_path")
    @classmethod
    def _relative(cls, v: str | None) -> str | None:
        return None if v is None else inside_claim(v)


class Scratch(Strict):
    tmp_size: ByteQuantity = Field(default="1Gi", description="sizeLimit of the /tmp emptyDir.")


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


class PeerSelector(Strict):
    namespace: DnsLabel = Field(description="Namespace (by name) allowed in.")
    pod_labels: dict[str, str] = Field(
        default_factory=dict, description="Pods in it allowed in (empty: all)."
    )


class Network(Strict):
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
        return cidr_blocks(v, "169.254.20.10/32", "port 53", "the resolvers' range")

    allow_load_balancer: bool = Field(
        default=False,
        description="Permit Services of type LoadBalancer in this stack. The policy pack (policy/) "
        "rejects them otherwise; this program itself declares ClusterIP Services only.",
    )
