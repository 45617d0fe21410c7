"""Every resource the issue lists exists, with the fields that make it do its job, on both stacks."""

from __future__ import annotations

import runpy
import subprocess
import sys

import kubernetes_validate
from infra_stacks import Declared, declared
from kubernetes_validate import utils

from infra.declared import MockedRun
from infra.harness.mocked import run_program
from infra.manifests import pod_spec, to_manifest
from infra.quantity import byte_count
from infra.stack_config import StackConfigError
from infra.stack_files import REPO_ROOT, stack_config
from infra.stack_inputs import IMAGE_REF_ENV
from policy.stack_checks import evictable

EXPECTED_KINDS = {
    "Namespace": 1,
    "ResourceQuota": 1,
    "LimitRange": 1,
    "ServiceAccount": 2,
    "ConfigMap": 1,
    "PersistentVolumeClaim": 1,
    "Pod": 1,
    "Service": 1,
    "Deployment": 1,
    "PodDisruptionBudget": 1,
}
COMPONENTS = {
    "tff-k8s:federation:Federation",
    "tff-k8s:namespace:FederationNamespace",
    "tff-k8s:network:NetworkIsolation",
    "tff-k8s:config_objects:ConfigObjects",
    "tff-k8s:server:FederationServer",
    "tff-k8s:clients:FederationClients",
}


def test_every_resource_kind_is_declared(stack: Declared) -> None:
    counts: dict[str, int] = {}
    for m in stack.manifests:
        counts[m["kind"]] = counts.get(m["kind"], 0) + 1
    for kind, n in EXPECTED_KINDS.items():
        assert counts.get(kind) == n, (kind, counts)
    assert counts["NetworkPolicy"] >= 4
    secrets = 3 if stack.stack == "prod" else 0  # auth, server TLS, client TLS
    assert counts.get("Secret", 0) == secrets


def test_components_own_every_kubernetes_resource(stack: Declared) -> None:
    types = {r.type for r in stack.run.resources}
    assert COMPONENTS <= types
    provider = stack.run.one("pulumi:providers:kubernetes")
    for r in stack.run.resources:
        if r.type.startswith("kubernetes:"):
            assert r.parent_type in COMPONENTS - {"tff-k8s:federation:Federation"}, (r.name, r.parent_type)
            assert (
                r.provider.startswith(f"urn:pulumi:{stack.stack}::tff-k8s::")
                and "::kubernetes::" in r.provider
            )
            assert r.provider.endswith(f"::{provider.name}::{provider.name}-id")


def test_provider_targets_the_stacks_cluster(stack: Declared) -> None:
    provider = stack.run.one("pulumi:providers:kubernetes")
    assert provider.inputs.get("context") == stack.cfg.deployment.kubernetes.context
    if stack.stack == "dev":
        assert provider.inputs["context"] == "kind-tff-k8s"


