"""The dev stack through its whole life with the real Pulumi CLI and engine, pulumi-resource-kubernetes
and a real API server (kwok nodes): preview, up with the policy pack, a no-op up, refresh, an in-place
scale, what admission must refuse, the policy pack failing a bad config, destroy.

The tests of the class run in order against one stack, each one from where the last left it.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pytest
from engine_cluster import ControlPlane
from engine_stack import (
    PACK_RAN,
    EngineStack,
    api_path,
    changes_only_same,
    is_ready,
    k8s_resources,
    target_overrides,
)
from engine_timings import Clock

from infra.quota import max_pods
from infra.stack_config import parse
from infra.stack_files import stack_config

pytestmark = pytest.mark.engine

NAMESPACE = "tff-k8s-ci"
clock = Clock("dev")
CHANGE_KINDS = ("create", "update", "replace", "delete", "create-replacement", "delete-replaced")


def server_pod_transform(edit):  # noqa: ANN001, ANN201 - a Pulumi stack transformation
    """A stack transformation that edits the server Pod's spec (a ``PodSpecArgs``) before it is registered.

    The SDK-side kind (``register_stack_transformation``): the engine-side kind
    (``register_resource_transform``) leaves a callback server bound to the first run's event loop, and
    every later inline run in the same process then fails ("attached to a different loop").
    """

    def transformation(args: pulumi.ResourceTransformationArgs) -> pulumi.ResourceTransformationResult | None:
        if args.type_ != "kubernetes:core/v1:Pod":
            return None
        edit(_get(args.props, "spec"))
        return pulumi.ResourceTransformationResult(props=args.props, opts=args.opts)

    return transformation


def _get(obj: Any, key: str) -> Any:
    """A field of a transformation's props: a plain dict at the top, ``*Args`` objects below."""
    return obj[key] if isinstance(obj, dict) else pulumi.get(obj, key)


def _set(obj: Any, key: str, value: Any) -> None:
    if isinstance(obj, dict):
        obj[key] = value
    else:
        pulumi.set(obj, key, value)


def drop_security_context(spec: Any) -> None:
    _set(spec, "security_context", None)
    for container in _get(spec, "containers"):
        _set(container, "security_context", None)


def request_whole_cpu(spec: Any) -> None:
    # 1 CPU requested (= its limit, within the LimitRange's max): more than the quota leaves.
    for container in _get(spec, "containers"):
        resources = _get(container, "resources")
        _set(resources, "requests", {**_get(resources, "requests"), "cpu": "1"})


@pytest.fixture(scope="module")
def dev(plane: ControlPlane, scratch) -> EngineStack:  # noqa: ANN001
    stack = EngineStack(plane, scratch, "ci", "dev", target_overrides(plane, NAMESPACE))
    yield stack
    # Leave nothing behind if a test stopped half-way.
    if stack.state_resources():
        stack.destroy()
    stack.remove()


