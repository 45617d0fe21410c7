"""The product as users deploy it, played in real containers: the manifests the Pulumi program
declares (rendered under Pulumi mocks, as ``tff-k8s render`` writes them) run with
``podman kube play`` on the image ``images.sh`` builds from services/Dockerfile.

Everything runs as rendered (command, args, env, security context, resources, volumes, ports,
restart policy) except the changes in :data:`TRANSFORMS`, each a way podman 4.3 differs from a
cluster. The reusable part for any test of images + manifests: :func:`rendered`,
:func:`for_podman` and :class:`Play` (play, inspect, kill, health-check, tear down).
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from infra.harness.mocked import run_program
from infra.manifests import manifests as to_manifests
from infra.stack_files import REPO_ROOT, stack_config

IMAGES_SCRIPT = REPO_ROOT / "tests" / "containers" / "images.sh"
SETUP_SCRIPT = REPO_ROOT / "tests" / "containers" / "setup.sh"
PLAYED_KINDS = ("Pod", "Deployment")  # ConfigMaps, Secrets and claims become files (TRANSFORMS)

# What podman does not run, and how each difference from a cluster is bridged. One place, one
# reason each; everything not named here runs as rendered.
TRANSFORMS = {
    "image": "every container runs the image built here: no registry can be reached, and a digest "
    "pinned by the prod stack names an image that was pushed, not built here",
    "config file": "the ConfigMap's federation.yaml is mounted from a file the test writes (hostPath, "
    "read-only): podman 4.3 mounts a configMap subPath as a directory",
    "secrets": "TLS and token Secrets are mounted from files the test writes (hostPath directory): "
    "podman 4.3 crashes on a secret volume without `optional`, and with it writes the values base64-encoded",
    "service DNS": "podman has no Services: the server Pod gets a fixed address in a podman network the "
    "test creates, and the client template a hostAliases entry mapping the Service's DNS name to it (across "
    "clusters: the hub's public name to the host's address on the silo's network, where the published port is)",
    "container ports": "the containers' `ports` lists are dropped: podman 4.3 publishes every containerPort "
    "on the host (a cluster publishes none), so three client replicas would clash on one host port; the "
    "test reaches each Pod at its own address instead. Across clusters the hub's server port alone is "
    "published, on a free host port, standing in for its LoadBalancer",
    "clusters": "each cluster of a cross-silo stack is a podman network of its own, and firewall rules on "
    "this machine drop traffic between them except to the hub's published port: a silo reaches the hub only "
    "as it would through a load balancer",
    "own scratch volumes": "podman 4.3 backs every emptyDir with one named volume per volume name, shared "
    "by every pod that names it (and ignores sizeLimit and medium): each pod's emptyDir is renamed after "
    "the pod, and a Deployment of N replicas is played as N one-replica Deployments, so every pod gets "
    "its own /tmp as on a cluster",
    "annotation values": "cut to 63 characters: podman 4.3 applies the label-value limit to annotations "
    "(Kubernetes limits only their total size), and refuses the Pods' 64-character secrets hash",
    "checkpoint claim": "the server's PersistentVolumeClaim is a directory the test owns (hostPath), so "
    "the test reads metrics.jsonl and the model where the server wrote them",
    "not played": "Namespace, Service, NetworkPolicy, ResourceQuota, LimitRange, ServiceAccount and "
    "PodDisruptionBudget are checked by the manifest tests (schemas, policies, checkov), not by podman, "
    "which has no control plane to enforce them",
}


def run(cmd: list[str], timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done


def podman_available() -> str | None:
    """None when containers can run here, else why not."""
    if shutil.which("podman") is None:
        return "podman is not installed (tests/containers/setup.sh installs it on Debian as root)"
    probe = run(["podman", "info", "--format", "{{.Host.OCIRuntime.Name}}"], timeout=60, check=False)
    if probe.returncode != 0:
        return f"podman does not work here: {probe.stderr.strip()[-500:]}"
    return None


def build_image(tag: str) -> str:
    """Build services/Dockerfile as ``tag`` (stand-in base images first, once per machine); the image ID."""
    out = run(["bash", str(IMAGES_SCRIPT), tag], timeout=3600)
    return out.stdout.strip().splitlines()[-1]


# ---- manifests ------------------------------------------------------------------------------------
def rendered(stack: str, overrides: Mapping[str, Any] | None = None,
             secrets: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The Kubernetes manifests ``stack`` declares, as ``tff-k8s render`` writes them but with the
    stack ``secrets`` given here (test material) in the Secrets instead of placeholders."""
    return to_manifests(run_program(stack, overrides=overrides, secrets=secrets).resources)


