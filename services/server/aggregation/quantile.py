"""TFF's adaptive norm estimate, in float32 as TFF computes it: the geometric quantile estimator
of Andrew, Thakkar et al. 2021 (https://arxiv.org/abs/1905.03871) behind
``tff.aggregators.PrivateQuantileEstimationProcess`` (``tensorflow_privacy``'s
``QuantileEstimatorQuery`` with ``geometric_update=True``), which drives the adaptive zeroing and
clipping norms of ``tff.learning.robust_aggregator`` and ``tff.learning.dp_aggregator``.

Each round every client reports whether its norm is at most the current estimate ``C``; with
``f`` the fraction that is (clamped to [0, 1]), the next estimate is ``C * exp(-lr * (f - q))``.
What the aggregator uses is ``multiplier * C + increment`` (:meth:`Estimate.report`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

F32 = np.float32


@dataclass(frozen=True)
class Estimate:
    initial: float
    target_quantile: float
    learning_rate: float
    multiplier: float = 1.0
    increment: float = 0.0

    def report(self, estimate: np.float32) -> np.float32:
        """The norm the aggregator uses while the estimate is ``estimate``."""
        if self.multiplier == 1.0 and self.increment == 0.0:
            return F32(estimate)
        return F32(F32(self.multiplier) * F32(estimate) + F32(self.increment))

    @staticmethod
    def below(norm: float, estimate: np.float32) -> bool:
        """What one client contributes: is its norm at most the estimate (TFF: ``record <= C``)."""
        return bool(F32(norm) <= estimate)

    def next(self, estimate: np.float32, below_fraction: np.float32) -> np.float32:
        """The estimate after a round in which ``below_fraction`` of the norms were at most it."""
        fraction = F32(min(F32(1.0), max(F32(0.0), F32(below_fraction))))
        update = F32(self.learning_rate) * F32(fraction - F32(self.target_quantile))
        return F32(max(F32(0.0), F32(estimate) * np.exp(-update, dtype=F32)))


def exact_fraction(below: list[bool]) -> np.float32:
    """TFF's no-noise estimate of the fraction below (``NoPrivacyAverageQuery``): each client's
    record is ``below - 0.5``, averaged over the clients, plus 0.5."""
    records = np.array([F32(b) - F32(0.5) for b in below], F32)
    return F32(F32(records.sum(dtype=F32) / F32(len(below))) + F32(0.5))


# TFF's settings (tff.learning.model_update_aggregator): adaptive zeroing of the values far above
# what was seen so far (reported as 2C + 1), and the robust aggregator's adaptive clipping.
ZEROING = Estimate(initial=10.0, target_quantile=0.98, learning_rate=float(np.log(10.0)), multiplier=2.0, increment=1.0)
ROBUST_CLIPPING = Estimate(initial=1.0, target_quantile=0.8, learning_rate=0.2)
