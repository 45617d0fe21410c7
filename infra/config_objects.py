"""What the Pods read: the federation config (a ConfigMap) and the secret material (Secrets).

The ConfigMap's name carries a hash of its content and the map is immutable, so a config change
creates a new map and replaces the Pods that mount it, instead of editing a file under a running
server. A Secret is updated in place when its material rotates, and the Pods read theirs only at
start: each workload's Pod template carries a SHA-256 of the material it mounts
(:data:`SECRETS_DIGEST_ANNOTATION`), so a rotation changes the template and rolls the Pods."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import pulumi
import pulumi_kubernetes as k8s

from infra import layout
from infra.labels import Labels
from infra.meta import child, logical, object_meta
from infra.stack_inputs import Credentials
from infra.stack_schema import StackConfig
from infra.task_bundle import TaskBundle, read_bundle
from services.common.config import FederationConfig, SiloIdentity

core = k8s.core.v1


SECRETS_DIGEST_ANNOTATION = "tff-k8s/secrets-sha256"
# SHA-256 of a declarative task's files (infra/task_bundle.py): a new model rolls the Pods, no image rebuild.
TASK_DIGEST_ANNOTATION = "tff-k8s/task-sha256"


def secrets_digest(material: Mapping[str, Mapping[str, pulumi.Output[str]]]) -> pulumi.Output[str] | None:
    """SHA-256 over ``material`` (Secret name -> key -> value), or None when there is none.

    An Output derived from the secret Outputs inside Pulumi (no value is ever read in plain text outside
    it); only the one-way hash leaves, never a value. It is explicitly unsecreted: a secret anywhere
    in a Pod's metadata or a Deployment's spec makes Pulumi mark that whole top-level field secret,
    which would hide every change to the server Pod's metadata and the client Deployment's spec in
    previews, state and `tff-k8s render`. (Of random material, such as keys and a token made with
    `openssl rand`, the hash reveals nothing; a guessable token could be confirmed against it, one more
    reason the docs make the token random.)"""
    entries = sorted((secret, key, value) for secret, data in material.items() for key, value in data.items())
    if not entries:
        return None

    def digest(values: list[str]) -> str:
        named = [[secret, key, value] for (secret, key, _), value in zip(entries, values, strict=True)]
        return hashlib.sha256(json.dumps(named).encode()).hexdigest()

    return pulumi.Output.unsecret(pulumi.Output.all(*(value for _, _, value in entries)).apply(digest))


def for_pods(fed: FederationConfig, task: TaskBundle | None) -> FederationConfig:
    """``fed`` as the Pods read it: ``task.source`` at the mounted task file (not the project's path)."""
    if task is None:
        return fed
    return fed.model_copy(update={"task": fed.task.model_copy(update={"source": task.mounted_task_file,
                                                                     "digest": task.digest})})


def pod_annotations(
    secrets_digest: pulumi.Output[str] | None, task: TaskBundle | None
) -> dict[str, pulumi.Input[str]] | None:
    """A Pod's annotations: the digests of what it reads at start (a change rolls or replaces the Pods)."""
    found: dict[str, pulumi.Input[str]] = {}
    if secrets_digest is not None:
        found[SECRETS_DIGEST_ANNOTATION] = secrets_digest
    if task is not None:
        found[TASK_DIGEST_ANNOTATION] = task.digest
    return found or None


def config_map_name(cfg: StackConfig, text: str | None = None) -> str:
    """``<instance>-federation-<hash of the config text>`` (default text: the stack's federation config)."""
    if text is None:
        text = for_pods(cfg.federation, read_bundle(cfg.federation.task)).to_yaml()
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{cfg.deployment.instance}-federation-{digest}"


def task_map_name(cfg: StackConfig, task: TaskBundle) -> str:
    """``<instance>-task-<hash of the task's files>``: immutable, like the federation config's map."""
    return f"{cfg.deployment.instance}-task-{task.digest[:10]}"


def with_allowlist(fed: FederationConfig, silos: tuple[SiloIdentity, ...]) -> FederationConfig:
    """``fed`` with ``security.silos`` set: the server's config in a cross-silo stack."""
    return fed.model_copy(update={"security": fed.security.model_copy(update={"silos": tuple(silos)})})


class ConfigObjects(pulumi.ComponentResource):
    config_map: pulumi.Output[str]
    task_config_map: pulumi.Output[str] | None  # a declarative task's files (None: digits or a module task)
    task: TaskBundle | None
    auth_secret: pulumi.Output[str] | None
    server_tls_secret: pulumi.Output[str] | None
    client_tls_secret: pulumi.Output[str] | None
    server_secrets_digest: pulumi.Output[str] | None  # of what the server mounts: token, server TLS
    client_secrets_digest: pulumi.Output[str] | None  # of what a client mounts: token, CA (+ mTLS)

    def __init__(
        self,
        name: str,
        cfg: StackConfig,
        creds: Credentials,
        labels: Labels,
        namespace: pulumi.Input[str],
        *,
        site: str = "",
        allowlist: pulumi.Output[tuple[SiloIdentity, ...]] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        """``allowlist``: the silos the server accepts (cross-silo hub), written into ``security.silos``."""
        super().__init__("tff-k8s:config_objects:ConfigObjects", name, None, opts)
        self._labels, self._namespace, self._site = labels.of("config"), namespace, site
        d = cfg.deployment
        task = read_bundle(cfg.federation.task)  # checked by parse; read again for its content
        fed = for_pods(cfg.federation, task)
        text: pulumi.Input[str] = fed.to_yaml()
        map_name: pulumi.Input[str] = config_map_name(cfg)
        if allowlist is not None:
            text = allowlist.apply(lambda silos: with_allowlist(fed, silos).to_yaml())
            map_name = text.apply(lambda t: config_map_name(cfg, t))
        self.config_map = core.ConfigMap(
            logical(site, "federation-config"),
            metadata=object_meta(map_name, namespace, self._labels),
            data={layout.CONFIG_KEY: text},
            immutable=True,
            opts=child(self),
        ).metadata.name
        self.task, self.task_config_map = task, None
        if task is not None:
            self.task_config_map = core.ConfigMap(
                logical(site, "task"),
                metadata=object_meta(task_map_name(cfg, task), namespace, self._labels),
                data=task.text,
                binary_data=task.binary_data() or None,
                immutable=True,
                opts=child(self),
            ).metadata.name
        auth, server_tls, client_tls = f"{d.instance}-auth", f"{d.server.name}-tls", f"{d.clients.name}-tls"
        self.auth_secret = self._secret(auth, creds.auth)
        self.server_tls_secret = self._secret(server_tls, creds.server_tls)
        self.client_tls_secret = self._secret(client_tls, creds.client_tls)
        self.server_secrets_digest = secrets_digest({auth: creds.auth, server_tls: creds.server_tls})
        self.client_secrets_digest = secrets_digest({auth: creds.auth, client_tls: creds.client_tls})
        self.register_outputs({"config_map": self.config_map})

    def _secret(self, name: str, data: dict[str, pulumi.Output[str]]) -> pulumi.Output[str] | None:
        if not data:
            return None
        secret = core.Secret(
            logical(self._site, name),
            metadata=object_meta(name, self._namespace, self._labels),
            type="Opaque",
            string_data=data,
            opts=child(self, additional_secret_outputs=["data", "stringData"]),
        )
        return secret.metadata.name
