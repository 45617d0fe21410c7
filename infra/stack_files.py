"""The committed stack files: ``Pulumi.yaml`` (the project's name) and each ``Pulumi.<stack>.yaml``
(its ``config:`` mapping), read as they lie in the repository. Imports pyyaml only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent


def project_name(root: Path = REPO_ROOT) -> str:
    return yaml.safe_load((root / "Pulumi.yaml").read_text())["name"]


def stack_config(stack: str, root: Path = REPO_ROOT) -> dict[str, Any]:
    """The ``config:`` mapping of the committed ``Pulumi.<stack>.yaml``."""
    path = root / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"no stack file {path} (stacks: {sorted(p.name for p in root.glob('Pulumi.*.yaml'))})"
        )
    return dict((yaml.safe_load(path.read_text()) or {}).get("config") or {})
