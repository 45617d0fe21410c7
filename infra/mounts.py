"""Volumes and mounts of a federation container, derived from the federation config's paths
(see infra/layout.py), so the mounts and the services' config cannot disagree."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra import layout
from infra.stack_inputs import CA_CERT, CERT, KEY
from services.common.config import FederationConfig

core = k8s.core.v1
SECRET_FILE_MODE = 0o440  # owner root, group = the pod's fsGroup: readable by the service user only


@dataclass(frozen=True)
class VolumeSources:
    """Names of the objects a role's volumes come from (None: that volume is not needed)."""

    config_map: pulumi.Input[str]
    tmp_size: str
    checkpoints_claim: pulumi.Input[str] | None = None
    tls_secret: pulumi.Input[str] | None = None
    auth_secret: pulumi.Input[str] | None = None
    data_claim: str | None = None  # the data set (read-only): a silo's own, or deployment.data's
    task_config_map: pulumi.Input[str] | None = None  # a declarative task's files
    task_paths: dict[str, str] | None = None  # ConfigMap key -> path below layout.TASK_DIR


def _secret_volume(name: str, secret: pulumi.Input[str], files: dict[str, str]) -> core.VolumeArgs:
    items = [core.KeyToPathArgs(key=key, path=path) for key, path in files.items()]
    return core.VolumeArgs(
        name=name,
        secret=core.SecretVolumeSourceArgs(secret_name=secret, items=items, default_mode=SECRET_FILE_MODE),
    )


def _tls_files(fed: FederationConfig, role: layout.Role) -> dict[str, str]:
    sec = fed.security
    files = {CA_CERT: posixpath.basename(sec.ca_file)}
    if role == "server" or sec.mutual_tls:
        files |= {CERT: posixpath.basename(sec.cert_file), KEY: posixpath.basename(sec.key_file)}
    return files


def volumes_and_mounts(
    fed: FederationConfig, role: layout.Role, src: VolumeSources
) -> tuple[list[core.VolumeArgs], list[core.VolumeMountArgs]]:
    volumes = [
        core.VolumeArgs(
            name="config",
            config_map=core.ConfigMapVolumeSourceArgs(
                name=src.config_map, items=[core.KeyToPathArgs(key=layout.CONFIG_KEY, path=layout.CONFIG_KEY)]
            ),
        ),
        core.VolumeArgs(name="tmp", empty_dir=core.EmptyDirVolumeSourceArgs(size_limit=src.tmp_size)),
    ]
    mounts = [
        # A subPath file mount: a directory mount at /etc/tff-k8s would shadow the TLS/auth mounts below it.
        core.VolumeMountArgs(
            name="config", mount_path=layout.CONFIG_FILE, sub_path=layout.CONFIG_KEY, read_only=True
        ),
        core.VolumeMountArgs(name="tmp", mount_path=layout.TMP_DIR),
    ]
    if role == "server" and src.checkpoints_claim is not None:
        volumes.append(
            core.VolumeArgs(
                name="checkpoints",
                persistent_volume_claim=core.PersistentVolumeClaimVolumeSourceArgs(
                    claim_name=src.checkpoints_claim
                ),
            )
        )
        mounts.append(core.VolumeMountArgs(name="checkpoints", mount_path=fed.server.output_dir))
    if src.data_claim is not None and (role == "client" or fed.data.server_eval_path):
        volumes.append(
            core.VolumeArgs(
                name="data",
                persistent_volume_claim=core.PersistentVolumeClaimVolumeSourceArgs(
                    claim_name=src.data_claim, read_only=True
                ),
            )
        )
        mounts.append(core.VolumeMountArgs(name="data", mount_path=layout.DATA_DIR, read_only=True))
    if src.task_config_map is not None and src.task_paths:
        items = [core.KeyToPathArgs(key=key, path=path) for key, path in sorted(src.task_paths.items())]
        volumes.append(
            core.VolumeArgs(name="task", config_map=core.ConfigMapVolumeSourceArgs(name=src.task_config_map, items=items))
        )
        mounts.append(core.VolumeMountArgs(name="task", mount_path=layout.TASK_DIR, read_only=True))
    if (tls_dir := layout.tls_dir(fed)) is not None and src.tls_secret is not None:
        volumes.append(_secret_volume("tls", src.tls_secret, _tls_files(fed, role)))
        mounts.append(core.VolumeMountArgs(name="tls", mount_path=tls_dir, read_only=True))
    if (auth_dir := layout.auth_dir(fed)) is not None and src.auth_secret is not None:
        token_name = posixpath.basename(fed.security.token_file or "")
        volumes.append(_secret_volume("auth", src.auth_secret, {"token": token_name}))
        mounts.append(core.VolumeMountArgs(name="auth", mount_path=auth_dir, read_only=True))
    return volumes, mounts
