"""A secure round over the wire, for the client (services/client/secure.py holds its state and
checks): advertise keys and share them before training (the key phases have their own deadline),
then train, send the masked input through SubmitResult, and reveal the shares the server asks for.
Each reply is checked for the phase it answers and for repeated peers before it is used."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from services.client.secure import Peer, SecureClientRound, SecureProtocolError, round_params
from services.client.session import Session
from services.common.logs import fields
from services.common.proto import federation_pb2 as pb
from services.common.secagg.layout import MaskedLayout
from services.common.tensors import Layout

if TYPE_CHECKING:
    from services.client.trainer import Trained

log = logging.getLogger(__name__)
T = TypeVar("T")


def take_part(session: Session, client_id: str, header: pb.TaskHeader, result_layout: Layout,
              train: Callable[[], Trained]) -> Trained:
    """The whole secure round for ``header``'s task; returns what was trained (its metrics).
    Raises SecureProtocolError (the server broke the protocol: nothing more is revealed) or
    grpc.RpcError (a phase was refused)."""
    s = header.secure
    params = round_params(s.version, s.clients, s.threshold, s.neighbours, s.bits, s.clip, s.max_weight)
    me = SecureClientRound(params, header.round, header.task_id)
    timeout = max(1.0, header.deadline_s) + 2 * s.phase_timeout_s

    def call(phase: str, reply_phase: str, **message: Any) -> Any:
        reply = session.secure(pb.SecureRequest(client_id=client_id, task_id=header.task_id, round=header.round,
                                                **{phase: message.pop("body")}), timeout)
        if reply.WhichOneof("phase") != reply_phase:
            raise SecureProtocolError(f"the server answered {phase} with {reply.WhichOneof('phase')}")
        return getattr(reply, reply_phase)

    cipher_key, mask_key = me.advertise()
    roster = call("advertise", "roster", body=pb.AdvertiseKeys(cipher_key=cipher_key, mask_key=mask_key))
    peers = _unique((p.index, Peer(p.cipher_key, p.mask_key)) for p in roster.neighbours)
    shares = me.shares_for(roster.index, peers)
    relayed = call("share", "relayed", body=pb.ShareKeys(
        shares=[pb.EncryptedShare(peer=j, ciphertext=c) for j, c in sorted(shares.items())]))
    me.receive_shares(_unique((e.peer, e.ciphertext) for e in relayed.shares))

    trained = train()
    update = [np.frombuffer(part, leaf.dtype).reshape(leaf.shape)
              for leaf, part in zip(result_layout.leaves[:-1], trained.result[:-1], strict=True)]
    words = me.masked_input(update, trained.weight)
    del update
    session.submit_payload(client_id, header, words.data.cast("B"), MaskedLayout(result_layout).fingerprint, 1.0,
                           trained.metrics)
    del words

    ask = call("unmask", "unmask", body=pb.UnmaskRequest())
    self_mask, mask_key_shares = me.reveal(list(ask.survivors), list(ask.dropped))
    call("reveal", "revealed", body=pb.RevealShares(
        self_mask=[pb.Share(owner=j, share=v) for j, v in sorted(self_mask.items())],
        mask_key=[pb.Share(owner=j, share=v) for j, v in sorted(mask_key_shares.items())]))
    log.info("secure round done", extra=fields(round=header.round, survivors=len(ask.survivors),
                                               dropped=len(ask.dropped)))
    return trained


def _unique(entries: Iterable[tuple[int, T]]) -> dict[int, T]:
    out: dict[int, T] = {}
    for peer, value in entries:
        if peer in out:
            raise SecureProtocolError(f"the server named peer {peer} twice")
        out[peer] = value
    return out
