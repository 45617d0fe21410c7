"""How long each engine step took: the tests time their CLI commands with a :class:`Clock`, and the
engine tests' conftest prints :data:`TIMINGS` at the end of the session (with the control plane's own)."""

from __future__ import annotations

import time

TIMINGS: dict[str, float] = {}


class Clock:
    """Times each CLI command of a test; the totals are printed at the end of the session."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __call__(self, label: str):  # noqa: ANN204 - a context manager
        prefix = self.prefix

        class _Timer:
            def __enter__(self) -> None:
                self.start = time.monotonic()

            def __exit__(self, *exc: object) -> None:
                TIMINGS[f"{prefix}: {label}"] = time.monotonic() - self.start

        return _Timer()
