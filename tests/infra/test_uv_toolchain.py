"""`pulumi install` / `pulumi up` with `toolchain: uv` keep an environment in which everything runs.

Pulumi's uv toolchain installs dependencies with a plain ``uv sync`` (``UV_PROJECT_ENVIRONMENT`` set
to the project's ``virtualenv``) and runs the program with ``uv run python``. Anything the program,
the policy pack or the local runner imports must therefore be installed by a plain ``uv sync``:
these tests replay exactly those commands in a fresh copy of the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra.stack_files import REPO_ROOT

pytestmark = pytest.mark.slow

PROGRAM_UNDER_MOCKS = """
from infra.harness.mocked import run_program
run = run_program("dev")
kinds = sorted({r.type for r in run.resources})
assert "kubernetes:core/v1:Pod" in kinds and "kubernetes:apps/v1:Deployment" in kinds, kinds
print("program ran:", len(run.resources), "resources")
"""
# What the policy pack and the local runner import at start (the runner's heavy imports: TF + TFF).
POLICY_AND_RUNNER = "import pulumi_policy, policy.tff_policies, rich, matplotlib, services.runner.local; print('imports ok')"


def uv_command() -> list[str]:
    """uv as the Makefile finds it: on PATH, else the copy `make uv` installs into this Python."""
    found = shutil.which("uv")
    return [found] if found else [sys.executable, "-m", "uv"]


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed and working-tree files git knows, without any environment or cache."""
    dest = tmp_path_factory.mktemp("pulumi-project")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO_ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        src = REPO_ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def toolchain_env(project: Path) -> dict[str, str]:
    venv = yaml.safe_load((project / "Pulumi.yaml").read_text())["runtime"]["options"]["virtualenv"]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")}
    env["UV_PROJECT_ENVIRONMENT"] = str(project / venv)
    return env


def run(cmd: list[str], project: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, cwd=project, env=toolchain_env(project), capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_pulumi_yaml_uses_the_uv_toolchain() -> None:
    options = yaml.safe_load((REPO_ROOT / "Pulumi.yaml").read_text())["runtime"]["options"]
    assert options["toolchain"] == "uv" and options["virtualenv"]


def test_plain_uv_sync_then_uv_run_runs_program_policy_and_runner(fresh_copy: Path) -> None:
    run([*uv_command(), "sync"], fresh_copy)  # what `pulumi install` runs
    out = run([*uv_command(), "run", "python", "-c", PROGRAM_UNDER_MOCKS], fresh_copy)
    assert "program ran:" in out.stdout
    out = run([*uv_command(), "run", "python", "-c", POLICY_AND_RUNNER], fresh_copy)
    assert "imports ok" in out.stdout
    # A second plain sync (e.g. `pulumi install` again after `make sync`) must not remove anything.
    again = run([*uv_command(), "sync"], fresh_copy)
    assert "Uninstalled" not in again.stderr, again.stderr
