"""Run the Pulumi program against Pulumi mocks and return what it declares: no CLI, no cluster.

Used by the infra tests, ``tff-k8s render`` and the policy pack. Each run gets its own thread, so it
starts from fresh context variables (Pulumi keeps its settings, config and root stack there) and its
own event loop: any number of runs, of any stacks, can follow one another in one process.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
_SECRET_SIG_KEY = "4dabf18193072939515e22adb298388d"  # pulumi.runtime.rpc._special_sig_key
_SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"  # pulumi.runtime.rpc._special_secret_sig


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


def project_name(root: Path = REPO_ROOT) -> str:
    return yaml.safe_load((root / "Pulumi.yaml").read_text())["name"]


def stack_config(stack: str, root: Path = REPO_ROOT) -> dict[str, Any]:
    """The ``config:`` mapping of the committed ``Pulumi.<stack>.yaml``."""
    path = root / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"no stack file {path} (stacks: {sorted(p.name for p in root.glob('Pulumi.*.yaml'))})"
        )
    return dict((yaml.safe_load(path.read_text()) or {}).get("config") or {})


def placeholder(key: str) -> str:
    return f"<{key}: stack secret, not decrypted under mocks>"


_PLACEHOLDER = re.compile(r"^<[^<>]+: stack secret, not decrypted under mocks>$")


def is_placeholder(value: object) -> bool:
    """Whether ``value`` is a :func:`placeholder` (or something made from one), not real material."""
    return isinstance(value, str) and bool(_PLACEHOLDER.match(value))


def _unwrap(value: Any, path: str, secrets: list[str]) -> Any:
    """Strip Pulumi's secret wrappers from mock inputs, remembering where they were."""
    if isinstance(value, dict):
        if value.get(_SECRET_SIG_KEY) == _SECRET_SIG:
            secrets.append(path)
            return _unwrap(value.get("value"), path, secrets)
        return {k: _unwrap(v, f"{path}.{k}" if path else k, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v, f"{path}[{i}]", secrets) for i, v in enumerate(value)]
    if isinstance(value, float) and value.is_integer():
        return int(value)  # the Pulumi wire format has only doubles; Kubernetes ports and counts are ints
    return value


def _monitor(run: MockedRun) -> Any:
    """A mock monitor that records every registration with its options (parent, dependencies,
    replacement options), which Mocks alone do not see."""
    import pulumi
    from pulumi.runtime.mocks import MockMonitor

    requests: dict[tuple[str, str], Any] = {}  # (type, name) -> (urn, RegisterResourceRequest)

    class Recorder(pulumi.runtime.Mocks):
        def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
            secret_paths: list[str] = []
            inputs = _unwrap(args.inputs, "", secret_paths)
            urn, request = requests[(args.typ, args.name)]
            run.resources.append(
                Resource(
                    args.typ,
                    args.name,
                    inputs,
                    args.provider or "",
                    request.parent,
                    tuple(secret_paths),
                    urn,
                    tuple(request.dependencies),
                    tuple(request.replaceOnChanges),
                    bool(request.deleteBeforeReplace),
                )
            )
            from infra.mocked_tls import outputs

            return f"{args.name}-id", {**args.inputs, **outputs(args.typ, args.name, inputs)}

        def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list]:
            return {}, []

    class Monitor(MockMonitor):
        def RegisterResource(self, request: Any) -> Any:
            requests[(request.type, request.name)] = (
                self.make_urn(request.parent, request.type, request.name),
                request,
            )
            return super().RegisterResource(request)

    return Monitor(Recorder())


def _pulumi_config(
    stack: str,
    project: str,
    root: Path,
    overrides: Mapping[str, Any] | None,
    secrets: Mapping[str, str] | None,
) -> tuple[dict[str, str], list[str]]:
    from infra.stack_inputs import DEPLOYMENT_KEY
    from infra.stack_inputs import secret_keys as stack_secret_keys

    raw: dict[str, Any] = stack_config(stack, root)
    secret_keys = [k for k, v in raw.items() if isinstance(v, dict) and "secure" in v]
    raw = {k: v for k, v in raw.items() if k not in secret_keys}
    if secrets is None:  # stand in for every secret the stack could hold; real values never leave Pulumi
        deployment = {**raw, **dict(overrides or {})}.get(f"{project}:{DEPLOYMENT_KEY}")
        possible = stack_secret_keys(deployment if isinstance(deployment, Mapping) else None)
        secrets = {f"{project}:{k}": placeholder(f"{project}:{k}") for k in possible}
        secrets |= {k: placeholder(k) for k in secret_keys}
    raw |= dict(secrets)
    raw |= dict(overrides or {})
    config = {k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items() if v is not None}
    return config, sorted(secrets)


def run_program(
    stack: str,
    *,
    overrides: Mapping[str, Any] | None = None,
    secrets: Mapping[str, str] | None = None,
    root: Path = REPO_ROOT,
    program: Callable[[], None] | None = None,
    check: bool = True,
    environ: Mapping[str, str] | None = None,
) -> MockedRun:
    """Run the program for ``stack`` with its committed ``Pulumi.<stack>.yaml``.

    ``overrides`` replace whole config keys (``{"tff-k8s:deployment": {...}}``; None removes one);
    ``secrets`` are the stack secrets (default: a placeholder for each); ``environ`` is the environment
    the program reads (default: empty, whatever the calling shell has set). With ``check`` an error the
    program raises is re-raised; otherwise it is returned in ``MockedRun.error`` with what was
    declared before it.
    """
    project = project_name(root)
    config, secret_keys = _pulumi_config(stack, project, root, overrides, secrets)
    run = MockedRun(stack)

    def body() -> None:
        import pulumi
        from pulumi.runtime import settings
        from pulumi.runtime.stack import run_pulumi_func

        from infra.stack_inputs import ENVIRON

        if program is None:
            from infra.program import main as entry
        else:
            entry = program
        ENVIRON.set(dict(environ or {}))  # this thread's own context: no other run sees it
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            pulumi.runtime.set_all_config(config, secret_keys)
            monitor = _monitor(run)
            pulumi.runtime.set_mocks(
                monitor.mocks, project=project, stack=stack, preview=False, monitor=monitor
            )
            loop.run_until_complete(run_pulumi_func(entry))
            root_stack = settings.get_root_resource()
            outputs = getattr(root_stack, "outputs", {})

            async def resolve() -> dict[str, Any]:
                return {k: await pulumi.Output.from_input(v).future() for k, v in outputs.items()}

            run.outputs = loop.run_until_complete(resolve())
        except BaseException as exc:  # handed to the caller's thread below
            run.error = exc
        finally:
            loop.close()
            asyncio.set_event_loop(None)

    worker = threading.Thread(target=body, name=f"pulumi-mocks-{stack}")
    worker.start()
    worker.join()
    run.resources.sort(key=lambda r: (r.type, r.name))  # registration order depends on thread timing
    if check and run.error is not None:
        raise run.error
    return run


def declared_resources(stack: str, **kwargs: Any) -> list[Resource]:
    return run_program(stack, **kwargs).resources
