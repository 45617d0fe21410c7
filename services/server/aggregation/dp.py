"""``dp``: DP-FedAvg (McMahan et al. 2017, https://arxiv.org/abs/1710.06963) as TFF builds it,
in-process: ``tff.learning.dp_aggregator`` (TFF's adaptive zeroing around
``tff.aggregators.DifferentiallyPrivateFactory.gaussian_adaptive``), or with a fixed clip
(``training.dp_clip``) the same zeroing around ``DifferentiallyPrivateFactory.gaussian_fixed``.

Unweighted, as TFF's: each client's update (zeroed as ``robust`` zeroes it) is clipped to L2 norm
``clip`` (``tf.clip_by_global_norm``), the clipped updates are summed, Gaussian noise of standard
deviation ``z x clip`` is added to every coordinate of the sum and the sum is divided by the
*expected* number of clients per round (``training.clients_per_round``), not the number that
answered. Adaptive clipping (Andrew, Thakkar et al. 2021) moves ``clip`` towards the median of the
clients' norms, from a privatised count: the number of unclipped clients gets Gaussian noise of
standard deviation ``0.05 x clients_per_round``, and to keep the total privacy at the configured
noise multiplier the values get the slightly larger ``z = (nm^-2 - (2 x that)^-2)^-1/2`` (TFF's
``adaptive_clip_noise_params``). With a noise multiplier of 0 nothing is noised.

The noise comes from :class:`GaussianNoise`, seeded from the operating system: DP noise must not be
reproducible from the config. Tests hand in their own source to compare with TFF. Its standard
deviation is fixed when the round opens (from the round's clip), so it is drawn into the round's
running sum on a thread of its own while the clients train and upload, off the round's critical
path and without a model-sized buffer of its own (the sum is the same either way: addition
commutes)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np

from services.common import tensors
from services.common.config import TrainingSettings
from services.server.aggregation.interface import (
    Aggregator,
    Contribution,
    Norms,
    Outcome,
    RoundAggregation,
    State,
)
from services.server.aggregation.quantile import ZEROING, Estimate
from services.server.aggregation.robust import zeroing, zeroing_next
from services.server.aggregation.staging import Slots

F32 = np.float32
BLOCK = 1 << 20  # noise is drawn and added this many numbers at a time
# tff.aggregators.DifferentiallyPrivateFactory.gaussian_adaptive's defaults (tff.learning.dp_aggregator's)
ADAPTIVE = {"initial": 0.1, "target_quantile": 0.5, "learning_rate": 0.2}


class GaussianNoise:
    """Adds N(0, stddev^2) to every number of an array (any shape, a scalar too), in place, in
    float32 blocks, each drawn outside ``lock`` and added under it. Called once per tensor of the
    sum, in the layout's order, then once for the unclipped count (adaptive clipping), as TFF draws
    them."""

    def __init__(self, rng: np.random.Generator | None = None) -> None:
        self.rng = rng or np.random.default_rng()  # its methods are thread-safe (the bit generator's lock)

    def __call__(self, array: np.ndarray, stddev: float, lock: AbstractContextManager[object]) -> None:
        flat = array.reshape(-1)
        for start in range(0, flat.size, BLOCK):
            block = flat[start : start + BLOCK]
            noise = self.rng.standard_normal(block.size, dtype=F32)
            noise *= F32(stddev)
            with lock:
                block += noise


Noise = Callable[[np.ndarray, float, AbstractContextManager[object]], None]


@dataclass(frozen=True)
class Privacy:
    """The mechanism's parameters: what the round's metrics report."""

    noise_multiplier: float  # as configured (training.dp_noise_multiplier)
    clients_per_round: float  # the expected count the sum is divided by
    value_noise_multiplier: float  # what the values get (higher than the configured one when adaptive)
    clipped_count_stddev: float  # the noise on the unclipped count (adaptive clipping only)

    @classmethod
    def of(cls, noise_multiplier: float, clients_per_round: float, adaptive: bool) -> Privacy:
        """TFF's ``adaptive_clip_noise_params`` (with its default clipped-count noise)."""
        if not adaptive or noise_multiplier == 0:
            return cls(noise_multiplier, clients_per_round, noise_multiplier, 0.0)
        stddev = 0.05 * clients_per_round
        if noise_multiplier >= 2 * stddev:
            raise ValueError(f"dp: noise multiplier {noise_multiplier} needs more than {noise_multiplier / 0.1:g} clients "
                             "per round for adaptive clipping (TFF's clipped_count_stddev is 0.05 x clients per round)")
        value = (noise_multiplier**-2 - (2 * stddev) ** -2) ** -0.5
        return cls(noise_multiplier, clients_per_round, value, stddev)


