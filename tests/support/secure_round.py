"""Drives secure rounds in one process, without gRPC: the server's SecureRound and a
SecureClientRound per client, each client on a thread of its own (the phases block as over the
wire), with clients that drop out at a chosen phase."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from services.client.secure import Peer, SecureClientRound
from services.common import tensors
from services.common.config import SecureSettings
from services.server.aggregation import Slots
from services.server.aggregation.interface import Outcome
from services.server.aggregation.secure import Keys, SecureAggregator, SecureRound

WAIT = 20.0
PHASES = ("keys", "shares", "input", "unmask")  # a client that drops "at" a phase never does it


def aggregator(layout: tensors.Layout, **settings: object) -> SecureAggregator:
    return SecureAggregator(layout, Slots(2), SecureSettings(**{"phase_timeout_s": 0.5, **settings}))


@dataclass
class Played:
    outcome: Outcome | None = None
    error: BaseException | None = None
    inputs: dict[str, np.ndarray] = field(default_factory=dict)  # the masked inputs sent, by client
    quantized: dict[str, np.ndarray] = field(default_factory=dict)  # the same, unmasked
    client_errors: dict[str, BaseException] = field(default_factory=dict)
    rounds: dict[str, SecureClientRound] = field(default_factory=dict)
    server: SecureRound | None = None


def play(agg: SecureAggregator, results: Mapping[str, tuple[list[np.ndarray], float]], *,
         drop: Mapping[str, str] | None = None, seed: int = 0,
         tamper: Callable[[str, np.ndarray], np.ndarray] | None = None) -> Played:
    """One round: every client in ``results`` is sampled; ``drop[client]`` is the phase it vanishes at."""
    drop = dict(drop or {})
    rnd = agg.open_round({})
    params = rnd.bind(1, "task-1", results)
    played = Played(server=rnd)
    inputs_done = threading.Barrier(len(results) + 1, timeout=WAIT)

    def client(cid: str, update: list[np.ndarray], weight: float, k: int) -> None:
        rounding = bytes([seed + k]) * 32
        me = SecureClientRound(params, 1, "task-1", rounding_seed=rounding)
        played.rounds[cid] = me
        passed = False
        try:
            if drop.get(cid) == "keys":
                return
            index, peers = rnd.advertise(cid, Keys(*me.advertise()), WAIT)
            if drop.get(cid) == "shares":
                return
            out = me.shares_for(index, {j: Peer(p.cipher, p.mask) for j, p in peers.items()})
            me.receive_shares(rnd.share(cid, out, WAIT))
            if drop.get(cid) == "input":
                return
            words = me.masked_input(update, weight)
            from services.common.secagg.quantize import quantize

            played.quantized[cid] = quantize(update, weight, params, rounding)
            if tamper is not None:
                words = tamper(cid, words)
            played.inputs[cid] = words.copy()
            upload = rnd.receive(cid, 1.0, WAIT)
            upload.feed(words.tobytes())
            upload.finish()
            rnd.commit(upload)
            inputs_done.wait()
            passed = True
            if drop.get(cid) == "unmask":
                return
            survivors, dropped = rnd.unmask(cid, WAIT)
            rnd.reveal(cid, *me.reveal(sorted(survivors), sorted(dropped)))
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            played.client_errors[cid] = exc
        finally:
            if not passed:
                inputs_done.wait()

    threads = [threading.Thread(target=client, args=(cid, u, w, k), daemon=True)
               for k, (cid, (u, w)) in enumerate(sorted(results.items()))]
    for t in threads:
        t.start()
    inputs_done.wait()
    rnd.close()
    try:
        played.outcome = rnd.finish()
    except BaseException as exc:  # noqa: BLE001
        played.error = exc
    for t in threads:
        t.join(WAIT)
    return played
