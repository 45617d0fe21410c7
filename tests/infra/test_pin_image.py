"""What the publish workflow proposes for prod: `python -m infra.pin_image` writes the pushed reference
into Pulumi.prod.yaml's deployment.image.ref and changes nothing else, comments included."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from infra.harness.mocked import run_program
from infra.pin_image import PinError, main, pin_text
from infra.stack_files import REPO_ROOT

PUSHED = "ghcr.io/someone/tff-k8s:v0.2.0@sha256:" + "4e" * 32


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A copy of the repository's stack files: the test edits them."""
    for name in ("Pulumi.yaml", "Pulumi.dev.yaml", "Pulumi.prod.yaml"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    return tmp_path


def test_pinning_changes_exactly_one_line(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (root / "Pulumi.prod.yaml").read_text().splitlines()
    assert main(["--stack", "prod", "--ref", PUSHED], root=root) == 0
    after = (root / "Pulumi.prod.yaml").read_text().splitlines()
    changed = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    assert len(changed) == 1, changed
    old, new = changed[0]
    assert old.strip().startswith("ref: ") and new == old[: old.index("ref: ")] + f"ref: {PUSHED}"
    config = yaml.safe_load((root / "Pulumi.prod.yaml").read_text())["config"]
    assert config["tff-k8s:deployment"]["image"]["ref"] == PUSHED
    assert f"-> {PUSHED}" in capsys.readouterr().out


def test_the_pinned_stack_deploys_the_pushed_image(root: Path) -> None:
    assert main(["--stack", "prod", "--ref", PUSHED], root=root) == 0
    run = run_program("prod", root=root)
    pod = run.one("kubernetes:core/v1:Pod").inputs["spec"]["containers"][0]
    assert pod["image"] == PUSHED and run.outputs["image"] == PUSHED


def test_pinning_the_same_reference_again_changes_nothing(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--stack", "prod", "--ref", PUSHED], root=root) == 0
    text = (root / "Pulumi.prod.yaml").read_text()
    assert main(["--stack", "prod", "--ref", PUSHED], root=root) == 0
    assert (root / "Pulumi.prod.yaml").read_text() == text
    assert f"already {PUSHED}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("ref", "words"),
    [
        ("ghcr.io/someone/tff-k8s:v0.2.0", "not pinned by digest"),
        ("ghcr.io/someone/tff-k8s:latest@sha256:" + "4e" * 32, "latest"),
        ("ghcr.io/someone/tff-k8s@sha256:short", "digest"),
    ],
)
def test_a_reference_without_a_proper_digest_is_refused(
    root: Path, ref: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (root / "Pulumi.prod.yaml").read_text()
    assert main(["--stack", "prod", "--ref", ref], root=root) == 1
    assert words in capsys.readouterr().err
    assert (root / "Pulumi.prod.yaml").read_text() == before


def test_comments_and_a_trailing_comment_survive() -> None:
    text = (
        "# header\nconfig:\n  tff-k8s:deployment:\n    environment: prod\n    image:\n"
        "      ref: old:1@sha256:" + "0" * 64 + "  # pinned by publish.yml\n"
        "      pull_policy: IfNotPresent\n  tff-k8s:federation: {}\n"
    )
    pinned = pin_text(text, PUSHED, "tff-k8s")
    assert pinned.startswith("# header\n")
    assert f"      ref: {PUSHED}  # pinned by publish.yml\n" in pinned


@pytest.mark.parametrize(
    "text",
    [
        "config:\n  tff-k8s:deployment:\n    environment: prod\n",
        "config:\n  tff-k8s:federation:\n    image:\n      ref: x:1\n",
    ],
)
def test_a_stack_file_without_the_key_is_refused(text: str) -> None:
    with pytest.raises(PinError, match="no config.tff-k8s:deployment.image.ref line"):
        pin_text(text, PUSHED, "tff-k8s")
