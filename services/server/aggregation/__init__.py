"""The server's aggregator behind one seam (services/server/aggregation/interface.py): ``mean``,
``robust`` and ``dp``, each TFF's math run in-process on results staged as they stream in, and
``secure`` (masked inputs summed mod 2^32: the server sees only the sum). Which names exist, and
which class implements each, is services/common/aggregators.py's table; the implementation a
federation names is imported only when it is built."""

from __future__ import annotations

import importlib

from services.common import tensors
from services.common.aggregators import AGGREGATORS
from services.common.config import TrainingSettings
from services.server.aggregation.interface import Aggregator, Outcome, RoundAggregation, State
from services.server.aggregation.staging import RoundClosed, RoundRefused, Slots, Upload


def implementation(name: str) -> type[Aggregator]:
    """The class that implements the aggregator ``name`` (a key of services.common.aggregators.AGGREGATORS)."""
    module, _, cls = AGGREGATORS[name].partition(":")
    found = getattr(importlib.import_module(module), cls)
    if not (isinstance(found, type) and issubclass(found, Aggregator) and found.name == name):
        raise TypeError(f"{AGGREGATORS[name]} is not the {name!r} aggregator")
    return found


def aggregator_for(training: TrainingSettings, layout: tensors.Layout, slots: Slots) -> Aggregator:
    """The aggregator ``training.aggregator`` names, for results of ``layout``."""
    return implementation(training.aggregator).from_settings(training, layout, slots)


__all__ = ["Aggregator", "Outcome", "RoundAggregation", "RoundClosed", "RoundRefused", "Slots", "State", "Upload",
           "aggregator_for", "implementation"]
