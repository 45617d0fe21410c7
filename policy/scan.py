"""checkov on what a stack deploys, offline: render the stack, scan the files, hold the findings against
``policy/checkov-skips.yaml`` (the one place a finding is accepted, per stack, with its reason).

``python -m policy.scan --stack dev --stack prod`` exits 0 when every failed check is justified for its
stack and every justification still matches a failure, 1 otherwise. checkov runs in-process through its
Kubernetes runner, so nothing calls home: no Prisma Cloud API key, no policy download
(``skip_download``), no guideline mapping (``BC_SKIP_MAPPING``), and none of the CLI's start-up
version check against PyPI.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infra.render import render, write

SKIPS_FILE = Path(__file__).resolve().parent / "checkov-skips.yaml"
_OFFLINE_ENV = {"BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
_CREDENTIAL_ENV = ("BC_API_KEY", "PRISMA_API_URL", "BC_API_URL")


@dataclass(frozen=True)
class Skip:
    check: str
    stacks: tuple[str, ...]
    reason: str
    name: str = ""


@dataclass(frozen=True)
class Failure:
    check: str
    name: str
    file: str
    resource: str


@dataclass
class Scan:
    passed: int
    failed: list[Failure]
    parsing_errors: list[str]
    resource_count: int


@dataclass
class Verdict:
    stack: str
    scan: Scan
    accepted: list[Failure] = field(default_factory=list)
    unjustified: list[Failure] = field(default_factory=list)
    stale: list[Skip] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.unjustified and not self.stale and not self.scan.parsing_errors


def load_skips(path: Path = SKIPS_FILE) -> list[Skip]:
    entries = (yaml.safe_load(path.read_text()) or {}).get("skips") or []
    return [
        Skip(str(e["check"]), tuple(e["stacks"]), " ".join(str(e["reason"]).split()), str(e.get("name", "")))
        for e in entries
    ]


def scan(directory: Path) -> Scan:
    """checkov's Kubernetes checks over every YAML file in ``directory``, offline."""
    for key in _CREDENTIAL_ENV:
        os.environ.pop(key, None)
    os.environ.update(_OFFLINE_ENV)
    # checkov reads these variables when its modules load: imported only once they are set.
    from checkov.common.bridgecrew.platform_integration import bc_integration
    from checkov.kubernetes.runner import Runner
    from checkov.runner_filter import RunnerFilter

    bc_integration.skip_download = True
    result = Runner().run(root_folder=str(directory), runner_filter=RunnerFilter(framework=["kubernetes"]))
    reports = result if isinstance(result, list) else [result]
    checks = sorted((c for r in reports for c in r.failed_checks), key=lambda c: (c.check_id, c.file_path))
    summaries: list[dict[str, Any]] = [r.get_summary() for r in reports]
    return Scan(
        passed=sum(int(s["passed"]) for s in summaries),
        failed=[Failure(c.check_id, c.check_name, c.file_path.lstrip("/"), c.resource) for c in checks],
        parsing_errors=[str(e) for r in reports for e in r.parsing_errors],
        resource_count=sum(int(s["resource_count"]) for s in summaries),
    )


def judge(stack: str, result: Scan, skips: Sequence[Skip]) -> Verdict:
    mine = {s.check: s for s in skips if stack in s.stacks}
    verdict = Verdict(stack, result)
    for failure in result.failed:
        (verdict.accepted if failure.check in mine else verdict.unjustified).append(failure)
    fired = {f.check for f in result.failed}
    verdict.stale = [s for check, s in sorted(mine.items()) if check not in fired]
    return verdict


def scan_stack(stack: str, skips: Sequence[Skip] | None = None) -> Verdict:
    with tempfile.TemporaryDirectory(prefix=f"tff-k8s-{stack}-") as tmp:
        write(render(stack), Path(tmp))
        return judge(stack, scan(Path(tmp)), load_skips() if skips is None else skips)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m policy.scan", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--stack", action="append", required=True, help="stack to render and scan (repeatable)"
    )
    parser.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    args = parser.parse_args(argv)
    verdicts = [scan_stack(stack) for stack in args.stack]
    if args.json:
        print(json.dumps([{**asdict(v), "ok": v.ok} for v in verdicts], indent=2))
    else:
        for v in verdicts:
            print(
                f"{v.stack}: {v.scan.passed} passed, {len(v.scan.failed)} failed ({len(v.accepted)} justified)"
            )
            for f in v.unjustified:
                print(f"  UNJUSTIFIED {f.check} {f.name}: {f.resource} ({f.file})")
            for s in v.stale:
                print(
                    f"  STALE skip {s.check}: it no longer fails for {v.stack}; remove it from {SKIPS_FILE.name}"
                )
            for e in v.scan.parsing_errors:
                print(f"  PARSE ERROR {e}")
    return 0 if all(v.ok for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
