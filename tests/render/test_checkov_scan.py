"""checkov scans what each stack renders, offline: no failed check that policy/checkov-skips.yaml does not
justify for that stack, no justification that no longer fires, and no network connection attempted.

checkov runs once, in a child process whose sockets refuse to connect (and record the attempt), over the
rendered files of both stacks and over a deliberately broken copy of prod's server Pod.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from rendered import ALL_STACKS as STACKS
from rendered import rendered

from infra.render import write
from infra.stack_files import REPO_ROOT
from policy.scan import SKIPS_FILE, Failure, Scan, judge, load_skips

DRIVER = """
import json, socket, sys
from dataclasses import asdict
from pathlib import Path

attempts = []

def refuse(*args, **kwargs):
    attempts.append(repr(args[1:3] if args and isinstance(args[0], socket.socket) else args[:2]))
    raise OSError("network disabled by tests/render/test_checkov_scan.py")

socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse

from policy.scan import scan

dirs, out = json.loads(sys.argv[1]), Path(sys.argv[2])
scans = {name: asdict(scan(Path(d))) for name, d in dirs.items()}
out.write_text(json.dumps({"scans": scans, "attempts": attempts}))
"""


def _break_server_pod(directory: Path) -> None:
    """prod's server Pod with no limits and a container allowed to escalate privileges."""
    path = directory / "pod-tff-k8s-tff-server.yaml"
    pod = yaml.safe_load(path.read_text())
    container = pod["spec"]["containers"][0]
    del container["resources"]["limits"]
    container["securityContext"]["allowPrivilegeEscalation"] = True
    path.write_text(yaml.safe_dump(pod, sort_keys=True))


@pytest.fixture(scope="module")
def checkov(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("checkov")
    dirs = {}
    for name in (*STACKS, "broken"):
        dirs[name] = root / name
        write(rendered("prod" if name == "broken" else name), dirs[name])
    _break_server_pod(dirs["broken"])
    out = root / "result.json"
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps({k: str(v) for k, v in dirs.items()}), str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(out.read_text())
    result["files"] = {name: len(list(d.rglob("*.yaml"))) for name, d in dirs.items()}
    return result


def _scan(checkov: dict[str, Any], name: str) -> Scan:
    raw = checkov["scans"][name]
    return Scan(
        raw["passed"], [Failure(**f) for f in raw["failed"]], raw["parsing_errors"], raw["resource_count"]
    )


def test_checkov_attempts_no_network_connection(checkov: dict[str, Any]) -> None:
    assert checkov["attempts"] == []


@pytest.mark.parametrize("stack", STACKS)
def test_every_failed_check_is_justified_for_its_stack(checkov: dict[str, Any], stack: str) -> None:
    result = _scan(checkov, stack)
    assert result.parsing_errors == []
    assert result.resource_count >= checkov["files"][stack], "every rendered file was scanned"
    assert result.passed >= 150
    verdict = judge(stack, result, load_skips())
    assert verdict.unjustified == [], "\n".join(
        f"{f.check} {f.name}: {f.resource} ({f.file}) - fix it, or justify it for {stack} in {SKIPS_FILE.name}"
        for f in verdict.unjustified
    )


@pytest.mark.parametrize("stack", STACKS)
def test_every_justification_still_matches_a_failure(checkov: dict[str, Any], stack: str) -> None:
    verdict = judge(stack, _scan(checkov, stack), load_skips())
    assert verdict.stale == [], f"remove from {SKIPS_FILE.name}: {[s.check for s in verdict.stale]}"


def test_prod_passes_checkov_without_exceptions(checkov: dict[str, Any]) -> None:
    assert _scan(checkov, "prod").failed == []
    assert all("prod" not in s.stacks for s in load_skips())


def test_the_justifications_are_one_well_formed_list() -> None:
    skips = load_skips()
    assert skips, "dev's kind images need the two justified skips"
    assert len({s.check for s in skips}) == len(skips), "one entry per check"
    for s in skips:
        assert re.fullmatch(r"CKV_K8S_\d+", s.check), s
        assert s.stacks and set(s.stacks) <= set(STACKS), s
        assert len(s.reason) >= 80, f"{s.check}: say why, for whom, and what guards prod instead"
    assert {s.check for s in skips} == {"CKV_K8S_15", "CKV_K8S_43"}
    assert (REPO_ROOT / "policy" / "checkov-skips.yaml") == SKIPS_FILE


def test_checkov_fails_a_broken_server_pod(checkov: dict[str, Any]) -> None:
    broken = _scan(checkov, "broken")
    failed = {f.check for f in broken.failed if f.file == "pod-tff-k8s-tff-server.yaml"}
    assert {"CKV_K8S_11", "CKV_K8S_13", "CKV_K8S_20"} <= failed  # cpu limits, memory limits, escalation
    assert not judge("prod", broken, load_skips()).ok
