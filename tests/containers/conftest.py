"""What every container test shares: the image, built once per session from services/Dockerfile
(tests/containers/images.sh). Skipped where podman cannot run, except with CI=true, where it must."""

from __future__ import annotations

import os

import pytest
from kube import build_image, podman_available

IMAGE = "localhost/tff-k8s:e2e"


@pytest.fixture(scope="session")
def image() -> str:
    why = podman_available()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: the container tests must run, but {why}")
        pytest.skip(why)
    return build_image(IMAGE)
