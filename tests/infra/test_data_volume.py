"""The clients' data set on a claim: mounted read-only into every client Pod at the fixed path the
rendered config's data.path names (sharded in one cluster; a silo's own, unsharded, in cross-silo),
counted in the quota, and refused with the key and the fix when the config cannot work."""

from __future__ import annotations

from typing import Any

import pytest
from cross_silo_stack import federation_config, manifests, one, run_with
from task_stacks import EXAMPLE, federation_yaml, named, run

from infra import layout
from infra.manifests import pod_spec
from infra.stack_config import StackConfigError, parse


def _data_mounts(spec: dict[str, Any], claim: str) -> list[dict[str, Any]]:
    volumes = [v["name"] for v in spec["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == claim]
    return [m for m in spec["containers"][0]["volumeMounts"] if m["name"] in volumes]


def test_clients_mount_the_claim_read_only_and_read_their_shard_there() -> None:
    declared = run()
    spec = pod_spec(named(declared, "Deployment", "tff-client"))
    volume = next(v for v in spec["volumes"] if v.get("persistentVolumeClaim"))
    assert volume["persistentVolumeClaim"] == {"claimName": "tff-data", "readOnly": True}
    (mount,) = _data_mounts(spec, "tff-data")
    assert mount["mountPath"] == layout.DATA_DIR and mount["readOnly"] is True
    data = federation_yaml(declared)["data"]
    assert data["source"] == "files" and data["sharded"] is True
    assert data["path"] == f"{layout.DATA_DIR}/breast-cancer"


def test_the_server_mounts_the_claim_only_to_evaluate_on_it() -> None:
    assert not _data_mounts(pod_spec(named(run(), "Pod", "tff-server")), "tff-data")
    declared = run(data={"claim": "tff-data", "server_eval_sub_path": "held-out"})
    (mount,) = _data_mounts(pod_spec(named(declared, "Pod", "tff-server")), "tff-data")
    assert mount["readOnly"] is True
    assert federation_yaml(declared)["data"]["server_eval_path"] == f"{layout.DATA_DIR}/held-out"


def test_the_quota_admits_the_data_claim() -> None:
    quota = named(run(data={"claim": "tff-data", "size": "5Gi"}), "ResourceQuota", "")["spec"]["hard"]
    assert quota["persistentvolumeclaims"] == "2"
    assert quota["requests.storage"] == "6Gi"  # the dev stack's 1Gi checkpoints + the data claim


def _problems(deployment: dict[str, Any], federation: dict[str, Any]) -> str:
    with pytest.raises(StackConfigError) as err:
        parse(deployment, federation)
    return str(err.value)


@pytest.mark.parametrize(
    ("deployment", "federation", "key"),
    [
        ({}, {"task": {"source": EXAMPLE}}, "deployment.data.claim"),
        ({"data": {"claim": "d"}}, {"task": {"source": EXAMPLE}, "data": {"path": "/x"}}, "federation.data.path"),
        ({"data": {"claim": "d", "sub_path": "../up"}}, {"task": {"source": EXAMPLE}}, "deployment.data.sub_path"),
        ({"data": {"claim": "Not_A_Name"}}, {"task": {"source": EXAMPLE}}, "deployment.data.claim"),
    ],
)
def test_a_data_config_that_cannot_work_is_refused_naming_the_key(
    deployment: dict[str, Any], federation: dict[str, Any], key: str
) -> None:
    assert key in _problems(deployment, federation)


def _silo_task(deployment: dict[str, Any], federation: dict[str, Any]) -> None:
    federation["task"] = {"source": EXAMPLE}
    federation.pop("data", None)
    for i, silo in enumerate(deployment["silos"]):
        silo["data"] = {"pvc": f"silo-data-{i}", "path": "own"}


def test_each_silo_mounts_its_own_claim_and_reads_its_own_unsharded_data() -> None:
    found = manifests(run_with(_silo_task))
    silos = [cluster for cluster in found if cluster != "hub"]
    assert silos
    for i, silo in enumerate(sorted(silos)):
        spec = pod_spec(one(found[silo], "Deployment"))
        (mount,) = _data_mounts(spec, f"silo-data-{i}")
        assert mount["readOnly"] is True and mount["mountPath"] == layout.DATA_DIR
        maps = [m for m in found[silo] if m["kind"] == "ConfigMap" and "-federation-" in m["metadata"]["name"]]
        data = federation_config(maps[0])["data"]
        assert data == data | {"source": "files", "sharded": False, "path": f"{layout.DATA_DIR}/own"}
        assert any("-task-" in m["metadata"]["name"] for m in found[silo] if m["kind"] == "ConfigMap")


def test_a_silo_without_data_is_refused_for_a_task_that_reads_files() -> None:
    def edit(deployment: dict[str, Any], federation: dict[str, Any]) -> None:
        _silo_task(deployment, federation)
        deployment["silos"][0].pop("data")

    declared = run_with(edit, check=False)
    assert isinstance(declared.error, StackConfigError)
    assert "deployment.silos.0.data.pvc" in str(declared.error)


def test_the_documented_kind_copy_pod_passes_the_namespace_rules_and_feeds_the_claim() -> None:
    """docs/kubernetes.md's one-off copy Pod: restricted, with requests and limits (the namespace's
    LimitRange and Pod Security admit it), on the claim deployment.data names."""
    import re

    import yaml

    from infra.stack_files import REPO_ROOT
    from policy.resource_checks import container_resources, pod_security_restricted

    doc = (REPO_ROOT / "docs/kubernetes.md").read_text()
    block = re.search(r"<<'YAML'\n(.*?)\nYAML\n", doc, re.S)
    assert block, "the copy Pod's YAML is gone from docs/kubernetes.md"
    claim, pod = yaml.safe_load_all(block.group(1))
    assert pod["kind"] == "Pod" and claim["kind"] == "PersistentVolumeClaim"
    assert container_resources("Pod", pod) == [] and pod_security_restricted("Pod", pod) == []
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    parse({"data": {"claim": claim["metadata"]["name"]}}, {"task": {"source": EXAMPLE}})
