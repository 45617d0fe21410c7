"""Which cluster each resource goes to: one ``kubernetes.Provider`` per cluster, named here. The hub's
provider keeps the name a single-cluster stack's provider always had, so a stack that gains silos keeps
its resources. (The view that groups a run's resources by cluster is infra/manifests.py's ``by_cluster``.)"""

from __future__ import annotations

HUB = "hub"
PROVIDER_TYPE = "pulumi:providers:kubernetes"
_PREFIX = "kubernetes"


def provider_name(cluster: str) -> str:
    return _PREFIX if cluster == HUB else f"{_PREFIX}-{cluster}"


def cluster_of_provider(name: str) -> str:
    return HUB if name == _PREFIX else name.removeprefix(f"{_PREFIX}-")
