"""The server's aggregators (services/server/aggregation) against TFF's own, on the same results,
round after round: ``mean`` against ``tff.aggregators.MeanFactory``, ``robust`` against
``tff.learning.robust_aggregator(weighted=True)``, ``dp`` against ``tff.learning.dp_aggregator``
(adaptive clipping) and against TFF's zeroing around
``DifferentiallyPrivateFactory.gaussian_fixed`` (``training.dp_clip``). Each round's update must
agree within 1e-5 and the adaptive norms (zeroing, clipping) must move exactly as TFF moves them.

The results are chosen so that every branch is taken: updates far above the zeroing norm (zeroed),
above the clip (clipped), below it, and a varying number of clients per round. DP noise: with a
noise multiplier of 0 nothing is noised; with one above 0 both sides draw the same noise, because
TFF's Gaussian draws (``tf.random_normal_initializer`` in ``tensorflow_privacy``'s GaussianSumQuery,
replaced while TFF traces the aggregator) and ours (the aggregator's noise source) come from the
same seeded stateless generator, call by call: each tensor of the sum in order, then the unclipped
count. The TFF references run in a :class:`TffRuntime` (TFF's ``worker_binary``)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff
from support.tff_runtime import TffRuntime
from tensorflow_federated.python.learning import model_update_aggregator
from tensorflow_privacy.privacy.dp_query import gaussian_query

from services.common import tensors
from services.common.chunking import data_messages, data_of
from services.server.aggregation import Aggregator, Outcome, Slots
from services.server.aggregation.dp import DifferentiallyPrivate
from services.server.aggregation.mean import Mean
from services.server.aggregation.robust import Robust

SHAPES = [(7, 5), (11,), (3,)]
VALUE_TYPE = tff.StructWithPythonType([tff.TensorType(np.float32, s) for s in SHAPES], list)
LAYOUT = tensors.Layout.of(tff.StructType([("update", VALUE_TYPE), ("update_weight", tff.TensorType(np.float32))]))
ROUNDS = 7
CLIENTS_PER_ROUND = 4
TOL = 1e-5
SEED = 7

Result = tuple[list[np.ndarray], float]


def round_results(r: int) -> list[Result]:
    """Round ``r``'s results: 3 to 5 clients, norms from far below to far above the norms TFF
    starts from (zeroing 21 in L-inf, clipping 1.0 robust / 0.1 dp in L2), weights 1 to 40."""
    rng = np.random.default_rng(100 + r)
    out = []
    for c in range(3 + r % 3):
        scale = [0.01, 0.2, 1.0, 5.0, 60.0][(c + r) % 5]
        update = [(scale * rng.standard_normal(s) / np.sqrt(np.prod(s))).astype(np.float32) for s in SHAPES]
        out.append((update, float(rng.integers(1, 41))))
    return out


def streamed(agg: Aggregator, state: dict[str, np.float32], results: list[Result]) -> Outcome:
    """``results`` through a round's aggregation as the servicer hands them over (4 KiB chunks)."""
    rnd = agg.open_round(state)
    for i, (update, weight) in enumerate(results):
        upload = rnd.receive(f"client-{i}", weight, timeout=10)
        for message in data_messages(LAYOUT.encode([*update, np.float32(weight)]), 64):
            view = data_of(message)
            assert view is not None
            upload.feed(view)
        upload.finish()
        rnd.commit(upload)
    return rnd.finish()


def assert_close(ours: list[np.ndarray], theirs: Any, what: str) -> None:
    theirs = [np.asarray(t) for t in theirs]
    assert [o.shape for o in ours] == [t.shape for t in theirs]
    diff = max(float(np.max(np.abs(o.astype(np.float64) - t))) for o, t in zip(ours, theirs, strict=True))
    assert diff < TOL, f"{what}: max |ours - TFF| = {diff}"


class SeededNoise:
    """The same Gaussian draws on both sides: call k of a round gets stateless normals seeded
    (SEED, k); TFF's traced graph makes the same calls, in the same order, every round."""

    def __init__(self, calls_per_round: int) -> None:
        self.calls_per_round = calls_per_round
        self.counter = itertools.count()

    def draw(self, shape: Any, k: int, dtype: Any = tf.float32) -> tf.Tensor:
        return tf.random.stateless_normal(shape, seed=[SEED, k], dtype=dtype)

    def __call__(self, array: np.ndarray, stddev: float, lock: AbstractContextManager[object]) -> None:  # ours
        k = next(self.counter) % self.calls_per_round
        noise = (np.float32(stddev) * self.draw(array.shape, k).numpy()).astype(array.dtype)
        with lock:
            array += noise

    def patch_tff(self) -> Any:
        """While TFF traces a DP aggregator: its noise initializer draws the same."""
        trace = itertools.count()

        def initializer(stddev: Any = 1.0, **_: Any) -> Callable[..., tf.Tensor]:
            return lambda shape, dtype=tf.float32: stddev * self.draw(shape, next(trace), dtype)

        return mock.patch.object(gaussian_query.tf, "random_normal_initializer", initializer)


# ---- mean -----------------------------------------------------------------------------------------
def test_mean_equals_tffs_mean_factory(runtime: TffRuntime) -> None:
    process = tff.aggregators.MeanFactory().create(VALUE_TYPE, tff.TensorType(np.float32))
    ours = Mean(LAYOUT, Slots(8))
    tff_state, state = process.initialize(), ours.initial_state()
    for r in range(ROUNDS):
        results = round_results(r)
        out = process.next(tff_state, [u for u, _ in results], [w for _, w in results])
        outcome = streamed(ours, state, results)
        assert_close(outcome.update, out.result, f"round {r + 1}")
        tff_state, state = out.state, outcome.state


