"""``tff-k8s render --stack STACK --out DIR``: the Kubernetes manifests a stack declares, as YAML files.

A cross-silo stack writes one folder per cluster (``hub/``, ``<silo>/``); a single-cluster stack's files
lie directly in DIR.

The same program as ``pulumi up``, run under Pulumi mocks (:mod:`infra.harness.mocked`) with the committed
``Pulumi.<stack>.yaml``: one file per Kubernetes resource, named ``<kind>-<namespace>-<name>.yaml``
(``<kind>-<name>.yaml`` for cluster-scoped objects), keys sorted, so two renders of the same commit
are byte-identical and a diff shows exactly what a change does. For review, diffing and scanners
(``checkov``, ``kubernetes-validate``).

Secrets never reach the files: the run gets a placeholder for every stack secret (real values are
encrypted in the stack and are never decrypted here), and every value Pulumi marked secret is
replaced by a placeholder again before writing, whatever it holds.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from infra.clusters import HUB
from infra.declared import Resource
from infra.harness.mocked import run_program
from infra.manifests import by_cluster, to_manifest
from infra.placeholders import is_placeholder
from infra.stack_files import REPO_ROOT

HEADER = "# Rendered by `tff-k8s render --stack {stack}` from Pulumi.{stack}.yaml under Pulumi mocks. Do not edit.\n"
_HEADER_PREFIX = "# Rendered by `tff-k8s render"
REDACTED = "<redacted: Pulumi secret>"
SECRET_TYPE = "kubernetes:core/v1:Secret"


class RenderError(Exception):
    """A stack that cannot be rendered (invalid config, clashing file names): exit status 1."""

    exit_code = 1


class UnknownStack(RenderError):
    """No ``Pulumi.<stack>.yaml``: a usage error, exit status 2."""

    exit_code = 2


def available_stacks(root: Path = REPO_ROOT) -> list[str]:
    return sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in root.glob("Pulumi.*.yaml"))


def _redact(value: Any) -> Any:
    """Every leaf becomes a placeholder (keys stay: they name what is stored). The mocks' own
    placeholders for stack secrets are kept: they say which stack secret lands where."""
    if isinstance(value, dict):
        return {k: _redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value if is_placeholder(value) else REDACTED


def manifest(resource: Resource) -> dict[str, Any]:
    """The resource as a Kubernetes manifest, with every Pulumi-secret value redacted.

    A secret path redacts its whole top-level field (``stringData.ca.crt`` -> ``stringData``: keys
    may contain dots), and a Secret's ``data``/``stringData`` are redacted even if nothing marked them.
    """
    inputs = dict(resource.inputs)
    fields = {path.split("[", 1)[0].split(".", 1)[0] for path in resource.secret_paths}
    if resource.type == SECRET_TYPE:
        fields |= {"data", "stringData"}
    for field in fields & inputs.keys():
        inputs[field] = _redact(inputs[field])
    return to_manifest(Resource(resource.type, resource.name, inputs))


def file_name(m: dict[str, Any]) -> str:
    meta = m["metadata"]
    parts = [m["kind"].lower(), *([meta["namespace"]] if meta.get("namespace") else []), meta["name"]]
    return "-".join(parts) + ".yaml"


def to_yaml(m: dict[str, Any]) -> str:
    return yaml.safe_dump(m, sort_keys=True, default_flow_style=False, allow_unicode=True, width=120)


def render(stack: str, root: Path = REPO_ROOT) -> dict[str, str]:
    """File name -> YAML text for every Kubernetes resource ``stack`` declares."""
    stacks = available_stacks(root)
    if stack not in stacks:
        raise UnknownStack(f"unknown stack {stack!r}: expected one of {stacks} (from Pulumi.<stack>.yaml)")
    # secrets=None: a placeholder for every stack secret, never a real value.
    run = run_program(stack, root=root, secrets=None, check=False)
    if run.error is not None:
        raise RenderError(f"stack {stack!r} cannot be rendered:\n{run.error}")
    clusters = by_cluster(run)
    files: dict[str, str] = {}
    for cluster, resources in clusters.items():
        folder = "" if set(clusters) == {HUB} else f"{cluster}/"  # one cluster: the files as they always were
        for resource in resources:
            m = manifest(resource)
            name = folder + file_name(m)
            if name in files:
                raise RenderError(f"two resources render to {name}: rename one of them")
            files[name] = HEADER.format(stack=stack) + to_yaml(m)
    return dict(sorted(files.items()))


def write(files: dict[str, str], out: Path) -> list[Path]:
    """Write ``files`` into ``out``; earlier renders' files that are no longer declared are removed."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.rglob("*.yaml"):
        if stale.relative_to(out).as_posix() not in files and stale.read_text().startswith(_HEADER_PREFIX):
            stale.unlink()
    written = []
    for name, text in files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tff-k8s render",
        description="Write the Kubernetes manifests a stack declares (under Pulumi mocks) as YAML, "
        "one file per resource (cross-silo: a folder per cluster). Stack secrets are written as placeholders, never their values.",
    )
    parser.add_argument("--stack", required=True, help=f"stack name ({', '.join(available_stacks())})")
    parser.add_argument("--out", required=True, type=Path, help="directory to write the YAML files into")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """0: written; 1: the stack cannot be rendered (invalid config) or written; 2: bad usage or unknown stack."""
    try:
        args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # argparse: --help exits 0, a usage error 2
        return int(exc.code or 0)
    try:
        files = render(args.stack, REPO_ROOT)
    except RenderError as exc:
        print(f"tff-k8s render: {exc}", file=sys.stderr)
        return exc.exit_code
    try:
        written = write(files, args.out)
    except OSError as exc:
        print(f"tff-k8s render: cannot write to {args.out}: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {len(written)} manifests for stack {args.stack!r} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
