"""The namespace's budget: what the ResourceQuota and LimitRange hold, computed from the workloads so
that the quota admits the server, every client replica, the rollout surge and the client Pods still
terminating, and nothing more."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from infra.quantity import byte_count, cpu_millis, format_bytes, format_cpu
from infra.stack_schema import DeploymentSettings
from infra.stack_workloads import ClientDeployment, Resources


def _sum(items: list[tuple[int, Resources]], side: str) -> dict[str, str]:
    cpu = sum(n * cpu_millis(getattr(r, side).cpu) for n, r in items)
    memory = sum(n * byte_count(getattr(r, side).memory) for n, r in items)
    return {f"{side}.cpu": format_cpu(cpu), f"{side}.memory": format_bytes(memory)}


def terminating_clients(c: ClientDeployment) -> int:
    """Client Pods that may still be terminating while their replacements start.

    A terminating Pod counts against the quota until it is gone (or twice its grace period has
    passed: Kubernetes' QuotaV1Pod), and neither the Deployment controller nor a node drain waits for
    it before creating the replacement. A rollout step replaces max_surge + max_unavailable Pods; a
    drain evicts up to max_disrupted (the PodDisruptionBudget). One step's worth: a step lasts at least
    a client's start-up (readiness means joined), and clients stop within seconds of SIGTERM.
    """
    return max(c.max_surge + c.max_unavailable, c.max_disrupted)


def client_pods(c: ClientDeployment) -> int:
    """Client Pods the quota may count at once: every replica, the surge, and the terminating ones."""
    return c.replicas + c.max_surge + terminating_clients(c)


def max_pods(d: DeploymentSettings) -> int:
    """One server + the client Pods above. The server is never doubled: it is replaced delete-first,
    and Pulumi waits for the old Pod to be gone before it creates the new one."""
    return 1 + client_pods(d.clients)


@dataclass(frozen=True)
class Workloads:
    """What runs in a namespace: one cluster has both; a cross-silo hub the server alone (and its public
    Service), a silo its clients alone."""

    server: bool = True
    clients: bool = True
    public_service: Literal["LoadBalancer", "NodePort"] | None = None
    data_claim: bool = False  # the data set: a claim made outside this program, in the namespace it makes


def _storage(d: DeploymentSettings, w: Workloads) -> str:
    """The checkpoint claim, and the data claim (deployment.data.size) when one lives in this namespace."""
    data = byte_count(d.data.size) if w.data_claim and d.data is not None else 0
    return format_bytes(byte_count(d.server.storage.size) + data) if data else d.server.storage.size


def quota_hard(d: DeploymentSettings, w: Workloads | None = None) -> dict[str, str]:
    w = w or Workloads()
    items = [(1, d.server.resources)] if w.server else []
    if w.clients:
        items.append((client_pods(d.clients), d.clients.resources))
    pods = (1 if w.server else 0) + (client_pods(d.clients) if w.clients else 0)
    return {
        **_sum(items, "requests"),
        **_sum(items, "limits"),
        "pods": str(pods),
        "persistentvolumeclaims": str(int(w.server) + int(w.data_claim)),
        **({"requests.storage": _storage(d, w)} if w.server else {}),
        "services.loadbalancers": "1" if w.public_service == "LoadBalancer" else "0",
        # a LoadBalancer Service allocates a node port too (allocateLoadBalancerNodePorts)
        "services.nodeports": "1" if w.public_service else "0",
    }


def container_max(d: DeploymentSettings, w: Workloads | None = None) -> dict[str, str]:
    """The LimitRange ceiling per container: the larger of the workloads' limits."""
    w = w or Workloads()
    limits = [r.limits for r, on in ((d.server.resources, w.server), (d.clients.resources, w.clients)) if on]
    return {
        "cpu": format_cpu(max(cpu_millis(x.cpu) for x in limits)),
        "memory": format_bytes(max(byte_count(x.memory) for x in limits)),
    }
