"""The whole pack on everything the real program declares, for both committed stacks, with the policy
config each stack's file yields: zero violations. Run twice over: through the policies' public
``validate`` and through the analyzer service the Pulumi CLI talks to. And a deliberately broken
resource fails the policy named for it, and only that one."""

from __future__ import annotations

import copy
import json
import runpy
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pulumi_policy
import pytest
import yaml
from policy_harness import analyze, resource_violations, stack_violations
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE

from infra.declared import MockedRun, Resource
from infra.harness.mocked import run_program
from infra.stack_files import REPO_ROOT, stack_config
from policy.pack_config import main as pack_config_main
from policy.pack_config import pack_config
from policy.tff_policies import ENFORCEMENT, PACK_NAME, POLICIES, RESOURCE_POLICIES, STACK_POLICIES

STACKS = ("dev", "prod")
ALL_STACKS = (*STACKS, "crosssilo")  # crosssilo: the pack over every cluster's resources
POLICY_DIR = REPO_ROOT / "policy"


@cache
def declared(stack: str) -> MockedRun:
    return run_program(stack)


def _public_path_violations(resources: list[Resource], config: dict[str, Any]) -> list[str]:
    found = []
    for r in resources:
        for policy in RESOURCE_POLICIES:
            found += [
                f"{policy.name}: {m}"
                for m in resource_violations(policy, r.type, r.inputs, config.get(policy.name))
            ]
    for policy in STACK_POLICIES:
        found += [
            f"{policy.name}: {v.message}"
            for v in stack_violations(
                policy, [(r.type, r.inputs) for r in resources], config.get(policy.name)
            )
        ]
    return found


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_the_program_passes_the_whole_pack(stack: str) -> None:
    run = declared(stack)
    assert len([r for r in run.resources if r.type.startswith("kubernetes:")]) >= 15
    assert _public_path_violations(run.resources, pack_config(stack)) == []


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_the_program_passes_the_pack_as_the_cli_runs_it(stack: str) -> None:
    diagnostics = analyze(declared(stack).resources, pack_config(stack), stack)
    assert diagnostics == []


def test_the_stacks_get_their_own_policy_config() -> None:
    assert pack_config("dev") == {
        "images-pinned": {"requireDigest": False},
        "no-load-balancer-services": {"allowLoadBalancer": False},
    }
    assert pack_config("prod")["images-pinned"] == {"requireDigest": True}


def test_prod_images_without_digests_fail_under_prods_config() -> None:
    """dev's images (local tags) are fine for dev and rejected by the same pack configured for prod."""
    dev = declared("dev").resources
    assert analyze(dev, pack_config("dev")) == []
    found = analyze(dev, pack_config("prod"))
    assert {d.policy for d in found} == {"images-pinned"}
    assert all(d.mandatory and "not pinned by digest" in d.message for d in found)
    assert len(found) == 2  # the server Pod and the client Deployment


def _broken_server(stack: str) -> list[Resource]:
    """The stack as declared, except the server Pod's container has no limits."""
    resources = []
    for r in declared(stack).resources:
        if r.type == "kubernetes:core/v1:Pod":
            inputs = copy.deepcopy(r.inputs)
            del inputs["spec"]["containers"][0]["resources"]["limits"]
            r = Resource(r.type, r.name, inputs, r.provider, r.parent, r.secret_paths)
        resources.append(r)
    return resources


@pytest.mark.parametrize("stack", STACKS)
def test_a_container_without_limits_fails_container_resources(stack: str) -> None:
    found = analyze(_broken_server(stack), pack_config(stack), stack)
    assert len(found) == 1, found
    (diagnostic,) = found
    assert diagnostic.policy == "container-resources"
    assert diagnostic.mandatory
    assert (
        "Pod tff-k8s/tff-server container 'server': missing limits.cpu, limits.memory" in diagnostic.message
    )


def test_an_unknown_value_in_preview_is_reported_not_passed() -> None:
    resources = []
    for r in declared("dev").resources:
        if r.type == "kubernetes:core/v1:Pod":
            inputs = copy.deepcopy(r.inputs)
            inputs["spec"]["containers"][0]["image"] = UNKNOWN_STRING_VALUE
            r = Resource(r.type, r.name, inputs, r.provider)  # on its cluster, as before
        resources.append(r)
    found = analyze(resources, pack_config("dev"))
    assert [(d.policy, d.mandatory) for d in found] == [("images-pinned", False)]
    assert "can't be known during preview" in found[0].message


