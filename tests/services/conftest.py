"""Shared fixtures of the service tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="module")
def runtime() -> Iterator[Any]:
    """A TFF execution context of our own (TFF's worker_binary, stopped afterwards) for the TFF
    references, once per module; TensorFlow is imported only by the modules that ask for it."""
    from support.tff_runtime import TffRuntime
    from tensorflow_federated.python.core.impl.context_stack import context_stack_impl

    before = context_stack_impl.context_stack.current
    try:
        with TffRuntime() as rt:
            yield rt
    finally:  # not a context whose worker is gone, for whatever runs after this module
        context_stack_impl.context_stack.set_default_context(before)
