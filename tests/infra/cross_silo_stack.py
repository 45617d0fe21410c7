"""The committed crosssilo stack under mocks, variants of its config, and views by cluster."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from functools import cache
from typing import Any

import yaml

from infra.declared import MockedRun
from infra.harness.mocked import run_program
from infra.manifests import by_cluster, to_manifest
from infra.stack_files import stack_config

STACK = "crosssilo"
DEPLOYMENT, FEDERATION = "tff-k8s:deployment", "tff-k8s:federation"
Edit = Callable[[dict[str, Any], dict[str, Any]], None]  # (deployment, federation) edited in place


def config(edit: Edit | None = None) -> dict[str, Any]:
    """The stack's two config objects as overrides, after ``edit``."""
    raw = stack_config(STACK)
    deployment, federation = copy.deepcopy(raw[DEPLOYMENT]), copy.deepcopy(raw[FEDERATION])
    if edit is not None:
        edit(deployment, federation)
    return {DEPLOYMENT: deployment, FEDERATION: federation}


@cache
def committed() -> MockedRun:
    return run_program(STACK)


def run_with(edit: Edit, **kwargs: Any) -> MockedRun:
    return run_program(STACK, overrides=config(edit), **kwargs)


def manifests(run: MockedRun) -> dict[str, list[dict[str, Any]]]:
    return {cluster: [to_manifest(r) for r in rs] for cluster, rs in by_cluster(run).items()}


def one(found: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    hits = [m for m in found if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, got {[m['metadata']['name'] for m in hits]}"
    return hits[0]


def federation_config(config_map: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(config_map["data"]["federation.yaml"])


def allowlist(run: MockedRun) -> dict[str, str]:
    """The hub server's accepted silos: name -> certificate SHA-256."""
    silos = federation_config(one(manifests(run)["hub"], "ConfigMap"))["security"]["silos"]
    return {s["name"]: s["cert_sha256"] for s in silos}


def secret_data(secret: dict[str, Any]) -> dict[str, str]:
    data = secret["stringData"]
    return json.loads(data) if isinstance(data, str) else data
