"""A client's side of a secure round (services/server/aggregation/secure.py has the phases), pure:
no gRPC (services/client/session.py carries the messages). Fresh keys and secrets every round.
Everything the server relays is checked: the roster against the neighbour graph, each share's
ciphertext against its sender, round and recipient (AES-GCM associated data), and the unmask
request against what this client shared: it never reveals both secrets of one peer, within one
request or across two."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from services.common.secagg import shamir
from services.common.secagg.crypto import (
    KEY_BYTES,
    CryptoError,
    KeyPair,
    decrypt,
    encrypt,
    round_context,
    share_ad,
)
from services.common.secagg.graph import neighbours
from services.common.secagg.masking import SHARE_KEY_PURPOSE, pair_seed, pair_sign
from services.common.secagg.params import VERSION, ParamsError, RoundParams
from services.common.secagg.quantize import quantize


class SecureProtocolError(RuntimeError):
    """The server (or a peer through it) broke the secure protocol: this client stops taking part
    in the round and reveals nothing more."""


@dataclass(frozen=True)
class Peer:
    cipher: bytes
    mask: bytes


def round_params(version: int, clients: int, threshold: int, neighbours_k: int, bits: int, clip: float,
                 max_weight: int) -> RoundParams:
    """The header's parameters, checked (a client refuses a round it cannot run safely)."""
    if version != VERSION:
        raise SecureProtocolError(f"secure protocol version {version}, this client speaks {VERSION}")
    try:
        params = RoundParams(clients, threshold, neighbours_k, bits, clip, max_weight).check()
    except ParamsError as exc:
        raise SecureProtocolError(f"unusable secure round parameters: {exc}") from None
    if params.threshold < 2:
        raise SecureProtocolError("a threshold below 2 would let the server rebuild a secret from one share")
    return params


class SecureClientRound:
    def __init__(self, params: RoundParams, round_number: int, task_id: str,
                 rounding_seed: bytes | None = None) -> None:
        self.params = params
        self.round_number, self.task_id = round_number, task_id
        self.context = round_context(round_number, task_id)
        self.cipher_key, self.mask_key = KeyPair(), KeyPair()
        self.self_seed = os.urandom(KEY_BYTES)
        self.rounding_seed = rounding_seed  # None: fresh randomness for the stochastic rounding
        self.index = -1
        self.peers: dict[int, Peer] = {}
        self.held: dict[int, tuple[bytes, bytes]] = {}  # owner -> (self-mask share, mask-key share)
        self.maskers: frozenset[int] = frozenset()  # neighbours that shared: the pairwise masks
        self.revealed_self: set[int] = set()
        self.revealed_key: set[int] = set()

    # phase 1
    def advertise(self) -> tuple[bytes, bytes]:
        return self.cipher_key.public, self.mask_key.public

    # phase 2
    def shares_for(self, index: int, peers: Mapping[int, Peer]) -> dict[int, bytes]:
        """Given this client's index and its neighbours' keys: the encrypted shares for each."""
        p = self.params
        if not 0 <= index < p.clients:
            raise SecureProtocolError(f"index {index} outside the round's {p.clients} clients")
        graph = neighbours(index, p.clients, p.neighbours)
        if not set(peers) <= graph:
            raise SecureProtocolError("the roster names clients that are not this client's neighbours")
        if len(peers) + 1 < p.threshold:
            raise SecureProtocolError(f"{len(peers)} neighbours: fewer than the threshold {p.threshold} can hold shares")
        if any(len(k.cipher) != KEY_BYTES or len(k.mask) != KEY_BYTES for k in peers.values()):
            raise SecureProtocolError(f"a neighbour's key is not {KEY_BYTES} bytes")
        self.index, self.peers = index, dict(peers)
        xs = [j + 1 for j in sorted({index, *peers})]
        self_shares = shamir.split(self.self_seed, p.threshold, xs)
        key_shares = shamir.split(self.mask_key.private_bytes(), p.threshold, xs)
        self.held[index] = (self_shares[index + 1], key_shares[index + 1])
        out = {}
        try:
            for j, peer in peers.items():
                key = self.cipher_key.agree(peer.cipher, SHARE_KEY_PURPOSE, self.context)
                out[j] = encrypt(key, self_shares[j + 1] + key_shares[j + 1], share_ad(
                    self.round_number, self.task_id, index, j))
        except CryptoError as exc:
            raise SecureProtocolError(str(exc)) from None
        return out

    def receive_shares(self, relayed: Mapping[int, bytes]) -> None:
        """The shares the neighbours that shared sent this client: it masks with exactly these."""
        if not set(relayed) <= set(self.peers):
            raise SecureProtocolError("relayed shares from clients that are not in this client's roster")
        if len(relayed) + 1 < self.params.threshold:
            raise SecureProtocolError("fewer neighbours shared than the threshold needs")
        for j, ciphertext in relayed.items():
            try:
                key = self.cipher_key.agree(self.peers[j].cipher, SHARE_KEY_PURPOSE, self.context)
                plain = decrypt(key, ciphertext, share_ad(self.round_number, self.task_id, j, self.index))
            except CryptoError as exc:
                raise SecureProtocolError(f"neighbour {j}'s shares: {exc}") from None
            half = shamir.SHARE_BYTES
            if len(plain) != 2 * half:
                raise SecureProtocolError(f"neighbour {j}'s shares are {len(plain)} bytes, expected {2 * half}")
            self.held[j] = (plain[:half], plain[half:])
        self.maskers = frozenset(relayed)

    # phase 3
    def masked_input(self, update: Sequence[np.ndarray], weight: float) -> np.ndarray:
        """The quantized update plus the self mask plus the pairwise masks, mod 2^bits (one pass)."""
        masks = [(self.self_seed, 1)]
        try:
            masks += [(pair_seed(self.mask_key, self.peers[j].mask, self.context), pair_sign(self.index, j))
                      for j in sorted(self.maskers)]
        except CryptoError as exc:
            raise SecureProtocolError(str(exc)) from None
        return quantize(update, weight, self.params, self.rounding_seed, masks)

    # phase 4
    def reveal(self, survivors: Sequence[int], dropped: Sequence[int]) -> tuple[dict[int, bytes], dict[int, bytes]]:
        """The self-mask shares of ``survivors`` and the mask-key shares of ``dropped``: refused when
        the request (with any earlier one this round) asks for both of one peer, or names peers
        this client holds no shares of."""
        s, d = set(survivors), set(dropped)
        if len(s) != len(survivors) or len(d) != len(dropped):
            raise SecureProtocolError("the unmask request repeats a peer")
        if (s | self.revealed_self) & (d | self.revealed_key):
            raise SecureProtocolError("asked to reveal both the self-mask and the mask-key share of one peer: refused")
        if self.index not in s:
            raise SecureProtocolError("this client's input was accepted, but it is not named a survivor")
        if not (s | d) <= self.maskers | {self.index}:
            raise SecureProtocolError("asked for shares of clients this client did not mask with")
        if len(s) < self.params.threshold:
            raise SecureProtocolError(f"{len(s)} survivors in this neighbourhood, fewer than the threshold")
        self.revealed_self |= s
        self.revealed_key |= d
        return {j: self.held[j][0] for j in s}, {j: self.held[j][1] for j in d}