class TestDevStack:
    def test_preview_runs_the_policy_pack(self, dev: EngineStack) -> None:
        with clock("preview (first)"):
            result = dev.preview(policy_config=dev.policy_config())
        assert result.ok, result.output
        assert result.changes.get("create", 0) > 10, result.changes
        assert PACK_RAN in result.output, "the policy pack did not run:\n" + result.output
        assert "Policy Violations" not in result.output, result.output

    def test_up_creates_everything_and_every_await_completes(
        self, dev: EngineStack, plane: ControlPlane
    ) -> None:
        from infra.harness.mocked import run_program

        with clock("up (create)"):
            result = dev.up(policy_config=dev.policy_config())
        assert result.ok, result.output
        assert PACK_RAN in result.output, result.output
        assert "Policy Violations" not in result.output, result.output
        # The API server's Pod Security "warn" mode would have said so here.
        assert "would violate PodSecurity" not in result.output, result.output

        # What the engine created is what the program declares under mocks (type and name) ...
        in_state = k8s_resources(dev)
        declared = run_program("ci", root=dev.project_dir).resources
        want = sorted((r.type, r.name) for r in declared if r.type.startswith("kubernetes:"))
        got = sorted((r["type"], r["urn"].split("::")[-1]) for r in in_state)
        assert got == want
        # ... and every object exists on the API server.
        for resource in in_state:
            assert plane.exists(api_path(resource)), api_path(resource)

        # The awaits held: the server Pod Ready, every client Ready, the Service has a ready endpoint.
        pod = plane.get(f"/api/v1/namespaces/{NAMESPACE}/pods/tff-server")
        assert is_ready(pod), pod["status"]
        assert pod["spec"]["nodeName"].startswith("kwok-node-")
        deployment = plane.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/tff-client")
        assert deployment["status"].get("readyReplicas") == deployment["spec"]["replicas"] == 3
        slices = plane.get(
            f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices"
            "?labelSelector=kubernetes.io/service-name=tff-server"
        )["items"]
        assert any(e.get("conditions", {}).get("ready") for s in slices for e in s.get("endpoints") or [])
        claim = plane.get(f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims/tff-server-checkpoints")
        assert claim["status"]["phase"] == "Bound"

    def test_second_up_changes_nothing(self, dev: EngineStack) -> None:
        with clock("up (no changes)"):
            result = dev.up(policy_config=dev.policy_config())
        assert result.ok, result.output
        assert changes_only_same(result.changes), result.changes

    def test_refresh_finds_no_drift(self, dev: EngineStack) -> None:
        with clock("refresh --preview-only"):
            preview = dev.preview_refresh()
        assert preview.ok, preview.output
        assert changes_only_same(preview.changes), (preview.changes, preview.output)
        with clock("refresh"):
            result = dev.refresh()
        assert result.ok, result.output
        assert changes_only_same(result.changes), (result.changes, result.output)

    def test_more_replicas_update_in_place(self, dev: EngineStack, plane: ControlPlane) -> None:
        path = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/tff-client"
        before = plane.get(path)["metadata"]["uid"]
        dev.update_overrides({"deployment": {"clients": {"replicas": 4}}})
        with clock("up (replicas 3 -> 4)"):
            result = dev.up(policy_config=dev.policy_config())
        assert result.ok, result.output
        assert result.changes.get("update", 0) >= 1, result.changes
        assert not {"create", "delete", "replace"} & set(result.changes), result.changes
        deployment = plane.get(path)
        assert deployment["metadata"]["uid"] == before  # updated in place, not replaced
        assert deployment["status"].get("readyReplicas") == 4
        quota = plane.get(f"/api/v1/namespaces/{NAMESPACE}/resourcequotas/tff-k8s-quota")
        raw = stack_config("dev")
        clients = {**raw["tff-k8s:deployment"]["clients"], "replicas": 4}
        declared = parse({**raw["tff-k8s:deployment"], "clients": clients}, raw["tff-k8s:federation"])
        # 1 server + 4 clients + the rollout's surge and terminating clients, as the program computes it
        assert quota["spec"]["hard"]["pods"] == str(max_pods(declared.deployment)) and max_pods(declared.deployment) > 5

    def test_policy_pack_refuses_a_pod_without_security_context(self, dev: EngineStack) -> None:
        with clock("preview (policy violation)"):
            result = dev.preview(
                policy_config=dev.policy_config(),
                transforms=[server_pod_transform(drop_security_context)],
            )
        assert not result.ok, result.output
        assert "pod-security-restricted" in result.output, result.output

    def test_api_server_pod_security_refuses_it_too(self, dev: EngineStack, plane: ControlPlane) -> None:
        with clock("up (PodSecurity refusal)"):
            result = dev.up(policy=False, transforms=[server_pod_transform(drop_security_context)])
        assert not result.ok, result.output
        assert 'violates PodSecurity "restricted:latest"' in result.output, result.output
        assert "tff-server" in result.output, result.output

    def test_quota_refuses_a_server_above_the_budget(self, dev: EngineStack) -> None:
        with clock("up (quota refusal)"):
            result = dev.up(policy=False, transforms=[server_pod_transform(request_whole_cpu)])
        assert not result.ok, result.output
        assert "exceeded quota: tff-k8s-quota" in result.output, result.output
        assert "tff-server" in result.output, result.output

    def test_up_restores_the_server(self, dev: EngineStack, plane: ControlPlane) -> None:
        with clock("up (restore)"):
            result = dev.up(policy_config=dev.policy_config())
        assert result.ok, result.output
        assert is_ready(plane.get(f"/api/v1/namespaces/{NAMESPACE}/pods/tff-server"))

    def test_policy_pack_fails_preview_on_a_bad_policy_config(self, dev: EngineStack) -> None:
        # Dev images are tags; a policy config that demands digests must fail the preview, naming it.
        bad = dev.policy_config(**{"images-pinned": {"requireDigest": True}})
        with clock("preview (bad policy config)"):
            result = dev.preview(policy_config=bad)
        assert not result.ok, result.output
        assert "images-pinned" in result.output, result.output
        assert "mandatory" in result.output, result.output

    def test_destroy_removes_everything(self, dev: EngineStack, plane: ControlPlane) -> None:
        in_state = k8s_resources(dev)
        with clock("destroy"):
            result = dev.destroy()
        assert result.ok, result.output
        assert dev.state_resources() == []
        left = [api_path(r) for r in in_state if plane.exists(api_path(r))]
        assert left == []
