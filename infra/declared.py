"""What one run of the program declared: each resource with its inputs and the options the engine would
see, and the run as a whole. Written by the mock harness (infra/harness/), read by ``tff-k8s render``,
the tests and the policy pack's tests through the views in infra/manifests.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Resource:
    """One declared resource: its Pulumi type token, logical name and (camelCase) inputs, and the
    resource options the engine would see (URNs of what it depends on, replacement options)."""

    type: str
    name: str
    inputs: dict[str, Any]
    provider: str = ""
    parent: str = ""
    secret_paths: tuple[str, ...] = ()
    urn: str = ""
    dependencies: tuple[str, ...] = ()  # explicit depends_on and the resources its inputs come from
    replace_on_changes: tuple[str, ...] = ()
    delete_before_replace: bool = False

    @property
    def parent_type(self) -> str:
        """The type token of the parent resource (from its URN), e.g. ``tff-k8s:server:FederationServer``."""
        return self.parent.split("::")[2].split("$")[-1] if self.parent else ""


@dataclass
class MockedRun:
    stack: str
    resources: list[Resource] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None

    def of_type(self, type_token: str) -> list[Resource]:
        return [r for r in self.resources if r.type == type_token]

    def one(self, type_token: str, name: str | None = None) -> Resource:
        found = [r for r in self.of_type(type_token) if name is None or r.name == name]
        if len(found) != 1:
            raise LookupError(f"expected one {type_token} {name or ''}, found {[r.name for r in found]}")
        return found[0]
