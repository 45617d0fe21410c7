"""Each committed stack, run once per session under Pulumi mocks, and views of what it declared."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from infra.declared import MockedRun
from infra.harness.mocked import run_program
from infra.manifests import manifests, pod_spec
from infra.stack_config import parse
from infra.stack_files import stack_config
from infra.stack_schema import StackConfig

STACKS = ("dev", "prod")


@dataclass(frozen=True)
class Declared:
    """One stack's mocked run, with its validated config and its manifests by kind and name."""

    stack: str
    run: MockedRun
    cfg: StackConfig

    @property
    def manifests(self) -> list[dict[str, Any]]:
        return manifests(self.run.resources)

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [m for m in self.kind(kind) if name is None or m["metadata"]["name"] == name]
        assert len(found) == 1, (
            f"expected one {kind} {name or ''}, got {[m['metadata']['name'] for m in found]}"
        )
        return found[0]

    @property
    def server_pod(self) -> dict[str, Any]:
        return self.one("Pod", self.cfg.deployment.server.name)

    @property
    def client_deployment(self) -> dict[str, Any]:
        return self.one("Deployment", self.cfg.deployment.clients.name)

    @property
    def service(self) -> dict[str, Any]:
        return self.one("Service", self.cfg.deployment.server.name)

    def container(self, workload: dict[str, Any]) -> dict[str, Any]:
        spec = pod_spec(workload)
        assert spec is not None and len(spec["containers"]) == 1
        return spec["containers"][0]


@cache
def declared(stack: str) -> Declared:
    raw = stack_config(stack)
    cfg = parse(raw.get("tff-k8s:deployment"), raw.get("tff-k8s:federation"))
    return Declared(stack, run_program(stack), cfg)
