"""The policy config for a stack, from its committed ``Pulumi.<stack>.yaml``.

``python -m policy.pack_config --stack prod --out policy-config.json`` writes the JSON file that
``pulumi preview --policy-pack policy --policy-pack-config policy-config.json`` (and pulumi/actions'
``policyPackConfigs``) take, so the stack-dependent policies see the stack's own settings.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from infra.stack_files import REPO_ROOT, project_name, stack_config
from infra.stack_schema import DeploymentSettings
from policy.tff_policies import ALLOW_LOAD_BALANCER, IMAGES_PINNED, NO_LOAD_BALANCER, REQUIRE_DIGEST


def pack_config(stack: str, root: Path = REPO_ROOT) -> dict[str, dict[str, Any]]:
    """Policy name -> its config properties for ``stack`` (FileNotFoundError for an unknown stack)."""
    raw = stack_config(stack, root).get(f"{project_name(root)}:deployment") or {}
    deployment = DeploymentSettings.model_validate(raw)
    return {
        IMAGES_PINNED.name: {REQUIRE_DIGEST: deployment.environment == "prod"},
        NO_LOAD_BALANCER.name: {ALLOW_LOAD_BALANCER: deployment.network.allow_load_balancer},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m policy.pack_config", description=__doc__.splitlines()[0])
    parser.add_argument("--stack", required=True)
    parser.add_argument("--out", type=Path, help="file to write (default: stdout)")
    args = parser.parse_args(argv)
    try:
        config = pack_config(args.stack)
    except FileNotFoundError as exc:
        print(f"policy.pack_config: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
