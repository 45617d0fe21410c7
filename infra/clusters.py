"""Which cluster each resource goes to: one ``kubernetes.Provider`` per cluster, named here, and the
views that group a mocked run's resources (or manifests) by cluster. The hub's provider keeps the name
a single-cluster stack's provider always had, so a stack that gains silos keeps its resources."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from infra.mocked import MockedRun, Resource, run_program

HUB = "hub"
PROVIDER_TYPE = "pulumi:providers:kubernetes"
_PREFIX = "kubernetes"


def provider_name(cluster: str) -> str:
    return _PREFIX if cluster == HUB else f"{_PREFIX}-{cluster}"


def cluster_of_provider(name: str) -> str:
    return HUB if name == _PREFIX else name.removeprefix(f"{_PREFIX}-")


def by_cluster(run: MockedRun) -> dict[str, list[Resource]]:
    """Cluster name (``hub`` or a silo's name) -> the Kubernetes resources declared on its provider.
    A resource on no provider of ours (the default provider) is a bug: it raises."""
    from infra.manifests import is_kubernetes

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


def cluster_manifests(
    stack: str,
    *,
    overrides: Mapping[str, Any] | None = None,
    secrets: Mapping[str, str] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Cluster name -> the manifests ``stack`` declares on it, under mocks, with the stack ``secrets``
    given (e.g. real test certificates, ``{"tff-k8s:tlsCaCert": pem, ...}``) written into the Secrets as
    they are (unredacted: for tests only; ``tff-k8s render`` redacts)."""
    from infra.manifests import to_manifest

    run = run_program(stack, overrides=overrides, secrets=secrets)
    return {cluster: [to_manifest(r) for r in resources] for cluster, resources in by_cluster(run).items()}
