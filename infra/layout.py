"""What each container runs and where its files live: the one home of the entrypoint contract with
``services/`` (command, args, config path) and of the mount points derived from the federation config.
Pure Python, no Pulumi: the stack-config checks and the manifests both read it."""

from __future__ import annotations

import posixpath
from typing import Literal

from services.common.config import SERVER_ADDRESS_ENV, FederationConfig

Role = Literal["server", "client"]

CONFIG_FILE = "/etc/tff-k8s/federation.yaml"
CONFIG_KEY = posixpath.basename(CONFIG_FILE)
TMP_DIR = "/tmp"  # TensorFlow writes here; the root filesystem is read-only
DATA_DIR = "/srv/tff-k8s/data"  # the data claim (read-only); federation.data.path / npz_dir lie below it
TASK_DIR = "/etc/tff-k8s/task"  # a declarative task's ConfigMap: the task file and its model file
INIT = ["/usr/bin/tini", "-g", "--"]  # reaps TFF's worker_binary and signals its process group
PYTHON = "/opt/venv/bin/python"  # the image's environment (services/Dockerfile); absolute, needs no PATH


def command(role: Role) -> list[str]:
    """One image serves both roles: the command picks which service it starts."""
    return [*INIT, PYTHON, "-m", f"services.{role}"]


def args() -> list[str]:
    return ["--config", CONFIG_FILE]


def client_env(server_address: str) -> dict[str, str]:
    return {SERVER_ADDRESS_ENV: server_address}


def tls_dir(fed: FederationConfig) -> str | None:
    return posixpath.dirname(fed.security.ca_file) if fed.security.tls else None


def auth_dir(fed: FederationConfig) -> str | None:
    token = fed.security.token_file
    return posixpath.dirname(token) if token else None


def mount_points(fed: FederationConfig, role: Role) -> dict[str, str]:
    """Mount path of every volume a ``role`` container gets, keyed by the config key that sets it."""
    points = {"(config file)": CONFIG_FILE, "(scratch)": TMP_DIR}
    if role == "server":
        points["federation.server.output_dir"] = fed.server.output_dir
    if role == "client" and fed.data.source in ("npz", "files"):
        points[f"federation.data.{'npz_dir' if fed.data.source == 'npz' else 'path'}"] = DATA_DIR
    if role == "server" and fed.data.server_eval_path:
        points["federation.data.server_eval_path"] = DATA_DIR
    if fed.task.kind == "file":
        points["federation.task.source"] = TASK_DIR
    if (tls := tls_dir(fed)) is not None:
        points["federation.security.ca_file"] = tls
    if (auth := auth_dir(fed)) is not None:
        points["federation.security.token_file"] = auth
    return points


def _overlaps(a: str, b: str) -> bool:
    a, b = posixpath.normpath(a), posixpath.normpath(b)
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def mount_problems(fed: FederationConfig) -> list[tuple[str, str]]:
    """(key, message) for every mount path that is relative, misplaced or collides with another."""
    problems: list[tuple[str, str]] = []
    sec = fed.security
    if sec.tls and len({posixpath.dirname(p) for p in (sec.ca_file, sec.cert_file, sec.key_file)}) != 1:
        problems.append(
            (
                "federation.security.cert_file",
                "ca_file, cert_file and key_file must share one directory (one Secret volume is mounted there)",
            )
        )
    for role in ("server", "client"):
        points = list(mount_points(fed, role).items())
        for i, (key, path) in enumerate(points):
            if not posixpath.isabs(path) or posixpath.normpath(path) == "/":
                problems.append((key, f"{path!r} must be an absolute path below /"))
            for other_key, other in points[:i]:
                if _overlaps(path, other):
                    problems.append((key, f"{path!r} overlaps the {other_key} mount at {other!r}: move it"))
    return list(dict.fromkeys(problems))
