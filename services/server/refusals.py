"""What the server refuses a peer's request for, and what gRPC status the peer gets: one vocabulary
for the coordinator (joins, polls, results), the secure phases (services/server/aggregation/secure)
and the servicer, which maps each reason to its status and counts it by reason in
``tff_k8s_results_rejected_total``. Pure Python (no gRPC): the statuses are named here and looked
up by the servicer."""

from __future__ import annotations

from typing import Literal

Reason = Literal["unknown_client", "stale", "not_sampled", "duplicate", "invalid", "too_large",
                 "unauthenticated", "out_of_order", "other_task"]

STATUS: dict[str, str] = {  # reason -> the name of the grpc.StatusCode the peer gets
    "unknown_client": "NOT_FOUND",  # a client id that never joined (or joined from another silo)
    "stale": "FAILED_PRECONDITION",  # a round or phase that is over (or not open: replayed, future)
    "not_sampled": "FAILED_PRECONDITION",
    "duplicate": "ALREADY_EXISTS",  # sent twice: a result, a phase's keys, shares or reveal
    "invalid": "INVALID_ARGUMENT",  # not what the protocol allows
    "too_large": "RESOURCE_EXHAUSTED",
    "unauthenticated": "UNAUTHENTICATED",
    "out_of_order": "FAILED_PRECONDITION",  # a secure phase before its turn
    "other_task": "FAILED_PRECONDITION",  # a joining client that trains another learning task
}


class Reject(Exception):
    """A request refused for a reason the peer is told (``reason``: a key of :data:`STATUS`)."""

    def __init__(self, reason: Reason, message: str) -> None:
        if reason not in STATUS:
            raise ValueError(f"unknown refusal reason {reason!r}")
        super().__init__(message)
        self.reason: Reason = reason
