"""Read the stack's Pulumi config: the two structured keys and the secrets the federation needs.

Secrets are read with ``get_secret`` so they stay encrypted in state; a secret the federation config
calls for but the stack lacks fails here, before any resource is declared, naming the key to set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi

from infra.stack_config import StackConfig, StackConfigError, parse

DEPLOYMENT_KEY = "deployment"
FEDERATION_KEY = "federation"

# Stack secret -> file name inside the Secret it lands in (the mounted file is renamed to the
# basename the federation config names, see infra/mounts.py).
AUTH_TOKEN = "authToken"
CA_CERT, CERT, KEY = "ca.crt", "tls.crt", "tls.key"
SERVER_TLS_SECRETS = {"tlsCaCert": CA_CERT, "tlsServerCert": CERT, "tlsServerKey": KEY}
CLIENT_MTLS_SECRETS = {"tlsClientCert": CERT, "tlsClientKey": KEY}
SECRET_KEYS = (AUTH_TOKEN, *SERVER_TLS_SECRETS, *CLIENT_MTLS_SECRETS)


@dataclass(frozen=True)
class Credentials:
    """Secret material, as secret Outputs, for each Secret the program creates (empty: not needed)."""

    auth: dict[str, pulumi.Output[str]] = field(default_factory=dict)
    server_tls: dict[str, pulumi.Output[str]] = field(default_factory=dict)
    client_tls: dict[str, pulumi.Output[str]] = field(default_factory=dict)


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


def read_stack_config(config: pulumi.Config) -> StackConfig:
    return parse(_mapping(config, DEPLOYMENT_KEY), _mapping(config, FEDERATION_KEY))


def read_credentials(config: pulumi.Config, cfg: StackConfig) -> Credentials:
    security = cfg.federation.security
    wanted: list[tuple[str, str, str]] = []  # (stack secret, target, why)
    if security.token_file:
        wanted.append((AUTH_TOKEN, "auth", "federation.security.token_file is set"))
    if security.tls:
        wanted += [(k, "server_tls", "federation.security.tls is true") for k in SERVER_TLS_SECRETS]
    if security.mutual_tls:
        wanted += [(k, "client_tls", "federation.security.mutual_tls is true") for k in CLIENT_MTLS_SECRETS]
    read = {key: config.get_secret(key) for key, _, _ in wanted}
    values = {key: value for key, value in read.items() if value is not None}
    missing = [
        f"{config.name}:{key}: missing stack secret ({why}): run "
        f"`pulumi config set --secret {config.name}:{key} <value>`"
        for key, _, why in wanted
        if key not in values
    ]
    if missing:
        raise StackConfigError("invalid stack config:\n  " + "\n  ".join(missing))
    auth = {"token": values[AUTH_TOKEN]} if security.token_file else {}
    server_tls = {SERVER_TLS_SECRETS[k]: values[k] for k in SERVER_TLS_SECRETS if k in values}
    client_tls = {CLIENT_MTLS_SECRETS[k]: values[k] for k in CLIENT_MTLS_SECRETS if k in values}
    if security.tls:
        client_tls[CA_CERT] = values["tlsCaCert"]
    return Credentials(auth=auth, server_tls=server_tls, client_tls=client_tls)
