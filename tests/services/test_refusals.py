"""The server's one refusal vocabulary (services/server/refusals.py): every reason has a gRPC
status, the reasons a type checker knows are the table's, and no other reason can be raised."""

from __future__ import annotations

from typing import get_args

import grpc
import pytest

from services.server.refusals import STATUS, Reason, Reject


def test_every_reason_maps_to_a_grpc_status() -> None:
    assert set(get_args(Reason)) == set(STATUS)
    assert all(isinstance(grpc.StatusCode[name], grpc.StatusCode) for name in STATUS.values())


def test_a_reason_outside_the_vocabulary_is_a_bug() -> None:
    assert Reject("stale", "round 3 is over").reason == "stale"
    with pytest.raises(ValueError, match="unknown refusal reason"):
        Reject("gone", "no such reason")  # type: ignore[arg-type]
