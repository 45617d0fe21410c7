"""Pulumi entry point (Pulumi.yaml: ``main: infra/``); the program lives in infra/program.py."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)  # the repository root, so `import infra` resolves
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from infra.program import main  # noqa: E402

main()
