"""The GitHub workflows only run what this repository has: Makefile targets (the Makefile includes
infra/k8s.mk), modules and paths, the policy pack directory, stacks with a ``Pulumi.<stack>.yaml``,
and actions pinned to full commit SHAs. The checker is tested on broken workflows too."""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest
import yaml

from infra.stack_files import REPO_ROOT
from services.cli import COMMANDS

WORKFLOWS = REPO_ROOT / ".github" / "workflows"
PINNED = re.compile(r"^(?P<action>[\w.-]+/[\w.-]+)@(?P<sha>[0-9a-f]{40})$")
VERSION_COMMENT = re.compile(r"#\s*v\d+\.\d+\.\d+\s*$")
# First words a run step may start with: make/uv for everything of ours, plain shell otherwise.
SHELL = {"make", "uv", "[", "echo", "printf", "mkdir", "chmod", "kubectl", "if", "then", "else", "fi", "exit"}
UV_TOOLS = {"ruff", "mypy", "pytest", "python", "tff-k8s"}
PATH_TOOLS = {"ruff", "mypy", "pytest"}


@cache
def make_targets() -> dict[str, list[str]]:
    """Target -> recipe lines, from the Makefile and the files it includes."""
    targets: dict[str, list[str]] = {}
    files = [REPO_ROOT / "Makefile"]
    for path in files:
        current: list[str] | None = None
        for line in path.read_text().splitlines():
            if include := re.match(r"^-?include\s+(\S+)", line):
                files.append(REPO_ROOT / include[1])
            elif line.startswith("\t") and current is not None:
                current.append(line.strip())
            elif match := re.match(r"^([A-Za-z0-9_.-]+(?:\s+[A-Za-z0-9_.-]+)*)\s*:(?!=)", line):
                current = []
                for target in match[1].split():
                    if not target.startswith("."):
                        targets[target] = current
            else:
                current = None
    return targets


def make_variable(name: str) -> str:
    """A simple (``:=``/``?=``/``=``) variable of infra/k8s.mk, e.g. ``KIND_MIN_VERSION``."""
    match = re.search(rf"^{name}\s*[:?]?=\s*(\S+)\s*$", (REPO_ROOT / "infra" / "k8s.mk").read_text(), re.M)
    assert match, f"infra/k8s.mk sets no {name}"
    return match[1]


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.removeprefix("v").split("."))


