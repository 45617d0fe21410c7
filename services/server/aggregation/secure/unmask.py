"""Phase 4 of a secure round and its end (services/server/aggregation/secure): each client in U3
reveals the self-mask share of its surviving neighbours and the mask-key share of its dropped ones
(never both for one peer); with t shares of each, the server removes the survivors' self masks and
the dropped clients' pairwise masks from the sum, block by block, and dequantizes it into the
weighted mean update."""

from __future__ import annotations

from collections.abc import Mapping

from services.common.secagg import shamir
from services.common.secagg.crypto import CryptoError, KeyPair, round_context
from services.common.secagg.masking import pair_seed, pair_sign
from services.common.secagg.params import RoundParams
from services.common.secagg.quantize import dequantize
from services.server.aggregation.interface import Outcome
from services.server.aggregation.secure.masked import MaskedInputs
from services.server.aggregation.staging import RoundClosed, RoundRefused
from services.server.refusals import Reject


class SecureRound(MaskedInputs):
    """One secure round (see services/server/aggregation/secure): the key phases
    (:class:`~services.server.aggregation.secure.keys.KeyPhases`), the masked inputs
    (:class:`~services.server.aggregation.secure.masked.MaskedInputs`), then unmasking."""

    # ---- phase 4: unmask --------------------------------------------------------------------------
    def unmask(self, client: str, timeout: float) -> tuple[frozenset[int], frozenset[int]]:
        """Once the round closed: which self-mask shares (survivors) and mask-key shares (dropped)
        this client is to reveal."""
        with self._cv:
            i = self._member(client)
            if i not in self.committed:
                raise Reject("out_of_order", "unmasking follows an accepted masked input")
            self._wait(lambda: self.closed, self.clock() + timeout)
            assert self.u3 is not None
            ask = ((self.neighbours_of(i) | {i}) & self.u3, self.neighbours_of(i) & self._dropped())
            self.asked[i] = ask
            return ask

    def reveal(self, client: str, self_mask: Mapping[int, bytes], mask_key: Mapping[int, bytes]) -> None:
        with self._cv:
            i = self._member(client)
            if i not in self.asked:
                raise Reject("out_of_order", "reveal shares after asking which")
            if i in self.revealed:
                raise Reject("duplicate", "shares already revealed for this round")
            if self.failed is not None:
                raise Reject("stale", f"the secure round was refused: {self.failed}")
            survivors, dropped = self.asked[i]
            if set(self_mask) != survivors or set(mask_key) != dropped:
                raise Reject("invalid", "reveal exactly the shares asked for")
            try:
                for share in (*self_mask.values(), *mask_key.values()):
                    shamir.share_value(share)
            except shamir.ShareError as exc:
                raise Reject("invalid", str(exc)) from None
            for owner, share in self_mask.items():
                self.self_mask_shares.setdefault(owner, {})[i + 1] = share
            for owner, share in mask_key.items():
                self.mask_key_shares.setdefault(owner, {})[i + 1] = share
            self.revealed.add(i)
            self._cv.notify_all()

    def _have_enough(self) -> bool:
        assert self.params is not None and self.u3 is not None
        t = self.params.threshold
        if self.revealed >= self.u3:
            return True
        return all(len(self.self_mask_shares.get(u, {})) >= t for u in self.u3) and all(
            len(self.mask_key_shares.get(u, {})) >= t for u in self._dropped() if self.neighbours_of(u) & self.u3)

    # ---- the end --------------------------------------------------------------------------------
    def finish(self) -> Outcome:
        """Wait for the survivors' shares (up to ``phase_timeout_s``), remove the masks, dequantize."""
        self.close()
        with self._cv:
            if self.params is None or self.u3 is None or not self.u3:
                raise RoundRefused("no masked input")
            try:
                self._wait(self._have_enough, self.closed_at + self.timeout)
            except RoundClosed as exc:
                raise RoundRefused(str(exc)) from None
            p, u3, dropped = self.params, self.u3, self._dropped()
            self.closed = True
            masks = self._unmasking(p, u3, dropped)
            total, self.total = self.total, None
        self.aggregator.slots.drop_buffers()
        assert total is not None
        try:  # unmasked and dequantized in one pass over the sum
            update, weight_sum = dequantize(total, self.aggregator.masked.shapes, p, masks)
        except ValueError as exc:
            raise RoundRefused(str(exc)) from None
        return Outcome(update, {}, {"weight_sum": float(weight_sum), "secure_inputs": float(len(u3)),
                                    "secure_dropped": float(len(dropped)), "secure_scale": p.scale})

    def _unmasking(self, p: RoundParams, u3: frozenset[int], dropped: frozenset[int]) -> list[tuple[bytes, int]]:
        """The masks to add to the sum: minus each survivor's self mask, and for each dropped client
        the negation of the pairwise masks its surviving neighbours added with it."""
        masks: list[tuple[bytes, int]] = []
        try:
            for u in sorted(u3):
                masks.append((shamir.combine(self.self_mask_shares[u], p.threshold), -1))
            context = round_context(self.round_number, self.task_id)
            for u in sorted(dropped):
                survivors = self.neighbours_of(u) & u3
                if not survivors:
                    continue
                key = KeyPair.from_private_bytes(shamir.combine(self.mask_key_shares[u], p.threshold))
                if key.public != self.keys[u].mask:
                    raise RoundRefused(f"dropped client {u}'s mask key shares do not match its advertised key")
                for v in sorted(survivors):
                    masks.append((pair_seed(key, self.keys[v].mask, context), -pair_sign(v, u)))
        except (shamir.ShareError, CryptoError, KeyError) as exc:
            raise RoundRefused(f"cannot rebuild the masks: {exc}") from None
        return masks

