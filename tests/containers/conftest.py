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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """A failed test's report gets ``failure_report()`` of each fixture value that has one, taken
    while its containers are still up (fixtures are torn down after this)."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for name, value in getattr(item, "funcargs", {}).items():
        describe = getattr(value, "failure_report", None)
        if callable(describe):
            try:
                text = describe()
            except Exception as exc:  # noqa: BLE001 (the report must not hide the failure)
                text = f"failure_report() failed: {exc!r}"
            report.sections.append((f"{name}: state at the failure", text))
