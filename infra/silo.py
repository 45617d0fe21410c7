"""One silo of a cross-silo stack, in its own cluster: its namespace and budget, network isolation (DNS
and the hub's address only), its federation config and its own client certificate, and its clients."""

from __future__ import annotations

import pulumi

from infra.clients import FederationClients
from infra.config_objects import ConfigObjects
from infra.labels import Labels
from infra.meta import child
from infra.namespace import FederationNamespace
from infra.network import NetworkIsolation, silo_egress
from infra.pki import SiloMaterial
from infra.quota import Workloads
from infra.stack_inputs import Credentials
from infra.stack_schema import Silo, StackConfig


class FederationSilo(pulumi.ComponentResource):
    namespace: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        cfg: StackConfig,
        silo: Silo,
        material: SiloMaterial,
        auth: dict[str, pulumi.Output[str]],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        """``cfg`` is the whole stack's; ``material`` the silo's CA, certificate and key (infra/pki.py);
        ``auth`` the bearer token, when the federation uses one."""
        super().__init__("tff-k8s:silo:FederationSilo", name, None, opts)
        site = cfg.for_silo(silo)
        labels = Labels(cfg.deployment.instance)
        workloads = Workloads(server=False, data_claim=silo.data.pvc is not None)
        ns = FederationNamespace(
            f"{name}-namespace", site.deployment, labels, workloads, site=silo.name, opts=child(self)
        )
        self.namespace = ns.name
        NetworkIsolation(
            f"{name}-network",
            site,
            labels,
            ns.name,
            silo_egress(cfg, silo, labels),
            metrics=False,
            site=silo.name,
            opts=child(self),
        )
        objects = ConfigObjects(
            f"{name}-config",
            site,
            Credentials(auth=auth, client_tls=material.tls),
            labels,
            ns.name,
            site=silo.name,
            opts=child(self),
        )
        FederationClients(
            f"{name}-clients",
            site,
            labels,
            ns.name,
            objects.config_map,
            objects.client_tls_secret,
            objects.auth_secret,
            budget=ns.budget,
            secrets_digest=objects.client_secrets_digest,
            task_map=objects.task_config_map,
            task=objects.task,
            site=silo.name,
            data_claim=silo.data.pvc,
            opts=child(self),
        )
        self.register_outputs({"namespace": self.namespace})
