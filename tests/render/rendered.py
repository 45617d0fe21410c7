"""Each committed stack rendered once per session (``infra.render.render``: file name -> YAML text)."""

from __future__ import annotations

from functools import cache

from infra.render import render

STACKS = ("dev", "prod")


@cache
def rendered(stack: str) -> dict[str, str]:
    return render(stack)
