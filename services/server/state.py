"""The federation's state after a round: what a checkpoint holds, what a round starts from. No
TensorFlow here: the round runner and the state store work on it without it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from services.server.aggregation import State as AggregatorState


@dataclass(frozen=True)
class ServerState:
    """Everything that defines the federation after ``round`` rounds. ``weights`` are the leaves of
    ``ModelWeights`` (aligned, so TensorFlow reads them in place); ``payload`` is their wire form,
    views of the same memory. Never written to once made."""

    round: int
    payload: tuple[memoryview, ...]
    weights: list[np.ndarray]
    aggregator: AggregatorState  # the aggregator's state (adaptive norms), see services/server/aggregation
    finalizer: Any  # the server optimizer's state, a structure of numpy arrays
