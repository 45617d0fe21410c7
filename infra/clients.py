"""The client trainers: their ServiceAccount, the Deployment that dials the server, and its PodDisruptionBudget."""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_kubernetes as k8s

from infra import layout
from infra.config_objects import pod_annotations
from infra.labels import CLIENT, Labels
from infra.meta import child, logical, object_meta
from infra.mounts import VolumeSources, volumes_and_mounts
from infra.pod_spec import federation_container, federation_pod_spec
from infra.stack_schema import StackConfig
from infra.task_bundle import TaskBundle

core, apps, meta_v1 = k8s.core.v1, k8s.apps.v1, k8s.meta.v1


class FederationClients(pulumi.ComponentResource):
    deployment_name: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        cfg: StackConfig,
        labels: Labels,
        namespace: pulumi.Input[str],
        config_map: pulumi.Input[str],
        tls_secret: pulumi.Input[str] | None,
        auth_secret: pulumi.Input[str] | None,
        budget: Sequence[pulumi.Resource] = (),
        secrets_digest: pulumi.Output[str] | None = None,
        task_map: pulumi.Input[str] | None = None,
        task: TaskBundle | None = None,
        *,
        site: str = "",
        data_claim: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        """The clients dial ``federation.client.server_address`` (the Service's DNS name in one cluster, the
        hub's public address in a silo); ``data_claim`` holds a silo's own data."""
        super().__init__("tff-k8s:clients:FederationClients", name, None, opts)
        d, fed = cfg.deployment, cfg.federation
        c = d.clients
        meta, selector = labels.of(CLIENT), labels.selector(CLIENT)
        account = core.ServiceAccount(
            logical(site, c.name),
            metadata=object_meta(c.name, namespace, meta),
            automount_service_account_token=False,
            opts=child(self),
        )
        volumes, mounts = volumes_and_mounts(
            fed,
            "client",
            VolumeSources(
                config_map=config_map,
                tmp_size=c.tmp_size,
                tls_secret=tls_secret,
                auth_secret=auth_secret,
                task_config_map=task_map,
                task_paths=task.paths if task is not None else None,
                data_claim=data_claim,
            ),
        )
        container = federation_container(
            "client",
            image=d.image.ref,
            pull_policy=d.image.pull_policy,
            uid=d.run_as_user,
            resources=c.resources,
            ports={"health": fed.client.health_port},
            probe_port=fed.client.health_port,
            startup_budget_s=fed.server.tff_startup_timeout_s,
            mounts=mounts,
            env=layout.client_env(fed.client.server_address),
        )
        spread = core.TopologySpreadConstraintArgs(
            max_skew=1,
            topology_key=c.topology_key,
            when_unsatisfiable="ScheduleAnyway",
            label_selector=meta_v1.LabelSelectorArgs(match_labels=selector),
        )
        deployment = apps.Deployment(
            logical(site, c.name),
            metadata=object_meta(c.name, namespace, meta),
            spec=apps.DeploymentSpecArgs(
                replicas=c.replicas,
                selector=meta_v1.LabelSelectorArgs(match_labels=selector),
                strategy=apps.DeploymentStrategyArgs(
                    type="RollingUpdate",
                    rolling_update=apps.RollingUpdateDeploymentArgs(
                        max_surge=c.max_surge, max_unavailable=c.max_unavailable
                    ),
                ),
                template=core.PodTemplateSpecArgs(
                    # A changed template rolls the clients: the hashes of the secrets and the task they read at start.
                    metadata=meta_v1.ObjectMetaArgs(
                        labels=meta,
                        annotations=pod_annotations(secrets_digest, task),
                    ),
                    spec=federation_pod_spec(
                        container,
                        service_account=account.metadata.name,
                        uid=d.run_as_user,
                        volumes=volumes,
                        pull_secrets=d.image.pull_secrets,
                        topology_spread_constraints=[spread],
                    ),
                ),
            ),
            opts=child(self, depends_on=list(budget)),
        )
        # maxUnavailable >= 1, not a minAvailable floor: a floor as high as replicas (dev: 3 of 3) let no
        # node drain evict anything, so drains hung. AlwaysAllow: clients that are not Ready (e.g. while
        # the server restarts, readiness means "joined") can always be evicted, budget or not.
        k8s.policy.v1.PodDisruptionBudget(
            logical(site, c.name),
            metadata=object_meta(c.name, namespace, meta),
            spec=k8s.policy.v1.PodDisruptionBudgetSpecArgs(
                max_unavailable=c.max_disrupted,
                unhealthy_pod_eviction_policy="AlwaysAllow",
                selector=meta_v1.LabelSelectorArgs(match_labels=selector),
            ),
            opts=child(self),
        )
        self.deployment_name = deployment.metadata.name
        self.register_outputs({"deployment_name": self.deployment_name})
