"""Stacks of the tff-k8s program run by the real Pulumi CLI and engine against the engine control plane.

A stack here is a committed stack (``dev`` or ``prod``) with *overrides*: nested keys merged into its
``Pulumi.<stack>.yaml`` config, so each override names only what it changes (which cluster to target,
a namespace, a replica count) and keeps working when the committed stack files change around it.
Each stack lives in its own project directory (a copy of ``Pulumi.yaml`` and the merged
``Pulumi.<name>.yaml``), with a file backend (``file://``) and the passphrase secrets provider.

How the program runs: ``pulumi-language-python`` cannot be built here (its Go module is not served by
the module proxy, see docs/engine.md), so the CLI is pointed (``--client``) at the Python SDK's own
in-process language runtime, the Automation API's inline-program server, which runs
``infra.program.main`` in this process. Everything else is the real thing: the ``pulumi`` CLI
(preview / up / refresh / destroy, config, secrets, the policy pack through
``pulumi-analyzer-policy-python``), its engine and state, pulumi-resource-kubernetes, and the API server.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from engine_cluster import CONTEXT, REPO_ROOT, ControlPlane

PROJECT = "tff-k8s"
PASSPHRASE = "tff-k8s-engine-test"  # protects only this test's throw-away stacks
# How the CLI lists a local policy pack it ran ("Policy Packs run:" then name|local|path and version).
PACK_RAN = f"{PROJECT}|local|{REPO_ROOT / 'policy'}"


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` merged into ``base``: mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def target_overrides(plane: ControlPlane, namespace: str | None = None) -> dict[str, Any]:
    """The override every engine stack needs: the engine cluster's kubeconfig and context."""
    kubernetes = {"context": CONTEXT, "kubeconfig": str(plane.kubeconfig)}
    deployment: dict[str, Any] = {"kubernetes": kubernetes}
    if namespace:
        deployment["namespace"] = namespace
    return {"deployment": deployment}


def inline_program(transforms: Iterable[Callable[..., Any]] = ()) -> Callable[[], None]:
    """The program Pulumi.yaml names (infra/__main__.py runs infra.program.main), with optional
    stack transformations registered first (applied to every resource the program declares)."""
    transforms = list(transforms)

    def program() -> None:
        import pulumi

        for transform in transforms:
            pulumi.runtime.register_stack_transformation(transform)
        from infra.program import main

        main()

    return program


@dataclass
class Outcome:
    """What one CLI command did: its output and the resource changes it reported."""

    ok: bool
    output: str
    changes: dict[str, int] = field(default_factory=dict)


