"""Each policy, called as the engine calls it: compliant objects pass, and each way of breaking the
rule it guards is reported, naming the object and what to fix."""

from __future__ import annotations

from typing import Any

import pytest
from policy_harness import (
    CLAIM,
    CONFIG_MAP,
    CRON_JOB,
    DEPLOYMENT,
    DIGEST,
    NAMESPACE,
    NETWORK_POLICY,
    POD,
    SERVICE,
    STATEFUL_SET,
    claim,
    compliant_stack,
    container,
    cron_job,
    default_deny,
    deployment,
    metadata,
    namespace,
    pod,
    pod_spec,
    resource_violations,
    service,
    stack_violations,
)
from pulumi_policy import EnforcementLevel
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, UnknownValueError

from infra.harness.mocked import run_program
from infra.stack_files import stack_config
from policy import objects, stack_checks
from policy.tff_policies import (
    CLIENT_DATA_READ_ONLY,
    CONTAINER_RESOURCES,
    DISRUPTION_BUDGETS_ALLOW_EVICTION,
    IMAGES_PINNED,
    NAMESPACE_DEFAULT_DENY,
    NO_LOAD_BALANCER,
    POD_SECURITY_RESTRICTED,
    POLICIES,
    RECOMMENDED_LABELS,
    RESOURCE_POLICIES,
    SERVER_CHECKPOINT_VOLUME,
    STACK_POLICIES,
    allow_load_balancer,
    require_digest,
)

NO_DIGEST_NEEDED = {"requireDigest": False}


def test_the_pack_has_every_mandatory_policy_once() -> None:
    names = [p.name for p in POLICIES]
    assert len(names) == len(set(names))
    assert set(names) == {
        "container-resources",
        "pod-security-restricted",
        "images-pinned",
        "no-load-balancer-services",
        "recommended-labels",
        "namespace-default-deny",
        "server-checkpoint-volume",
        "disruption-budgets-allow-eviction",
        "client-data-read-only",
    }
    assert all(p.enforcement_level == EnforcementLevel.MANDATORY for p in POLICIES)


@pytest.mark.parametrize(
    ("type_", "kind"),
    [
        ("kubernetes:core/v1:Pod", "Pod"),
        ("kubernetes:apps/v1:Deployment", "Deployment"),
        ("kubernetes:networking.k8s.io/v1:NetworkPolicy", "NetworkPolicy"),
        ("kubernetes:argoproj.io/v1alpha1:Rollout", "Rollout"),
        ("kubernetes:apps/v1:DeploymentPatch", None),
        ("kubernetes:core/v1:PodList", None),
        ("kubernetes:yaml/v2:ConfigGroup", None),
        ("kubernetes:helm.sh/v3:Release", None),
        ("pulumi:providers:kubernetes", None),
        ("tff-k8s:server:FederationServer", None),
    ],
)
def test_only_whole_kubernetes_objects_are_checked(type_: str, kind: str | None) -> None:
    assert objects.kind_of(type_) == kind


@pytest.mark.parametrize("policy", RESOURCE_POLICIES, ids=lambda p: p.name)
@pytest.mark.parametrize(
    ("type_", "obj"),
    [(POD, pod()), (DEPLOYMENT, deployment()), (CRON_JOB, cron_job()), (SERVICE, service())],
    ids=["pod", "deployment", "cronjob", "service"],
)
def test_compliant_objects_pass_every_resource_policy(policy: Any, type_: str, obj: dict[str, Any]) -> None:
    assert resource_violations(policy, type_, obj, NO_DIGEST_NEEDED) == []


def test_non_kubernetes_resources_are_left_alone() -> None:
    for policy in RESOURCE_POLICIES:
        assert (
            resource_violations(policy, "tff-k8s:server:FederationServer", {"spec": {"type": "LoadBalancer"}})
            == []
        )


# --- container-resources ------------------------------------------------------------------------------


def test_a_container_without_limits_fails_container_resources() -> None:
    broken = pod()
    del broken["spec"]["containers"][0]["resources"]["limits"]
    found = resource_violations(CONTAINER_RESOURCES, POD, broken)
    assert found == ["Pod tff-k8s/tff-server container 'server': missing limits.cpu, limits.memory"]


