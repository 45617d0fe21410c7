"""Fixtures of the engine tests: one real control plane per session, the tools from the engine cache.

The tools come from ``make engine`` (tools/engine/build.sh). Without them the tests are skipped and
say how to build them, except under ``CI=true``, where a missing tool is an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_cluster import ControlPlane, engine_cache, missing_tools, tool_versions
from engine_timings import TIMINGS


def _require_tools() -> None:
    missing = missing_tools()
    if not missing:
        return
    message = (
        f"engine tools not built in {engine_cache()} (missing: {', '.join(missing)}); "
        "run `make engine` (tools/engine/build.sh, ~30 min on 2 cores the first time)"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    _require_tools()
    workdir = Path(tmp_path_factory.mktemp("engine-cluster"))
    control_plane = ControlPlane(workdir)
    try:
        control_plane.start()
    except Exception:
        tails = "\n".join(f"--- {name} ---\n{control_plane.log_tail(name)}" for name in control_plane.procs)
        control_plane.stop()
        raise RuntimeError(f"the engine control plane did not start; component logs:\n{tails}") from None
    TIMINGS.update({f"control plane: {k}": v for k, v in control_plane.timings.items()})
    yield control_plane
    control_plane.stop()


@pytest.fixture(scope="session")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Pulumi home, the file backend and the stacks' project directories, for the whole session."""
    return Path(tmp_path_factory.mktemp("engine-pulumi"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TIMINGS:
        return
    terminalreporter.section("engine: tools and timings")
    versions = tool_versions()
    if versions:
        terminalreporter.write_line("tools: " + ", ".join(f"{k}={v}" for k, v in sorted(versions.items())))
    for label, seconds in TIMINGS.items():
        terminalreporter.write_line(f"{seconds:8.1f}s  {label}")
