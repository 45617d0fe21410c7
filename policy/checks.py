"""The rules the policy pack enforces, as pure functions over Kubernetes resource inputs.

Each check takes what Pulumi hands a policy (the resource's camelCase inputs, as plain mappings or
pulumi-policy's unknown-checking proxies, which are ``Mapping``/``Sequence`` but not ``dict``/``list``)
and returns the problems it finds, one message each; an empty list means the resource complies.
:mod:`policy.tff_policies` wraps them into CrossGuard policies. No Pulumi, no TensorFlow imported here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from infra.image_ref import check_image
from infra.labels import SERVER

RECOMMENDED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
)
COMPONENT_LABEL = "app.kubernetes.io/component"
COMPUTE = (("requests", "cpu"), ("requests", "memory"), ("limits", "cpu"), ("limits", "memory"))
SECCOMP_ALLOWED = ("RuntimeDefault", "Localhost")
CAPABILITIES_ADD_ALLOWED = ("NET_BIND_SERVICE",)  # the only one Pod Security "restricted" allows

# kubernetes:<group>/<version>:<Kind>, e.g. kubernetes:apps/v1:Deployment, kubernetes:core/v1:Pod.
_OBJECT_TYPE = re.compile(
    r"^kubernetes:(?P<group>[a-z0-9.-]+)/(?P<version>v[0-9a-z]+):(?P<kind>[A-Za-z0-9]+)$"
)
# Pulumi-only modules whose resources are components or releases, not Kubernetes objects.
_NOT_OBJECTS = {"yaml", "helm.sh", "kustomize"}
# Where a workload keeps the Pod spec it runs; other kinds are searched for one (see pod_specs).
_TEMPLATE_SPEC = ("spec", "template", "spec")
_POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "PodTemplate": ("template", "spec"),
    "Deployment": _TEMPLATE_SPEC,
    "StatefulSet": _TEMPLATE_SPEC,
    "DaemonSet": _TEMPLATE_SPEC,
    "ReplicaSet": _TEMPLATE_SPEC,
    "ReplicationController": _TEMPLATE_SPEC,
    "Job": _TEMPLATE_SPEC,
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
# Kinds known to run no Pods: not searched for a Pod spec.
_NO_PODS = {
    "ConfigMap", "Secret", "Service", "ServiceAccount", "Namespace", "NetworkPolicy", "PersistentVolumeClaim",
    "PersistentVolume", "ResourceQuota", "LimitRange", "PodDisruptionBudget", "Role", "RoleBinding",
    "ClusterRole", "ClusterRoleBinding", "Ingress", "StorageClass", "CustomResourceDefinition",
}  # fmt: skip


def _is_map(value: Any) -> bool:
    return isinstance(value, Mapping)


def _is_seq(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def _get(obj: Any, *path: str) -> Any:
    """``obj[path[0]][path[1]]...``, or None where a step is missing or not a mapping."""
    for key in path:
        if not _is_map(obj) or key not in obj:
            return None
        obj = obj[key]
    return obj


def _items(value: Any) -> list[Any]:
    return list(value) if _is_seq(value) else []


def kind_of(resource_type: str) -> str | None:
    """The Kubernetes kind of a Pulumi type token, or None when it is not a whole Kubernetes object
    (providers, components, Helm releases, and ``*Patch``/``*List`` resources, which are partial)."""
    match = _OBJECT_TYPE.match(resource_type)
    if match is None or match["group"] in _NOT_OBJECTS:
        return None
    kind = match["kind"]
    if kind.endswith(("Patch", "List")):
        return None
    return kind


def describe(kind: str, props: Mapping[str, Any]) -> str:
    meta = _get(props, "metadata") or {}
    name = _get(meta, "name") or "<unnamed>"
    namespace = _get(meta, "namespace")
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


@dataclass(frozen=True)
class PodSpec:
    """A Pod spec found in a resource: where it sits, its Pod labels and the spec itself."""

    path: str
    labels: Mapping[str, Any]
    spec: Mapping[str, Any]


def pod_specs(kind: str, props: Mapping[str, Any]) -> list[PodSpec]:
    """Every Pod spec the object runs: a Pod's own, a workload's template, or (other kinds, e.g.
    custom resources) any mapping under ``spec`` that has a ``containers`` list."""
    if kind in _NO_PODS:
        return []
    path = _POD_SPEC_PATHS.get(kind)
    if path is not None:
        spec = _get(props, *path)
        if not _is_map(spec):
            return []
        labels = _get(props, *path[:-1], "metadata", "labels")
        return [PodSpec(".".join(path), labels if _is_map(labels) else {}, spec)]
    return list(_search(_get(props, "spec"), "spec", {}))


def _search(node: Any, path: str, labels: Mapping[str, Any]) -> Iterator[PodSpec]:
    if _is_map(node):
        if _is_seq(node.get("containers")):
            yield PodSpec(path, labels, node)
            return
        here = _get(node, "metadata", "labels")
        for key in node:
            yield from _search(node[key], f"{path}.{key}", here if _is_map(here) else labels)
    elif _is_seq(node):
        for i, item in enumerate(node):
            yield from _search(item, f"{path}[{i}]", labels)


_CONTAINER_FIELDS = {"initContainers": "initContainer", "containers": "container"}
_EPHEMERAL = {"ephemeralContainers": "ephemeralContainer"}


def _containers(spec: Mapping[str, Any], *, ephemeral: bool = True) -> list[tuple[str, Mapping[str, Any]]]:
    """(label, container) for each container of a Pod spec, e.g. ``("initContainer 'warmup'", {...})``."""
    fields = {**_CONTAINER_FIELDS, **(_EPHEMERAL if ephemeral else {})}
    return [
        (f"{label} {container.get('name')!r}", container)
        for field, label in fields.items()
        for container in _items(spec.get(field))
        if _is_map(container)
    ]


# --- resource checks -------------------------------------------------------------------------------


def container_resources(kind: str, props: Mapping[str, Any]) -> list[str]:
    """Every container and init container sets cpu and memory requests and limits."""
    problems = []
    for pod in pod_specs(kind, props):
        for label, container in _containers(pod.spec, ephemeral=False):
            missing = [
                f"{section}.{res}"
                for section, res in COMPUTE
                if _get(container, "resources", section, res) in (None, "")
            ]
            if missing:
                problems.append(f"{describe(kind, props)} {label}: missing {', '.join(missing)}")
    return problems


def pod_security_restricted(kind: str, props: Mapping[str, Any]) -> list[str]:
    """Pod Security "restricted", plus a read-only root filesystem: non-root, no privilege escalation,
    every capability dropped, RuntimeDefault (or Localhost) seccomp, no host namespaces or paths."""
    problems = []
    where = describe(kind, props)
    for pod in pod_specs(kind, props):
        spec = pod.spec
        pod_ctx = _get(spec, "securityContext") or {}
        for field in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(field) is True:
                problems.append(f"{where}: {pod.path}.{field} is true")
        for volume in _items(spec.get("volumes")):
            if _is_map(volume) and volume.get("hostPath") is not None:
                problems.append(f"{where}: volume {volume.get('name')!r} is a hostPath")
        for label, container in _containers(spec):
            ctx = _get(container, "securityContext") or {}

            def effective(field: str, ctx: Any = ctx, pod_ctx: Any = pod_ctx) -> Any:
                value = _get(ctx, field)
                return _get(pod_ctx, field) if value is None else value

            bad = []
            if _get(ctx, "privileged") is True:
                bad.append("privileged is true")
            if _get(ctx, "allowPrivilegeEscalation") is not False:
                bad.append("allowPrivilegeEscalation must be false")
            if effective("runAsNonRoot") is not True:
                bad.append("runAsNonRoot must be true (container or Pod securityContext)")
            if effective("runAsUser") == 0:
                bad.append("runAsUser must not be 0")
            drop = [str(c) for c in _items(_get(ctx, "capabilities", "drop"))]
            if "ALL" not in drop:
                bad.append("capabilities.drop must include ALL")
            added = [str(c) for c in _items(_get(ctx, "capabilities", "add"))]
            if extra := [c for c in added if c not in CAPABILITIES_ADD_ALLOWED]:
                bad.append(f"capabilities.add {extra} is not allowed")
            if _get(ctx, "readOnlyRootFilesystem") is not True:
                bad.append("readOnlyRootFilesystem must be true")
            seccomp = _get(ctx, "seccompProfile", "type") or _get(pod_ctx, "seccompProfile", "type")
            if seccomp not in SECCOMP_ALLOWED:
                bad.append(f"seccompProfile.type must be RuntimeDefault or Localhost, not {seccomp!r}")
            if bad:
                problems.append(f"{where} {label}: {'; '.join(bad)}")
    return problems


def image_pinned(kind: str, props: Mapping[str, Any], *, require_digest: bool) -> list[str]:
    """Every image has a tag or digest, never ``latest``; a digest when ``require_digest``."""
    problems = []
    for pod in pod_specs(kind, props):
        for label, container in _containers(pod.spec):
            image = container.get("image")
            if not isinstance(image, str) or not image:
                problems.append(f"{describe(kind, props)} {label}: no image")
                continue
            try:
                check_image(image, require_digest=require_digest)
            except ValueError as exc:
                problems.append(f"{describe(kind, props)} {label}: {exc}")
    return problems


def no_load_balancer(kind: str, props: Mapping[str, Any], *, allowed: bool) -> list[str]:
    """No Service of type LoadBalancer unless the stack allows it."""
    if kind != "Service" or allowed or _get(props, "spec", "type") != "LoadBalancer":
        return []
    return [
        f"{describe(kind, props)} is type LoadBalancer, which exposes it outside the cluster; use ClusterIP, "
        "or set deployment.network.allow_load_balancer: true in the stack config"
    ]


def recommended_labels(kind: str, props: Mapping[str, Any]) -> list[str]:
    """The object and the Pods it runs carry every Kubernetes recommended label, non-empty."""
    problems = []
    labels = _get(props, "metadata", "labels")
    targets = [("metadata.labels", labels if _is_map(labels) else {})]
    targets += [
        (f"{p.path.removesuffix('.spec')}.metadata.labels", p.labels)
        for p in pod_specs(kind, props)
        if kind != "Pod"
    ]
    for where, found in targets:
        missing = [k for k in RECOMMENDED_LABELS if not found.get(k)]
        if missing:
            problems.append(f"{describe(kind, props)}: {where} lacks {', '.join(missing)}")
    return problems


# --- stack checks ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Declared:
    """One resource of the stack, as stack checks see it."""

    kind: str
    props: Mapping[str, Any]
    urn: str = ""
    cluster: str = ""  # the URN of its Kubernetes provider: one stack may span clusters (cross-silo)

    @property
    def name(self) -> Any:
        return _get(self.props, "metadata", "name")

    @property
    def namespace(self) -> Any:
        return _get(self.props, "metadata", "namespace")

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
    spec = _get(policy, "spec") or {}
    selector = _get(spec, "podSelector")
    selects_all = (
        _is_map(selector) and not _get(selector, "matchLabels") and not _get(selector, "matchExpressions")
    )
    types = {str(t) for t in _items(_get(spec, "policyTypes"))}
    return (
        selects_all
        and {"Ingress", "Egress"} <= types
        and not _items(_get(spec, "ingress"))
        and not _items(_get(spec, "egress"))
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
            _get(t, "metadata", "name") for t in _items(_get(r.props, "spec", "volumeClaimTemplates"))
        }
        persistent: dict[Any, Any] = {}
        for volume in _items(pod.spec.get("volumes")):
            claim = _get(volume, "persistentVolumeClaim", "claimName")
            if claim is not None:
                persistent[_get(volume, "name")] = claim
        mounted = []
        for _, container in _containers(pod.spec, ephemeral=False):
            for mount in _items(container.get("volumeMounts")):
                name = _get(mount, "name")
                if (name in persistent or name in templates) and _get(mount, "readOnly") is not True:
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
    if _get(budget_spec, "maxUnavailable") is not None:
        return _scaled(budget_spec["maxUnavailable"], replicas)
    floor = _scaled(_get(budget_spec, "minAvailable"), replicas)
    return None if floor is None else max(replicas - floor, 0)


def _selects(selector: Any, labels: Mapping[str, Any]) -> bool | None:
    """Whether a label selector selects ``labels`` (None: it uses matchExpressions, not judged here)."""
    if not _is_map(selector) or _items(selector.get("matchExpressions")):
        return None
    wanted = selector.get("matchLabels") or {}
    return all(labels.get(k) == v for k, v in wanted.items())


def disruption_budgets_allow_eviction(resources: Sequence[Declared]) -> list[Finding]:
    """No PodDisruptionBudget forbids every eviction of the workload it covers (minAvailable equal to
    the replicas, maxUnavailable 0): a node drain would wait on it forever."""
    findings = []
    for budget in (r for r in resources if r.kind == "PodDisruptionBudget"):
        spec = _get(budget.props, "spec") or {}
        for workload in resources:
            if workload.kind not in _REPLICATED or workload.place != budget.place:
                continue
            pods = pod_specs(workload.kind, workload.props)
            if not pods or not _selects(_get(spec, "selector"), pods[0].labels):
                continue
            declared = _get(workload.props, "spec", "replicas")
            replicas = 1 if declared is None else _scaled(declared, 0)  # Kubernetes' default: 1
            if replicas is None or replicas < 1:
                continue
            allowed = evictable(spec, replicas)
            if allowed is not None and allowed < 1:
                rule = "maxUnavailable" if _get(spec, "maxUnavailable") is not None else "minAvailable"
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
