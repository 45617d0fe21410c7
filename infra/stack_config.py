"""Parse the stack config: the two structured Pulumi config keys, ``tff-k8s:deployment`` and
``tff-k8s:federation``, into the one typed :class:`~infra.stack_schema.StackConfig`.

:func:`parse` fails with :class:`StackConfigError` naming each bad key and the fix, before the program
declares any resource: the schema's own checks (infra/stack_schema.py), then those across fields, here
and, for a cross-silo stack, in infra/cross_silo_checks.py. Imports pydantic only (no Pulumi, no
TensorFlow).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from infra import layout
from infra.cross_silo_checks import cross_silo_problems
from infra.image_ref import check_image
from infra.stack_schema import StackConfig
from services.common import config
from services.common.config import from_mapping

_WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]"}


class StackConfigError(ValueError):
    """Invalid stack config. The message names each bad key (``deployment.clients.replicas: ...``)."""


def _cross_checks(cfg: StackConfig) -> list[tuple[str, str]]:
    d, fed = cfg.deployment, cfg.federation
    training, clients = fed.training, d.clients
    problems: list[tuple[str, str]] = []
    if cfg.cross_silo:
        problems += cross_silo_problems(cfg)
    elif clients.replicas < training.min_clients:
        problems.append(
            (
                "deployment.clients.replicas",
                f"{clients.replicas} is below federation.training.min_clients ({training.min_clients}); "
                "no round could start: raise replicas or lower min_clients",
            )
        )
    if not cfg.cross_silo and clients.max_disrupted > clients.replicas:
        problems.append(
            ("deployment.clients.max_disrupted", f"{clients.max_disrupted} exceeds replicas ({clients.replicas})")
        )
    if fed.server.host not in _WILDCARD_HOSTS:
        problems.append(
            ("federation.server.host", f"{fed.server.host!r}: in a Pod the server must bind 0.0.0.0")
        )
    if fed.client.health_port == 0:
        problems.append(("federation.client.health_port", "0 turns off the health server the probes need"))
    if fed.data.source == "npz":
        problems.append(
            ("federation.data.source", "'npz' needs a data volume this program does not mount; use digits")
        )
    problems += layout.mount_problems(fed)
    if d.environment == "prod":
        try:
            check_image(d.image.ref, require_digest=True)
        except ValueError as exc:
            problems.append(("deployment.image.ref", str(exc)))
        if not fed.security.tls:
            problems.append(("federation.security.tls", "prod requires TLS: set it to true"))
        if not fed.security.token_file:
            problems.append(("federation.security.token_file", "prod requires client auth: set a token path"))
    return problems


# Keys earlier versions had, and what replaced them.
_REPLACED = {
    "deployment.images": "replaced by deployment.image: one image serves both roles; set deployment.image.ref "
    "(and deployment.image.pull_policy) instead",
    "deployment.clients.min_available": "replaced by deployment.clients.max_disrupted (the PodDisruptionBudget's "
    "maxUnavailable, at least 1): a floor as high as replicas let no node drain finish; set how many clients "
    "a drain may evict at once, e.g. replicas - min_available",
}


def _pydantic_problems(err: ValidationError) -> list[tuple[str, str]]:
    return config.problems(err, schema="infra/stack_schema.py or services/common/config/", replaced=_REPLACED)


def _fail(problems: list[tuple[str, str]]) -> StackConfigError:
    return StackConfigError("invalid stack config:\n  " + "\n  ".join(f"{k}: {m}" for k, m in problems))


def parse(deployment: Mapping[str, Any] | None, federation: Mapping[str, Any] | None) -> StackConfig:
    """Validate both sections; the federation's client.server_address becomes the Service address."""
    federation = dict(federation or {})
    problems: list[tuple[str, str]] = []
    client = federation.get("client")
    if isinstance(client, Mapping) and "server_address" in client:
        problems.append(
            (
                "federation.client.server_address",
                "set by the program to the Service's DNS address; remove it from stack config",
            )
        )
        federation["client"] = {k: v for k, v in client.items() if k != "server_address"}
    try:
        cfg = StackConfig.model_validate({"deployment": dict(deployment or {}), "federation": federation})
    except ValidationError as err:
        raise _fail(problems + _pydantic_problems(err)) from None
    if problems := problems + _cross_checks(cfg):
        raise _fail(problems)
    dumped = cfg.federation.model_dump(mode="json")
    dumped["client"]["server_address"] = cfg.server_address
    return cfg.model_copy(update={"federation": from_mapping(dumped)})
