"""The namespace's budget: what the ResourceQuota and LimitRange hold, computed from the workloads so
that the quota admits the server, every client replica and the rollout surge, and nothing more."""

from __future__ import annotations

from infra.quantity import byte_count, cpu_millis, format_bytes, format_cpu
from infra.stack_config import DeploymentSettings, Resources


def _sum(items: list[tuple[int, Resources]], side: str) -> dict[str, str]:
    cpu = sum(n * cpu_millis(getattr(r, side).cpu) for n, r in items)
    memory = sum(n * byte_count(getattr(r, side).memory) for n, r in items)
    return {f"{side}.cpu": format_cpu(cpu), f"{side}.memory": format_bytes(memory)}


def max_pods(d: DeploymentSettings) -> int:
    """One server + every client replica + the Pods a rolling update may add."""
    return 1 + d.clients.replicas + d.clients.max_surge


def quota_hard(d: DeploymentSettings) -> dict[str, str]:
    items = [(1, d.server.resources), (d.clients.replicas + d.clients.max_surge, d.clients.resources)]
    return {
        **_sum(items, "requests"),
        **_sum(items, "limits"),
        "pods": str(max_pods(d)),
        "persistentvolumeclaims": "1",
        "requests.storage": d.server.storage.size,
        "services.loadbalancers": "0",
        "services.nodeports": "0",
    }


def container_max(d: DeploymentSettings) -> dict[str, str]:
    """The LimitRange ceiling per container: the larger of the two workloads' limits."""
    limits = [d.server.resources.limits, d.clients.resources.limits]
    return {
        "cpu": format_cpu(max(cpu_millis(x.cpu) for x in limits)),
        "memory": format_bytes(max(byte_count(x.memory) for x in limits)),
    }