class DifferentiallyPrivate(Aggregator):
    name = "dp"
    needs_l2 = True

    def __init__(self, layout: tensors.Layout, slots: Slots, *, noise_multiplier: float, clients_per_round: int,
                 clip: float | None = None, noise: Noise | None = None) -> None:
        super().__init__(layout, slots)
        self.adaptive = clip is None
        self.fixed_clip = clip
        self.privacy = Privacy.of(noise_multiplier, float(clients_per_round), self.adaptive)
        self.clipping = Estimate(**ADAPTIVE)
        self.noise = noise or GaussianNoise()
        self.state_names = ("zeroing_estimate", "clipping_norm") if self.adaptive else ("zeroing_estimate",)

    @classmethod
    def from_settings(cls, training: TrainingSettings, layout: tensors.Layout, slots: Slots) -> DifferentiallyPrivate:
        return cls(layout, slots, noise_multiplier=training.dp_noise_multiplier,
                   clients_per_round=training.clients_per_round, clip=training.dp_clip)

    def initial_state(self) -> State:
        state = {"zeroing_estimate": F32(ZEROING.initial)}
        if self.adaptive:
            state["clipping_norm"] = F32(self.clipping.initial)
        return state

    def open_round(self, state: State) -> RoundAggregation:
        """The round's sum starts filling with the noise at once (see the module doc)."""
        rnd = super().open_round(state)
        stddev = self.noise_stddev(state)
        if stddev > 0:
            def noise(sums: list[np.ndarray], lock: threading.Lock) -> None:  # GaussianSumQuery's
                for part in sums:
                    self.noise(part, float(stddev), lock)

            rnd.prepare(noise)
        return rnd

    def noise_stddev(self, state: State) -> np.float32:
        """Of the noise on each number of the sum: the value noise multiplier times the round's clip."""
        return F32(F32(self.privacy.value_noise_multiplier) * self.clip(state))

    def clip(self, state: State) -> np.float32:
        if self.fixed_clip is None:
            return state["clipping_norm"]
        return F32(self.fixed_clip)

    def admit(self, state: State, norms: Norms) -> Contribution:
        zeroed, l2, notes = zeroing(state, norms)
        clip = self.clip(state)
        notes |= {"clip_below": float(Estimate.below(l2, clip)), "clipped": float(F32(l2) > clip)}
        # tf.clip_by_global_norm: x * (clip * min(1 / norm, 1 / clip)), in float32
        with np.errstate(divide="ignore"):
            scale = clip * min(F32(1) / F32(l2), F32(1) / clip)
        return Contribution(0.0 if zeroed else float(scale), notes)

    def finish(self, state: State, total: list[np.ndarray], contributions: list[Contribution]) -> Outcome:
        p, clip, stddev = self.privacy, self.clip(state), self.noise_stddev(state)
        for part in total:  # the noised sum (GaussianSumQuery) divided by the expected count (NormalizedQuery)
            part /= F32(p.clients_per_round)
        zeroing_estimate, measurements = zeroing_next(state, contributions)
        next_state = {"zeroing_estimate": zeroing_estimate}
        if self.adaptive:
            unclipped = np.array(sum(F32(c.notes["clip_below"]) - F32(0.5) for c in contributions), F32)
            if p.clipped_count_stddev > 0:
                self.noise(unclipped, p.clipped_count_stddev, nullcontext())
            fraction = F32(F32(unclipped / F32(p.clients_per_round)) + F32(0.5))
            next_state["clipping_norm"] = self.clipping.next(clip, fraction)
        measurements |= {
            "dp_noise_multiplier": p.noise_multiplier, "dp_value_noise_multiplier": p.value_noise_multiplier,
            "dp_clients_per_round": p.clients_per_round, "dp_clip": float(clip), "dp_noise_stddev": float(stddev),
            "dp_clipped": float(sum(c.notes["clipped"] for c in contributions)),
            "dp_next_clip": float(next_state.get("clipping_norm", clip)),
        }
        return Outcome(total, next_state, measurements)
