"""``tff-k8s render``: one deterministic YAML file per declared Kubernetes resource, valid against the
Kubernetes schema, with no secret's value in it, and the exit codes a script can rely on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from rendered import CROSS_SILO_STACKS, STACKS, rendered

from infra import render as render_module
from infra.declared import MockedRun, Resource
from infra.harness.mocked import run_program
from infra.manifests import by_cluster, is_kubernetes, to_manifest
from infra.render import HEADER, REDACTED, file_name, main, manifest, write
from infra.stack_files import REPO_ROOT, stack_config
from services.cli import main as cli

SECRET = "kubernetes:core/v1:Secret"


def _read(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.mark.parametrize("stack", STACKS)
def test_rendering_twice_gives_byte_identical_files(stack: str, tmp_path: Path) -> None:
    assert main(["--stack", stack, "--out", str(tmp_path / "a")]) == 0
    assert main(["--stack", stack, "--out", str(tmp_path / "b")]) == 0
    first, second = _read(tmp_path / "a"), _read(tmp_path / "b")
    assert first == second
    assert len(first) >= 15


@pytest.mark.parametrize("stack", STACKS)
def test_one_file_per_declared_kubernetes_resource(stack: str) -> None:
    files = rendered(stack)
    declared = [r for r in run_program(stack).resources if is_kubernetes(r)]
    assert len(files) == len(declared)
    by_file = {file_name(to_manifest(r)): r for r in declared}
    assert sorted(by_file) == sorted(files)
    for name, text in files.items():
        assert text.startswith(HEADER.format(stack=stack))
        docs = list(yaml.safe_load_all(text))
        assert len(docs) == 1, name
        assert docs[0] == manifest(by_file[name]), name


@pytest.mark.parametrize("stack", STACKS)
def test_file_names_and_keys_are_stable(stack: str) -> None:
    for name, text in rendered(stack).items():
        m = yaml.safe_load(text)
        meta = m["metadata"]
        parts = [m["kind"].lower(), meta.get("namespace"), meta["name"]]
        assert name == "-".join(p for p in parts if p) + ".yaml"
        body = text.removeprefix(HEADER.format(stack=stack))
        assert body == yaml.safe_dump(
            m, sort_keys=True, default_flow_style=False, allow_unicode=True, width=120
        )
    assert "namespace-tff-k8s.yaml" in rendered(stack)  # cluster-scoped: no namespace part


@pytest.mark.parametrize("stack", STACKS)
def test_rendered_files_validate_strictly(stack: str) -> None:
    """The files scanners and reviewers read are valid Kubernetes objects for the newest schema."""
    version = kubernetes_validate.utils.latest_version()
    errors = []
    for name, text in rendered(stack).items():
        try:
            kubernetes_validate.validate(yaml.safe_load(text), version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{name}: {exc.message} at {list(exc.path)}")
    assert not errors, "\n".join(errors)


def test_prod_secrets_are_placeholders() -> None:
    secrets = {n: yaml.safe_load(t) for n, t in rendered("prod").items() if n.startswith("secret-")}
    assert len(secrets) == 3
    for name, secret in secrets.items():
        values = list(secret["stringData"].values())
        assert values and all("stack secret, not decrypted under mocks" in v for v in values), name


def test_real_secret_values_are_never_written(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Whatever a run hands render (a marked secret, or a Secret nobody marked), no value gets out."""
    calls: list[dict] = []
    real = run_program("prod")
    leaked = [
        Resource(SECRET, "marked", {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "marked", "namespace": "x"},
                 "stringData": {"tls.key": "hunter2-key"}}, secret_paths=("stringData.tls.key",)),
        Resource(SECRET, "unmarked", {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "unmarked", "namespace": "x"},
                 "data": {"token": "aHVudGVyMi10b2tlbg=="}}),
    ]  # fmt: skip

    def fake_run(stack: str, **kwargs: object) -> MockedRun:
        calls.append(kwargs)
        return MockedRun(stack, resources=[*real.resources, *leaked])

    monkeypatch.setattr(render_module, "run_program", fake_run)
    assert main(["--stack", "prod", "--out", str(tmp_path)]) == 0
    assert calls and all(c.get("secrets") is None for c in calls), "render must run with placeholders only"
    text = "".join(p.read_text() for p in tmp_path.iterdir())
    assert "hunter2" not in text and "aHVudGVy" not in text
    assert yaml.safe_load((tmp_path / "secret-x-marked.yaml").read_text())["stringData"] == {
        "tls.key": REDACTED
    }
    assert yaml.safe_load((tmp_path / "secret-x-unmarked.yaml").read_text())["data"] == {"token": REDACTED}


