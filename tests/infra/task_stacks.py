"""The dev stack with a declarative task and a data claim, under mocks: the shared helpers of the task
and data-volume tests."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import yaml

from infra.declared import MockedRun
from infra.harness.mocked import run_program
from infra.manifests import manifests
from infra.stack_files import REPO_ROOT, stack_config

DEPLOYMENT, FEDERATION = "tff-k8s:deployment", "tff-k8s:federation"
EXAMPLE = "examples/breast_cancer_csv/task.yaml"
DATA = {"claim": "tff-data", "sub_path": "breast-cancer"}


def overrides(task: str | Path = EXAMPLE, data: dict[str, Any] | None = None, stack: str = "dev") -> dict[str, Any]:
    raw = stack_config(stack)
    deployment, federation = copy.deepcopy(raw[DEPLOYMENT]), copy.deepcopy(raw[FEDERATION])
    federation["task"] = {"source": str(task)}
    federation.pop("data", None)
    deployment["data"] = dict(DATA if data is None else data)
    return {DEPLOYMENT: deployment, FEDERATION: federation}


def run(task: str | Path = EXAMPLE, data: dict[str, Any] | None = None, **kwargs: Any) -> MockedRun:
    return run_program("dev", overrides=overrides(task, data), **kwargs)


def of_kind(run: MockedRun, kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests(run.resources) if m["kind"] == kind]


def named(run: MockedRun, kind: str, prefix: str) -> dict[str, Any]:
    found = [m for m in of_kind(run, kind) if m["metadata"]["name"].startswith(prefix)]
    assert len(found) == 1, [m["metadata"]["name"] for m in found]
    return found[0]


def federation_yaml(run: MockedRun) -> dict[str, Any]:
    return yaml.safe_load(named(run, "ConfigMap", "tff-k8s-federation-")["data"]["federation.yaml"])


def copy_example(into: Path, example: str = "examples/breast_cancer_csv") -> Path:
    """A copy of an example's task folder (to edit), returning its task file."""
    folder = into / Path(example).name
    shutil.copytree(REPO_ROOT / example, folder)
    return folder / "task.yaml"