def test_namespace_enforces_restricted_pod_security(stack: Declared) -> None:
    ns = stack.one("Namespace")
    assert ns["metadata"]["name"] == stack.cfg.deployment.namespace
    labels = ns["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
    for m in stack.manifests:
        if m["kind"] != "Namespace":
            assert m["metadata"]["namespace"] == ns["metadata"]["name"], m["metadata"]


def test_recommended_labels_everywhere(stack: Declared) -> None:
    for m in stack.manifests:
        labels = m["metadata"]["labels"]
        for key in ("name", "instance", "component", "part-of", "managed-by"):
            assert f"app.kubernetes.io/{key}" in labels, (m["kind"], m["metadata"]["name"], key)
        assert labels["app.kubernetes.io/managed-by"] == "pulumi"


def test_service_accounts_mount_no_token(stack: Declared) -> None:
    for account in stack.kind("ServiceAccount"):
        assert account["automountServiceAccountToken"] is False
    for workload in (stack.server_pod, stack.client_deployment):
        spec = workload["spec"] if workload["kind"] == "Pod" else workload["spec"]["template"]["spec"]
        assert spec["automountServiceAccountToken"] is False
        assert spec["serviceAccountName"] in {a["metadata"]["name"] for a in stack.kind("ServiceAccount")}


def test_config_map_carries_the_federation_config(stack: Declared) -> None:
    cm = stack.one("ConfigMap")
    assert cm["data"] == {"federation.yaml": stack.cfg.federation.to_yaml()}
    assert cm["immutable"] is True
    assert "tff-server.tff-k8s.svc:50051" in cm["data"]["federation.yaml"]


def test_config_change_renames_the_config_map() -> None:
    before = run_program("dev")
    after = run_program(
        "dev",
        overrides={
            "tff-k8s:federation": {"training": {"rounds": 99, "min_clients": 3, "clients_per_round": 3}}
        },
    )
    name = lambda run: run.one("kubernetes:core/v1:ConfigMap").inputs["metadata"]["name"]  # noqa: E731
    assert name(before) != name(after)


def test_workloads_wait_for_the_quota_and_the_limit_range(stack: Declared) -> None:
    """Explicit edges: a raised quota or changed limits land before the Pods (and the claim) that need
    them are created or updated; on destroy the workloads go first."""
    budget = {r.urn for r in stack.run.resources if r.type.endswith((":ResourceQuota", ":LimitRange"))}
    assert len(budget) == 2
    for type_ in ("core/v1:Pod", "apps/v1:Deployment", "core/v1:PersistentVolumeClaim"):
        workload = stack.run.one(f"kubernetes:{type_}")
        assert budget <= set(workload.dependencies), (type_, workload.dependencies)


def test_server_pod_keeps_checkpoints_on_a_claim(stack: Declared) -> None:
    claim = stack.one("PersistentVolumeClaim")
    storage = stack.cfg.deployment.server.storage
    assert claim["spec"]["resources"]["requests"]["storage"] == storage.size
    assert claim["spec"].get("storageClassName") == storage.storage_class
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    volumes = {v["name"]: v for v in stack.server_pod["spec"]["volumes"]}
    assert volumes["checkpoints"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    if stack.stack == "prod":
        assert byte_count(storage.size) >= byte_count("10Gi") and storage.storage_class


def test_service_is_stable_and_exposes_grpc_and_metrics(stack: Declared) -> None:
    svc = stack.service
    fed = stack.cfg.federation.server
    assert svc["metadata"]["name"] == stack.cfg.deployment.server.name == "tff-server"
    assert svc["spec"]["type"] == "ClusterIP"
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {
        "grpc": fed.port,
        "metrics": fed.metrics_port,
    }


def test_client_deployment(stack: Declared) -> None:
    dep = stack.client_deployment
    c = stack.cfg.deployment.clients
    assert dep["spec"]["replicas"] == c.replicas
    rolling = dep["spec"]["strategy"]["rollingUpdate"]
    assert (rolling["maxSurge"], rolling["maxUnavailable"]) == (c.max_surge, c.max_unavailable)
    spread = dep["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread and spread[0]["topologyKey"] == c.topology_key
    assert spread[0]["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]


def test_image_and_pull_policy(stack: Declared) -> None:
    image = stack.cfg.deployment.image
    server, client = stack.container(stack.server_pod), stack.container(stack.client_deployment)
    assert server["image"] == client["image"] == image.ref
    assert server["imagePullPolicy"] == client["imagePullPolicy"] == image.pull_policy
    if stack.stack == "dev":
        assert server["image"] == "tff-k8s:dev" and image.pull_policy == "IfNotPresent"
    else:
        assert "@sha256:" in server["image"]


def _images(run: MockedRun) -> tuple[str, str]:
    pod = run.one("kubernetes:core/v1:Pod").inputs["spec"]["containers"][0]["image"]
    dep = run.one("kubernetes:apps/v1:Deployment").inputs["spec"]["template"]["spec"]["containers"][0]["image"]
    return pod, dep


def test_a_rebuilt_dev_image_changes_both_pod_specs() -> None:
    """`make up-dev` passes the content tag of the image it built (TFF_K8S_IMAGE_REF): a rebuild is a
    new reference in the server Pod and the client template, so Pulumi rolls both."""
    first = run_program("dev", environ={IMAGE_REF_ENV: "tff-k8s:a1a1a1a1a1a1"})
    second = run_program("dev", environ={IMAGE_REF_ENV: "tff-k8s:b2b2b2b2b2b2"})
    assert _images(first) == ("tff-k8s:a1a1a1a1a1a1",) * 2
    assert _images(second) == ("tff-k8s:b2b2b2b2b2b2",) * 2
    assert second.outputs["image"] == "tff-k8s:b2b2b2b2b2b2"
    assert _images(run_program("dev")) == ("tff-k8s:dev",) * 2, "no variable: the stack file's reference"


def test_the_image_override_is_for_dev_stacks_only() -> None:
    run = run_program("prod", environ={IMAGE_REF_ENV: f"ghcr.io/x/tff-k8s@sha256:{'c' * 64}"}, check=False)
    assert isinstance(run.error, StackConfigError)
    assert f"{IMAGE_REF_ENV}: overrides deployment.image.ref on dev stacks only" in str(run.error)
    assert not [r for r in run.resources if r.type.startswith("kubernetes:")]


def test_a_bad_image_override_is_named() -> None:
    run = run_program("dev", environ={IMAGE_REF_ENV: "tff-k8s:latest"}, check=False)
    message = str(run.error)
    assert "deployment.image.ref:" in message and "latest" in message and IMAGE_REF_ENV in message


def test_committed_stacks_need_no_pull_secret(stack: Declared) -> None:
    for workload in (stack.server_pod, stack.client_deployment):
        assert "imagePullSecrets" not in pod_spec(workload)  # type: ignore[operator]


def test_private_registry_pull_secrets_reach_both_pod_specs() -> None:
    raw = stack_config("prod")["tff-k8s:deployment"]
    deployment = {**raw, "image": {**raw["image"], "pull_secrets": ["ghcr-pull", "mirror.example-pull"]}}
    run = run_program("prod", overrides={"tff-k8s:deployment": deployment})
    pod = run.one("kubernetes:core/v1:Pod").inputs
    dep = run.one("kubernetes:apps/v1:Deployment").inputs
    want = [{"name": "ghcr-pull"}, {"name": "mirror.example-pull"}]
    assert pod["spec"]["imagePullSecrets"] == want
    assert dep["spec"]["template"]["spec"]["imagePullSecrets"] == want
    newest = utils.major_minor(utils.latest_version())
    for manifest in (to_manifest(r) for r in run.resources if r.type.endswith((":Pod", ":Deployment"))):
        kubernetes_validate.validate(manifest, newest, strict=True)


def test_a_node_drain_can_always_evict_a_client(stack: Declared) -> None:
    """A budget that allows no eviction (dev had minAvailable 3 of 3 replicas) makes every node drain
    hang. The budget lets at least one client go, and clients that are not Ready (e.g. while the
    server restarts) may be evicted whatever the budget says."""
    pdb = stack.one("PodDisruptionBudget")
    dep = stack.client_deployment
    assert evictable(pdb["spec"], dep["spec"]["replicas"]) == stack.cfg.deployment.clients.max_disrupted >= 1
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert pdb["spec"]["selector"] == dep["spec"]["selector"]


def test_prod_drains_leave_enough_clients_for_a_round() -> None:
    """prod's budget is sized to its quorum: a drain evicts no more clients than rounds can spare. (dev
    runs exactly min_clients replicas: a drain pauses its rounds until the evicted client is back.)"""
    prod = declared("prod")
    replicas = prod.client_deployment["spec"]["replicas"]
    left = replicas - evictable(prod.one("PodDisruptionBudget")["spec"], replicas)  # type: ignore[operator]
    assert left >= prod.cfg.federation.training.min_clients


def test_stack_outputs(stack: Declared) -> None:
    out, d = stack.run.outputs, stack.cfg.deployment
    assert out["namespace"] == d.namespace
    assert out["serverAddress"] == stack.cfg.server_address
    assert out["clientReplicas"] == d.clients.replicas
    assert out["image"] == d.image.ref
    assert out["runId"] == stack.cfg.federation.run_id
    assert out["logsCommand"].startswith("kubectl ") and f"pod/{d.server.name}" in out["logsCommand"]
    assert f"--namespace {d.namespace}" in out["logsCommand"] and "--follow" in out["logsCommand"]


def test_program_never_imports_tensorflow(stack: Declared) -> None:
    # In a fresh interpreter: other test modules in the same session may have imported TensorFlow.
    probe = (
        "import sys; from infra.harness.mocked import run_program; "
        f"run = run_program({stack.stack!r}); assert run.resources, 'nothing declared'; "
        "bad = sorted(m for m in ('tensorflow', 'tensorflow_federated') if m in sys.modules); "
        "assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_pulumi_entry_point_runs_the_program(stack: Declared) -> None:
    """What the Python language host does with `main: infra/`: run the directory as __main__."""
    entry = lambda: runpy.run_path(str(REPO_ROOT / "infra"), run_name="__main__")  # noqa: E731
    via_entry = run_program(stack.stack, program=entry)
    assert [(r.type, r.name) for r in via_entry.resources] == [(r.type, r.name) for r in stack.run.resources]
    assert via_entry.outputs == stack.run.outputs
