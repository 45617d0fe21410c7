"""``python -m infra.pin_image --stack prod --ref REPO:TAG@sha256:<digest>``: write an image reference
into a committed stack file's ``deployment.image.ref``, and change nothing else.

The publish workflow (.github/workflows/publish.yml) runs it with the reference it has just pushed and
proposes the result as a pull request, so a new prod image is a one-line diff someone reviews. The file
is edited as text, so its comments and layout stay; the result is read back and must differ from the
original in that one key only, and the stack config must still validate (prod: pinned by digest).
Imports pyyaml and pydantic only (the workflow runs it without the rest of the environment).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from infra.image_ref import check_image
from infra.stack_config import StackConfigError, parse
from infra.stack_files import REPO_ROOT, project_name

# A block-mapping line: indentation, key (up to the first ': ' or a final ':'), the rest.
_LINE = re.compile(r"^(?P<indent> *)(?P<key>[^\s#-][^#]*?):(?=\s|$)(?P<rest>.*)$")
_COMMENT = re.compile(r"\s+#.*$")


class PinError(ValueError):
    """The stack file cannot be pinned as asked; the message says why."""


def _scalar(value: str) -> str:
    """``value`` as a YAML scalar: plain when it reads back unchanged, double-quoted otherwise."""
    return value if yaml.safe_load(f"k: {value}") == {"k": value} else json.dumps(value)


def pin_text(text: str, ref: str, project: str) -> str:
    """``text`` (a ``Pulumi.<stack>.yaml``) with ``config.<project>:deployment.image.ref`` set to ``ref``."""
    target = ["config", f"{project}:deployment", "image", "ref"]
    path: list[tuple[int, str]] = []
    lines = text.splitlines(keepends=True)
    found = None
    for i, line in enumerate(lines):
        match = _LINE.match(line.rstrip("\n"))
        if match is None:
            continue
        indent = len(match["indent"])
        path = [(n, key) for n, key in path if n < indent] + [(indent, match["key"].strip())]
        if [key for _, key in path] == target:
            if found is not None:
                raise PinError(f"{'.'.join(target)} is set twice")
            found = i
    if found is None:
        raise PinError(f"no {'.'.join(target)} line to pin: add `image:` / `ref:` under {target[1]}")
    match = _LINE.match(lines[found].rstrip("\n"))
    assert match is not None
    comment = _COMMENT.search(match["rest"])
    ending = "\n" if lines[found].endswith("\n") else ""
    lines[found] = f"{match['indent']}ref: {_scalar(ref)}{comment[0] if comment else ''}{ending}"
    return "".join(lines)


def _checked(before: str, after: str, ref: str, project: str) -> None:
    old, new = yaml.safe_load(before), yaml.safe_load(after)
    expected = copy.deepcopy(old)
    expected["config"][f"{project}:deployment"]["image"]["ref"] = ref
    if new != expected:
        raise PinError("the edit changed more than deployment.image.ref; pin it by hand")
    config: dict[str, Any] = new["config"]
    try:
        parse(config.get(f"{project}:deployment"), config.get(f"{project}:federation"))
    except StackConfigError as exc:
        raise PinError(str(exc)) from None


def pin(stack: str, ref: str, root: Path = REPO_ROOT) -> tuple[str | None, bool]:
    """Pin ``ref`` in ``Pulumi.<stack>.yaml``: (the reference it replaced, whether the file changed)."""
    check_image(ref, require_digest=True)
    path = root / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        raise PinError(f"no stack file {path}")
    project = project_name(root)
    before = path.read_text()
    after = pin_text(before, ref, project)
    _checked(before, after, ref, project)
    old = yaml.safe_load(before)["config"][f"{project}:deployment"]["image"]["ref"]
    if after != before:
        path.write_text(after)
    return old, after != before


def main(argv: Sequence[str] | None = None, root: Path = REPO_ROOT) -> int:
    """0: pinned (or already pinned); 1: refused (the message names why)."""
    parser = argparse.ArgumentParser(prog="python -m infra.pin_image", description=__doc__.splitlines()[0])
    parser.add_argument("--stack", required=True, help="stack whose Pulumi.<stack>.yaml to edit")
    parser.add_argument("--ref", required=True, help="image reference, pinned by digest")
    args = parser.parse_args(argv)
    try:
        old, changed = pin(args.stack, args.ref, root)
    except ValueError as exc:  # PinError, and check_image's ValueError for the reference itself
        print(f"pin_image: {exc}", file=sys.stderr)
        return 1
    state = f"{old} -> {args.ref}" if changed else f"already {args.ref}"
    print(f"Pulumi.{args.stack}.yaml deployment.image.ref: {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