def test_files_of_resources_no_longer_declared_are_removed(tmp_path: Path) -> None:
    stale = tmp_path / "pod-tff-k8s-old-server.yaml"
    stale.write_text(HEADER.format(stack="dev") + "kind: Pod\n")
    mine = tmp_path / "notes.yaml"
    mine.write_text("not rendered\n")
    write(rendered("dev"), tmp_path)
    assert not stale.exists()
    assert mine.exists(), "files render did not write are left alone"
    assert len(list(tmp_path.glob("*.yaml"))) == len(rendered("dev")) + 1


def test_cli_dispatches_render(tmp_path: Path) -> None:
    assert cli(["render", "--stack", "dev", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(rendered("dev"))


def test_an_unknown_stack_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["render", "--stack", "staging", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown stack 'staging'" in err and "['crosssilo', 'dev', 'prod']" in err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_missing_arguments_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--stack", "dev"]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["--help"]) == 0


def test_invalid_stack_config_fails_with_the_key_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(REPO_ROOT / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    config = stack_config("dev")
    config["tff-k8s:deployment"]["clients"]["replicas"] = 1
    (tmp_path / "Pulumi.broken.yaml").write_text(yaml.safe_dump({"config": config}))
    monkeypatch.setattr(render_module, "REPO_ROOT", tmp_path)
    out = tmp_path / "out"
    assert main(["--stack", "broken", "--out", str(out)]) == 1
    assert "deployment.clients.replicas" in capsys.readouterr().err
    assert not out.exists()


def test_an_unwritable_output_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["--stack", "dev", "--out", str(blocker)]) == 1
    assert "cannot write to" in capsys.readouterr().err


def test_the_console_script_exits_2_for_an_unknown_stack(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "tff-k8s"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "services.cli"]
    done = subprocess.run(
        [*command, "render", "--stack", "nope", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "unknown stack 'nope'" in done.stderr


@pytest.mark.parametrize("stack", CROSS_SILO_STACKS)
def test_a_cross_silo_stack_renders_a_folder_per_cluster(stack: str, tmp_path: Path) -> None:
    files = rendered(stack)
    run = run_program(stack)
    clusters = by_cluster(run)
    assert {name.split("/", 1)[0] for name in files} == set(clusters) == {"hub", "silo-a", "silo-b"}
    for cluster, resources in clusters.items():
        assert sorted(f"{cluster}/{file_name(manifest(r))}" for r in resources) == sorted(
            n for n in files if n.startswith(f"{cluster}/")
        )
    assert main(["--stack", stack, "--out", str(tmp_path / "a")]) == 0
    assert main(["--stack", stack, "--out", str(tmp_path / "b")]) == 0
    first = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in (tmp_path / "a").rglob("*.yaml")}
    second = {p.relative_to(tmp_path / "b"): p.read_bytes() for p in (tmp_path / "b").rglob("*.yaml")}
    assert first == second and len(first) == len(files)
    assert "hub/namespace-tff-hub.yaml" in files and "silo-a/namespace-tff-silo.yaml" in files
    # the silos' keys never reach the files
    for name in (n for n in files if "/secret-" in n):
        assert "PRIVATE KEY" not in files[name], name


def test_a_silo_dropped_from_the_stack_leaves_no_stale_folder_files(tmp_path: Path) -> None:
    write({"hub/a.yaml": HEADER.format(stack="x") + "{}\n", "silo-z/b.yaml": HEADER.format(stack="x") + "{}\n"}, tmp_path)
    write({"hub/a.yaml": HEADER.format(stack="x") + "{}\n"}, tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.yaml")) == ["hub/a.yaml"]