def test_a_load_balancer_needs_the_stack_switch() -> None:
    resources = []
    for r in declared("dev").resources:
        if r.type == "kubernetes:core/v1:Service":
            inputs = copy.deepcopy(r.inputs)
            inputs["spec"]["type"] = "LoadBalancer"
            r = Resource(r.type, r.name, inputs, r.provider)  # on its cluster, as before
        resources.append(r)
    assert [d.policy for d in analyze(resources, pack_config("dev"))] == ["no-load-balancer-services"]
    allowed = {**pack_config("dev"), "no-load-balancer-services": {"allowLoadBalancer": True}}
    assert analyze(resources, allowed) == []


def test_removing_the_default_deny_fails_the_stack_policy() -> None:
    resources = [r for r in declared("prod").resources if not r.name.endswith("default-deny")]
    found = analyze(resources, pack_config("prod"))
    assert [d.policy for d in found] == ["namespace-default-deny"]
    assert found[0].urn.endswith("kubernetes:core/v1:Namespace::tff-k8s")


def test_one_silos_default_deny_is_not_stood_in_for_by_anothers() -> None:
    """Both silos use namespace tff-silo, each on its own cluster: silo-a's default-deny does not
    cover silo-b's namespace."""
    resources = [r for r in declared("crosssilo").resources if r.name != "silo-b/tff-k8s-default-deny"]
    found = analyze(resources, pack_config("crosssilo"), "crosssilo")
    assert [d.policy for d in found] == ["namespace-default-deny"]
    assert found[0].urn.endswith("kubernetes:core/v1:Namespace::silo-b/tff-silo")
    assert "namespace 'tff-silo' on provider 'kubernetes-silo-b'" in found[0].message


def test_the_entry_point_only_builds_the_pack(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[dict[str, Any]] = []
    monkeypatch.setattr(pulumi_policy, "PolicyPack", lambda **kwargs: built.append(kwargs))
    monkeypatch.setattr(sys, "path", [str(POLICY_DIR), *sys.path])  # as the CLI runs it: the pack dir first
    runpy.run_path(str(POLICY_DIR), run_name="__main__")
    assert str(POLICY_DIR) not in sys.path, "the pack's own directory must not shadow top-level modules"
    assert str(REPO_ROOT) in sys.path
    assert len(built) == 1
    assert built[0]["name"] == PACK_NAME
    assert built[0]["policies"] == list(POLICIES)
    assert built[0]["enforcement_level"] == ENFORCEMENT


def test_the_pack_directory_is_a_python_policy_pack() -> None:
    spec = yaml.safe_load((POLICY_DIR / "PulumiPolicy.yaml").read_text())
    assert spec["runtime"]["name"] == "python"
    venv = (POLICY_DIR / spec["runtime"]["options"]["virtualenv"]).resolve()
    assert venv == REPO_ROOT / ".venv", "the pack runs in the repository's uv environment"


def test_pack_config_cli_writes_the_json_the_cli_takes(tmp_path: Path) -> None:
    out = tmp_path / "policy-config.json"
    assert pack_config_main(["--stack", "prod", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == pack_config("prod")
    assert pack_config_main(["--stack", "staging", "--out", str(out)]) == 2


def test_a_stack_with_a_task_file_and_a_data_claim_passes_the_whole_pack() -> None:
    """The task ConfigMap, its volume and the read-only data claim pass every policy (dev stack)."""
    raw = stack_config("dev")
    deployment = {**raw["tff-k8s:deployment"], "data": {"claim": "tff-data", "server_eval_sub_path": "eval"}}
    federation = {k: v for k, v in raw["tff-k8s:federation"].items() if k != "data"}
    federation["task"] = {"source": "examples/digits_cnn_images/task.yaml"}
    run = run_program("dev", overrides={"tff-k8s:deployment": deployment, "tff-k8s:federation": federation})
    assert any(r.inputs.get("metadata", {}).get("name", "").startswith("tff-k8s-task-") for r in run.resources)
    assert _public_path_violations(run.resources, {"images-pinned": {"requireDigest": False}}) == []
