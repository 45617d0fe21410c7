"""The federation server: its ServiceAccount, checkpoint claim, Pod and the Service clients dial."""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_kubernetes as k8s

from infra.config_objects import SECRETS_DIGEST_ANNOTATION, TASK_DIGEST_ANNOTATION, pod_annotations
from infra.labels import SERVER, Labels
from infra.meta import child, object_meta
from infra.mounts import VolumeSources, volumes_and_mounts
from infra.pod_spec import federation_container, federation_pod_spec
from infra.stack_schema import StackConfig
from infra.task_bundle import TaskBundle

core = k8s.core.v1


class FederationServer(pulumi.ComponentResource):
    service_name: pulumi.Output[str]
    pod_name: pulumi.Output[str]

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
        data_claim: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        """``data_claim``: the clients' data claim, mounted read-only when the server evaluates on part of it
        (federation.data.server_eval_path)."""
        super().__init__("tff-k8s:server:FederationServer", name, None, opts)
        d, fed = cfg.deployment, cfg.federation
        s = d.server
        meta = labels.of(SERVER)
        account = core.ServiceAccount(
            s.name,
            metadata=object_meta(s.name, namespace, meta),
            automount_service_account_token=False,
            opts=child(self),
        )
        claim = core.PersistentVolumeClaim(
            f"{s.name}-checkpoints",
            # kind's default class binds on first consumer: don't wait for Bound before the Pod exists.
            metadata=object_meta(f"{s.name}-checkpoints", namespace, meta, {"pulumi.com/skipAwait": "true"}),
            spec=core.PersistentVolumeClaimSpecArgs(
                access_modes=["ReadWriteOnce"],
                storage_class_name=s.storage.storage_class,
                resources=core.VolumeResourceRequirementsArgs(requests={"storage": s.storage.size}),
            ),
            opts=child(self, depends_on=list(budget)),  # counted by the quota
        )
        volumes, mounts = volumes_and_mounts(
            fed,
            "server",
            VolumeSources(
                config_map=config_map,
                tmp_size=s.tmp_size,
                checkpoints_claim=claim.metadata.name,
                tls_secret=tls_secret,
                auth_secret=auth_secret,
                data_claim=data_claim,
                task_config_map=task_map,
                task_paths=task.paths if task is not None else None,
            ),
        )
        container = federation_container(
            "server",
            image=d.image.ref,
            pull_policy=d.image.pull_policy,
            uid=d.run_as_user,
            resources=s.resources,
            ports={"grpc": fed.server.port, "metrics": fed.server.metrics_port, "health": fed.server.health_port},
            probe_port=fed.server.health_port,
            startup_budget_s=fed.server.tff_startup_timeout_s,
            mounts=mounts,
        )
        # A bare Pod is not restarted by an annotation change, only by replacement: replace it when the
        # secret material or the task it read at start has changed (config_objects.secrets_digest).
        digest = pod_annotations(secrets_digest, task)
        pod = core.Pod(
            s.name,
            metadata=object_meta(s.name, namespace, meta, digest),
            spec=federation_pod_spec(
                container,
                service_account=account.metadata.name,
                uid=d.run_as_user,
                volumes=volumes,
                pull_secrets=d.image.pull_secrets,
                restart_policy="Always",
            ),
            # The Pod has a fixed name (it is an address in logs and docs): replace it by delete-then-create.
            opts=child(
                self,
                delete_before_replace=True,
                depends_on=list(budget),
                replace_on_changes=[
                    f'metadata.annotations["{key}"]' for key in (SECRETS_DIGEST_ANNOTATION, TASK_DIGEST_ANNOTATION)
                ],
            ),
        )
        service = core.Service(
            s.name,
            metadata=object_meta(s.name, namespace, meta),
            spec=core.ServiceSpecArgs(
                type="ClusterIP",
                selector=labels.selector(SERVER),
                ports=[
                    core.ServicePortArgs(
                        name="grpc",
                        port=fed.server.port,
                        target_port=fed.server.port,
                        protocol="TCP",
                        app_protocol="grpc",
                    ),
                    core.ServicePortArgs(
                        name="metrics",
                        port=fed.server.metrics_port,
                        target_port=fed.server.metrics_port,
                        protocol="TCP",
                    ),
                ],
            ),
            opts=child(self),
        )
        if cfg.cross_silo:
            self._public_service(cfg, labels, namespace, meta)
        self.service_name = service.metadata.name
        self.pod_name = pod.metadata.name
        self.register_outputs({"service_name": self.service_name, "pod_name": self.pod_name})

    def _public_service(
        self, cfg: StackConfig, labels: Labels, namespace: pulumi.Input[str], meta: dict[str, str]
    ) -> None:
        """Cross-silo: the gRPC port (only) for the silos, as a Layer-4 Service, so the client
        certificates reach the server. ``Local`` keeps the silos' source addresses, which the
        NetworkPolicy's ipBlocks and loadBalancerSourceRanges match."""
        hub, port = cfg.deployment.hub, cfg.federation.server.port
        name = f"{cfg.deployment.server.name}-public"
        balanced = hub.service_type == "LoadBalancer"
        core.Service(
            name,
            metadata=object_meta(name, namespace, meta, hub.annotations or None),
            spec=core.ServiceSpecArgs(
                type=hub.service_type,
                selector=labels.selector(SERVER),
                external_traffic_policy="Local",
                load_balancer_source_ranges=list(hub.silo_cidrs) if balanced and hub.silo_cidrs else None,
                ports=[
                    core.ServicePortArgs(
                        name="grpc",
                        port=hub.port if balanced else port,
                        target_port=port,
                        node_port=hub.node_port,
                        protocol="TCP",
                        app_protocol="grpc",
                    )
                ],
            ),
            opts=child(self),
        )
