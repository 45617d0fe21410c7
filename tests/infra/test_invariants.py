"""Invariants that keep the pieces pointing at each other and inside their budget."""

from __future__ import annotations

from infra_stacks import Declared

from infra.manifests import pod_labels, pod_spec
from infra.quantity import byte_count, cpu_millis
from services.common.health import LIVE, READY

RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def test_service_selects_the_server_pod_and_nothing_else(stack: Declared) -> None:
    selector = stack.service["spec"]["selector"]
    assert _selects(selector, stack.server_pod["metadata"]["labels"])
    assert not _selects(selector, pod_labels(stack.client_deployment))


def test_deployment_selector_matches_its_template(stack: Declared) -> None:
    dep = stack.client_deployment
    assert _selects(dep["spec"]["selector"]["matchLabels"], pod_labels(dep))
    assert not _selects(dep["spec"]["selector"]["matchLabels"], stack.server_pod["metadata"]["labels"])


def test_server_address_is_the_service_dns_name_and_port(stack: Declared) -> None:
    env = {e["name"]: e["value"] for e in stack.container(stack.client_deployment)["env"]}
    host, _, port = env["SERVER_ADDRESS"].rpartition(":")
    svc = stack.service
    assert host == f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc"
    grpc = next(p for p in svc["spec"]["ports"] if p["name"] == "grpc")
    assert int(port) == grpc["port"]


def test_service_target_ports_are_server_container_ports(stack: Declared) -> None:
    ports = {p["name"]: p["containerPort"] for p in stack.container(stack.server_pod)["ports"]}
    for p in stack.service["spec"]["ports"]:
        assert p["targetPort"] == ports[p["name"]], p


def test_every_container_has_requests_limits_and_restricted_context(stack: Declared) -> None:
    workloads = [m for m in stack.manifests if pod_spec(m) is not None]
    assert {m["kind"] for m in workloads} == {"Pod", "Deployment"}
    for m in workloads:
        spec = pod_spec(m)
        assert spec is not None
        pod_ctx = spec["securityContext"]
        assert pod_ctx["runAsNonRoot"] is True and pod_ctx["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod_ctx["runAsUser"] == stack.cfg.deployment.run_as_user > 0
        for c in spec.get("initContainers", []) + spec["containers"]:
            for side in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][side]), (m["metadata"]["name"], side)
            assert cpu_millis(c["resources"]["limits"]["cpu"]) >= cpu_millis(
                c["resources"]["requests"]["cpu"]
            )
            ctx = c["securityContext"]
            assert {k: ctx.get(k) for k in RESTRICTED_CONTAINER} == RESTRICTED_CONTAINER, c["name"]
            assert not ctx.get("privileged")
            mounts = {v["mountPath"] for v in c["volumeMounts"]}
            assert "/tmp" in mounts, "TensorFlow needs a writable /tmp on a read-only root"


def test_probes_are_plaintext_grpc_health_checks(stack: Declared) -> None:
    """The kubelet's gRPC prober cannot speak TLS: every probe targets the plaintext health port
    (never the server's TLS port); readiness asks the ``ready`` service, the others the process."""
    fed = stack.cfg.federation
    for workload, port in (
        (stack.server_pod, fed.server.health_port),
        (stack.client_deployment, fed.client.health_port),
    ):
        c = stack.container(workload)
        assert port != fed.server.port
        for probe, service in (("startupProbe", LIVE), ("readinessProbe", READY), ("livenessProbe", LIVE)):
            assert c[probe]["grpc"] == {"port": port, "service": service}, (c["name"], probe)
            assert c[probe]["timeoutSeconds"] > 1, "a throttled CPU answers slower than the 1 s default"
        startup = c["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= fed.server.tff_startup_timeout_s


def _pod_budget(spec: dict) -> tuple[int, int, int, int]:
    totals = [0, 0, 0, 0]
    for c in spec["containers"]:
        r = c["resources"]
        totals[0] += cpu_millis(r["requests"]["cpu"])
        totals[1] += byte_count(r["requests"]["memory"])
        totals[2] += cpu_millis(r["limits"]["cpu"])
        totals[3] += byte_count(r["limits"]["memory"])
    return totals[0], totals[1], totals[2], totals[3]


def test_quota_covers_server_all_clients_the_surge_and_terminating_clients(stack: Declared) -> None:
    """During a rollout or a drain, replacements start while the Pods they replace still terminate, and
    a terminating Pod counts against the quota until it is gone: without room for them, the next surge
    Pod is refused (exceeded quota) and the rollout stalls. Room for one rollout step (maxSurge +
    maxUnavailable) or one drain's worth of evictions (the budget's maxUnavailable) still terminating."""
    hard = stack.one("ResourceQuota")["spec"]["hard"]
    dep = stack.client_deployment
    rolling = dep["spec"]["strategy"]["rollingUpdate"]
    surge, step = rolling["maxSurge"], rolling["maxSurge"] + rolling["maxUnavailable"]
    drain = stack.one("PodDisruptionBudget")["spec"]["maxUnavailable"]
    client_pods = dep["spec"]["replicas"] + surge + max(step, drain)
    server, client = _pod_budget(stack.server_pod["spec"]), _pod_budget(pod_spec(dep) or {})
    need = [s + client_pods * c for s, c in zip(server, client, strict=True)]
    have = [
        cpu_millis(hard["requests.cpu"]),
        byte_count(hard["requests.memory"]),
        cpu_millis(hard["limits.cpu"]),
        byte_count(hard["limits.memory"]),
    ]
    assert all(h >= n for h, n in zip(have, need, strict=True)), (have, need)
    assert int(hard["pods"]) >= 1 + client_pods
    claim = stack.one("PersistentVolumeClaim")["spec"]["resources"]["requests"]["storage"]
    assert byte_count(hard["requests.storage"]) >= byte_count(claim)
    assert int(hard["persistentvolumeclaims"]) >= 1


def test_limit_range_admits_both_workloads(stack: Declared) -> None:
    (item,) = stack.one("LimitRange")["spec"]["limits"]
    assert item["type"] == "Container"
    for workload in (stack.server_pod, stack.client_deployment):
        limits = stack.container(workload)["resources"]["limits"]
        assert cpu_millis(limits["cpu"]) <= cpu_millis(item["max"]["cpu"])
        assert byte_count(limits["memory"]) <= byte_count(item["max"]["memory"])
    assert cpu_millis(item["defaultRequest"]["cpu"]) <= cpu_millis(item["default"]["cpu"])


def test_secrets_are_only_mounted_where_needed(stack: Declared) -> None:
    secrets = {s["metadata"]["name"]: s for s in stack.kind("Secret")}
    for workload in (stack.server_pod, stack.client_deployment):
        for volume in pod_spec(workload)["volumes"]:  # type: ignore[index]
            if "secret" in volume:
                data = secrets[volume["secret"]["secretName"]]["stringData"]
                assert {i["key"] for i in volume["secret"]["items"]} <= set(data)
    client_secrets = {
        v["secret"]["secretName"] for v in pod_spec(stack.client_deployment)["volumes"] if "secret" in v
    }  # type: ignore[index]
    for name in client_secrets:
        assert "tls.key" not in secrets[name]["stringData"] or stack.cfg.federation.security.mutual_tls
