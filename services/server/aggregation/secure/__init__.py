"""``secure``: pairwise-masked secure aggregation (Bonawitz et al., CCS 2017, on the SecAgg+ graph
of Bell et al., CCS 2020): the server learns the sum of the round's quantized updates and nothing
else of any one of them. The phases of a round (docs/secure-aggregation.md):

1. advertise: each sampled client sends two fresh X25519 public keys; the phase ends when all
   did or ``phase_timeout_s`` after the round opened (U1: who advertised; < t: the round is refused);
2. share: each client sends its neighbours in U1 its Shamir shares of its self-mask seed and its
   mask private key, encrypted to them; the server relays them unread (U2: who shared);
3. masked input: each client in U2 streams its quantized update plus its self mask plus its
   pairwise masks with its neighbours in U2 through SubmitResult; an accepted one is added to the
   running sum mod 2^32 (committed, as every aggregator's results), anything else counts for
   nothing. The round's close fixes U3 (who committed);
4. unmask: each client in U3 reveals the self-mask share of its surviving neighbours and the
   mask-key share of its dropped ones (never both for one peer); with t shares of each, the server
   removes the survivors' self masks and the dropped clients' pairwise masks from the sum, block
   by block, and dequantizes it into the weighted mean update.

Below t survivors anywhere a secret is needed, the round is refused before anything is revealed
(the round runner retries it). The server holds the running sum (one word per coordinate) plus at
most ``server.upload_slots`` staged inputs, as ``mean``."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from services.common import tensors
from services.common.config import SecureSettings, TrainingSettings
from services.common.secagg.layout import MaskedLayout
from services.common.secagg.params import RoundParams, default_threshold
from services.server.aggregation.interface import Aggregator, Outcome, State
from services.server.aggregation.secure.keys import SHARE_CIPHERTEXT_BYTES, SHARE_PLAINTEXT_BYTES, Keys
from services.server.aggregation.secure.masked import MaskedUpload
from services.server.aggregation.secure.unmask import SecureRound
from services.server.aggregation.staging import Contribution, Norms, Slots


class SecureAggregator(Aggregator):
    name = "secure"
    weights_in_clear = False

    def __init__(self, layout: tensors.Layout, slots: Slots, settings: SecureSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(layout, slots)
        self.settings = settings
        self.masked = MaskedLayout(layout)
        self.clock = clock

    @classmethod
    def from_settings(cls, training: TrainingSettings, layout: tensors.Layout, slots: Slots) -> SecureAggregator:
        return cls(layout, slots, training.secure)

    def params(self, n: int) -> RoundParams:
        s = self.settings
        return RoundParams(n, s.threshold or default_threshold(n, s.neighbours), s.neighbours, s.bits, s.clip,
                           s.max_weight)

    def open_round(self, state: State) -> SecureRound:
        return SecureRound(self, state)

    def initial_state(self) -> State:
        return {}

    def admit(self, state: State, norms: Norms) -> Contribution:  # pragma: no cover - not a float upload
        raise NotImplementedError("secure rounds stage masked words, not float results")

    def finish(self, state: State, total: list[np.ndarray], contributions: list[Contribution]) -> Outcome:  # pragma: no cover
        raise NotImplementedError("a secure round finishes itself")


__all__ = ["SHARE_CIPHERTEXT_BYTES", "SHARE_PLAINTEXT_BYTES", "Keys", "MaskedUpload", "SecureAggregator", "SecureRound"]
