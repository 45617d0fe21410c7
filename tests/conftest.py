"""What all test directories share: the faults table (tests/support/faults.py). Fault tests record
each fault or bad input they tried and what happened (``faults.record(...)``); a run in which a
fault module ran completely (every test of it collected, none deselected or skipped, all passed)
checks that module's rows in ``docs/faults.md``, and when they differ rewrites them and fails,
naming the command that regenerates them. A partial run (``-k``, ``-m "not slow"``, a failure)
checks nothing."""

from __future__ import annotations

from collections import defaultdict

import pytest
from support.faults import FAULT_MODULES, FAULTS_DOC, ROOT, FaultTable, Recorder, check, regenerate_command

_TABLE = FaultTable()


@pytest.fixture
def faults(request: pytest.FixtureRequest) -> Recorder:
    return _TABLE.recorder(request.node.path.name)


def _module(nodeid: str) -> str | None:
    path = nodeid.split("::", 1)[0]
    return path if path in FAULT_MODULES else None


class _Tracker:
    def __init__(self) -> None:
        self.collected: dict[str, set[str]] = defaultdict(set)
        self.passed: dict[str, set[str]] = defaultdict(set)
        self.spoiled: set[str] = set()  # modules with a deselected, skipped or failed test


_TRACK = _Tracker()


def pytest_deselected(items: list[pytest.Item]) -> None:
    _TRACK.spoiled.update(m for item in items if (m := _module(item.nodeid)))


def pytest_collection_finish(session: pytest.Session) -> None:
    for item in session.items:
        if module := _module(item.nodeid):
            _TRACK.collected[module].add(item.nodeid)
    for arg in session.config.args:  # tests picked by node id: their module did not run whole
        if "::" in arg and (module := _module(arg.split("::", 1)[0].removeprefix(str(ROOT) + "/") + "::")):
            _TRACK.spoiled.add(module)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    module = _module(report.nodeid)
    if module is None:
        return
    if report.failed or report.skipped:
        _TRACK.spoiled.add(module)
    elif report.when == "call" and report.passed:
        _TRACK.passed[module].add(report.nodeid)


def _complete() -> list[str]:
    """The fault modules that ran completely: only their rows can be checked."""
    return [m for m in FAULT_MODULES if _TRACK.collected.get(m) and m not in _TRACK.spoiled
            and _TRACK.passed[m] == _TRACK.collected[m]]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _TRACK.collected:
        return
    doc = FAULTS_DOC.relative_to(ROOT)
    complete = _complete()
    if not complete:
        session.config._faults_note = f"{doc} not checked: no fault module ran completely"  # type: ignore[attr-defined]
        return
    result = check(_TABLE, complete, FAULTS_DOC.read_text() if FAULTS_DOC.exists() else "")
    if result.text is None:
        session.config._faults_note = f"{doc}: the rows of {len(complete)} fault module(s) are as committed"  # type: ignore[attr-defined]
        return
    FAULTS_DOC.parent.mkdir(parents=True, exist_ok=True)
    FAULTS_DOC.write_text(result.text)
    changes = ", ".join(f"{m} (+{a} -{r} rows)" for m, (a, r) in result.stale.items())
    session.config._faults_note = (  # type: ignore[attr-defined]
        f"FAILED: {doc} was not what the fault tests record: {changes}. This run rewrote it: review and "
        f"commit {doc}. Regenerate these rows with {regenerate_command(result.stale)}; the whole table with "
        f"{regenerate_command()}.")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    note = getattr(config, "_faults_note", None)
    if note:
        terminalreporter.write_line(f"faults table: {note}", red=note.startswith("FAILED"))
