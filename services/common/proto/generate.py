"""Regenerate the committed gRPC code from federation.proto (mirrors the folder structure, so the
generated modules import each other as ``services.common.proto.*``).

    uv run python -m services.common.proto.generate [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
ROOT = PROTO_DIR.parents[2]
PROTOS = ["federation.proto"]


def generate(out_root: Path) -> list[Path]:
    from grpc_tools import protoc  # dev dependency only

    rel = PROTO_DIR.relative_to(ROOT)
    args = [
        "protoc",
        f"-I{ROOT}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *[str(rel / p) for p in PROTOS],
    ]
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
    finally:
        os.chdir(cwd)
    stems = [Path(p).stem for p in PROTOS]
    return [out_root / rel / f"{s}{suffix}" for s in stems for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT, help="root to write under (default: the repository)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
