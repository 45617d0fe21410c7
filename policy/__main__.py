"""Entry point the Pulumi CLI runs for ``--policy-pack policy``: builds the pack, nothing else.

The policies live in policy/tff_policies.py (which the tests import). The CLI runs this directory as
a script, which puts the directory itself first on sys.path; the repository root replaces it, so that
``policy`` and ``infra`` import as packages and no file here shadows a top-level module.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = str(HERE.parent)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from pulumi_policy import PolicyPack  # noqa: E402

from policy.tff_policies import ENFORCEMENT, PACK_NAME, POLICIES  # noqa: E402

PolicyPack(name=PACK_NAME, policies=list(POLICIES), enforcement_level=ENFORCEMENT)