@pytest.mark.parametrize(
    ("type_", "obj", "containers"),
    [
        (DEPLOYMENT, deployment(), ("spec", "template", "spec", "containers")),
        (CRON_JOB, cron_job(), ("spec", "jobTemplate", "spec", "template", "spec", "containers")),
    ],
    ids=["deployment-template", "cronjob-template"],
)
def test_workload_templates_are_checked(type_: str, obj: dict[str, Any], containers: tuple[str, ...]) -> None:
    node: Any = obj
    for key in containers:
        node = node[key]
    del node[0]["resources"]["requests"]["memory"]
    found = resource_violations(CONTAINER_RESOURCES, type_, obj)
    assert len(found) == 1 and "container 'client': missing requests.memory" in found[0]


def test_init_containers_need_resources_too() -> None:
    broken = pod(initContainers=[{**container("warmup"), "resources": {}}])
    found = resource_violations(CONTAINER_RESOURCES, POD, broken)
    assert len(found) == 1 and "initContainer 'warmup'" in found[0]


def test_any_kind_with_a_pod_spec_is_checked() -> None:
    rollout = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": metadata("canary"),
        "spec": {
            "template": {
                "metadata": {"labels": {}},
                "spec": pod_spec(containers=[{"name": "app", "image": "a:1"}]),
            }
        },
    }
    found = resource_violations(CONTAINER_RESOURCES, "kubernetes:argoproj.io/v1alpha1:Rollout", rollout)
    assert len(found) == 1 and "Rollout tff-k8s/canary container 'app'" in found[0]


def test_an_unknown_value_during_preview_is_not_taken_as_compliant() -> None:
    """The engine turns UnknownValueError into "can't run policy during preview"; passing silently would hide it."""
    obj = pod(containers=UNKNOWN_STRING_VALUE)
    with pytest.raises(UnknownValueError):
        resource_violations(CONTAINER_RESOURCES, POD, obj)


# --- pod-security-restricted --------------------------------------------------------------------------


def _container_ctx(**ctx: Any) -> dict[str, Any]:
    c = container()
    c["securityContext"] = {**c["securityContext"], **ctx}
    return pod(containers=[c])


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (_container_ctx(allowPrivilegeEscalation=True), "allowPrivilegeEscalation must be false"),
        (_container_ctx(runAsNonRoot=False), "runAsNonRoot must be true"),
        (_container_ctx(runAsUser=0), "runAsUser must not be 0"),
        (_container_ctx(capabilities={"drop": ["NET_RAW"]}), "capabilities.drop must include ALL"),
        (
            _container_ctx(capabilities={"drop": ["ALL"], "add": ["SYS_ADMIN"]}),
            "capabilities.add ['SYS_ADMIN']",
        ),
        (_container_ctx(readOnlyRootFilesystem=False), "readOnlyRootFilesystem must be true"),
        (_container_ctx(seccompProfile={"type": "Unconfined"}), "not 'Unconfined'"),
        (_container_ctx(privileged=True), "privileged is true"),
        (pod(securityContext={"runAsNonRoot": True}), "seccompProfile.type must be RuntimeDefault"),
        (pod(securityContext={"seccompProfile": {"type": "RuntimeDefault"}}), "runAsNonRoot must be true"),
        (pod(hostNetwork=True), "spec.hostNetwork is true"),
        (
            pod(volumes=[{"name": "docker", "hostPath": {"path": "/var/run"}}]),
            "volume 'docker' is a hostPath",
        ),
        (pod(ephemeralContainers=[{"name": "debug", "image": "busybox:1.36"}]), "ephemeralContainer 'debug'"),
    ],
    ids=[
        "privilege-escalation",
        "run-as-root",
        "uid-0",
        "capabilities-kept",
        "capability-added",
        "writable-root",
        "seccomp-unconfined",
        "privileged",
        "no-seccomp",
        "no-run-as-non-root",
        "host-network",
        "host-path",
        "ephemeral-container",
    ],
)
def test_pod_security_violations_are_reported(obj: dict[str, Any], expected: str) -> None:
    found = resource_violations(POD_SECURITY_RESTRICTED, POD, obj)
    assert len(found) == 1 and expected in found[0], found


def test_container_settings_may_come_from_the_pod() -> None:
    """runAsNonRoot and seccomp set once on the Pod cover every container."""
    assert resource_violations(POD_SECURITY_RESTRICTED, POD, pod()) == []
    c = container()
    c["securityContext"]["seccompProfile"] = {"type": "Localhost", "localhostProfile": "tff.json"}
    c["securityContext"]["capabilities"]["add"] = ["NET_BIND_SERVICE"]  # the one restricted allows
    assert resource_violations(POD_SECURITY_RESTRICTED, POD, pod(containers=[c])) == []


