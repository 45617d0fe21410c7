"""The ``stack`` fixture: every test that takes it runs for both committed stacks."""

from __future__ import annotations

import pytest
from infra_stacks import STACKS, Declared, declared


@pytest.fixture(params=STACKS)
def stack(request: pytest.FixtureRequest) -> Declared:
    return declared(request.param)