def stack_overrides(stack: str, deployment: Mapping[str, Any], federation: Mapping[str, Any]) -> dict[str, Any]:
    """``stack``'s two structured config keys with these sections merged in (mappings merged key by key,
    anything else replaced), as :func:`rendered`'s ``overrides``."""
    raw = stack_config(stack)

    def merged(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in extra.items():
            out[key] = merged(out.get(key) or {}, value) if isinstance(value, Mapping) else value
        return out

    return {"tff-k8s:deployment": merged(raw["tff-k8s:deployment"], deployment),
            "tff-k8s:federation": merged(raw["tff-k8s:federation"], federation)}


def _secret_data(secret: dict[str, Any]) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    return {**data, **(secret.get("stringData") or {})}


@dataclass(frozen=True)
class PodmanFiles:
    """Where the transforms write the files that stand in for ConfigMaps, Secrets and claims."""

    root: Path


def _pod_spec(m: dict[str, Any]) -> dict[str, Any]:
    return m["spec"] if m["kind"] == "Pod" else m["spec"]["template"]["spec"]


def for_podman(manifests: list[dict[str, Any]], *, image: str, files: PodmanFiles, uid: int,
               aliases: Mapping[str, str], first_pod: str | None = None,
               publish: Mapping[int, int] | None = None, prefix: str = "") -> list[dict[str, Any]]:
    """The manifests podman plays, after :data:`TRANSFORMS` (the input is left as it was).
    ``aliases``: host names the Deployments' Pods resolve (name -> address); ``first_pod``: played
    first (it takes the play's fixed address); ``publish``: containerPort -> host port to publish
    of ``first_pod`` (across clusters: the hub's server port); ``prefix``: put before every played
    object's name (podman's pod names are one namespace for all clusters)."""
    config_maps = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "ConfigMap"}
    secrets = {m["metadata"]["name"]: _secret_data(m) for m in manifests if m["kind"] == "Secret"}
    out = []
    for original in manifests:
        if original["kind"] not in PLAYED_KINDS:
            continue
        m = copy.deepcopy(original)
        m["metadata"]["name"] = prefix + m["metadata"]["name"]
        spec = _pod_spec(m)
        for meta in (m["metadata"], m["spec"].get("template", {}).get("metadata", {})):
            if meta.get("annotations"):
                meta["annotations"] = {k: str(v)[:63] for k, v in meta["annotations"].items()}
        for container in spec["containers"]:
            container["image"] = image
            container["imagePullPolicy"] = "Never"
            ports = container.pop("ports", None) or []
            if publish and m["metadata"]["name"] == first_pod:
                container["ports"] = [{"containerPort": p["containerPort"], "hostPort": publish[p["containerPort"]],
                                       "protocol": "TCP"} for p in ports if p["containerPort"] in publish]
        volumes = []
        for volume in spec.get("volumes", []):
            name = volume["name"]
            if "configMap" in volume:
                source = config_maps[volume["configMap"]["name"]]
                (item,) = volume["configMap"]["items"]  # one file, mounted with subPath
                path = files.root / "configmaps" / volume["configMap"]["name"] / item["path"]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(source["data"][item["key"]])
                os.chmod(path, 0o444)
                volume = {"name": name, "hostPath": {"path": str(path), "type": "File"}}
                for container in spec["containers"]:
                    for mount in container.get("volumeMounts", []):
                        if mount["name"] == name:
                            assert mount.pop("subPath") == item["path"], mount
            elif "secret" in volume:
                secret = volume["secret"]["secretName"]
                directory = files.root / "secrets" / f"{m['metadata']['name']}-{name}"
                directory.mkdir(parents=True, exist_ok=True)
                for item in volume["secret"]["items"]:
                    path = directory / item["path"]
                    path.write_text(secrets[secret][item["key"]])
                    os.chown(path, 0, uid)  # owner root, group the pod's fsGroup, as the Secret's mode says
                    os.chmod(path, volume["secret"].get("defaultMode", 0o440))
                volume = {"name": name, "hostPath": {"path": str(directory), "type": "Directory"}}
            elif "persistentVolumeClaim" in volume:
                directory = files.root / "claims" / volume["persistentVolumeClaim"]["claimName"]
                directory.mkdir(parents=True, exist_ok=True)
                os.chown(directory, uid, uid)  # what fsGroup does on a cluster
                volume = {"name": name, "hostPath": {"path": str(directory), "type": "Directory"}}
            volumes.append(volume)
        spec["volumes"] = volumes
        if m["kind"] == "Deployment":
            spec["hostAliases"] = [{"ip": ip, "hostnames": [name]} for name, ip in aliases.items()]
            replicas = int(m["spec"].get("replicas", 1))
            for i in range(replicas):
                one = copy.deepcopy(m)
                one["metadata"]["name"] = f"{m['metadata']['name']}-{i}"
                one["spec"]["replicas"] = 1
                out.append(_own_scratch(one))
        else:
            out.append(_own_scratch(m))
    names = [m["metadata"]["name"] for m in out]
    if first_pod is not None:
        if first_pod not in names:
            raise ValueError(f"no Pod {first_pod!r} among {names}")
        out.sort(key=lambda m: m["metadata"]["name"] != first_pod)  # the server first: it takes the fixed IP
    return out


