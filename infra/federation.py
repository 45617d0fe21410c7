"""The whole federation on one namespace: the component a stack instantiates."""

from __future__ import annotations

import pulumi

from infra.clients import FederationClients
from infra.config_objects import ConfigObjects
from infra.labels import Labels
from infra.meta import child
from infra.namespace import FederationNamespace
from infra.network import NetworkIsolation
from infra.server import FederationServer
from infra.stack_config import StackConfig
from infra.stack_inputs import Credentials


class Federation(pulumi.ComponentResource):
    namespace: pulumi.Output[str]
    server_address: pulumi.Output[str]
    server_pod: pulumi.Output[str]

    def __init__(
        self, name: str, cfg: StackConfig, creds: Credentials, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("tff-k8s:federation:Federation", name, None, opts)
        labels = Labels(cfg.deployment.instance)  # computed once; every selector derives from it
        ns = FederationNamespace(f"{name}-namespace", cfg.deployment, labels, opts=child(self))
        self.namespace = ns.name
        NetworkIsolation(f"{name}-network", cfg, labels, ns.name, opts=child(self))
        objects = ConfigObjects(f"{name}-config", cfg, creds, labels, ns.name, opts=child(self))
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
            opts=child(self),
        )
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
            opts=child(self),
        )
        port = cfg.federation.server.port
        self.server_address = pulumi.Output.concat(server.service_name, ".", ns.name, ".svc:", str(port))
        self.server_pod = server.pod_name
        self.register_outputs({"namespace": self.namespace, "server_address": self.server_address})
