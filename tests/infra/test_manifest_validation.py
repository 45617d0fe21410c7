"""Every declared resource, as a manifest, is valid in strict mode for Kubernetes 1.29 through the
newest version kubernetes-validate ships."""

from __future__ import annotations

from functools import cache

import kubernetes_validate
import pytest
from infra_stacks import STACKS, declared
from kubernetes_validate import utils
from packaging.version import Version

OLDEST = Version("1.29")
VERSIONS = sorted(
    {utils.major_minor(v) for v in utils.all_versions() if Version(utils.major_minor(v)) >= OLDEST},
    key=Version,
)


@pytest.fixture(autouse=True)
def _cache_schema_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same schemas, parsed once instead of once per manifest (the 1.8 MB definitions dominate)."""
    monkeypatch.setattr(utils, "schema_contents", cache(utils.schema_contents))


def test_versions_span_1_29_to_the_newest() -> None:
    assert VERSIONS[0] == "1.29"
    assert VERSIONS[-1] == utils.major_minor(utils.latest_version())
    assert len(VERSIONS) >= 2


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_validate_strictly(stack: str, version: str) -> None:
    manifests = declared(stack).manifests
    assert len(manifests) >= 15
    errors = []
    for manifest in manifests:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(
                f"{manifest['kind']}/{manifest['metadata']['name']}: {exc.message} at {list(exc.path)}"
            )
    assert not errors, "\n".join(errors)


def test_strict_validation_rejects_an_unknown_field() -> None:
    pod = {**declared("dev").one("Pod"), "spek": {}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, VERSIONS[-1], strict=True)
