"""The federation's namespace and its budget: Namespace (Pod Security "restricted"), ResourceQuota, LimitRange."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from infra.labels import Labels
from infra.meta import child, logical, object_meta
from infra.quota import Workloads, container_max, quota_hard
from infra.stack_schema import DeploymentSettings

core = k8s.core.v1
POD_SECURITY = {
    f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "audit", "warn")
} | {f"pod-security.kubernetes.io/{mode}-version": "latest" for mode in ("enforce", "audit", "warn")}


class FederationNamespace(pulumi.ComponentResource):
    name: pulumi.Output[str]
    budget: list[pulumi.Resource]
    """The ResourceQuota and LimitRange: workloads depend on them, so a raised quota or changed limits
    are in place before the Pods (and claim) that need them are created or updated, and the workloads
    are deleted before their budget on destroy."""

    def __init__(
        self,
        name: str,
        d: DeploymentSettings,
        labels: Labels,
        workloads: Workloads | None = None,
        *,
        site: str = "",
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("tff-k8s:namespace:FederationNamespace", name, None, opts)
        workloads = workloads or Workloads()
        ns_labels = labels.of("namespace")
        namespace = core.Namespace(
            logical(site, d.namespace),
            metadata=object_meta(d.namespace, None, {**ns_labels, **POD_SECURITY}),
            opts=child(self),
        )
        self.name = namespace.metadata.name
        quota = core.ResourceQuota(
            logical(site, f"{d.instance}-quota"),
            metadata=object_meta(f"{d.instance}-quota", self.name, ns_labels),
            spec=core.ResourceQuotaSpecArgs(hard=quota_hard(d, workloads)),
            opts=child(self),
        )
        default = d.clients.resources if workloads.clients else d.server.resources
        limits = core.LimitRange(
            logical(site, f"{d.instance}-limits"),
            metadata=object_meta(f"{d.instance}-limits", self.name, ns_labels),
            spec=core.LimitRangeSpecArgs(
                limits=[
                    core.LimitRangeItemArgs(
                        type="Container",
                        default={"cpu": default.limits.cpu, "memory": default.limits.memory},
                        default_request={"cpu": default.requests.cpu, "memory": default.requests.memory},
                        max=container_max(d, workloads),
                    )
                ]
            ),
            opts=child(self),
        )
        self.budget = [quota, limits]
        self.register_outputs({"name": self.name})
