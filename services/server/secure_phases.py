"""The gRPC face of a secure round's key phases and unmasking (the SecureAggregation RPC): checks
each request's shape exactly (sizes, one entry per peer, no duplicates), finds its round and hands
it to the round's SecureRound (services/server/aggregation/secure), and builds the reply.
Refusals are services/server/refusals.py's, mapped to gRPC statuses by the servicer; those of the
round's phases name the round."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from services.common.proto import federation_pb2 as pb
from services.common.secagg.params import VERSION
from services.server.aggregation.secure import Keys, SecureRound
from services.server.aggregation.staging import RoundClosed
from services.server.coordinator import Coordinator, RoundTask
from services.server.refusals import Reject

MAX_ENTRIES = 1024  # peers in one request: at most the graph's degree bound (training.secure.neighbours)


def header_fields(task: RoundTask) -> dict[str, Any]:
    """The TRAIN header's secure parameters for a secure round (nothing for the others)."""
    aggregation = task.aggregation
    if not isinstance(aggregation, SecureRound):
        return {}
    p = aggregation.bind(task.round, task.task_id, task.sampled)
    return {"secure": pb.SecureParams(
        version=VERSION, clients=p.clients, threshold=p.threshold, neighbours=p.neighbours, bits=p.bits,
        clip=p.clip, max_weight=p.max_weight, phase_timeout_s=aggregation.timeout)}


def handle(coordinator: Coordinator, request: pb.SecureRequest, time_remaining: float | None) -> pb.SecureReply:
    task = coordinator.round_of(request.client_id, request.task_id, request.round)
    aggregation = task.aggregation
    if not isinstance(aggregation, SecureRound):
        raise Reject("out_of_order", f"round {request.round} is not aggregated securely")
    aggregation.bind(task.round, task.task_id, task.sampled)
    timeout = task.remaining(coordinator.clock()) + 2 * aggregation.timeout
    if time_remaining is not None:
        timeout = min(timeout, time_remaining)
    cid, phase = request.client_id, request.WhichOneof("phase")
    # The request's own shape is checked first: its refusals do not name the round.
    if phase == "share":
        shares = _by_peer((s.peer, s.ciphertext) for s in request.share.shares)
    elif phase == "reveal":
        r = request.reveal
        self_mask = _by_peer((s.owner, s.share) for s in r.self_mask)
        mask_key = _by_peer((s.owner, s.share) for s in r.mask_key)
    try:
        if phase == "advertise":
            a = request.advertise
            index, peers = aggregation.advertise(cid, Keys(a.cipher_key, a.mask_key), timeout)
            return pb.SecureReply(roster=pb.Roster(index=index, neighbours=[
                pb.PeerKeys(index=j, cipher_key=k.cipher, mask_key=k.mask) for j, k in sorted(peers.items())]))
        if phase == "share":
            relayed = aggregation.share(cid, shares, timeout)
            return pb.SecureReply(relayed=pb.RelayedShares(shares=[
                pb.EncryptedShare(peer=j, ciphertext=ct) for j, ct in sorted(relayed.items())]))
        if phase == "unmask":
            survivors, dropped = aggregation.unmask(cid, timeout)
            return pb.SecureReply(unmask=pb.UnmaskReply(survivors=sorted(survivors), dropped=sorted(dropped)))
        if phase == "reveal":
            aggregation.reveal(cid, self_mask, mask_key)
            return pb.SecureReply(revealed=True)
    except Reject as exc:
        raise Reject(exc.reason, f"round {request.round}: {exc}") from None
    except RoundClosed as exc:
        raise Reject("stale", f"round {request.round}: {exc}") from None
    raise Reject("invalid", "a SecureRequest must carry one phase")


def _by_peer(entries: Iterable[tuple[int, bytes]]) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for peer, data in entries:
        if peer in out:
            raise Reject("invalid", f"two entries for peer {peer}")
        if len(out) >= MAX_ENTRIES:
            raise Reject("invalid", f"at most {MAX_ENTRIES} entries")
        out[peer] = bytes(data)
    return out
