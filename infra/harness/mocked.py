"""Run the Pulumi program against Pulumi mocks and return what it declares: no CLI, no cluster.

Used by ``tff-k8s render`` (infra/render.py, and through it the policy scan) and the tests. Each run gets
its own thread, so it starts from fresh context variables (Pulumi keeps its settings, config and root
stack there) and its own event loop: any number of runs, of any stacks, can follow one another in one
process. The harness imports the program; nothing in the program imports the harness.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import settings
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.stack import run_pulumi_func

from infra.declared import MockedRun, Resource
from infra.harness.tls import outputs as tls_outputs
from infra.manifests import by_cluster, to_manifest
from infra.placeholders import placeholder
from infra.program import main as program_main
from infra.stack_files import REPO_ROOT, project_name, stack_config
from infra.stack_inputs import DEPLOYMENT_KEY, ENVIRON
from infra.stack_inputs import secret_keys as stack_secret_keys

_SECRET_SIG_KEY = "4dabf18193072939515e22adb298388d"  # pulumi.runtime.rpc._special_sig_key
_SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"  # pulumi.runtime.rpc._special_secret_sig


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
            return f"{args.name}-id", {**args.inputs, **tls_outputs(args.typ, args.name, inputs)}

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
        entry = program_main if program is None else program
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


def cluster_manifests(
    stack: str,
    *,
    overrides: Mapping[str, Any] | None = None,
    secrets: Mapping[str, str] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Cluster name -> the manifests ``stack`` declares on it, under mocks, with the stack ``secrets``
    given (e.g. real test certificates, ``{"tff-k8s:tlsCaCert": pem, ...}``) written into the Secrets as
    they are (unredacted: for tests only; ``tff-k8s render`` redacts)."""
    run = run_program(stack, overrides=overrides, secrets=secrets)
    return {cluster: [to_manifest(r) for r in resources] for cluster, resources in by_cluster(run).items()}