def stacks() -> set[str]:
    return {p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in REPO_ROOT.glob("Pulumi.*.yaml")}


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def triggers(workflow: dict[str, Any]) -> dict[str, Any]:
    on = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` key as True
    return on if isinstance(on, dict) else {t: None for t in ([on] if isinstance(on, str) else on)}


def steps(workflow: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for job_name, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            yield job_name, step


def commands(script: str) -> Iterator[list[str]]:
    """Each simple command of a run script, as words (${{ }} expressions become one placeholder word)."""
    script = re.sub(r"\$\{\{.*?\}\}", "EXPR", script).replace("\\\n", " ")
    for line in script.splitlines():
        for part in re.split(r"&&|\|\||;|\|", line):
            words = shlex.split(part, comments=True)
            words = [w for w in words if not re.match(r"^[A-Z_]+=", w)] if words else words
            if words:
                yield words


def _uv_run(words: list[str]) -> list[str]:
    """The command ``uv run [--flags] ...`` runs."""
    rest = words[2:]
    while rest and rest[0].startswith("-"):
        rest = rest[1:]
    return rest


def command_problems(words: list[str]) -> list[str]:
    problems = []
    head = words[0]
    if head not in SHELL:
        return [f"{shlex.join(words)}: {head!r} is not a command this repository's workflows use"]
    if head == "make":
        for target in (w for w in words[1:] if not w.startswith("-") and "=" not in w):
            if target not in make_targets():
                problems.append(f"make {target}: no such target in the Makefile or infra/k8s.mk")
    if head == "uv":
        if words[1:2] != ["run"] or "--frozen" not in words:
            return [f"{shlex.join(words)}: run tools with `uv run --frozen` (the locked environment)"]
        run = _uv_run(words)
        tool, args = run[0], run[1:]
        if tool not in UV_TOOLS:
            problems.append(f"{shlex.join(words)}: {tool!r} is not a tool of this project")
        if tool in PATH_TOOLS:
            for path in (a for a in args if not a.startswith("-") and a != "check"):
                if not (REPO_ROOT / path).exists():
                    problems.append(f"{shlex.join(words)}: no path {path}")
        if tool == "python" and args[:1] == ["-m"]:
            module = args[1]
            base = REPO_ROOT / module.replace(".", "/")
            if not (base.with_suffix(".py").is_file() or (base / "__main__.py").is_file()):
                problems.append(f"{shlex.join(words)}: no module {module} in the repository")
            if "--stack" in args and args[args.index("--stack") + 1] not in stacks():
                problems.append(f"{shlex.join(words)}: no Pulumi.{args[args.index('--stack') + 1]}.yaml")
        if tool == "tff-k8s" and (not args or args[0] not in COMMANDS):
            problems.append(f"{shlex.join(words)}: tff-k8s has no such command")
    return problems


def action_problems(workflow: dict[str, Any], text: str) -> list[str]:
    problems = []
    for job_name, step in steps(workflow):
        uses = step.get("uses")
        if uses is None:
            continue
        if not PINNED.match(uses):
            problems.append(f"{job_name}: {uses} is not pinned to a full commit SHA")
        elif not any(uses in line and VERSION_COMMENT.search(line) for line in text.splitlines()):
            problems.append(f"{job_name}: {uses} needs its release tag in a comment (# vX.Y.Z)")
        inputs = step.get("with") or {}
        action = uses.split("@")[0]
        if action == "pulumi/actions":
            problems += pulumi_step_problems(workflow, job_name, inputs)
        if (
            action == "helm/kind-action"
            and "config" in inputs
            and not (REPO_ROOT / inputs["config"]).is_file()
        ):
            problems.append(f"{job_name}: kind config {inputs['config']} does not exist")
    return problems


def pulumi_step_problems(workflow: dict[str, Any], job_name: str, inputs: dict[str, Any]) -> list[str]:
    problems = []
    stack = str(inputs.get("stack-name", ""))
    if stack not in stacks():
        problems.append(f"{job_name}: stack {stack!r} has no Pulumi.{stack}.yaml")
    if inputs.get("command") not in ("preview", "up"):
        problems.append(f"{job_name}: unexpected pulumi command {inputs.get('command')!r}")
    if not (REPO_ROOT / str(inputs.get("work-dir", ".")) / "Pulumi.yaml").is_file():
        problems.append(f"{job_name}: work-dir {inputs.get('work-dir')} holds no Pulumi.yaml")
    pack = REPO_ROOT / str(inputs.get("policyPacks", ""))
    if (
        not inputs.get("policyPacks")
        or not (pack / "PulumiPolicy.yaml").is_file()
        or not (pack / "__main__.py").is_file()
    ):
        problems.append(
            f"{job_name}: policyPacks {inputs.get('policyPacks')!r} is not the policy pack directory"
        )
    config = str(inputs.get("policyPackConfigs", ""))
    written = [
        words
        for name, step in steps(workflow)
        if name == job_name and "run" in step
        for words in commands(re.sub(r"\$\{\{\s*runner\.temp\s*\}\}", "$RUNNER_TEMP", step["run"]))
        if "policy.pack_config" in words
    ]
    wanted = config.replace("${{ runner.temp }}", "$RUNNER_TEMP")
    if not any(
        w[w.index("--out") + 1] == wanted and w[w.index("--stack") + 1] == stack
        for w in written
        if "--out" in w
    ):
        problems.append(
            f"{job_name}: {config!r} is not written by `python -m policy.pack_config --stack {stack}`"
        )
    return problems


def workflow_problems(workflow: dict[str, Any], text: str) -> list[str]:
    problems = action_problems(workflow, text)
    for job_name, step in steps(workflow):
        if "run" in step:
            # runner.temp expands in the shell too; keep paths recognisable
            for words in commands(step["run"]):
                problems += [f"{job_name}: {p}" for p in command_problems(words)]
    return problems


# --- the repository's workflows --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in WORKFLOWS.glob("*.y*ml")))
def test_workflows_run_only_what_the_repository_has(name: str) -> None:
    text = (WORKFLOWS / name).read_text()
    assert workflow_problems(yaml.safe_load(text), text) == []


def test_ci_runs_lint_types_and_the_readme_test_command_on_python_311() -> None:
    ci = load("ci.yml")
    assert {"push", "pull_request"} <= set(triggers(ci))
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["requires-python"] == ">=3.11,<3.12"
    pythons = [s["with"]["python-version"] for _, s in steps(ci) if "setup-python" in s.get("uses", "")]
    assert pythons == ["3.11"]
    runs = [w for _, s in steps(ci) if "run" in s for w in commands(s["run"])]
    assert ["make", "sync"] in runs and make_targets()["sync"] == ["$(UV) sync --frozen"]
    assert ["make", "test"] in runs, "the README's test command"
    assert ["make", "lint"] in runs and any(w[-2:] == ["check", "policy"] for w in runs), (
        "ruff on policy/ too"
    )
    mypy = [w for w in runs if "mypy" in w]
    assert mypy and {"services", "infra", "policy"} <= set(mypy[0])


def test_kind_is_pinned_to_a_release_whose_network_policies_let_probes_through() -> None:
    """kind < 0.28 drops the kubelet's probes under a default-deny policy (kind#3875): every workflow
    that installs kind pins its version, at or above the minimum infra/k8s.mk enforces for users."""
    minimum = version(make_variable("KIND_MIN_VERSION"))
    assert minimum >= (0, 28, 0)
    installs = [
        (name, step.get("with") or {})
        for path in sorted(WORKFLOWS.glob("*.y*ml"))
        for name, step in steps(load(path.name))
        if step.get("uses", "").startswith("helm/kind-action@")
    ]
    assert installs, "no workflow installs kind"
    for job, inputs in installs:
        assert "version" in inputs, f"{job}: helm/kind-action without `version:` installs its own default"
        assert version(str(inputs["version"])) >= minimum, (job, inputs["version"])
        assert str(inputs.get("kubectl_version", "")).startswith("v1."), f"{job}: pin kubectl with kind"
    docs = (REPO_ROOT / "docs" / "kubernetes.md").read_text()
    assert f"kind](https://kind.sigs.k8s.io/) >= {make_variable('KIND_MIN_VERSION')}" in docs


def test_preview_runs_the_policy_pack_on_pull_requests_for_every_stack() -> None:
    preview = load("preview.yml")
    assert set(triggers(preview)) == {"pull_request"}
    pulumi = {job: s["with"] for job, s in steps(preview) if s.get("uses", "").startswith("pulumi/actions@")}
    assert {w["stack-name"] for w in pulumi.values()} == stacks()
    for inputs in pulumi.values():
        assert inputs["command"] == "preview"
        assert inputs["policyPacks"] == "policy"
        assert inputs["comment-on-pr"] is True
    assert preview["permissions"]["pull-requests"] == "write"


def _dev_flow(workflow: dict[str, Any]) -> list[str]:
    """The dev job's make targets and kind/pulumi actions, in the order they run."""
    order = []
    for job, step in steps(workflow):
        if job != "dev":
            continue
        if "run" in step:
            order += [t for w in commands(step["run"]) if w[0] == "make" for t in w[1:]]
            order += ["$GITHUB_ENV"] if "$GITHUB_ENV" in step["run"] else []
        if step.get("uses", "").startswith(("helm/kind-action@", "pulumi/actions@")):
            order.append(step["uses"].split("@")[0])
    return order


def test_preview_dev_creates_a_kind_cluster_but_builds_and_loads_no_image() -> None:
    """A preview starts no Pods: building the 2.4 GB image and loading it into kind would be wasted."""
    order = _dev_flow(load("preview.yml"))
    assert order.index("helm/kind-action") < order.index("kind-up") < order.index("pulumi/actions")
    assert "images" not in order and "kind-load" not in order


def test_up_dev_deploys_the_image_it_built_by_its_content_tag() -> None:
    """up.yml runs the Pods: it builds the image, loads it, and hands its content tag to the program."""
    up = load("up.yml")
    order = _dev_flow(up)
    assert order.index("helm/kind-action") < order.index("kind-up") < order.index("images")
    assert order.index("images") < order.index("kind-load") < order.index("$GITHUB_ENV")
    assert order.index("$GITHUB_ENV") < order.index("pulumi/actions")
    (export,) = [s["run"] for job, s in steps(up) if job == "dev" and "$GITHUB_ENV" in s.get("run", "")]
    assert export.strip() == 'echo "TFF_K8S_IMAGE_REF=$(make -s image-ref)" >> "$GITHUB_ENV"'
    assert "image-ref" in make_targets()


def test_preview_prod_needs_credentials_and_is_skipped_without_them() -> None:
    jobs = load("preview.yml")["jobs"]
    gate, prod = jobs["prod-credentials"], jobs["prod"]
    assert prod["needs"] == "prod-credentials"
    assert prod["if"] == "needs.prod-credentials.outputs.present == 'true'"
    check = gate["steps"][0]
    assert set(check["env"].values()) == {
        "${{ secrets.PULUMI_ACCESS_TOKEN }}",
        "${{ secrets.PROD_KUBECONFIG }}",
    }
    assert "present=false" in check["run"] and "present=true" in check["run"]


def test_up_is_manual_and_offers_exactly_the_committed_stacks() -> None:
    up = load("up.yml")
    on = triggers(up)
    assert set(on) == {"workflow_dispatch"}
    # crosssilo spans three kind clusters on one machine: users run its `pulumi up` on their own
    assert set(on["workflow_dispatch"]["inputs"]["stack"]["options"]) == stacks() - {"crosssilo"}
    assert up["jobs"]["prod"]["environment"] == "prod"
    commands_run = [
        s["with"]["command"] for _, s in steps(up) if s.get("uses", "").startswith("pulumi/actions@")
    ]
    assert commands_run == ["up", "up"]


def test_publish_builds_the_one_image_once_pushes_it_to_ghcr_and_proposes_its_digest() -> None:
    """prod's image: one build of services/Dockerfile, pushed to this repository's registry, and its
    digest written into Pulumi.prod.yaml by a pull request (a reviewed change), never deployed from here."""
    text = (WORKFLOWS / "publish.yml").read_text()
    publish = yaml.safe_load(text)
    on = triggers(publish)
    assert set(on) <= {"push", "workflow_dispatch"} and on["push"]["tags"], "publishes releases, not PRs"
    builds = [(job, s["with"]) for job, s in steps(publish) if s.get("uses", "").startswith("docker/build-push-action@")]
    assert len(builds) == 1, "one image serves both roles: build it once"
    job, build = builds[0]
    assert build["file"] == "services/Dockerfile" and (REPO_ROOT / build["file"]).is_file()
    assert build["context"] == "." and build["push"] is True
    assert "docker build" not in text and "pulumi/actions" not in text, "no other build, no deploy"
    name_step = next(s for j, s in steps(publish) if j == job and s.get("id") == "name")
    assert 'IMAGE="ghcr.io/${GITHUB_REPOSITORY,,}"' in name_step["run"], "this repository's registry"
    assert build["tags"].startswith("${{ steps.name.outputs.image }}:")
    login = next(s["with"] for j, s in steps(publish) if s.get("uses", "").startswith("docker/login-action@"))
    assert login["registry"] == "ghcr.io" and login["password"] == "${{ secrets.GITHUB_TOKEN }}"
    # the digest the build pushed is what the pull request pins
    pushed = next(s for j, s in steps(publish) if j == job and s.get("id") == "pushed")
    assert pushed["env"]["REF"].endswith("@${{ steps.build.outputs.digest }}")
    assert publish["jobs"][job]["outputs"]["ref"] == "${{ steps.pushed.outputs.ref }}"
    (propose,) = [j for j, spec in publish["jobs"].items() if spec.get("needs") == job]
    pin = next(s for j, s in steps(publish) if j == propose and "infra.pin_image" in s.get("run", ""))
    assert pin["env"]["REF"] == f"${{{{ needs.{job}.outputs.ref }}}}"
    assert ["python", "-m", "infra.pin_image", "--stack", "prod", "--ref", "$REF"] == _uv_run(
        next(commands(pin["run"]))
    )[-7:]
    pr = next(
        s["with"] for j, s in steps(publish) if j == propose and s.get("uses", "").startswith("peter-evans/")
    )
    assert pr["add-paths"] == "Pulumi.prod.yaml"
    assert pr["base"] == "${{ github.event.repository.default_branch }}"
    # least privilege: read-only by default; each job gets only what it writes
    assert publish["permissions"] == {"contents": "read"}
    assert publish["jobs"][job]["permissions"] == {"contents": "read", "packages": "write"}
    assert publish["jobs"][propose]["permissions"] == {"contents": "write", "pull-requests": "write"}


# --- the checker catches what it should ------------------------------------------------------------

GOOD_STEP = {"uses": "actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683"}
GOOD_TEXT = "      - uses: actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4.2.2\n"


def _problems(*job_steps: dict[str, Any], text: str = GOOD_TEXT) -> list[str]:
    return workflow_problems(
        {"on": {"pull_request": None}, "jobs": {"j": {"steps": [GOOD_STEP, *job_steps]}}}, text
    )


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ({"run": "make kind-up imagez"}, "make imagez: no such target"),
        ({"run": "uv run --frozen ruff check polcy"}, "no path polcy"),
        ({"run": "uv run ruff check policy"}, "uv run --frozen"),
        (
            {"run": "uv run --frozen python -m policy.pack_configs --stack dev"},
            "no module policy.pack_configs",
        ),
        ({"run": "uv run --frozen python -m policy.pack_config --stack staging"}, "no Pulumi.staging.yaml"),
        ({"run": "uv run --frozen tff-k8s rendr --stack dev"}, "tff-k8s has no such command"),
        ({"run": "pip install -e ."}, "'pip' is not a command"),
        ({"uses": "pulumi/actions@v6"}, "not pinned to a full commit SHA"),
        ({"uses": "helm/kind-action@a1b0e391336a6ee6713a0583f8c6240d70863de3"}, "needs its release tag"),
    ],
)
def test_the_checker_reports_what_does_not_exist(step: dict[str, Any], expected: str) -> None:
    problems = _problems(step)
    assert any(expected in p for p in problems), problems


def test_the_checker_reports_a_bad_pulumi_step() -> None:
    sha = "8e5e406f4007fca908480587cb9893c07090f58d"
    step = {
        "uses": f"pulumi/actions@{sha}",
        "with": {
            "command": "preview",
            "stack-name": "staging",
            "policyPacks": "policies",
            "policyPackConfigs": "x.json",
        },
    }
    problems = _problems(step, text=GOOD_TEXT + f"      - uses: pulumi/actions@{sha} # v7.0.0\n")
    assert any("stack 'staging' has no Pulumi.staging.yaml" in p for p in problems)
    assert any("'policies' is not the policy pack directory" in p for p in problems)
    assert any("'x.json' is not written by" in p for p in problems)


def test_the_makefile_parser_sees_included_targets() -> None:
    targets = make_targets()
    assert {"sync", "test", "lint", "kind-up", "images", "kind-load"} <= set(targets)
    assert "include" not in targets and "SHELL" not in targets
