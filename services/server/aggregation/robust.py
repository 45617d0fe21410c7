"""``robust``: ``tff.learning.robust_aggregator(weighted=True)``, the weighted mean behind TFF's
adaptive zeroing and adaptive L2 clipping, in-process.

Per client (the round's norms are fixed when it opens): the update is zeroed when its L-inf norm is
above the zeroing norm (``2 C_z + 1``); otherwise, when its L2 norm is above the clipping norm
``C_c``, it is scaled down to that norm. Then the weighted mean as ``mean`` (a zeroed client's weight
still counts, as in TFF). After the round both estimates move (``services.server.aggregation.quantile``):
``C_z`` towards the 0.98 quantile of the clients' L-inf norms, ``C_c`` towards the 0.8 quantile of
their L2 norms after zeroing (a zeroed update's is 0)."""

from __future__ import annotations

import numpy as np

from services.server.aggregation.interface import Aggregator, Contribution, Norms, Outcome, State
from services.server.aggregation.mean import divide_by_weight
from services.server.aggregation.quantile import ROBUST_CLIPPING, ZEROING, exact_fraction


def zeroing(state: State, norms: Norms) -> tuple[bool, float, dict[str, float]]:
    """TFF's adaptive zeroing (``tff.aggregators.zeroing_factory`` with the L-inf norm): whether this
    update is zeroed, the L2 norm the next stage sees, and the notes the estimate needs."""
    zeroed = bool(np.float32(norms.linf) > ZEROING.report(state["zeroing_estimate"]))
    notes = {"zero_below": float(ZEROING.below(norms.linf, state["zeroing_estimate"])), "zeroed": float(zeroed)}
    return zeroed, 0.0 if zeroed else norms.l2, notes


def zeroing_next(state: State, contributions: list[Contribution]) -> tuple[np.float32, dict[str, float]]:
    estimate = state["zeroing_estimate"]
    below = exact_fraction([bool(c.notes["zero_below"]) for c in contributions])
    measurements = {"zeroing_norm": float(ZEROING.report(estimate)),
                    "zeroed": float(sum(c.notes["zeroed"] for c in contributions))}
    return ZEROING.next(estimate, below), measurements


class Robust(Aggregator):
    name = "robust"
    state_names = ("zeroing_estimate", "clipping_norm")
    needs_l2 = True

    def initial_state(self) -> State:
        return {"zeroing_estimate": np.float32(ZEROING.initial), "clipping_norm": np.float32(ROBUST_CLIPPING.initial)}

    def admit(self, state: State, norms: Norms) -> Contribution:
        zeroed, l2, notes = zeroing(state, norms)
        clip = ROBUST_CLIPPING.report(state["clipping_norm"])
        clipped = np.float32(l2) > clip
        notes |= {"weight": float(norms.weight), "clip_below": float(ROBUST_CLIPPING.below(l2, state["clipping_norm"])),
                  "clipped": float(clipped)}
        # TFF divides by (norm / clip) and then multiplies by the weight: one float32 factor here.
        scale = np.float32(clip) / np.float32(l2) if clipped else np.float32(1)
        return Contribution(0.0 if zeroed else float(np.float32(norms.weight) * scale), notes)

    def finish(self, state: State, total: list[np.ndarray], contributions: list[Contribution]) -> Outcome:
        weight = divide_by_weight(total, contributions)
        zeroing_estimate, measurements = zeroing_next(state, contributions)
        clipping_norm = ROBUST_CLIPPING.next(state["clipping_norm"],
                                             exact_fraction([bool(c.notes["clip_below"]) for c in contributions]))
        measurements |= {"weight_sum": float(weight), "clipping_norm": float(ROBUST_CLIPPING.report(state["clipping_norm"])),
                         "clipped": float(sum(c.notes["clipped"] for c in contributions)),
                         "next_clipping_norm": float(clipping_norm), "next_zeroing_norm": float(ZEROING.report(zeroing_estimate))}
        return Outcome(total, {"zeroing_estimate": zeroing_estimate, "clipping_norm": clipping_norm}, measurements)
