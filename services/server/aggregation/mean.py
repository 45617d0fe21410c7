"""``mean``: TFF's weighted mean (``tff.aggregators.MeanFactory``): sum(weight x update) /
sum(weight), in the update's dtype. Stateless."""

from __future__ import annotations

import numpy as np

from services.server.aggregation.interface import Aggregator, Contribution, Norms, Outcome, State


def divide_by_weight(total: list[np.ndarray], contributions: list[Contribution]) -> np.float32:
    """The weighted sum ``total`` into the weighted mean, in place: divided by the sum of the
    committed results' weights (float32, as TFF sums them), which is returned."""
    weight = np.float32(0)
    for c in contributions:
        weight = np.float32(weight + np.float32(c.notes["weight"]))
    for part in total:
        part /= weight
    return weight


class Mean(Aggregator):
    name = "mean"
    weight_first = True

    def initial_state(self) -> State:
        return {}

    def admit(self, state: State, norms: Norms) -> Contribution:
        return Contribution(float(norms.weight), {"weight": float(norms.weight)})

    def finish(self, state: State, total: list[np.ndarray], contributions: list[Contribution]) -> Outcome:
        weight = divide_by_weight(total, contributions)
        return Outcome(total, {}, {"weight_sum": float(weight)})
