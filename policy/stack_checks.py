"""The rules the policy pack enforces across a stack's resources (every namespace denied by default,
the server's checkpoint volume, disruption budgets a drain can get through), as pure functions over the
resources' Kubernetes inputs (:mod:`policy.objects` reads them), returning one :class:`Finding` per
problem. :mod:`policy.tff_policies` wraps them into CrossGuard stack policies. No Pulumi, no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from infra.labels import SERVER
from policy.objects import COMPONENT_LABEL, containers, describe, is_map, items_of, lookup, pod_specs


@dataclass(frozen=True)
class Declared:
    """One resource of the stack, as stack checks see it."""

    kind: str
    props: Mapping[str, Any]
    urn: str = ""
    cluster: str = ""  # the URN of its Kubernetes provider: one stack may span clusters (cross-silo)

    @property
    def name(self) -> Any:
        return lookup(self.props, "metadata", "name")

    @property
    def namespace(self) -> Any:
        return lookup(self.props, "metadata", "namespace")

    @property
    def place(self) -> tuple[str, Any]:
        """(cluster, namespace): a namespace name is only unique within its cluster."""
        return (self.cluster, self.namespace)


def _on(cluster: str) -> str:
    """`` on provider '<name>'`` for a resource of a named provider, nothing for the default one."""
    return f" on provider {cluster.rsplit('::', 1)[-1]!r}" if cluster else ""


@dataclass(frozen=True)
class Finding:
    message: str
    urn: str = ""


def _is_default_deny(policy: Mapping[str, Any]) -> bool:
    spec = lookup(policy, "spec") or {}
    selector = lookup(spec, "podSelector")
    selects_all = (
        is_map(selector) and not lookup(selector, "matchLabels") and not lookup(selector, "matchExpressions")
    )
    types = {str(t) for t in items_of(lookup(spec, "policyTypes"))}
    return (
        selects_all
        and {"Ingress", "Egress"} <= types
        and not items_of(lookup(spec, "ingress"))
        and not items_of(lookup(spec, "egress"))
    )


def namespace_default_deny(resources: Sequence[Declared]) -> list[Finding]:
    """Every namespace the stack declares or runs Pods in has a NetworkPolicy that selects every Pod
    and allows nothing in either direction (explicit allows are added on top of it)."""
    namespaces: dict[tuple[str, str], str] = {}
    for r in resources:
        if r.kind == "Namespace" and isinstance(r.name, str):
            namespaces[(r.cluster, r.name)] = r.urn
    for r in resources:
        if pod_specs(r.kind, r.props) and isinstance(r.namespace, str):
            namespaces.setdefault(r.place, r.urn)
    denied = {r.place for r in resources if r.kind == "NetworkPolicy" and _is_default_deny(r.props)}
    return [
        Finding(
            f"namespace {ns!r}{_on(cluster)} has no default-deny NetworkPolicy (podSelector {{}}, policyTypes "
            "[Ingress, Egress], no rules); add one, then allow only the traffic the federation needs",
            urn,
        )
        for (cluster, ns), urn in sorted(namespaces.items())
        if (cluster, ns) not in denied
    ]


def server_checkpoint_volume(resources: Sequence[Declared], component: str = SERVER) -> list[Finding]:
    """The federation server (Pods labelled ``app.kubernetes.io/component: server``) mounts a
    persistent volume, writable, from a claim this stack declares: checkpoints outlive the Pod."""
    claims = {(*r.place, r.name) for r in resources if r.kind == "PersistentVolumeClaim"}
    findings = []
    servers = [
        (r, p)
        for r in resources
        for p in pod_specs(r.kind, r.props)
        if p.labels.get(COMPONENT_LABEL) == component
    ]
    if not servers:
        return [Finding(f"no federation server declared (no Pod labelled {COMPONENT_LABEL}: {component})")]
    for r, pod in servers:
        templates = {
            lookup(t, "metadata", "name") for t in items_of(lookup(r.props, "spec", "volumeClaimTemplates"))
        }
        persistent: dict[Any, Any] = {}
        for volume in items_of(pod.spec.get("volumes")):
            claim = lookup(volume, "persistentVolumeClaim", "claimName")
            if claim is not None:
                persistent[lookup(volume, "name")] = claim
        mounted = []
        for _, container in containers(pod.spec, ephemeral=False):
            for mount in items_of(container.get("volumeMounts")):
                name = lookup(mount, "name")
                if (name in persistent or name in templates) and lookup(mount, "readOnly") is not True:
                    mounted.append(name)
        where = describe(r.kind, r.props)
        if not mounted:
            findings.append(
                Finding(
                    f"{where} mounts no writable persistent volume: its checkpoints would die with the Pod",
                    r.urn,
                )
            )
        for name in mounted:
            claim = persistent.get(name)
            if name not in templates and (*r.place, claim) not in claims:
                findings.append(
                    Finding(f"{where} mounts claim {claim!r}, which this stack does not declare", r.urn)
                )
    return findings


# Workloads whose Pods a PodDisruptionBudget counts, by their replica count.
_REPLICATED = {"Deployment", "StatefulSet", "ReplicaSet", "ReplicationController"}


def _scaled(value: Any, total: int) -> int | None:
    """An int-or-percent budget field against ``total`` Pods, rounded up as the disruption controller
    does for both minAvailable and maxUnavailable; None when it is not a known number (e.g. unknown
    during a preview)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and float(value).is_integer():  # the engine sends numbers as floats
        return int(value)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, str) and value.endswith("%") and value[:-1].isdigit():
        return -(-int(value[:-1]) * total // 100)
    return None


def evictable(budget_spec: Mapping[str, Any], replicas: int) -> int | None:
    """How many of ``replicas`` healthy Pods a PodDisruptionBudget lets evictions take at once."""
    if lookup(budget_spec, "maxUnavailable") is not None:
        return _scaled(budget_spec["maxUnavailable"], replicas)
    floor = _scaled(lookup(budget_spec, "minAvailable"), replicas)
    return None if floor is None else max(replicas - floor, 0)


def _selects(selector: Any, labels: Mapping[str, Any]) -> bool | None:
    """Whether a label selector selects ``labels`` (None: it uses matchExpressions, not judged here)."""
    if not is_map(selector) or items_of(selector.get("matchExpressions")):
        return None
    wanted = selector.get("matchLabels") or {}
    return all(labels.get(k) == v for k, v in wanted.items())


def disruption_budgets_allow_eviction(resources: Sequence[Declared]) -> list[Finding]:
    """No PodDisruptionBudget forbids every eviction of the workload it covers (minAvailable equal to
    the replicas, maxUnavailable 0): a node drain would wait on it forever."""
    findings = []
    for budget in (r for r in resources if r.kind == "PodDisruptionBudget"):
        spec = lookup(budget.props, "spec") or {}
        for workload in resources:
            if workload.kind not in _REPLICATED or workload.place != budget.place:
                continue
            pods = pod_specs(workload.kind, workload.props)
            if not pods or not _selects(lookup(spec, "selector"), pods[0].labels):
                continue
            declared = lookup(workload.props, "spec", "replicas")
            replicas = 1 if declared is None else _scaled(declared, 0)  # Kubernetes' default: 1
            if replicas is None or replicas < 1:
                continue
            allowed = evictable(spec, replicas)
            if allowed is not None and allowed < 1:
                rule = "maxUnavailable" if lookup(spec, "maxUnavailable") is not None else "minAvailable"
                findings.append(
                    Finding(
                        f"{describe(budget.kind, budget.props)} lets no eviction take any of the {replicas} "
                        f"Pods of {describe(workload.kind, workload.props)} ({rule}: {spec.get(rule)}): a node "
                        "drain would wait on it forever; allow at least one (maxUnavailable >= 1, "
                        "deployment.clients.max_disrupted)",
                        budget.urn,
                    )
                )
    return findings