@dataclass
class EngineStack:
    plane: ControlPlane
    root: Path  # per-test-session scratch directory
    name: str  # the stack's name, e.g. "ci"
    base: str  # the committed stack its config starts from: "dev" or "prod"
    overrides: dict[str, Any]  # {"deployment": {...}, "federation": {...}}

    def __post_init__(self) -> None:
        from pulumi import automation as auto

        self.project_dir = self.root / "projects" / self.name
        self.project_dir.mkdir(parents=True, exist_ok=True)
        self.home = self.root / "pulumi-home"
        self.backend = self.root / "state"
        self.home.mkdir(parents=True, exist_ok=True)
        self.backend.mkdir(parents=True, exist_ok=True)
        # The project file: name and runtime as committed (main/options only matter to the
        # pulumi-language-python host, which does not run here).
        project = yaml.safe_load((REPO_ROOT / "Pulumi.yaml").read_text())
        (self.project_dir / "Pulumi.yaml").write_text(
            yaml.safe_dump({"name": project["name"], "runtime": "python"}, sort_keys=False)
        )
        self.write_config(self.overrides)
        cache = self.plane.cache
        env = {
            "PULUMI_BACKEND_URL": f"file://{self.backend}",
            "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            # Never download a plugin: a missing one must fail, not be fetched.
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            "PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK": "true",
            # The provider and the policy launcher come from the engine cache, found on PATH.
            "PATH": f"{cache / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "KUBECONFIG": str(self.plane.kubeconfig),
            "NO_COLOR": "1",
        }
        self.command = auto.PulumiCommand(root=str(cache), skip_version_check=True)
        self.workspace_options = auto.LocalWorkspaceOptions(
            work_dir=str(self.project_dir),
            pulumi_home=str(self.home),
            env_vars=env,
            pulumi_command=self.command,
            secrets_provider="passphrase",
        )
        self.transforms: list[Callable[..., Any]] = []
        self.stack = auto.create_or_select_stack(
            stack_name=self.name,
            project_name=PROJECT,
            program=inline_program(),
            opts=self.workspace_options,
        )

    # -- config --

    @property
    def stack_file(self) -> Path:
        return self.project_dir / f"Pulumi.{self.name}.yaml"

    def write_config(self, overrides: Mapping[str, Any]) -> None:
        """The committed stack's config with ``overrides`` merged in; keeps what the CLI wrote to the
        file (the passphrase salt, secrets set with ``pulumi config set --secret``)."""
        committed = yaml.safe_load((REPO_ROOT / f"Pulumi.{self.base}.yaml").read_text()) or {}
        config = dict(committed.get("config") or {})
        for section, values in overrides.items():
            key = f"{PROJECT}:{section}"
            config[key] = deep_merge(config.get(key) or {}, values)
        current = yaml.safe_load(self.stack_file.read_text()) if self.stack_file.exists() else None
        current = current or {}
        kept = {
            k: v for k, v in (current.get("config") or {}).items() if isinstance(v, dict) and "secure" in v
        }
        current["config"] = {**config, **kept}
        self.stack_file.write_text(yaml.safe_dump(current, sort_keys=False))
        self.overrides = copy.deepcopy(dict(overrides))

    def update_overrides(self, extra: Mapping[str, Any]) -> None:
        self.write_config(deep_merge(self.overrides, extra))

    def set_secret(self, key: str, value: str) -> None:
        """``pulumi config set --secret tff-k8s:<key> <value>``."""
        from pulumi import automation as auto

        self.stack.set_config(f"{PROJECT}:{key}", auto.ConfigValue(value=value, secret=True))

    def policy_config(self, **extra: dict[str, Any]) -> Path:
        """The policy pack config for this stack, as ``python -m policy.pack_config`` writes it."""
        from policy.pack_config import pack_config

        config = pack_config(self.name, root=self.project_dir)
        for policy, props in extra.items():
            config[policy] = {**config.get(policy, {}), **props}
        path = self.project_dir / "policy-config.json"
        path.write_text(json.dumps(config, indent=2, sort_keys=True))
        return path

    # -- CLI commands --

    def _program(self, transforms: Iterable[Callable[..., Any]]) -> Callable[[], None]:
        return inline_program([*self.transforms, *transforms])

    @staticmethod
    def _policy_args(policy: bool, policy_config: Path | None) -> dict[str, Any]:
        if not policy:
            return {}
        args: dict[str, Any] = {"policy_packs": [str(REPO_ROOT / "policy")]}
        if policy_config is not None:
            args["policy_pack_configs"] = [str(policy_config)]
        return args

    def _run(self, call: Callable[[], Any]) -> Outcome:
        from pulumi import automation as auto

        try:
            result = call()
        except auto.errors.CommandError as err:
            return Outcome(False, str(err))
        changes = getattr(result, "change_summary", None)
        if changes is None and getattr(result, "summary", None) is not None:
            changes = result.summary.resource_changes
        return Outcome(True, result.stdout + result.stderr, dict(changes or {}))

    def preview(self, *, policy: bool = True, policy_config: Path | None = None, transforms=()) -> Outcome:
        return self._run(
            lambda: self.stack.preview(
                program=self._program(transforms),
                color="never",
                diff=True,
                **self._policy_args(policy, policy_config),
            )
        )

    def up(self, *, policy: bool = True, policy_config: Path | None = None, transforms=()) -> Outcome:
        return self._run(
            lambda: self.stack.up(
                program=self._program(transforms),
                color="never",
                diff=True,
                **self._policy_args(policy, policy_config),
            )
        )

    def refresh(self) -> Outcome:
        return self._run(lambda: self.stack.refresh(color="never", program=self._program(())))

    def preview_refresh(self) -> Outcome:
        return self._run(lambda: self.stack.preview_refresh(color="never"))

    def destroy(self) -> Outcome:
        return self._run(lambda: self.stack.destroy(color="never", program=self._program(())))

    # -- state --

    def state_resources(self) -> list[dict[str, Any]]:
        """The resources in the stack's checkpoint (``pulumi stack export``)."""
        deployment = self.stack.export_stack().deployment or {}
        return list(deployment.get("resources") or [])

    def exported_state_text(self) -> str:
        return json.dumps(self.stack.export_stack().deployment)

    def remove(self) -> None:
        from pulumi import automation as auto

        try:
            self.stack.workspace.remove_stack(self.name)
        except auto.errors.CommandError:
            pass
        shutil.rmtree(self.project_dir, ignore_errors=True)


# --- reading what the engine and the cluster hold ---


def api_path(resource: dict[str, Any]) -> str:
    """The API path of a Kubernetes object from its Pulumi state (outputs carry apiVersion, kind, metadata)."""
    out = resource["outputs"]
    api_version, kind, meta = out["apiVersion"], out["kind"], out["metadata"]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    plural = kind.lower()[:-1] + "ies" if kind.endswith("y") else kind.lower() + "s"
    ns = f"/namespaces/{meta['namespace']}" if meta.get("namespace") else ""
    return f"{base}{ns}/{plural}/{meta['name']}"


def k8s_resources(stack: EngineStack) -> list[dict[str, Any]]:
    return [
        r
        for r in stack.state_resources()
        if r["type"].startswith("kubernetes:") and not r["type"].startswith("pulumi:providers:")
    ]


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return pod["status"].get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conditions
    )


def changes_only_same(changes: dict[str, int]) -> bool:
    return set(changes) <= {"same"} and changes.get("same", 0) > 0