def _own_scratch(m: dict[str, Any]) -> dict[str, Any]:
    """Rename the emptyDir volumes of ``m``'s pod after it (see TRANSFORMS: own scratch volumes)."""
    spec = _pod_spec(m)
    renamed = {v["name"]: f"{m['metadata']['name']}-{v['name']}" for v in spec["volumes"] if "emptyDir" in v}
    for volume in spec["volumes"]:
        volume["name"] = renamed.get(volume["name"], volume["name"])
    for container in spec["containers"]:
        for mount in container.get("volumeMounts", []):
            mount["name"] = renamed.get(mount["name"], mount["name"])
    return m


# ---- playing --------------------------------------------------------------------------------------
@dataclass
class Container:
    name: str
    pod: str
    ip: str
    state: dict[str, Any]
    restarts: int


class Play:
    """``podman kube play`` of transformed manifests in a network of its own; :meth:`down` removes
    every pod, container and the network, even after a failure (use :func:`played`)."""

    def __init__(self, manifests: list[dict[str, Any]], workdir: Path, network: str, subnet: str) -> None:
        self.manifests, self.workdir, self.network, self.subnet = manifests, workdir, network, subnet
        self.yaml_path = workdir / "play.yaml"

    def up(self, first_ip: str | None) -> None:
        """Create the network and play; ``first_ip``: the first pod's fixed address."""
        self.yaml_path.write_text(yaml.safe_dump_all(self.manifests, sort_keys=False))
        run(["podman", "network", "create", "--subnet", self.subnet, self.network], timeout=60)
        fixed = ["--ip", first_ip] if first_ip else []
        run(["podman", "kube", "play", "--network", self.network, *fixed, str(self.yaml_path)], timeout=300)

    def down(self) -> None:
        if self.yaml_path.exists():
            run(["podman", "kube", "down", str(self.yaml_path)], timeout=120, check=False)
        run(["podman", "network", "rm", "-f", self.network], timeout=60, check=False)

    def containers(self) -> list[Container]:
        """The workload containers (not the pods' infra containers) of this play's pods."""
        out = []
        for pod in json.loads(run(["podman", "pod", "ps", "--format", "json"]).stdout or "[]"):
            if self.network not in (pod.get("Networks") or []):
                continue
            ip = _address(pod["InfraId"], self.network)  # a pod's containers share its infra's network
            for member in pod.get("Containers") or []:
                if member["Id"] == pod["InfraId"]:
                    continue
                (inspected,) = json.loads(run(["podman", "inspect", member["Id"]]).stdout)
                out.append(Container(inspected["Name"], pod["Name"], ip, inspected["State"],
                                     int(inspected.get("RestartCount", 0))))
        return sorted(out, key=lambda c: c.name)

    def container(self, pod_prefix: str) -> list[Container]:
        return [c for c in self.containers() if c.pod.startswith(pod_prefix)]

    def logs(self, container: str, tail: int | None = 40) -> str:
        """The last ``tail`` lines of ``container``'s log (all with None), stdout and stderr."""
        done = run(["podman", "logs", *(["--tail", str(tail)] if tail is not None else []), container], check=False)
        return done.stdout + done.stderr

    def kill(self, container: str) -> None:
        run(["podman", "kill", "--signal", "KILL", container])

    @contextmanager
    def paused(self, container: str) -> Iterator[None]:
        """``container`` frozen for the block (a SIGKILL sent meanwhile lands when it thaws): rounds
        take a fraction of a second here, so a fault meant for mid-training is made while the server
        stands still."""
        run(["podman", "pause", container], timeout=60)
        try:
            yield
        finally:
            run(["podman", "unpause", container], timeout=60)


