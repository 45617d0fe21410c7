"""Parse the stack config: the two structured Pulumi config keys, ``tff-k8s:deployment`` and
``tff-k8s:federation``, into the one typed :class:`~infra.stack_schema.StackConfig`.

:func:`parse` fails with :class:`StackConfigError` naming each bad key and the fix, before the program
declares any resource: the schema's own checks (infra/stack_schema.py), then those across fields, here
and, for a cross-silo stack, in infra/cross_silo_checks.py. Imports pydantic only (no Pulumi, no
TensorFlow).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from infra import layout
from infra.cross_silo_checks import cross_silo_problems
from infra.image_ref import check_image
from infra.stack_schema import StackConfig
from infra.task_bundle import TaskBundleError, read_bundle
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
    if not cfg.cross_silo and fed.data.source == "npz":
        problems.append(
            (
                "federation.data.source",
                "'npz' is the cross-silo silos' own .npz data (deployment.silos.<i>.data.pvc); in one cluster "
                "use digits, or put a data set on a claim and set deployment.data.claim",
            )
        )
    problems += _data_problems(cfg)
    try:
        read_bundle(fed.task)
    except TaskBundleError as exc:
        problems.append((exc.key, exc.message))
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


def _data_problems(cfg: StackConfig) -> list[tuple[str, str]]:
    d, fed = cfg.deployment, cfg.federation
    task = fed.task
    if cfg.cross_silo:
        problems = [(f"deployment.silos.{i}.data.pvc",
                     f"task {task.source!r} reads its data from files, and this silo has none: set the claim "
                     "holding the silo's data") for i, silo in enumerate(d.silos)
                    if task.kind != "builtin" and silo.data.pvc is None]
        if d.data is not None:
            problems.append(("deployment.data", "one cluster only: give each silo its own deployment.silos.<i>.data"))
        return problems
    if d.data is None and (task.kind != "builtin" or fed.data.source == "files"):
        return [_no_data(task.source, fed.data.source)]
    return []


def _no_data(task: str, source: str) -> tuple[str, str]:
    return (
        "deployment.data.claim",
        f"task {task!r} with data.source {source!r} reads client data from files no Pod mounts: set "
        "deployment.data.claim to the PersistentVolumeClaim that holds them (docs/kubernetes.md)",
    )


def _data_from_volume(deployment: Mapping[str, Any], federation: dict[str, Any]) -> list[tuple[str, str]]:
    """Point ``federation.data`` at the data volume the program mounts (before the federation is
    validated: ``source files`` needs a path). The exact path is set once the volume is validated."""
    data = federation.get("data")
    data = dict(data) if isinstance(data, Mapping) else {}
    task = federation.get("task")
    source = task.get("source") if isinstance(task, Mapping) else None
    if deployment.get("silos"):
        if isinstance(source, str) and source not in config.BUILTIN_TASKS and "source" not in data:
            federation["data"] = data | {"source": "files", "path": layout.DATA_DIR, "sharded": False}
        return []
    volume = deployment.get("data")
    if not isinstance(volume, Mapping):
        if isinstance(source, str) and source not in config.BUILTIN_TASKS and data.get("source") != "files":
            return [_no_data(source, data.get("source", "digits"))]
        return []
    keys = ["source", "path", "sharded"] + (["server_eval_path"] if volume.get("server_eval_sub_path") else [])
    problems = [
        (f"federation.data.{key}", "set by the program from deployment.data (files, sharded, at the claim's mount): "
         "remove it from stack config")
        for key in keys if key in data
    ]
    federation["data"] = {k: v for k, v in data.items() if k not in keys} | {
        "source": "files", "path": layout.DATA_DIR, "sharded": True
    }
    return problems


def _at_mount(cfg: StackConfig, data: dict[str, Any]) -> None:
    """``federation.data``'s paths where the Pods see the data claim (infra/layout.py's DATA_DIR)."""
    volume = cfg.deployment.data
    if cfg.cross_silo or volume is None:
        return
    data["path"] = posixpath.join(layout.DATA_DIR, volume.sub_path).rstrip("/")
    if volume.server_eval_sub_path is not None:
        data["server_eval_path"] = posixpath.join(layout.DATA_DIR, volume.server_eval_sub_path).rstrip("/")


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
    problems += _data_from_volume(deployment or {}, federation)
    try:
        cfg = StackConfig.model_validate({"deployment": dict(deployment or {}), "federation": federation})
    except ValidationError as err:
        raise _fail(problems + _pydantic_problems(err)) from None
    if problems := problems + _cross_checks(cfg):
        raise _fail(problems)
    dumped = cfg.federation.model_dump(mode="json")
    dumped["client"]["server_address"] = cfg.server_address
    _at_mount(cfg, dumped["data"])
    return cfg.model_copy(update={"federation": from_mapping(dumped)})
