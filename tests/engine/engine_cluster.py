"""A real Kubernetes control plane on loopback for the engine tests, from the binaries
``tools/engine/build.sh`` builds: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, and
kwok playing the kubelets of a few fake nodes (Pods are scheduled, then reported Running and Ready
without any container running; images are never pulled).

What each piece is for (none can be left out for the federation to come up):
- kube-apiserver with the admission the program relies on: NamespaceLifecycle, LimitRanger,
  ServiceAccount, PodSecurity (enforcing the namespace's ``pod-security.kubernetes.io`` labels),
  ResourceQuota, DefaultStorageClass; RBAC authorisation; client-certificate authentication.
- kube-controller-manager: Deployment -> ReplicaSet -> Pods, EndpointSlices/Endpoints for the
  Service await, the ResourceQuota status that quota admission needs, PV binding, namespace
  deletion, garbage collection, node lifecycle.
- kube-scheduler: binds Pods to nodes (waits for the checkpoint claim's volume, WaitForFirstConsumer).
- kwok: node heartbeats (a Lease) and the Pod stages pod-ready / pod-complete / pod-delete.
- a default StorageClass (``standard``) and ``standard-rwo`` (the prod stack's), both static
  (no-provisioner, WaitForFirstConsumer) with hostPath PersistentVolumes nothing ever writes to:
  they stand where kind's local-path provisioner or a cloud disk would.

Run by hand: ``python tests/engine/engine_cluster.py [--dir DIR]`` starts one and prints the
kubeconfig path (Ctrl-C stops it).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTEXT = "tff-k8s-engine"
NODES = 3
# Fake capacity per node: enough for the prod-shaped stack (10 clients at 1 CPU / 2Gi requests,
# a 2 CPU / 4Gi server) with room for a rollout.
NODE_CAPACITY = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "200Gi"}
STORAGE_CLASSES = ("standard", "standard-rwo")
PVS_PER_CLASS = 6


def engine_cache() -> Path:
    """Where tools/engine/build.sh puts the tools (same default and override)."""
    if env := os.environ.get("TFF_ENGINE_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tff-k8s" / "engine"


BIN_NAMES = (
    "pulumi",
    "pulumi-analyzer-policy-python",
    "pulumi-resource-kubernetes",
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
)


def missing_tools(cache: Path | None = None) -> list[str]:
    cache = cache or engine_cache()
    missing = [name for name in BIN_NAMES if not os.access(cache / "bin" / name, os.X_OK)]
    if not (cache / "share" / "kwok-stages").is_dir():
        missing.append("share/kwok-stages")
    return missing


def tool_versions(cache: Path | None = None) -> dict[str, str]:
    path = (cache or engine_cache()) / "versions.env"
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- certificates --------------------------------------------------------------------------------


def _write_pki(pki: Path) -> None:
    """A CA, the API server's serving certificate (127.0.0.1, localhost), a system:masters client
    certificate for every component and the test, and the service-account signing key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    pki.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    later = now + dt.timedelta(days=2)

    def key_pem(key: Any) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def name(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("tff-k8s-engine-ca"))
        .issuer_name(name("tff-k8s-engine-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(later)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(stem: str, subject: x509.Name, usage: Any, sans: list[x509.GeneralName] | None) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(later)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        (pki / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (pki / f"{stem}.key").write_bytes(key_pem(key))

    (pki / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (pki / "ca.key").write_bytes(key_pem(ca_key))
    leaf(
        "apiserver",
        name("kube-apiserver"),
        ExtendedKeyUsageOID.SERVER_AUTH,
        [
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default.svc"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ],
    )
    leaf("admin", name("tff-k8s-engine-admin", "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH, None)
    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (pki / "sa.key").write_bytes(key_pem(sa))
    (pki / "sa.pub").write_bytes(
        sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _write_kubeconfig(path: Path, server: str, pki: Path) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CONTEXT,
                "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": f"{CONTEXT}-admin",
                "user": {
                    "client-certificate": str(pki / "admin.crt"),
                    "client-key": str(pki / "admin.key"),
                },
            }
        ],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": f"{CONTEXT}-admin"}}],
        "current-context": CONTEXT,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


# --- the control plane ---------------------------------------------------------------------------


class ApiError(RuntimeError):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:2000]}")
        self.status = status
        self.body = body


@dataclass
class ControlPlane:
    workdir: Path
    cache: Path = field(default_factory=engine_cache)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def bin(self) -> Path:
        return self.cache / "bin"

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    # -- processes --

    def _start(self, name: str, args: list[str]) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = (self.logs / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            [str(self.bin / name), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop() ends it and nothing else
        )

    def _check_running(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {proc.returncode}; last lines of its log:\n{self.log_tail(name)}"
                )

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.logs / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
        self.procs.clear()

    # -- REST --

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.server + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, context=self._ssl(), timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            raise ApiError(err.code, err.read().decode(errors="replace")) from None
        text = raw.decode()
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text

    def get(self, path: str) -> Any:
        return self.api("GET", path)

    def exists(self, path: str) -> bool:
        try:
            self.get(path)
        except ApiError as err:
            if err.status == 404:
                return False
            raise
        return True

    def wait_for(self, what: str, check: Any, timeout: float = 90, interval: float = 0.5) -> Any:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            self._check_running()
            try:
                result = check()
                if result:
                    return result
            except (OSError, ApiError, ssl.SSLError) as exc:
                last = exc
            time.sleep(interval)
        raise TimeoutError(f"{what}: not within {timeout:.0f}s (last error: {last})")

    # -- bring-up --

    def start(self) -> ControlPlane:
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        _write_pki(self.pki)
        etcd_port, peer_port, api_port, kwok_port = (free_port() for _ in range(4))
        self.server = f"https://127.0.0.1:{api_port}"
        _write_kubeconfig(self.kubeconfig, self.server, self.pki)
        kubeconfig = str(self.kubeconfig)

        self._start(
            "etcd",
            [
                "--name=engine",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=engine=http://127.0.0.1:{peer_port}",
                "--listen-metrics-urls=",
                "--unsafe-no-fsync=true",  # a throw-away test store: skip fsync on a shared disk
                "--quota-backend-bytes=1073741824",
                "--log-level=warn",
            ],
        )
        pki = self.pki
        self._start(
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--authorization-mode=Node,RBAC",
                # On by default already; named so that no future default change drops one silently.
                "--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,"
                "DefaultStorageClass,PodSecurity,ResourceQuota",
                # The `kubernetes` Service's endpoints would be 127.0.0.1, which Endpoints reject.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
            ],
        )
        self.wait_for("kube-apiserver /readyz", lambda: self.get("/readyz") == "ok", timeout=120)
        self.timings["apiserver_ready_s"] = time.monotonic() - t0

        self._start(
            "kube-controller-manager",
            [
                f"--kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--secure-port=0",
                "--use-service-account-credentials=false",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--controllers=*",
                "--concurrent-deployment-syncs=5",
            ],
        )
        self._start(
            "kube-scheduler",
            [f"--kubeconfig={kubeconfig}", "--leader-elect=false", "--secure-port=0"],
        )
        stages = sorted((self.cache / "share" / "kwok-stages").glob("*.yaml"))
        kwok_config = self.workdir / "kwok.yaml"
        kwok_config.write_text("\n---\n".join(p.read_text() for p in stages))
        self._start(
            "kwok",
            [
                f"--kubeconfig={kubeconfig}",
                f"--config={kwok_config}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--node-lease-duration-seconds=40",
                f"--server-address=127.0.0.1:{kwok_port}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
            ],
        )
        self._create_nodes()
        self._create_storage()
        # Ready: nodes Ready (kwok), the default ServiceAccount created (controller-manager).
        self.wait_for("kwok nodes Ready", self._nodes_ready, timeout=120)
        self.wait_for(
            "default ServiceAccount",
            lambda: self.exists("/api/v1/namespaces/default/serviceaccounts/default"),
            timeout=120,
        )
        self.timings["control_plane_ready_s"] = time.monotonic() - t0
        return self

    def _create_nodes(self) -> None:
        for i in range(NODES):
            name = f"kwok-node-{i}"
            self.api(
                "POST",
                "/api/v1/nodes",
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                        "labels": {
                            "kubernetes.io/arch": "amd64",
                            "kubernetes.io/os": "linux",
                            "kubernetes.io/hostname": name,
                            "type": "kwok",
                        },
                    },
                    "spec": {},
                    "status": {"allocatable": NODE_CAPACITY, "capacity": NODE_CAPACITY},
                },
            )

    def _nodes_ready(self) -> bool:
        nodes = self.get("/api/v1/nodes")["items"]
        ready = [
            n
            for n in nodes
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
        ]
        return len(ready) == NODES

    def _create_storage(self) -> None:
        for i, sc in enumerate(STORAGE_CLASSES):
            annotations = {"storageclass.kubernetes.io/is-default-class": "true"} if i == 0 else {}
            self.api(
                "POST",
                "/apis/storage.k8s.io/v1/storageclasses",
                {
                    "apiVersion": "storage.k8s.io/v1",
                    "kind": "StorageClass",
                    "metadata": {"name": sc, "annotations": annotations},
                    "provisioner": "kubernetes.io/no-provisioner",
                    "volumeBindingMode": "WaitForFirstConsumer",
                    "reclaimPolicy": "Retain",
                },
            )
            for j in range(PVS_PER_CLASS):
                self.api(
                    "POST",
                    "/api/v1/persistentvolumes",
                    {
                        "apiVersion": "v1",
                        "kind": "PersistentVolume",
                        "metadata": {"name": f"{sc}-pv-{j}"},
                        "spec": {
                            "capacity": {"storage": "100Gi"},
                            "accessModes": ["ReadWriteOnce"],
                            "persistentVolumeReclaimPolicy": "Retain",
                            "storageClassName": sc,
                            # Never written: no kubelet mounts anything on kwok nodes.
                            "hostPath": {"path": f"/var/lib/tff-k8s-engine/{sc}-{j}"},
                        },
                    },
                )


def main() -> int:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    if missing := missing_tools():
        print(f"missing tools in {engine_cache()}: {', '.join(missing)} (run `make engine`)")
        return 2
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="tff-k8s-engine-"))
    plane = ControlPlane(workdir)
    try:
        plane.start()
        print(f"ready in {plane.timings['control_plane_ready_s']:.1f}s")
        print(f"export KUBECONFIG={plane.kubeconfig}   # context {CONTEXT}; logs in {plane.logs}")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        plane.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
