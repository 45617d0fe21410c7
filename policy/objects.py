"""What the policy checks read in a Kubernetes object: its kind, where it is, the Pod specs it runs,
their containers and labels.

Each reader takes what Pulumi hands a policy (the resource's camelCase inputs, as plain mappings or
pulumi-policy's unknown-checking proxies, which are ``Mapping``/``Sequence`` but not ``dict``/``list``)
and tolerates any shape: a missing or malformed field reads as None or empty. No Pulumi imported here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

RECOMMENDED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
)
COMPONENT_LABEL = "app.kubernetes.io/component"

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


def is_map(value: Any) -> bool:
    return isinstance(value, Mapping)


def is_seq(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def lookup(obj: Any, *path: str) -> Any:
    """``obj[path[0]][path[1]]...``, or None where a step is missing or not a mapping."""
    for key in path:
        if not is_map(obj) or key not in obj:
            return None
        obj = obj[key]
    return obj


def items_of(value: Any) -> list[Any]:
    return list(value) if is_seq(value) else []


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
    meta = lookup(props, "metadata") or {}
    name = lookup(meta, "name") or "<unnamed>"
    namespace = lookup(meta, "namespace")
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
        spec = lookup(props, *path)
        if not is_map(spec):
            return []
        labels = lookup(props, *path[:-1], "metadata", "labels")
        return [PodSpec(".".join(path), labels if is_map(labels) else {}, spec)]
    return list(_search(lookup(props, "spec"), "spec", {}))


def _search(node: Any, path: str, labels: Mapping[str, Any]) -> Iterator[PodSpec]:
    if is_map(node):
        if is_seq(node.get("containers")):
            yield PodSpec(path, labels, node)
            return
        here = lookup(node, "metadata", "labels")
        for key in node:
            yield from _search(node[key], f"{path}.{key}", here if is_map(here) else labels)
    elif is_seq(node):
        for i, item in enumerate(node):
            yield from _search(item, f"{path}[{i}]", labels)


_CONTAINER_FIELDS = {"initContainers": "initContainer", "containers": "container"}
_EPHEMERAL = {"ephemeralContainers": "ephemeralContainer"}


def containers(spec: Mapping[str, Any], *, ephemeral: bool = True) -> list[tuple[str, Mapping[str, Any]]]:
    """(label, container) for each container of a Pod spec, e.g. ``("initContainer 'warmup'", {...})``."""
    fields = {**_CONTAINER_FIELDS, **(_EPHEMERAL if ephemeral else {})}
    return [
        (f"{label} {container.get('name')!r}", container)
        for field, label in fields.items()
        for container in items_of(spec.get(field))
        if is_map(container)
    ]