# ---- robust ---------------------------------------------------------------------------------------
def test_robust_equals_tffs_robust_aggregator(runtime: TffRuntime) -> None:
    process = tff.learning.robust_aggregator(weighted=True).create(VALUE_TYPE, tff.TensorType(np.float32))
    ours = Robust(LAYOUT, Slots(8))
    tff_state, state = process.initialize(), ours.initial_state()
    zeroed = clipped = 0
    for r in range(ROUNDS):
        results = round_results(r)
        out = process.next(tff_state, [u for u, _ in results], [w for _, w in results])
        outcome = streamed(ours, state, results)
        assert_close(outcome.update, out.result, f"round {r + 1}")
        m = out.measurements
        assert outcome.measurements["zeroing_norm"] == pytest.approx(float(m["zeroing_norm"]), rel=1e-6)
        assert outcome.measurements["zeroed"] == m["zeroed_count"]
        assert outcome.measurements["clipping_norm"] == pytest.approx(float(m["zeroing"]["clipping_norm"]), rel=1e-6)
        assert outcome.measurements["clipped"] == m["zeroing"]["clipped_count"]
        # the adaptive norms move as TFF's estimates do
        tff_state, state = out.state, outcome.state
        zeroing_estimate = tff_state["zeroing_norm"][0].current_estimate
        clipping_estimate = tff_state["inner_agg"]["clipping_norm"][0].current_estimate
        assert state["zeroing_estimate"] == pytest.approx(float(zeroing_estimate), rel=1e-6)
        assert state["clipping_norm"] == pytest.approx(float(clipping_estimate), rel=1e-6)
        zeroed += m["zeroed_count"]
        clipped += m["zeroing"]["clipped_count"]
    assert zeroed > 0 and clipped > 0  # both branches were taken


# ---- dp -------------------------------------------------------------------------------------------
def tff_dp(noise_multiplier: float, clip: float | None, noise: SeededNoise) -> Any:
    with noise.patch_tff():
        if clip is None:
            factory = tff.learning.dp_aggregator(noise_multiplier, CLIENTS_PER_ROUND)
        else:  # what tff.learning.dp_aggregator does, around a fixed clip
            factory = model_update_aggregator._default_zeroing(
                tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(noise_multiplier, CLIENTS_PER_ROUND, clip))
        return factory.create(VALUE_TYPE)


@pytest.mark.parametrize(("noise_multiplier", "clip"), [(0.0, None), (0.1, None), (0.0, 0.5), (0.7, 0.5)],
                         ids=["adaptive-no-noise", "adaptive-seeded-noise", "fixed-no-noise", "fixed-seeded-noise"])
def test_dp_equals_tffs_dp_aggregator(runtime: TffRuntime, noise_multiplier: float, clip: float | None) -> None:
    adaptive = clip is None
    noise = SeededNoise(len(SHAPES) + (1 if adaptive else 0))
    process = tff_dp(noise_multiplier, clip, noise)
    ours = DifferentiallyPrivate(LAYOUT, Slots(8), noise_multiplier=noise_multiplier,
                                 clients_per_round=CLIENTS_PER_ROUND, clip=clip, noise=noise)
    tff_state, state = process.initialize(), ours.initial_state()
    clips = []
    for r in range(ROUNDS):
        results = round_results(r)
        out = process.next(tff_state, [u for u, _ in results])
        outcome = streamed(ours, state, results)
        assert_close(outcome.update, out.result, f"round {r + 1}")
        m, ours_m = out.measurements, outcome.measurements
        assert ours_m["zeroing_norm"] == pytest.approx(float(m["zeroing_norm"]), rel=1e-6)
        assert ours_m["zeroed"] == m["zeroed_count"]
        if adaptive:  # TFF reports the clip the round leaves for the next one
            assert ours_m["dp_next_clip"] == pytest.approx(float(m["zeroing"]["dp_query_metrics"]["clip"]), rel=1e-6)
        clips.append(ours_m["dp_clip"])
        # the privacy parameters, as configured and as TFF applies them
        assert ours_m["dp_noise_multiplier"] == noise_multiplier and ours_m["dp_clients_per_round"] == CLIENTS_PER_ROUND
        stddev = (ours.privacy.value_noise_multiplier * ours_m["dp_clip"])
        assert ours_m["dp_noise_stddev"] == pytest.approx(stddev, rel=1e-6)
        tff_state, state = out.state, outcome.state
    if adaptive:
        assert clips[0] == pytest.approx(0.1) and len(set(clips)) == ROUNDS  # it adapted every round
    else:
        assert clips == [pytest.approx(clip)] * ROUNDS
    if noise_multiplier:  # the noise was there, and it was the same on both sides
        assert outcome.measurements["dp_noise_stddev"] > 0


def test_dp_noise_is_gaussian_with_the_mechanisms_stddev() -> None:
    """Our own noise source (seeded from the OS in the server): N(0, stddev^2) on every number."""
    from services.server.aggregation.dp import GaussianNoise

    a = np.zeros((3, 1 << 20), np.float32)  # several blocks
    GaussianNoise(np.random.default_rng(0))(a, 0.25, nullcontext())
    assert abs(float(a.mean())) < 1e-3 and float(a.std()) == pytest.approx(0.25, rel=1e-2)
    assert len(np.unique(a[:, :1000])) == 3000  # no block repeats another
