"""The ``secure`` aggregator's protocol, in one process (tests/support/secure_round.py plays the
clients on threads, no gRPC, no TensorFlow): the unmasked sum is the plain sum of the quantized
updates bit for bit, and the update within 1 / S of ``mean``'s; dropouts at every phase with t
survivors complete and with t - 1 are refused before anything is revealed; a refused or cut-off
masked input leaves the sum as if it was never sent; a client never reveals both secrets of one
peer; the phases refuse replays, reordering and bad sizes; the server's memory is O(model)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from support.aggregation import free_slots, layout_of

from services.client.secure import Peer, SecureClientRound, SecureProtocolError
from services.common.chunking import PayloadError
from services.common.secagg.crypto import BLOCK_WORDS
from services.common.secagg.quantize import dequantize
from services.server.aggregation import RoundClosed, RoundRefused, Slots
from services.server.aggregation.mean import Mean
from services.server.aggregation.secure import Keys
from services.server.refusals import Reject
from tests.support.secure_round import PHASES, WAIT, aggregator, play

SHAPES = [(30, 7), (5,), (1,)]
LAYOUT = layout_of(SHAPES)


def results(n: int, seed: int = 0, scale: float = 0.5) -> dict[str, tuple[list[np.ndarray], float]]:
    rng = np.random.default_rng(seed)
    return {f"c{i}": ([rng.uniform(-scale, scale, s).astype(np.float32) for s in SHAPES], float(5 + 7 * i))
            for i in range(n)}


def mean_of(res: dict[str, tuple[list[np.ndarray], float]], clients: set[str]) -> list[np.ndarray]:
    """The ``mean`` aggregator's update (TFF's weighted mean) of ``clients``' results."""
    agg = Mean(LAYOUT, Slots(2))
    rnd = agg.open_round({})
    for cid in sorted(clients):
        update, weight = res[cid]
        upload = rnd.receive(cid, weight, WAIT)
        upload.feed(bytes(LAYOUT.encode([*update, np.float32(weight)])))
        upload.finish()
        rnd.commit(upload)
    return rnd.finish().update


def test_the_unmasked_sum_is_the_plain_sum_of_the_quantized_updates_bit_for_bit() -> None:
    res = results(5)
    for bits in (32, 20):
        played = play(aggregator(LAYOUT, bits=bits), res)
        assert played.outcome is not None, played.error
        p = played.server.params
        plain = np.zeros(played.server.aggregator.masked.words, np.uint32)
        for words in played.quantized.values():
            plain += words
        plain &= np.uint32(p.modulus_mask)
        expected, weight_sum = dequantize(plain, SHAPES, p)
        assert weight_sum == sum(int(w) for _, w in res.values())
        for got, want in zip(played.outcome.update, expected, strict=True):
            assert got.tobytes() == want.tobytes()
        # ... and no input went over the wire in the clear.
        assert all(not np.array_equal(played.inputs[c], played.quantized[c]) for c in res)


def test_the_update_is_within_the_quantization_bound_of_mean() -> None:
    res = results(5)
    played = play(aggregator(LAYOUT), res)
    assert played.outcome is not None, played.error
    bound = 1 / played.server.params.scale
    for got, want in zip(played.outcome.update, mean_of(res, set(res)), strict=True):
        assert np.abs(got - want).max() <= bound + 1e-6


# n = 5, complete graph: neighbourhoods of 5, t = 3. Drop 2 -> t survive; drop 3 -> t - 1.
@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("survivors", [3, 2])
def test_dropouts_at_every_phase(phase: str, survivors: int) -> None:
    res = results(5)
    dropped = {f"c{i}": phase for i in range(5 - survivors)}
    played = play(aggregator(LAYOUT), res, drop=dropped)
    server = played.server
    assert server.params.threshold == 3
    if survivors < 3:
        assert isinstance(played.error, RoundRefused) and played.outcome is None
        # The survivors were told the round was refused (at the phase that fell short, or later).
        assert all(isinstance(e, RoundClosed | Reject) for e in played.client_errors.values())
        if phase != "unmask":  # refused before any share was asked for
            assert not server.self_mask_shares and not server.mask_key_shares
        return
    assert not played.client_errors and played.outcome is not None, played.error
    counted = set(res) - set(dropped) if phase != "unmask" else set(res)  # an unmask dropout's input is in
    bound = 1 / server.params.scale
    for got, want in zip(played.outcome.update, mean_of(res, counted), strict=True):
        assert np.abs(got - want).max() <= bound + 1e-6


