"""What the Pods read: the federation config (a ConfigMap) and the secret material (Secrets).

The ConfigMap's name carries a hash of its content and the map is immutable, so a config change
creates a new map and replaces the Pods that mount it, instead of editing a file under a running
server."""

from __future__ import annotations

import hashlib

import pulumi
import pulumi_kubernetes as k8s

from infra import layout
from infra.labels import Labels
from infra.meta import child, object_meta
from infra.stack_config import StackConfig
from infra.stack_inputs import Credentials

core = k8s.core.v1


def config_map_name(cfg: StackConfig) -> str:
    digest = hashlib.sha256(cfg.federation.to_yaml().encode()).hexdigest()[:10]
    return f"{cfg.deployment.instance}-federation-{digest}"


class ConfigObjects(pulumi.ComponentResource):
    config_map: pulumi.Output[str]
    auth_secret: pulumi.Output[str] | None
    server_tls_secret: pulumi.Output[str] | None
    client_tls_secret: pulumi.Output[str] | None

    def __init__(
        self,
        name: str,
        cfg: StackConfig,
        creds: Credentials,
        labels: Labels,
        namespace: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("tff-k8s:config_objects:ConfigObjects", name, None, opts)
        self._labels, self._namespace = labels.of("config"), namespace
        d = cfg.deployment
        self.config_map = core.ConfigMap(
            "federation-config",
            metadata=object_meta(config_map_name(cfg), namespace, self._labels),
            data={layout.CONFIG_KEY: cfg.federation.to_yaml()},
            immutable=True,
            opts=child(self),
        ).metadata.name
        self.auth_secret = self._secret(f"{d.instance}-auth", creds.auth)
        self.server_tls_secret = self._secret(f"{d.server.name}-tls", creds.server_tls)
        self.client_tls_secret = self._secret(f"{d.clients.name}-tls", creds.client_tls)
        self.register_outputs({"config_map": self.config_map})

    def _secret(self, name: str, data: dict[str, pulumi.Output[str]]) -> pulumi.Output[str] | None:
        if not data:
            return None
        secret = core.Secret(
            name,
            metadata=object_meta(name, self._namespace, self._labels),
            type="Opaque",
            string_data=data,
            opts=child(self, additional_secret_outputs=["data", "stringData"]),
        )
        return secret.metadata.name
