"""The faults table's own promises (tests/support/faults.py, docs/faults.md): every module that
records faults is one the table checks, the committed table is in the form the tests write, and a
complete run of a module whose rows differ rewrites exactly that module's rows (numbers aside)."""

from __future__ import annotations

import re

from support.faults import FAULT_MODULES, FAULTS_DOC, HEADER, ROOT, FaultTable, check, committed, render


def test_the_checked_modules_are_those_that_record_faults() -> None:
    takes_faults = re.compile(r"def test_\w+\([^)]*\bfaults\b", re.S)
    recording = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                       if takes_faults.search(p.read_text()))
    assert recording == sorted(FAULT_MODULES), "list them in tests/support/faults.py FAULT_MODULES"


def test_the_committed_table_is_in_the_written_form() -> None:
    header, rows = committed(FAULTS_DOC.read_text())
    assert header == HEADER, "docs/faults.md: regenerate it (its first lines say how)"
    names = {m.rsplit("/", 1)[-1] for m in FAULT_MODULES}
    assert set(rows) <= names, sorted(set(rows) - names)
    for lines in rows.values():
        assert all(line.count(" | ") == 5 for line in lines)


def _table(*rows: tuple[str, str, str]) -> FaultTable:
    table = FaultTable()
    for module, fault, observed in rows:
        table.recorder(module).record("area", fault, "did", "expected", observed)
    return table


def test_a_complete_module_with_other_rows_rewrites_only_its_own() -> None:
    a, b = "tests/federation/test_hostile_input.py", "tests/containers/test_product_in_containers.py"
    current = render(r.markdown() for r in _table(("test_hostile_input.py", "old fault", "ok"),
                                                  ("test_product_in_containers.py", "kill", "round 7 of 80")).rows)
    same = check(_table(("test_hostile_input.py", "old fault", "ok")), [a], current)
    assert same.stale == {} and same.text is None
    numbers = check(_table(("test_product_in_containers.py", "kill", "round 12 of 80")), [b], current)
    assert numbers.stale == {} and numbers.text is None  # a kill that landed on another round
    changed = check(_table(("test_hostile_input.py", "new fault", "ok")), [a], current)
    assert changed.stale == {a: (1, 1)} and changed.text is not None
    assert "new fault" in changed.text and "old fault" not in changed.text
    assert "round 7 of 80" in changed.text  # the module that did not run keeps its rows


def test_a_table_in_another_form_is_rewritten() -> None:
    result = check(_table(("test_hostile_input.py", "f", "ok")), ["tests/federation/test_hostile_input.py"],
                   "# Faults\n\n| Area | Fault |\n|---|---|\n| a | f |\n")
    assert result.text is not None and result.text.startswith("\n".join(HEADER))