def test_a_sparse_graph_round_with_dropouts_sums_its_survivors() -> None:
    res = results(9, seed=3)
    agg = aggregator(LAYOUT, neighbours=4)  # k = 4 < n - 1: each client masks with 4 of 8 others
    played = play(agg, res, drop={"c2": "input", "c6": "input"})
    assert played.outcome is not None, played.error
    assert played.server.params.threshold == 3 and all(len(r.peers) == 4 for r in played.rounds.values()
                                                        if r.peers)
    for got, want in zip(played.outcome.update, mean_of(res, set(res) - {"c2", "c6"}), strict=True):
        assert np.abs(got - want).max() <= 1 / played.server.params.scale + 1e-6


def test_a_refused_or_cut_off_masked_input_counts_for_nothing() -> None:
    res = results(4)
    reference = play(aggregator(LAYOUT), res, drop={"c3": "input"}, seed=11)

    def cut(cid: str, words: np.ndarray) -> np.ndarray:
        if cid == "c3":
            raise PayloadError("cut off")  # the stream broke before the end: never committed
        return words

    played = play(aggregator(LAYOUT), res, seed=11, tamper=cut)
    assert played.outcome is not None and reference.outcome is not None
    assert isinstance(played.client_errors["c3"], PayloadError)
    for a, b in zip(played.outcome.update, reference.outcome.update, strict=True):
        np.testing.assert_allclose(a, b, atol=1 / played.server.params.scale + 1e-6)
    # Uploads that are refused at the end (too short) or after the round closed are never added.
    agg = aggregator(LAYOUT)
    rnd = agg.open_round({})
    rnd.bind(1, "t", ["a", "b"])
    rnd.keys = {0: Keys(b"a" * 32, b"b" * 32), 1: Keys(b"c" * 32, b"d" * 32)}
    rnd.shares = {0: {}, 1: {}}
    rnd.expects("a")
    upload = rnd.receive("a", 1.0, WAIT)
    upload.feed(b"\x01" * 8)
    with pytest.raises(PayloadError, match="ended after 8"):
        upload.finish()
    upload.discard()
    assert not rnd.total.any() and free_slots(agg.slots) == 2
    upload = rnd.receive("b", 1.0, WAIT)
    upload.feed(b"\x01" * agg.masked.nbytes)
    upload.finish()
    rnd.close()
    with pytest.raises(RoundClosed):
        rnd.commit(upload)
    upload.discard()
    assert not rnd.total.any()


def test_a_client_never_reveals_both_secrets_of_one_peer() -> None:
    res = results(4)
    played = play(aggregator(LAYOUT), res)
    assert played.outcome is not None
    me = played.rounds["c0"]
    peer = next(iter(me.maskers))
    fresh = SecureClientRound(me.params, 1, "task-1")
    fresh.index, fresh.maskers, fresh.held = me.index, me.maskers, me.held
    with pytest.raises(SecureProtocolError, match="both"):
        fresh.reveal([me.index, peer, *sorted(me.maskers - {peer})][:3], [peer])
    # The lie split across two requests: survivor first, then dropped.
    survivors = [me.index, *sorted(me.maskers)]
    fresh.reveal(survivors, [])
    with pytest.raises(SecureProtocolError, match="both"):
        fresh.reveal([me.index, *sorted(me.maskers - {peer})], [peer])