def test_pod_security_checks_deployment_templates() -> None:
    d = deployment()
    d["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    found = resource_violations(POD_SECURITY_RESTRICTED, DEPLOYMENT, d)
    assert len(found) == 1 and found[0].startswith("Deployment tff-k8s/tff-client container 'client'")


# --- images-pinned ------------------------------------------------------------------------------------


def _with_image(image: str) -> dict[str, Any]:
    return pod(containers=[container(image=image)])


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("ghcr.io/tff-k8s/server:latest", "mutable tag 'latest'"),
        ("ghcr.io/tff-k8s/server", "neither tag nor digest"),
        ("localhost:5000/tff-k8s-server", "neither tag nor digest"),
    ],
)
def test_latest_and_untagged_images_fail_everywhere(image: str, expected: str) -> None:
    found = resource_violations(IMAGES_PINNED, POD, _with_image(image), NO_DIGEST_NEEDED)
    assert len(found) == 1 and expected in found[0]


def test_digests_are_required_when_configured() -> None:
    tagged, pinned = "ghcr.io/tff-k8s/server:0.1.0", f"ghcr.io/tff-k8s/server:0.1.0@{DIGEST}"
    assert resource_violations(IMAGES_PINNED, POD, _with_image(tagged), {"requireDigest": False}) == []
    found = resource_violations(IMAGES_PINNED, POD, _with_image(tagged), {"requireDigest": True})
    assert len(found) == 1 and "not pinned by digest" in found[0]
    assert resource_violations(IMAGES_PINNED, POD, _with_image(pinned), {"requireDigest": True}) == []


def test_without_any_config_digests_are_required() -> None:
    """No policy config and no stack config (an old CLI, a hand-run pack): the strict answer."""
    assert require_digest({}) is True
    assert allow_load_balancer({}) is False
    assert resource_violations(IMAGES_PINNED, POD, _with_image("ghcr.io/tff-k8s/server:0.1.0"))


def _settings_seen_with(stack: str, overrides: dict[str, Any] | None = None) -> tuple[bool, bool]:
    """What the policies decide from the stack config alone (as the CLI hands it to the pack)."""
    seen: list[tuple[bool, bool]] = []
    run_program(
        stack, overrides=overrides, program=lambda: seen.append((require_digest({}), allow_load_balancer({})))
    )
    return seen[0]


def test_the_stack_config_decides_when_no_policy_config_is_given() -> None:
    assert _settings_seen_with("prod") == (True, False)
    assert _settings_seen_with("dev") == (False, False)
    deployment_cfg = dict(stack_config("dev")["tff-k8s:deployment"])
    deployment_cfg["network"] = {"allow_load_balancer": True}
    assert _settings_seen_with("dev", {"tff-k8s:deployment": deployment_cfg}) == (False, True)


# --- no-load-balancer-services ------------------------------------------------------------------------


def test_load_balancer_services_need_the_stack_switch() -> None:
    found = resource_violations(
        NO_LOAD_BALANCER, SERVICE, service("LoadBalancer"), {"allowLoadBalancer": False}
    )
    assert len(found) == 1 and "allow_load_balancer" in found[0]
    assert (
        resource_violations(NO_LOAD_BALANCER, SERVICE, service("LoadBalancer"), {"allowLoadBalancer": True})
        == []
    )
    assert (
        resource_violations(NO_LOAD_BALANCER, SERVICE, service("ClusterIP"), {"allowLoadBalancer": False})
        == []
    )
    assert resource_violations(NO_LOAD_BALANCER, SERVICE, service("LoadBalancer")), "strict without config"


# --- client-data-read-only ---------------------------------------------------------------------------


def _with_data(volume_read_only: bool, mount_read_only: bool, component: str = "client") -> dict[str, Any]:
    d = deployment(component=component)
    spec = d["spec"]["template"]["spec"]
    spec["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": "d", "readOnly": volume_read_only}}]
    spec["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/srv/d", "readOnly": mount_read_only}]
    return d


