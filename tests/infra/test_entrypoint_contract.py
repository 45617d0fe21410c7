"""Each container's command, args and env parse with the services' own entrypoint parser, against the
ConfigMap it mounts, and the parsed config agrees with the ports, probes and mounts the Pod declares."""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any

import pytest
from infra_stacks import Declared

from infra import layout
from infra.manifests import pod_spec
from services.common.config import FederationConfig, config_from_argv


def _parse(stack: Declared, workload: dict[str, Any], role: str, tmp_path: Path) -> FederationConfig:
    spec = pod_spec(workload)
    assert spec is not None
    (container,) = spec["containers"]
    assert container["command"][-3:] == [layout.PYTHON, "-m", f"services.{role}"]
    assert container["command"][0].endswith("tini"), "an init must reap TFF's worker_binary"
    args = list(container["args"])
    config_path = args[args.index("--config") + 1]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == config_path)
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    config_map = stack.one("ConfigMap", volume["configMap"]["name"])
    local = tmp_path / f"{role}-federation.yaml"  # stands in for the mounted file
    local.write_text(config_map["data"][mount["subPath"]])
    args[args.index("--config") + 1] = str(local)
    env = {e["name"]: e["value"] for e in container.get("env") or []}
    return config_from_argv(role, args, environ=env)


def _mounts(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """mountPath -> the volume mounted there."""
    spec = pod_spec(workload)
    assert spec is not None
    volumes = {v["name"]: v for v in spec["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in spec["containers"][0]["volumeMounts"]}


def _secret_files(volume: dict[str, Any]) -> set[str]:
    return {item["path"] for item in volume["secret"]["items"]}


def test_server_container_starts_with_its_config(stack: Declared, tmp_path: Path) -> None:
    cfg = _parse(stack, stack.server_pod, "server", tmp_path)
    assert cfg == stack.cfg.federation
    container = stack.container(stack.server_pod)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": cfg.server.port, "metrics": cfg.server.metrics_port, "health": cfg.server.health_port}
    assert container["readinessProbe"]["grpc"]["port"] == cfg.server.health_port
    assert cfg.server.host == "0.0.0.0"
    mounts = _mounts(stack.server_pod)
    assert "persistentVolumeClaim" in mounts[cfg.server.output_dir]
    assert "emptyDir" in mounts["/tmp"]
    _check_security_mounts(cfg, mounts, role="server")


def test_both_roles_run_one_image(stack: Declared) -> None:
    server, client = stack.container(stack.server_pod), stack.container(stack.client_deployment)
    assert server["image"] == client["image"] == stack.cfg.deployment.image.ref
    assert server["command"][:-1] == client["command"][:-1], "only the module (the role) differs"


def test_client_container_dials_the_service(stack: Declared, tmp_path: Path) -> None:
    cfg = _parse(stack, stack.client_deployment, "client", tmp_path)
    assert cfg.client.server_address == stack.cfg.server_address
    assert cfg.model_dump() == stack.cfg.federation.model_dump()
    container = stack.container(stack.client_deployment)
    assert [p["containerPort"] for p in container["ports"]] == [cfg.client.health_port]
    assert container["livenessProbe"]["grpc"]["port"] == cfg.client.health_port
    mounts = _mounts(stack.client_deployment)
    assert "emptyDir" in mounts["/tmp"]
    assert cfg.server.output_dir not in mounts, "clients never see the server's checkpoints"
    _check_security_mounts(cfg, mounts, role="client")


def _check_security_mounts(cfg: FederationConfig, mounts: dict[str, dict[str, Any]], role: str) -> None:
    sec = cfg.security
    tls_dir = posixpath.dirname(sec.ca_file)
    if sec.tls:
        files = _secret_files(mounts[tls_dir])
        assert posixpath.basename(sec.ca_file) in files
        has_key = posixpath.basename(sec.key_file) in files
        assert has_key == (role == "server" or sec.mutual_tls)
    else:
        assert tls_dir not in mounts
    if sec.token_file:
        assert _secret_files(mounts[posixpath.dirname(sec.token_file)]) == {
            posixpath.basename(sec.token_file)
        }
    else:
        assert "/etc/tff-k8s/auth" not in mounts


def test_the_contract_check_can_fail(stack: Declared, tmp_path: Path) -> None:
    """A container whose env broke the address would not start: the parser says so."""
    bad = {**stack.client_deployment}
    spec = pod_spec(bad)
    assert spec is not None
    container = {**spec["containers"][0], "env": [{"name": "SERVER_ADDRESS", "value": "no-port"}]}
    bad = {"kind": "Pod", "spec": {**spec, "containers": [container]}}
    with pytest.raises(ValueError, match="server_address"):
        _parse(stack, bad, "client", tmp_path)