def test_the_client_checks_what_the_server_relays() -> None:
    params = play(aggregator(LAYOUT), results(4)).server.params  # n = 4, t = 3
    a, b, c = (SecureClientRound(params, 1, "task-1") for _ in range(3))
    with pytest.raises(SecureProtocolError, match="index"):
        a.shares_for(7, {})
    with pytest.raises(SecureProtocolError, match="threshold"):
        a.shares_for(0, {1: Peer(*b.advertise())})
    keys = {0: Peer(*a.advertise()), 1: Peer(*b.advertise()), 2: Peer(*c.advertise())}
    out = {i: me.shares_for(i, {j: k for j, k in keys.items() if j != i}) for i, me in enumerate((a, b, c))}
    with pytest.raises(SecureProtocolError, match="authenticate"):
        b.receive_shares({0: out[0][2], 2: out[2][1]})  # client 0's shares for client 2, passed to 1
    with pytest.raises(SecureProtocolError, match="authenticate"):
        b.receive_shares({0: out[2][1], 2: out[0][1]})  # senders swapped
    with pytest.raises(SecureProtocolError, match="not in this client's roster"):
        b.receive_shares({0: out[0][1], 3: out[2][1]})
    later = SecureClientRound(params, 2, "task-2")  # the same keys, another round: replayed shares
    later.cipher_key, later.index, later.peers = b.cipher_key, 1, b.peers
    with pytest.raises(SecureProtocolError, match="authenticate"):
        later.receive_shares({0: out[0][1], 2: out[2][1]})
    b.receive_shares({0: out[0][1], 2: out[2][1]})  # as relayed: decrypts
    assert b.maskers == {0, 2}


def test_the_phases_refuse_replays_reordering_and_bad_sizes() -> None:
    agg = aggregator(LAYOUT, phase_timeout_s=5.0)
    rnd = agg.open_round({})
    rnd.bind(1, "t", ["a", "b", "c"])
    with pytest.raises(Reject) as bad:
        rnd.advertise("a", Keys(b"k" * 31, b"m" * 32), WAIT)
    assert bad.value.reason == "invalid"
    with pytest.raises(Reject) as foreign:
        rnd.advertise("z", Keys(b"k" * 32, b"m" * 32), WAIT)
    assert foreign.value.reason == "not_sampled"
    with pytest.raises(Reject) as early:
        rnd.share("a", {}, WAIT)
    assert early.value.reason == "out_of_order"
    with pytest.raises(Reject) as early_unmask:
        rnd.unmask("a", WAIT)
    assert early_unmask.value.reason == "out_of_order"
    with pytest.raises(RoundClosed):
        rnd.receive("a", 1.0, WAIT)  # a masked input before the keys were shared
    rnd.keys[rnd.index["a"]] = Keys(b"k" * 32, b"m" * 32)  # as if "a" advertised already
    with pytest.raises(Reject) as replay:
        rnd.advertise("a", Keys(b"k" * 32, b"m" * 32), WAIT)
    assert replay.value.reason == "duplicate"


def test_the_servers_memory_stays_o_model_while_unmasking_dropouts() -> None:
    layout = layout_of([(1 << 21,)])  # 8 MiB of float32
    rng = np.random.default_rng(0)
    res = {f"c{i}": ([rng.uniform(-1, 1, 1 << 21).astype(np.float32)], 10.0) for i in range(8)}
    agg = aggregator(layout, phase_timeout_s=30.0)
    model = layout.nbytes
    finishing: dict[str, int] = {}
    real_finish = type(agg.open_round({})).finish

    def measured_finish(self):  # noqa: ANN001, ANN202
        tracemalloc.start()
        try:
            return real_finish(self)
        finally:
            finishing["peak"] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()

    import services.server.aggregation.secure as secure

    original = secure.SecureRound.finish
    secure.SecureRound.finish = measured_finish
    try:
        played = play(agg, res, drop={"c1": "input", "c4": "input", "c6": "input"})
    finally:
        secure.SecureRound.finish = original
    assert played.outcome is not None, played.error
    # 5 self masks and 3 x 5 pairwise masks removed one block at a time: the float32 update plus
    # a few blocks (the mask's, dequantizing's int64 and float64), whatever the number of masks.
    block = 4 * BLOCK_WORDS
    assert finishing["peak"] < model + 6 * block, (finishing["peak"] - model) / block


def test_a_round_whose_sample_cannot_meet_the_threshold_is_refused() -> None:
    agg = aggregator(LAYOUT, threshold=4)  # 4 needed; only 3 sampled (too few clients were live)
    rnd = agg.open_round({})
    rnd.bind(1, "t", ["a", "b", "c"])
    assert rnd.failed and "threshold 4" in rnd.failed
    assert not rnd.hands_task("a") and not rnd.expects("a")
    with pytest.raises(RoundRefused):
        rnd.finish()