def test_client_pods_mount_their_data_read_only() -> None:
    assert resource_violations(CLIENT_DATA_READ_ONLY, DEPLOYMENT, _with_data(True, True)) == []
    assert "persistentVolumeClaim.readOnly" in resource_violations(CLIENT_DATA_READ_ONLY, DEPLOYMENT, _with_data(False, True))[0]
    assert "must be readOnly" in resource_violations(CLIENT_DATA_READ_ONLY, DEPLOYMENT, _with_data(True, False))[0]
    assert resource_violations(CLIENT_DATA_READ_ONLY, DEPLOYMENT, _with_data(False, False, "server")) == []


# --- recommended-labels -------------------------------------------------------------------------------


def test_every_object_needs_every_recommended_label() -> None:
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata("cfg"), "data": {}}
    assert resource_violations(RECOMMENDED_LABELS, CONFIG_MAP, config_map) == []
    del config_map["metadata"]["labels"]["app.kubernetes.io/part-of"]
    found = resource_violations(RECOMMENDED_LABELS, CONFIG_MAP, config_map)
    assert found == ["ConfigMap tff-k8s/cfg: metadata.labels lacks app.kubernetes.io/part-of"]
    unlabelled = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bare"}}
    assert len(resource_violations(RECOMMENDED_LABELS, CONFIG_MAP, unlabelled)) == 1


def test_pod_templates_need_the_labels_too() -> None:
    d = deployment()
    del d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/managed-by"]
    found = resource_violations(RECOMMENDED_LABELS, DEPLOYMENT, d)
    assert found == [
        "Deployment tff-k8s/tff-client: spec.template.metadata.labels lacks app.kubernetes.io/managed-by"
    ]


# --- namespace-default-deny (stack) -------------------------------------------------------------------


def test_a_compliant_stack_passes_the_stack_policies() -> None:
    for policy in STACK_POLICIES:
        assert stack_violations(policy, compliant_stack()) == []


def _replace(kind_type: str, obj: dict[str, Any] | None) -> list[tuple[str, dict[str, Any]]]:
    """The compliant stack with its ``kind_type`` resource replaced by ``obj`` (None: removed)."""
    rest = [(t, o) for t, o in compliant_stack() if t != kind_type]
    return rest + ([(kind_type, obj)] if obj is not None else [])


def _not_deny_all(**spec: Any) -> dict[str, Any]:
    policy = default_deny()
    policy["spec"].update(spec)
    return policy


@pytest.mark.parametrize(
    "policy",
    [
        None,
        _not_deny_all(podSelector={"matchLabels": {"app.kubernetes.io/component": "server"}}),
        _not_deny_all(policyTypes=["Ingress"]),
        _not_deny_all(egress=[{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]),
        default_deny(namespace="elsewhere"),
    ],
    ids=["missing", "selects-some-pods", "ingress-only", "allows-egress", "other-namespace"],
)
def test_a_namespace_without_default_deny_fails(policy: dict[str, Any] | None) -> None:
    found = stack_violations(NAMESPACE_DEFAULT_DENY, _replace(NETWORK_POLICY, policy))
    assert len(found) == 1
    assert "namespace 'tff-k8s' has no default-deny NetworkPolicy" in found[0].message
    assert found[0].urn == "urn:pulumi:test::tff-k8s::kubernetes:core/v1:Namespace::tff-k8s"


def test_namespaces_pods_run_in_count_even_if_not_declared() -> None:
    resources = [(t, o) for t, o in compliant_stack() if t not in (NAMESPACE, NETWORK_POLICY)]
    found = stack_violations(NAMESPACE_DEFAULT_DENY, resources)
    assert [f.message.split(" has ")[0] for f in found] == ["namespace 'tff-k8s'"]
    assert stack_violations(NAMESPACE_DEFAULT_DENY, [*resources, (NETWORK_POLICY, default_deny())]) == []
    assert stack_violations(NAMESPACE_DEFAULT_DENY, [(NAMESPACE, namespace("other"))])


# --- server-checkpoint-volume (stack) -----------------------------------------------------------------


def test_a_server_without_a_persistent_volume_fails() -> None:
    no_volume = pod(volumes=[{"name": "checkpoints", "emptyDir": {}}])
    found = stack_violations(SERVER_CHECKPOINT_VOLUME, _replace(POD, no_volume))
    assert len(found) == 1 and "mounts no writable persistent volume" in found[0].message
    assert found[0].urn == "urn:pulumi:test::tff-k8s::kubernetes:core/v1:Pod::tff-server"


def test_a_read_only_checkpoint_mount_fails() -> None:
    read_only = pod()
    read_only["spec"]["containers"][0]["volumeMounts"][0]["readOnly"] = True
    found = stack_violations(SERVER_CHECKPOINT_VOLUME, _replace(POD, read_only))
    assert len(found) == 1 and "no writable persistent volume" in found[0].message


def test_the_claim_must_be_declared_by_the_stack() -> None:
    found = stack_violations(SERVER_CHECKPOINT_VOLUME, _replace(CLAIM, None))
    assert (
        len(found) == 1
        and "claim 'tff-server-checkpoints', which this stack does not declare" in found[0].message
    )
    elsewhere = claim()
    elsewhere["metadata"]["namespace"] = "other"
    assert stack_violations(SERVER_CHECKPOINT_VOLUME, _replace(CLAIM, elsewhere))


def test_a_stack_without_a_server_fails() -> None:
    found = stack_violations(SERVER_CHECKPOINT_VOLUME, _replace(POD, None))
    assert [f.message for f in found] == [
        "no federation server declared (no Pod labelled app.kubernetes.io/component: server)"
    ]


def test_a_server_stateful_set_may_use_claim_templates() -> None:
    template_spec = pod_spec(volumes=[])
    labels = pod()["metadata"]["labels"]
    stateful_set = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(),
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": template_spec},
            "volumeClaimTemplates": [claim("checkpoints")],
        },
    }
    resources = [*_replace(POD, None), (STATEFUL_SET, stateful_set)]
    assert stack_violations(SERVER_CHECKPOINT_VOLUME, resources) == []
    del stateful_set["spec"]["volumeClaimTemplates"]
    assert stack_violations(SERVER_CHECKPOINT_VOLUME, resources)


