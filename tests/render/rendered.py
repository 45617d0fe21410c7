"""Each committed stack rendered once per session (``infra.render.render``: file name -> YAML text)."""

from __future__ import annotations

from functools import cache

from infra.render import render

STACKS = ("dev", "prod")  # one cluster each: files directly in the render folder
CROSS_SILO_STACKS = ("crosssilo",)  # a folder per cluster
ALL_STACKS = (*STACKS, *CROSS_SILO_STACKS)


@cache
def rendered(stack: str) -> dict[str, str]:
    return render(stack)
