"""The committed gRPC code is exactly what services/common/proto/generate.py makes from the .proto
files: editing federation.proto without regenerating (or editing generated code by hand) fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.proto import generate as gen

pytest.importorskip("grpc_tools")


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("proto")
    return out, gen.generate(out)


def test_every_proto_file_is_generated() -> None:
    on_disk = sorted(p.name for p in gen.PROTO_DIR.glob("*.proto"))
    assert on_disk and sorted(gen.PROTOS) == on_disk


def test_generated_code_matches_committed(regenerated: tuple[Path, list[Path]]) -> None:
    out, paths = regenerated
    assert len(paths) == 3 * len(gen.PROTOS)
    stale = []
    for path in paths:
        rel = path.relative_to(out)
        committed = gen.ROOT / rel
        assert path.is_file(), f"protoc did not write {rel}"
        if not committed.is_file() or committed.read_bytes() != path.read_bytes():
            stale.append(str(rel))
    assert not stale, f"regenerate with `python -m services.common.proto.generate`: {stale} differ"


def test_generation_writes_only_under_its_root(regenerated: tuple[Path, list[Path]]) -> None:
    out, paths = regenerated
    written = sorted(p for p in out.rglob("*") if p.is_file())
    assert written == sorted(paths)


def test_generated_modules_import_each_other_by_package() -> None:
    grpc_module = (gen.PROTO_DIR / "federation_pb2_grpc.py").read_text()
    assert "from services.common.proto import federation_pb2" in grpc_module
