"""The cryptographic pieces of secure aggregation (services/common/secagg), each held to its
promise: Shamir (any t shares rebuild a secret, t - 1 do not), X25519 agreement (both ends derive
one key), AES-GCM shares bound to round, task, sender and recipient, the mask generator (what a
masked vector looks like: uniform words), the neighbour graph, and quantization (no wrap, within
1 / S of the weighted mean)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import chisquare
from support.secagg import add_masks

from services.common.secagg import crypto, shamir
from services.common.secagg.graph import degree, neighbours
from services.common.secagg.params import ParamsError, RoundParams, default_threshold
from services.common.secagg.quantize import dequantize, quantize

SECRET = bytes(range(32))


# ---- Shamir -------------------------------------------------------------------------------------
def test_any_t_shares_rebuild_the_secret_and_fewer_do_not() -> None:
    shares = shamir.split(SECRET, 3, [1, 2, 3, 4, 5])
    for subset in itertools.combinations(shares, 3):
        assert shamir.combine({x: shares[x] for x in subset}, 3) == SECRET
    with pytest.raises(shamir.ShareError, match="3 needed"):
        shamir.combine({1: shares[1], 2: shares[2]}, 3)
    # Two shares interpolated as if t were 2: a line through them, not the secret.
    assert not gives_secret({1: shares[1], 2: shares[2]}, 2)


def gives_secret(shares: dict[int, bytes], threshold: int) -> bool:
    try:
        return shamir.combine(shares, threshold) == SECRET
    except shamir.ShareError:  # not even a 32-byte value
        return False


def test_a_tampered_or_malformed_share_does_not_give_the_secret() -> None:
    shares = shamir.split(SECRET, 2, [1, 2, 3])
    bad = bytearray(shares[2])
    bad[-1] ^= 1
    assert gives_secret({1: shares[1], 2: shares[2]}, 2)
    assert not gives_secret({1: shares[1], 2: bytes(bad)}, 2)
    with pytest.raises(shamir.ShareError, match="66 bytes"):
        shamir.combine({1: shares[1], 2: shares[2][:-1]}, 2)
    with pytest.raises(shamir.ShareError, match="below the field"):
        shamir.share_value(b"\xff" * shamir.SHARE_BYTES)


# ---- key agreement and share encryption --------------------------------------------------------
def test_both_ends_agree_and_the_key_is_bound_to_its_purpose_and_round() -> None:
    a, b = crypto.KeyPair(), crypto.KeyPair()
    key = a.agree(b.public, b"mask", b"round=1")
    assert key == b.agree(a.public, b"mask", b"round=1") and len(key) == 32
    assert key != a.agree(b.public, b"share", b"round=1")
    assert key != a.agree(b.public, b"mask", b"round=2")
    with pytest.raises(crypto.CryptoError):
        a.agree(bytes(32), b"mask", b"round=1")  # a low-order point
    with pytest.raises(crypto.CryptoError, match="32 bytes"):
        a.agree(b.public[:31], b"mask", b"round=1")


@pytest.mark.parametrize("field", ["round", "task", "sender", "recipient", "truncated", "flipped"])
def test_a_share_moved_to_another_round_task_or_peer_does_not_decrypt(field: str) -> None:
    key = crypto.KeyPair().agree(crypto.KeyPair().public, b"share", b"x")
    ad = crypto.share_ad(3, "task-a", 1, 2)
    ct = crypto.encrypt(key, b"s" * 132, ad)
    assert crypto.decrypt(key, ct, ad) == b"s" * 132
    other_ad = {"round": crypto.share_ad(4, "task-a", 1, 2), "task": crypto.share_ad(3, "task-b", 1, 2),
                "sender": crypto.share_ad(3, "task-a", 0, 2), "recipient": crypto.share_ad(3, "task-a", 1, 0)}
    if field in other_ad:
        with pytest.raises(crypto.CryptoError):
            crypto.decrypt(key, ct, other_ad[field])
    elif field == "truncated":
        with pytest.raises(crypto.CryptoError):
            crypto.decrypt(key, ct[:-1], ad)
    else:
        flipped = bytearray(ct)
        flipped[20] ^= 0x40
        with pytest.raises(crypto.CryptoError):
            crypto.decrypt(key, bytes(flipped), ad)


# ---- what a masked vector looks like ------------------------------------------------------------
def uniformity_p(words: np.ndarray) -> float:
    """Chi-square p-value of the words' bytes (each of the 4 byte positions in 256 buckets) being
    uniform: the smallest of the four."""
    return min(float(chisquare(np.bincount((words >> (8 * i)).astype(np.uint8), minlength=256)).pvalue)
               for i in range(4))


PARAMS = RoundParams(clients=4, threshold=3, neighbours=16, bits=32, clip=2.0, max_weight=4096).check()


def client_input(masks: list[tuple[bytes, int]], bits: int = 32) -> np.ndarray:
    rng = np.random.default_rng(7)
    update = [rng.normal(0, 0.01, 1 << 16).astype(np.float32)]  # a typical small model delta
    words = quantize(update, 300.0, PARAMS, bytes([7]) * 32)
    add_masks(words, masks, (1 << bits) - 1)
    return words


def test_a_masked_vector_is_indistinguishable_from_uniform_and_the_test_can_tell() -> None:
    masked = client_input([(bytes([1]) * 32, 1), (bytes([2]) * 32, -1), (bytes([3]) * 32, 1)])
    assert uniformity_p(masked) > 1e-3
    assert uniformity_p(client_input([])) < 1e-12  # unmasked: the quantized update
    weak = client_input([])
    weak ^= crypto.mask(bytes([1]) * 32, weak.size) & np.uint32(0x00FFFFFF)  # a mask that spares the top byte
    assert uniformity_p(weak) < 1e-12
    # Two masks that cancel (a pair without the self mask) leave the input in the clear.
    assert uniformity_p(client_input([(bytes([5]) * 32, 1), (bytes([5]) * 32, -1)])) < 1e-12


def test_masks_stream_block_by_block_as_one() -> None:
    seed = bytes([9]) * 32
    whole = crypto.mask(seed, 1000)
    assert np.array_equal(np.concatenate([b.copy() for b in crypto.mask_blocks(seed, 1000, block_words=64)]), whole)
    target = np.zeros(1000, np.uint32)
    add_masks(target, [(seed, 1), (seed, 1), (bytes(32), -1)], 0xFFFFFFFF, block_words=100)
    assert np.array_equal(target, whole * np.uint32(2) - crypto.mask(bytes(32), 1000))


# ---- the neighbour graph ----------------------------------------------------------------------
@pytest.mark.parametrize(("n", "k"), [(2, 16), (17, 16), (18, 16), (50, 6), (7, 2)])
def test_the_graph_is_symmetric_with_degree_min_k_n_minus_1(n: int, k: int) -> None:
    for i in range(n):
        mine = neighbours(i, n, k)
        assert i not in mine and len(mine) == degree(n, k)
        assert all(i in neighbours(j, n, k) for j in mine)
    assert (degree(n, k) == n - 1) == (n <= k + 1)


def test_the_default_threshold_is_a_strict_majority_of_the_neighbourhood() -> None:
    assert [default_threshold(n, 16) for n in (2, 3, 4, 5, 16, 17, 100)] == [2, 2, 3, 3, 9, 9, 9]


# ---- quantization -----------------------------------------------------------------------------
def test_the_sum_of_n_extreme_inputs_does_not_wrap() -> None:
    for bits in (16, 24, 32):
        p = RoundParams(clients=5, threshold=3, neighbours=4, bits=bits, clip=1.5, max_weight=7).check()
        ups = [[np.array([1.5, -1.5, 1e9, -1e9, 0.3], np.float32)] for _ in range(5)]
        total = np.zeros(6, np.uint32)
        for k, u in enumerate(ups):
            total += quantize(u, 7.0, p, bytes([bits + k]) * 32)
        total &= np.uint32(p.modulus_mask)
        mean, weight_sum = dequantize(total, [(5,)], p)
        assert weight_sum == 35
        np.testing.assert_allclose(mean[0], [1.5, -1.5, 1.5, -1.5, 0.3], atol=1 / p.scale + 1e-6)


def test_the_weighted_mean_is_within_one_over_s_and_unbiased() -> None:
    rng = np.random.default_rng(0)
    ups = [[rng.uniform(-2, 2, 4096).astype(np.float32)] for _ in range(4)]
    weights = [10.0, 200.0, 37.0, 4096.0]
    total = sum((quantize(u, w, PARAMS).astype(np.uint64) for u, w in zip(ups, weights, strict=True)),
                np.zeros(4097, np.uint64)).astype(np.uint32)
    mean, weight_sum = dequantize(total, [(4096,)], PARAMS)
    exact = sum(u[0].astype(np.float64) * w for u, w in zip(ups, weights, strict=True)) / sum(weights)
    assert weight_sum == sum(weights)
    err = mean[0] - exact
    assert np.abs(err).max() <= 1 / PARAMS.scale + 1e-6
    assert abs(err.mean()) < 0.1 / PARAMS.scale  # stochastic rounding: no drift


def test_parameters_no_round_can_run_with_are_refused() -> None:
    ok = {"clients": 4, "threshold": 3, "neighbours": 16, "bits": 32, "clip": 1.0, "max_weight": 10}
    for change, message in [({"clients": 1}, ">= 2 clients"), ({"neighbours": 3}, "even"),
                            ({"threshold": 5}, "threshold 5"), ({"bits": 8}, "bits"),
                            ({"bits": 16, "max_weight": 10_000}, "no room")]:
        with pytest.raises(ParamsError, match=message):
            RoundParams(**{**ok, **change}).check()
