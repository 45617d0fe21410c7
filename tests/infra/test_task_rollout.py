"""A declarative task ships in an immutable ConfigMap both roles mount: its files, a hash in both Pod
templates that changes with the task (so `pulumi up` rolls the Pods, no image rebuild), the rendered
config pointing at the mount, and a too-large or disallowed model refused before any resource."""

from __future__ import annotations

import json
import posixpath
from pathlib import Path
from typing import Any

import pytest
from task_stacks import EXAMPLE, copy_example, federation_yaml, named, of_kind, run

from infra import layout
from infra.config_objects import TASK_DIGEST_ANNOTATION
from infra.manifests import pod_spec
from infra.stack_config import StackConfigError
from infra.stack_files import REPO_ROOT
from infra.task_bundle import MAX_BYTES


def _templates(declared: Any) -> dict[str, dict[str, Any]]:
    server = named(declared, "Pod", "tff-server")
    clients = named(declared, "Deployment", "tff-client")
    return {"server": server["metadata"], "client": clients["spec"]["template"]["metadata"]} | {
        "server_spec": pod_spec(server), "client_spec": pod_spec(clients)
    }


def test_the_task_config_map_holds_the_task_and_model_files() -> None:
    declared = run()
    task_map = named(declared, "ConfigMap", "tff-k8s-task-")
    assert task_map["immutable"] is True
    folder = REPO_ROOT / Path(EXAMPLE).parent
    assert task_map["data"] == {
        "task.yaml": (folder / "task.yaml").read_text(),
        "model.json": (folder / "model.json").read_text(),
    }


def test_both_roles_mount_the_task_read_only_and_the_config_points_there() -> None:
    declared = run()
    task_map = named(declared, "ConfigMap", "tff-k8s-task-")["metadata"]["name"]
    views = _templates(declared)
    for role in ("server_spec", "client_spec"):
        spec = views[role]
        volume = next(v for v in spec["volumes"] if v.get("configMap", {}).get("name") == task_map)
        mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
        assert mount["mountPath"] == layout.TASK_DIR and mount["readOnly"] is True
    assert federation_yaml(declared)["task"]["source"] == posixpath.join(layout.TASK_DIR, "task.yaml")


def test_the_task_hash_is_in_both_pod_templates_and_changes_with_the_task(tmp_path: Path) -> None:
    task = copy_example(tmp_path)
    before = _templates(run(task))
    hashes = {before["server"]["annotations"][TASK_DIGEST_ANNOTATION], before["client"]["annotations"][TASK_DIGEST_ANNOTATION]}
    assert len(hashes) == 1
    model = task.parent / "model.json"
    config = json.loads(model.read_text())
    config["config"]["name"] = "changed"
    model.write_text(json.dumps(config))
    after = _templates(run(task))
    assert after["client"]["annotations"][TASK_DIGEST_ANNOTATION] not in hashes
    assert after["server"]["annotations"][TASK_DIGEST_ANNOTATION] not in hashes
    task.write_text(task.read_text().replace("metrics: [accuracy]", "metrics: [accuracy, precision]"))
    again = _templates(run(task))
    assert again["client"]["annotations"][TASK_DIGEST_ANNOTATION] != after["client"]["annotations"][TASK_DIGEST_ANNOTATION]


def test_the_server_pod_is_replaced_when_the_task_changes() -> None:
    pod = next(r for r in run().resources if r.type == "kubernetes:core/v1:Pod")
    assert f'metadata.annotations["{TASK_DIGEST_ANNOTATION}"]' in pod.replace_on_changes


def _refused(task: Path) -> StackConfigError:
    declared = run(task, check=False)
    assert isinstance(declared.error, StackConfigError), declared.error
    assert not declared.resources, "nothing may be declared before the task is checked"
    return declared.error


def test_a_model_with_a_lambda_layer_is_refused_before_any_resource(tmp_path: Path) -> None:
    task = copy_example(tmp_path)
    model = task.parent / "model.json"
    config = json.loads(model.read_text())
    config["config"]["layers"].append({"module": "keras.layers", "class_name": "Lambda", "config": {"name": "x"}})
    model.write_text(json.dumps(config))
    message = str(_refused(task))
    assert "federation.task.source" in message and "Lambda" in message and "module task" in message


def test_a_model_over_the_config_map_limit_is_refused_naming_the_key_and_the_fix(tmp_path: Path) -> None:
    task = copy_example(tmp_path)
    model = task.parent / "model.json"
    config = json.loads(model.read_text())
    config["config"]["name"] = "x" * MAX_BYTES
    model.write_text(json.dumps(config))
    message = str(_refused(task))
    assert "federation.task.source" in message and "1 MiB" in message and "module task" in message


def test_a_missing_task_file_is_refused_naming_the_key(tmp_path: Path) -> None:
    message = str(_refused(tmp_path / "absent.yaml"))
    assert "federation.task.source" in message and "absent.yaml" in message


def test_digits_and_module_tasks_need_no_task_config_map() -> None:
    from infra.harness.mocked import run_program

    assert not [m for m in of_kind(run_program("dev"), "ConfigMap") if "-task-" in m["metadata"]["name"]]
    declared = run("module:examples.text_module.task")
    assert not [m for m in of_kind(declared, "ConfigMap") if "-task-" in m["metadata"]["name"]]
    assert federation_yaml(declared)["task"]["source"] == "module:examples.text_module.task"
    assert TASK_DIGEST_ANNOTATION not in (named(declared, "Pod", "tff-server")["metadata"].get("annotations") or {})


@pytest.mark.parametrize("example", ["examples/digits_cnn_images"])
def test_every_declarative_example_ships(example: str) -> None:
    task_map = named(run(f"{example}/task.yaml"), "ConfigMap", "tff-k8s-task-")
    assert set(task_map["data"]) == {"task.yaml", "model.json"}


def test_a_new_model_is_a_new_run(tmp_path: Path) -> None:
    """The Pods' config carries the task files' digest, and the run's identity includes it: a new
    model starts a new run (the old one archived) instead of resuming a checkpoint of another task."""
    from services.common.config import from_mapping

    task = copy_example(tmp_path)
    before = federation_yaml(run(task))
    model = task.parent / "model.json"
    model.write_text(model.read_text().replace('"units": 16', '"units": 8'))
    after = federation_yaml(run(task))
    assert before["task"]["digest"] != after["task"]["digest"]
    assert before["task"]["source"] == after["task"]["source"]  # the mount path: the same
    assert from_mapping(before).run_id != from_mapping(after).run_id
