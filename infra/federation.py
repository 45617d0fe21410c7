"""The whole federation on one namespace: the component a stack instantiates."""

from __future__ import annotations

import pulumi

from infra.clients import FederationClients
from infra.config_objects import ConfigObjects
from infra.labels import Labels
from infra.meta import child
from infra.namespace import FederationNamespace
from infra.network import NetworkIsolation, hub_ingress, in_cluster_link
from infra.quota import Workloads
from infra.server import FederationServer
from infra.stack_inputs import Credentials
from infra.stack_schema import StackConfig
from services.common.config import SiloIdentity


class Federation(pulumi.ComponentResource):
    namespace: pulumi.Output[str]
    server_address: pulumi.Output[str]
    server_pod: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        cfg: StackConfig,
        creds: Credentials,
        opts: pulumi.ResourceOptions | None = None,
        *,
        allowlist: pulumi.Output[tuple[SiloIdentity, ...]] | None = None,
    ) -> None:
        """One cluster: the server and its clients. Cross-silo (``cfg.deployment.silos``): the hub, the
        server alone, exposed to the silos, accepting the certificates in ``allowlist``."""
        super().__init__("tff-k8s:federation:Federation", name, None, opts)
        labels = Labels(cfg.deployment.instance)  # computed once; every selector derives from it
        hub = cfg.deployment.hub
        workloads = Workloads(
            clients=not cfg.cross_silo,
            public_service=hub.service_type if cfg.cross_silo else None,
            data_claim=cfg.deployment.data is not None,
        )
        ns = FederationNamespace(f"{name}-namespace", cfg.deployment, labels, workloads, opts=child(self))
        self.namespace = ns.name
        link = hub_ingress(cfg, labels) if cfg.cross_silo else in_cluster_link(cfg, labels)
        NetworkIsolation(f"{name}-network", cfg, labels, ns.name, link, opts=child(self))
        objects = ConfigObjects(
            f"{name}-config", cfg, creds, labels, ns.name, allowlist=allowlist, opts=child(self)
        )
        server = FederationServer(
            f"{name}-server",
            cfg,
            labels,
            ns.name,
            objects.config_map,
            objects.server_tls_secret,
            objects.auth_secret,
            budget=ns.budget,
            secrets_digest=objects.server_secrets_digest,
            task_map=objects.task_config_map,
            task=objects.task,
            data_claim=cfg.deployment.data.claim if cfg.deployment.data is not None else None,
            opts=child(self),
        )
        if not cfg.cross_silo:
            self._clients(name, cfg, labels, ns, objects)
        port = cfg.federation.server.port
        self.server_address = pulumi.Output.concat(server.service_name, ".", ns.name, ".svc:", str(port))
        self.server_pod = server.pod_name
        self.register_outputs({"namespace": self.namespace, "server_address": self.server_address})

    def _clients(
        self, name: str, cfg: StackConfig, labels: Labels, ns: FederationNamespace, objects: ConfigObjects
    ) -> None:
        FederationClients(
            f"{name}-clients",
            cfg,
            labels,
            ns.name,
            objects.config_map,
            objects.client_tls_secret,
            objects.auth_secret,
            budget=ns.budget,
            secrets_digest=objects.client_secrets_digest,
            task_map=objects.task_config_map,
            task=objects.task,
            data_claim=cfg.deployment.data.claim if cfg.deployment.data is not None else None,
            opts=child(self),
        )
