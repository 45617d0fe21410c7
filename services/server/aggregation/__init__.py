"""The server's aggregator behind one seam (services/server/aggregation/interface.py): ``mean``,
``robust`` and ``dp``, each TFF's math run in-process on results staged as they stream in, and
``secure`` (masked inputs summed mod 2^32: the server sees only the sum)."""

from __future__ import annotations

from services.common import tensors
from services.common.config import TrainingSettings
from services.server.aggregation.dp import DifferentiallyPrivate
from services.server.aggregation.interface import Aggregator, Outcome, RoundAggregation, State
from services.server.aggregation.mean import Mean
from services.server.aggregation.robust import Robust
from services.server.aggregation.secure import SecureAggregator
from services.server.aggregation.staging import RoundClosed, RoundRefused, Slots, Upload


def aggregator_for(training: TrainingSettings, layout: tensors.Layout, slots: Slots) -> Aggregator:
    """The aggregator ``training.aggregator`` names, for results of ``layout``."""
    if training.aggregator == "secure":
        return SecureAggregator(layout, slots, training.secure)
    if training.aggregator == "robust":
        return Robust(layout, slots)
    if training.aggregator == "dp":
        return DifferentiallyPrivate(layout, slots, noise_multiplier=training.dp_noise_multiplier,
                                     clients_per_round=training.clients_per_round, clip=training.dp_clip)
    return Mean(layout, slots)


__all__ = ["Aggregator", "Outcome", "RoundAggregation", "RoundClosed", "RoundRefused", "Slots", "State", "Upload",
           "aggregator_for"]