def _address(container: str, network: str) -> str:
    (inspected,) = json.loads(run(["podman", "inspect", container]).stdout)
    return str(inspected["NetworkSettings"]["Networks"][network]["IPAddress"])


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 in podman's own default range (10.89.0.0/16) that no podman network uses yet."""
    return free_subnets(1)[0]


def free_subnets(count: int) -> list[ipaddress.IPv4Network]:
    """``count`` different /24s in podman's own default range (10.89.0.0/16) that no podman network uses yet."""
    used = set()
    for name in run(["podman", "network", "ls", "--format", "{{.Name}}"]).stdout.split():
        for net in json.loads(run(["podman", "network", "inspect", name]).stdout or "[]"):
            for sub in net.get("subnets") or []:
                used.add(ipaddress.ip_network(sub["subnet"]))
    free = [candidate for third in range(100, 250)
            if not any((candidate := ipaddress.ip_network(f"10.89.{third}.0/24")).overlaps(u) for u in used)]
    if len(free) < count:
        raise RuntimeError(f"fewer than {count} free /24s left in 10.89.100-249.0/24 for the test's podman networks")
    return free[:count]


@contextmanager
def played(manifests: list[dict[str, Any]], workdir: Path, subnet: ipaddress.IPv4Network,
           first_ip: str | None) -> Iterator[Play]:
    play = Play(manifests, workdir, f"tff-e2e-{uuid.uuid4().hex[:8]}", str(subnet))
    try:
        play.up(first_ip)
        yield play
    finally:
        play.down()


def gateway(subnet: ipaddress.IPv4Network) -> str:
    """The host's own address on a podman network (its first address): where published ports are."""
    return str(subnet.network_address + 1)


@contextmanager
def separated(subnets: list[ipaddress.IPv4Network]) -> Iterator[list[list[str]]]:
    """Traffic between these podman networks is dropped, except connections to a port the host
    publishes (DNAT-ed): the networks stand for clusters that reach each other only through a load
    balancer (TRANSFORMS: clusters). Yields the rules added (for a failure's report); they go when
    the block ends."""
    rules = [["FORWARD", "-s", str(a), "-d", str(b), "-m", "conntrack", "!", "--ctstate", "DNAT",
              "-m", "comment", "--comment", "tff-e2e-clusters", "-j", "DROP"]
             for a in subnets for b in subnets if a != b]
    added = []
    try:
        for rule in rules:
            run(["iptables", "-I", *rule], timeout=30)
            added.append(rule)
        yield added
    finally:
        for rule in added:
            run(["iptables", "-D", *rule], timeout=30, check=False)


# ---- observing ------------------------------------------------------------------------------------
def wait_for(what: str, predicate: Callable[[], bool], timeout: float, play: Play | None = None,
             poll: float = 1.0, report: Callable[[], str] | None = None) -> None:
    """Poll ``predicate`` until it holds; past ``timeout``, fail with ``report()`` (else the last
    log lines of ``play``'s containers)."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            detail = ""
            if report is not None:
                detail = report()
            elif play is not None:
                detail = "\n".join(f"--- {c.name} ({c.state.get('Status')}, restarts {c.restarts})\n{play.logs(c.name)}"
                                   for c in play.containers())
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{detail}")
        time.sleep(poll)


def records(claim_dir: Path) -> list[dict[str, Any]]:
    path = claim_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
