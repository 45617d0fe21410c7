"""Read the stack's Pulumi config: the two structured keys and the secrets the federation needs.

Secrets are read with ``get_secret`` so they stay encrypted in state; a secret the federation config
calls for but the stack lacks fails here, before any resource is declared, naming the key to set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import pulumi

from infra.stack_config import StackConfigError, parse
from infra.stack_schema import DeploymentSettings, StackConfig

DEPLOYMENT_KEY = "deployment"
FEDERATION_KEY = "federation"

# `make up-dev` deploys the image `make images` just built under its content tag (infra/k8s.mk): this
# variable replaces deployment.image.ref for that run, on dev stacks only. prod deploys exactly the
# digest its stack file pins (written by a reviewed pull request, .github/workflows/publish.yml).
IMAGE_REF_ENV = "TFF_K8S_IMAGE_REF"
# The environment the program reads that variable from: the process's, except under Pulumi mocks
# (infra/harness/mocked.py sets its own per run, so a shell's variable never leaks into tests or renders).
ENVIRON: ContextVar[Mapping[str, str]] = ContextVar("environ", default=os.environ)

# Stack secret -> file name inside the Secret it lands in (the mounted file is renamed to the
# basename the federation config names, see infra/mounts.py).
AUTH_TOKEN = "authToken"
CA_CERT, CERT, KEY = "ca.crt", "tls.crt", "tls.key"
SERVER_TLS_SECRETS = {"tlsCaCert": CA_CERT, "tlsServerCert": CERT, "tlsServerKey": KEY}
CLIENT_MTLS_SECRETS = {"tlsClientCert": CERT, "tlsClientKey": KEY}
CA_KEY = "tlsCaKey"  # cross-silo, deployment.hub.ca secrets: signs the silos' generated certificates
SECRET_KEYS = (AUTH_TOKEN, *SERVER_TLS_SECRETS, *CLIENT_MTLS_SECRETS)


def silo_secrets(silo: str) -> dict[str, str]:
    """Stack secret -> file name of a silo's own client certificate and key."""
    return {f"{key}-{silo}": name for key, name in CLIENT_MTLS_SECRETS.items()}


def secret_keys(deployment: Mapping[str, Any] | None) -> tuple[str, ...]:
    """Every stack secret a stack with this (raw) ``tff-k8s:deployment`` could read."""
    silos = (deployment or {}).get("silos") or []
    names = [s["name"] for s in silos if isinstance(s, Mapping) and isinstance(s.get("name"), str)]
    per_silo = [key for name in names for key in silo_secrets(name)]
    return (*SECRET_KEYS, *([CA_KEY] if names else []), *per_silo)


@dataclass(frozen=True)
class Credentials:
    """Secret material, as secret Outputs, for each Secret the program creates (empty: not needed)."""

    auth: dict[str, pulumi.Output[str]] = field(default_factory=dict)
    server_tls: dict[str, pulumi.Output[str]] = field(default_factory=dict)
    client_tls: dict[str, pulumi.Output[str]] = field(default_factory=dict)
    ca_key: pulumi.Output[str] | None = None  # cross-silo: signs generated silo certificates
    silos: dict[str, dict[str, pulumi.Output[str]]] = field(default_factory=dict)  # silo -> its cert and key


def _mapping(config: pulumi.Config, key: str) -> Mapping[str, Any]:
    try:
        value = config.get_object(key)
    except Exception as exc:  # pulumi raises ConfigTypeError for malformed JSON
        raise StackConfigError(f"invalid stack config:\n  {key}: not a valid object ({exc})") from None
    if value is not None and not isinstance(value, Mapping):
        raise StackConfigError(
            f"invalid stack config:\n  {key}: must be a mapping, not {type(value).__name__}"
        )
    return value or {}


def _image_override(deployment: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = ENVIRON.get().get(IMAGE_REF_ENV, "").strip()
    if not ref:
        return deployment
    environment = deployment.get("environment", DeploymentSettings.model_fields["environment"].default)
    if environment != "dev":
        raise StackConfigError(
            f"invalid stack config:\n  {IMAGE_REF_ENV}: overrides deployment.image.ref on dev stacks only "
            f"(this stack is {environment!r}); unset it and deploy the digest the stack file pins"
        )
    image = deployment.get("image")
    return {**deployment, "image": {**(image if isinstance(image, Mapping) else {}), "ref": ref}}


def read_stack_config(config: pulumi.Config) -> StackConfig:
    raw = _mapping(config, DEPLOYMENT_KEY)
    deployment = _image_override(raw)
    try:
        return parse(deployment, _mapping(config, FEDERATION_KEY))
    except StackConfigError as exc:
        if deployment is raw:
            raise
        raise StackConfigError(f"{exc}\n  ({IMAGE_REF_ENV} set deployment.image.ref)") from None


def _wanted(cfg: StackConfig) -> list[tuple[str, str]]:
    """(stack secret, why) for every secret the stack needs."""
    security, hub = cfg.federation.security, cfg.deployment.hub
    wanted: list[tuple[str, str]] = []
    if security.token_file:
        wanted.append((AUTH_TOKEN, "federation.security.token_file is set"))
    if not cfg.cross_silo:
        if security.tls:
            wanted += [(k, "federation.security.tls is true") for k in SERVER_TLS_SECRETS]
        if security.mutual_tls:
            wanted += [(k, "federation.security.mutual_tls is true") for k in CLIENT_MTLS_SECRETS]
        return wanted
    if hub.ca == "secrets":
        wanted += [(k, "deployment.hub.ca is secrets") for k in SERVER_TLS_SECRETS]
        generated = [s.name for s in cfg.deployment.silos if s.identity.generate]
        if generated:
            wanted.append((CA_KEY, f"silos {generated} have identity.generate and deployment.hub.ca is secrets"))
    for i, silo in enumerate(cfg.deployment.silos):
        if not silo.identity.generate:
            why = f"deployment.silos.{i} ({silo.name}) has no identity.generate: its client certificate"
            wanted += [(k, why) for k in silo_secrets(silo.name)]
    return wanted


def read_credentials(config: pulumi.Config, cfg: StackConfig) -> Credentials:
    security = cfg.federation.security
    wanted = _wanted(cfg)
    read = {key: config.get_secret(key) for key, _ in wanted}
    values = {key: value for key, value in read.items() if value is not None}
    missing = [
        f"{config.name}:{key}: missing stack secret ({why}): run "
        f"`pulumi config set --secret {config.name}:{key} <value>`"
        for key, why in wanted
        if key not in values
    ]
    if missing:
        raise StackConfigError("invalid stack config:\n  " + "\n  ".join(missing))
    auth = {"token": values[AUTH_TOKEN]} if security.token_file else {}
    server_tls = {SERVER_TLS_SECRETS[k]: values[k] for k in SERVER_TLS_SECRETS if k in values}
    client_tls = {CLIENT_MTLS_SECRETS[k]: values[k] for k in CLIENT_MTLS_SECRETS if k in values}
    if security.tls and "tlsCaCert" in values:
        client_tls[CA_CERT] = values["tlsCaCert"]
    silos = {
        silo.name: {name: values[key] for key, name in silo_secrets(silo.name).items()}
        for silo in cfg.deployment.silos
        if not silo.identity.generate
    }
    if cfg.cross_silo:
        client_tls = {}  # a cross-silo hub runs no clients: each silo gets its own material (infra/pki.py)
    return Credentials(auth=auth, server_tls=server_tls, client_tls=client_tls, ca_key=values.get(CA_KEY), silos=silos)
