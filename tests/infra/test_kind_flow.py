"""The make targets a user runs against kind (infra/k8s.mk), run for real with stand-ins for kind,
docker, kubectl and pulumi that record what they are asked to do: no cluster, no Docker daemon."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.stack_files import REPO_ROOT

# One stand-in for every tool; it logs its name, arguments and the image override it was given.
STUB = r"""#!/bin/sh
tool=$(basename "$0")
printf '%s %s | TFF_K8S_IMAGE_REF=%s\n' "$tool" "$*" "${TFF_K8S_IMAGE_REF-<unset>}" >> "$STUB_LOG"
case "$tool $*" in
  "kind version"*) echo "kind v$STUB_KIND_VERSION go1.24.2 linux/amd64" ;;
  "kind get clusters"*) ;;
  "kind get nodes"*) printf '%s\n' tff-k8s-control-plane tff-k8s-worker tff-k8s-worker2 ;;
  "docker build"*)
    while [ $# -gt 0 ]; do
      if [ "$1" = --iidfile ]; then printf 'sha256:%s' "$STUB_IMAGE_ID" > "$2"; fi
      shift
    done ;;
esac
"""
TOOLS = ("kind", "docker", "kubectl", "pulumi")


@dataclass
class Make:
    returncode: int
    stderr: str
    calls: list[str]

    def called(self, prefix: str) -> list[str]:
        return [c for c in self.calls if c.startswith(prefix)]


@pytest.fixture
def make(tmp_path: Path) -> Callable[..., Make]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        (bin_dir / tool).write_text(STUB)
        (bin_dir / tool).chmod(0o755)
    log = tmp_path / "calls.log"

    def run(*targets: str, kind_version: str = "0.31.0", image_id: str = "ab" * 32) -> Make:
        log.write_text("")
        env = {
            "PATH": os.environ["PATH"],
            "STUB_LOG": str(log),
            "STUB_KIND_VERSION": kind_version,
            "STUB_IMAGE_ID": image_id,
        }
        tools = [f"{t.upper()}={bin_dir / t}" for t in TOOLS]
        proc = subprocess.run(
            [
                "make",
                "--no-print-directory",
                *targets,
                *tools,
                "UV=true",
                f"IMAGE_ID_FILE={tmp_path / 'image.iid'}",
            ],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return Make(proc.returncode, proc.stderr, log.read_text().splitlines())

    return run


@pytest.mark.parametrize("old", ["0.24.0", "0.27.0"])
def test_kind_up_refuses_a_kind_whose_network_policies_block_probes(
    make: Callable[..., Make], old: str
) -> None:
    result = make("kind-up", kind_version=old)
    assert result.returncode != 0
    assert f"kind {old} is older than 0.28.0" in result.stderr
    assert not result.called("kind create"), "no cluster from a kind that would never run the Pods"


@pytest.mark.parametrize("good", ["0.28.0", "0.31.0", "1.0.0"])
def test_kind_up_creates_the_cluster_with_a_fixed_kind(make: Callable[..., Make], good: str) -> None:
    result = make("kind-up", kind_version=good)
    assert result.returncode == 0, result.stderr
    (create,) = result.called("kind create cluster")
    assert "--name tff-k8s --config infra/kind-cluster.yaml" in create


ID_A, ID_B = "a1" * 32, "b2" * 32


def test_images_builds_the_one_image_and_tags_it_by_content(make: Callable[..., Make]) -> None:
    result = make("images", image_id=ID_A)
    assert result.returncode == 0, result.stderr
    (build,) = result.called("docker build")
    assert "-f services/Dockerfile" in build and (REPO_ROOT / "services" / "Dockerfile").is_file()
    assert "-t tff-k8s:dev" in build
    (tag,) = result.called("docker tag")
    assert tag.startswith(f"docker tag sha256:{ID_A} tff-k8s:{ID_A[:12]} ")


def test_up_dev_deploys_the_image_just_built_so_a_rebuild_rolls_the_pods(make: Callable[..., Make]) -> None:
    """With one fixed tag and IfNotPresent, a rebuilt image never reached the Pods (their spec did not
    change); the content tag changes with the image, and up-dev hands it to the program."""
    refs = []
    for image_id in (ID_A, ID_B):
        result = make("images", "up-dev", image_id=image_id)
        assert result.returncode == 0, result.stderr
        (up,) = result.called("pulumi up")
        assert "--stack dev" in up
        refs.append(up.rpartition("TFF_K8S_IMAGE_REF=")[2])
    assert refs == [f"tff-k8s:{ID_A[:12]}", f"tff-k8s:{ID_B[:12]}"]


def test_preview_dev_shows_the_built_image(make: Callable[..., Make]) -> None:
    result = make("images", "preview-dev", image_id=ID_A)
    assert result.returncode == 0, result.stderr
    assert result.called("pulumi preview")[0].endswith(f"TFF_K8S_IMAGE_REF=tff-k8s:{ID_A[:12]}")


def test_kind_load_copies_the_image_to_the_worker_nodes_only(make: Callable[..., Make]) -> None:
    """The Pods run on the workers (kind taints a multi-node cluster's control plane NoSchedule)."""
    result = make("images", "kind-load", image_id=ID_A)
    assert result.returncode == 0, result.stderr
    (load,) = result.called("kind load")
    assert load.split(" | ")[0] == (
        f"kind load docker-image --name tff-k8s --nodes tff-k8s-worker,tff-k8s-worker2 "
        f"tff-k8s:{ID_A[:12]} tff-k8s:dev"
    )


@pytest.mark.parametrize("target", ["kind-load", "up-dev", "image-ref"])
def test_targets_that_need_the_image_say_to_build_it(make: Callable[..., Make], target: str) -> None:
    result = make(target)
    assert result.returncode != 0
    assert "run make images" in result.stderr
    assert not result.called("kind load") and not result.called("pulumi up")