# --- disruption-budgets-allow-eviction (stack) --------------------------------------------------------

PDB = "kubernetes:policy/v1:PodDisruptionBudget"


def _budget(**spec: Any) -> dict[str, Any]:
    selector = {"matchLabels": deployment()["spec"]["selector"]["matchLabels"]}
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": metadata("tff-client"),
            "spec": {"selector": selector, **spec}}  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "evictable"),
    [
        ({"minAvailable": 2}, 1),
        ({"minAvailable": "50%"}, 1),  # 1.5 rounds up to 2 must stay
        ({"maxUnavailable": 1}, 1),
        ({"maxUnavailable": "10%"}, 1),  # 0.3 rounds up to 1
        ({"maxUnavailable": 1, "unhealthyPodEvictionPolicy": "AlwaysAllow"}, 1),
    ],
)
def test_a_budget_that_lets_a_drain_evict_passes(spec: dict[str, Any], evictable: int) -> None:
    assert stack_checks.evictable(spec, 3) == evictable
    assert stack_violations(DISRUPTION_BUDGETS_ALLOW_EVICTION, [*compliant_stack(), (PDB, _budget(**spec))]) == []


@pytest.mark.parametrize(
    ("spec", "rule"),
    [
        ({"minAvailable": 3}, "minAvailable: 3"),
        ({"minAvailable": "100%"}, "minAvailable: 100%"),
        ({"minAvailable": "90%"}, "minAvailable: 90%"),  # 2.7 rounds up to 3 of 3
        ({"maxUnavailable": 0}, "maxUnavailable: 0"),
    ],
)
def test_a_budget_that_lets_no_drain_finish_fails(spec: dict[str, Any], rule: str) -> None:
    found = stack_violations(DISRUPTION_BUDGETS_ALLOW_EVICTION, [*compliant_stack(), (PDB, _budget(**spec))])
    assert len(found) == 1
    assert "PodDisruptionBudget tff-k8s/tff-client lets no eviction take any of the 3 Pods" in found[0].message
    assert f"Deployment tff-k8s/tff-client ({rule})" in found[0].message
    assert found[0].urn.endswith(f"{PDB}::tff-client")


def test_a_budget_is_judged_against_the_workloads_it_selects_only() -> None:
    server_only = _budget(minAvailable=3)
    server_only["spec"]["selector"] = {"matchLabels": {"app.kubernetes.io/component": "server"}}
    elsewhere = _budget(minAvailable=3)
    elsewhere["metadata"]["namespace"] = "other"
    for budget in (server_only, elsewhere):
        assert stack_violations(DISRUPTION_BUDGETS_ALLOW_EVICTION, [*compliant_stack(), (PDB, budget)]) == []
