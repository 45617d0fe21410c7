"""Kubernetes recommended labels, computed once per stack and shared by every resource, so that a
selector is always derived from the very labels its targets carry."""

from __future__ import annotations

from dataclasses import dataclass

NAME = "tff-k8s"
SERVER = "server"
CLIENT = "client"


@dataclass(frozen=True)
class Labels:
    instance: str

    def selector(self, component: str) -> dict[str, str]:
        """The stable subset used in selectors (never changes for a running workload)."""
        return {
            "app.kubernetes.io/name": NAME,
            "app.kubernetes.io/instance": self.instance,
            "app.kubernetes.io/component": component,
        }

    def of(self, component: str) -> dict[str, str]:
        """Every recommended label for a resource of ``component``."""
        return {
            **self.selector(component),
            "app.kubernetes.io/part-of": NAME,
            "app.kubernetes.io/managed-by": "pulumi",
        }
