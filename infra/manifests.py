"""Declared Kubernetes resources as plain manifests (what the API server would receive), and the
views tests, ``tff-k8s render`` and the policy pack read them through: by cluster, by Pod spec."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from infra.clusters import HUB, PROVIDER_TYPE, cluster_of_provider
from infra.declared import MockedRun, Resource

KUBERNETES_PREFIX = "kubernetes:"
_WORKLOAD_TEMPLATES = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def is_kubernetes(resource: Resource) -> bool:
    return resource.type.startswith(KUBERNETES_PREFIX)


def to_manifest(resource: Resource) -> dict[str, Any]:
    """apiVersion, kind, metadata, then the rest: the inputs are already the API's camelCase shape."""
    if not is_kubernetes(resource):
        raise ValueError(f"{resource.type} {resource.name} is not a Kubernetes object")
    inputs = dict(resource.inputs)
    head: dict[str, Any] = {k: inputs.pop(k) for k in ("apiVersion", "kind", "metadata") if k in inputs}
    return {**head, **dict(sorted(inputs.items()))}


def manifests(resources: Iterable[Resource]) -> list[dict[str, Any]]:
    return [to_manifest(r) for r in resources if is_kubernetes(r)]


def by_cluster(run: MockedRun) -> dict[str, list[Resource]]:
    """Cluster name (``hub`` or a silo's name) -> the Kubernetes resources declared on its provider.
    A resource on no provider of ours (the default provider) is a bug: it raises."""
    # "": a resource made by hand, not registered (a real run always names a provider, a default one too)
    providers = {"": HUB} | {p.urn: cluster_of_provider(p.name) for p in run.of_type(PROVIDER_TYPE)}
    clusters: dict[str, list[Resource]] = {}
    for r in run.resources:
        if not is_kubernetes(r):
            continue
        urn = r.provider.rsplit("::", 1)[0]
        if urn not in providers:
            raise LookupError(f"{r.type} {r.name} is on provider {r.provider!r}, not one of this stack's clusters")
        clusters.setdefault(providers[urn], []).append(r)
    return clusters


def pod_spec(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The Pod spec a manifest runs (a Pod's own, a workload's template), or None."""
    if manifest["kind"] == "Pod":
        return manifest["spec"]
    if manifest["kind"] in _WORKLOAD_TEMPLATES:
        return manifest["spec"]["template"]["spec"]
    return None


def pod_labels(manifest: dict[str, Any]) -> dict[str, str]:
    if manifest["kind"] == "Pod":
        return manifest["metadata"].get("labels", {})
    return manifest["spec"]["template"]["metadata"].get("labels", {})
