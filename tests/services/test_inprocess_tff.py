"""The correctness guards of the in-process TFF: the client update and the server's optimizer step
run as ``tf.function``s in this process instead of through TFF's execution context. Each must
compute what TFF itself computes: ``client_work.next`` for the client,
``build_apply_optimizer_finalizer``'s ``next`` for the server (non-finite updates rejected); and
the server state must survive its checkpoint form. (The aggregators' equality with TFF's:
tests/services/test_aggregators_equal_tff.py.) The TFF references run in a :class:`TffRuntime`
(TFF's ``worker_binary``), started once for the module.

Keras note: tracing TFF's client work (``task.weights_type``) builds a Keras model inside a
``tf.Graph``, which invalidates Keras models made before it, so the one task's types are traced
first and every other object is built from that task."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff
from support.digits import task as digits_task
from support.tff_runtime import TffRuntime

from services.client.trainer import ClientUpdate
from services.common import chunking, tensors
from services.common.chunking import segments
from services.common.config import ModelSettings, TrainingSettings
from services.common.data import digits_shard
from services.common.tensors import LayoutError
from services.server import algorithm
from services.server.aggregation import Outcome, Slots, aggregator_for
from services.server.algorithm import OptimizerStep, ServerAlgorithm
from services.tasks.federated import FederatedTask, server_optimizer, to_dataset

TRAINING = TrainingSettings(local_epochs=1)
TOL = 1e-6


@pytest.fixture(scope="module")
def task() -> FederatedTask:
    t = digits_task(TRAINING, ModelSettings())
    t.weights_type, t.result_type  # noqa: B018 (trace the client work first: see the module doc)
    return t


@pytest.fixture(scope="module")
def client_update(task: FederatedTask) -> ClientUpdate:
    return ClientUpdate(task)


def shard(index: int) -> tf.data.Dataset:
    arrays = digits_shard(index, 4, scheme="iid", alpha=0.5, eval_fraction=0.2, seed=0)
    return to_dataset(arrays, TRAINING)


def max_diff(a: list[Any], b: list[Any]) -> float:
    assert len(a) == len(b)
    assert all(np.shape(x) == np.shape(y) for x, y in zip(a, b, strict=True))
    return max((float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0.0))
                for x, y in zip(a, b, strict=True)), default=0.0)


def random_like(layout: tensors.Layout, seed: int, scale: float = 0.01) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(scale * rng.standard_normal(leaf.shape)).astype(leaf.dtype) for leaf in layout.leaves]


# ---- the client update -------------------------------------------------------------------------
def test_client_update_equals_tff_client_work(task: FederatedTask, client_update: ClientUpdate, runtime: TffRuntime) -> None:
    weights = task.initial_weights()
    leaves = tensors.flatten(weights)
    ds0, ds1 = shard(0), shard(1)

    first, m_first = client_update(leaves, ds0)
    other, m_other = client_update(leaves, ds1)
    again, m_again = client_update(leaves, ds0)  # the metrics of a call are that call's only

    reference = task.client_work.next(task.client_work.initialize(), [weights, weights], [ds0, ds1])
    ref0, ref1 = (tensors.flatten(r) for r in reference.result)

    result_layout = tensors.Layout.of(task.result_type)
    assert [np.shape(a) for a in first] == [leaf.shape for leaf in result_layout.leaves]
    assert max_diff(first[:-1], ref0[:-1]) < TOL
    assert max_diff(other[:-1], ref1[:-1]) < TOL
    assert float(first[-1]) == float(ref0[-1]) and float(other[-1]) == float(ref1[-1])  # update_weight
    assert max(float(np.max(np.abs(u))) for u in first[:-1]) > 1e-3  # it did train
    assert max_diff(first[:-1], other[:-1]) > 1e-4  # on its own shard

    # the same call again: the same result and metrics, not accumulated over calls
    assert max_diff(again, first) == 0.0
    assert m_again == m_first
    assert m_first["num_examples"] == float(first[-1])
    assert m_first["num_examples"] != m_other["num_examples"] or m_first["loss"] != m_other["loss"]

    # TFF's measurements sum the clients' unfinalized metrics, then finalize them
    train = reference.measurements["train"]
    n0, n1 = m_first["num_examples"], m_other["num_examples"]
    assert int(train["num_examples"]) == n0 + n1
    assert int(train["num_batches"]) == m_first["num_batches"] + m_other["num_batches"]
    for name in ("loss", "accuracy"):
        pooled = (m_first[name] * n0 + m_other[name] * n1) / (n0 + n1)
        assert abs(float(train[name]) - pooled) < 1e-5, name


def test_client_update_reads_an_aligned_buffer_in_place_and_leaves_it_unchanged(
        task: FederatedTask, client_update: ClientUpdate) -> None:
    """The client's receive buffer is aligned, so TensorFlow reads (the first of) the weights in
    place: the update must equal the one from ordinary (copied) arrays, and the buffer must come
    out unchanged (TensorFlow trains its own variables, never the inputs)."""
    layout = task.weights_layout
    weights = tensors.flatten(task.initial_weights())
    wire = bytes(layout.encode(weights))
    received = chunking.assemble([wire[:1000], wire[1000:]], expected_bytes=len(wire), max_bytes=len(wire))
    leaves = layout.decode(received)
    assert leaves[0].ctypes.data % tensors.ALIGN == 0 and leaves[0].flags.writeable
    assert np.shares_memory(tensors.as_tensor(leaves[0])._numpy(), leaves[0])  # type: ignore[attr-defined]
    in_place, _ = client_update(leaves, shard(0))
    copied, _ = client_update([np.array(w) for w in weights], shard(0))
    assert bytes(received) == wire
    assert max_diff(in_place, copied) == 0.0
    assert max(float(np.max(np.abs(u))) for u in in_place[:-1]) > 1e-3


def test_client_update_metrics_alone(task: FederatedTask, client_update: ClientUpdate, runtime: TffRuntime) -> None:
    """One client: TFF's finalized metrics are exactly that client's."""
    weights = task.initial_weights()
    # from weights other than the initial ones: a step of training on another shard
    start = tensors.flatten(weights)
    delta, _ = client_update(start, shard(2))
    moved = [w + d for w, d in zip(start, delta[:-1], strict=True)]
    result, metrics = client_update(moved, shard(3))
    reference = task.client_work.next(task.client_work.initialize(),
                                      [tensors.unflatten(task.weights_type, moved)], [shard(3)])
    assert max_diff(result, tensors.flatten(reference.result[0])) < TOL
    train = reference.measurements["train"]
    assert abs(metrics["loss"] - float(train["loss"])) < TOL
    assert metrics["accuracy"] == pytest.approx(float(train["accuracy"]),
                                                                   abs=1e-7)
    assert metrics["num_examples"] == float(train["num_examples"])


# ---- the server optimizer step -----------------------------------------------------------------
def same_as_typed(ours: Any, theirs: Any) -> float:
    """The largest difference of two optimizer states, ours cast to the dtypes of TFF's."""
    a, b = tensors.flatten(ours), tensors.flatten(theirs)
    return max_diff([np.asarray(x, np.asarray(y).dtype) for x, y in zip(a, b, strict=True)], b)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_optimizer_step_equals_tff_finalizer(task: FederatedTask, runtime: TffRuntime, optimizer: str) -> None:
    training = TrainingSettings(server_optimizer=optimizer, server_learning_rate=0.5 if optimizer == "sgd" else 0.01)
    finalizer = tff.learning.templates.build_apply_optimizer_finalizer(server_optimizer(training), task.weights_type)
    step = OptimizerStep(server_optimizer(training), task.weights_type)
    layout = tensors.Layout.of(task.weights_type)

    ref_state = finalizer.initialize()
    state = step.initialize()
    assert same_as_typed(state, ref_state) == 0.0

    weights = task.initial_weights()
    trainable = tensors.flatten(weights)
    for i in range(3):
        update = random_like(layout, seed=i)
        out = finalizer.next(ref_state, weights, update)
        ref_state, weights = out.state, out.result
        state, trainable = step(state, trainable, list(update))
        assert max_diff(trainable, tensors.flatten(weights)) < TOL, f"weights after step {i + 1}"
        assert same_as_typed(state, ref_state) < TOL, f"state after step {i + 1}"
    assert max_diff(trainable, tensors.flatten(task.initial_weights())) > 1e-3  # the steps did move

    # a non-finite update is rejected: weights and optimizer state unchanged (as TFF does)
    for bad in (np.nan, np.inf, -np.inf):
        update = random_like(layout, seed=9)
        update[1][3] = bad
        new_state, new_trainable = step(state, trainable, list(update))
        assert max_diff(new_trainable, trainable) == 0.0
        assert max_diff(tensors.flatten(new_state), tensors.flatten(state)) == 0.0
        out = finalizer.next(ref_state, weights, update)
        assert max_diff(new_trainable, tensors.flatten(out.result)) < TOL
        assert same_as_typed(new_state, out.state) < TOL


def test_optimizer_step_consumes_the_update(task: FederatedTask) -> None:
    """As documented: the caller's update list is emptied, so the update is not held twice."""
    step = OptimizerStep(server_optimizer(TRAINING), task.weights_type)
    update = random_like(tensors.Layout.of(task.weights_type), seed=1)
    trainable = tensors.flatten(task.initial_weights())
    _, new_trainable = step(step.initialize(), trainable, update)
    assert update == []
    assert max_diff(new_trainable, trainable) > 1e-3


@pytest.mark.parametrize("aligned", [True, False])
def test_optimizer_step_reads_in_place_and_never_writes_its_inputs(task: FederatedTask, aligned: bool) -> None:
    """Aligned inputs go to TensorFlow without a copy (DLPack), unaligned ones are copied; either
    way the inputs are unchanged (the old weights may still be being checkpointed) and the new
    weights are aligned numpy arrays over TensorFlow's own buffers."""
    layout = tensors.Layout.of(task.weights_type)

    def arrays(seed: int) -> list[np.ndarray]:
        out = []
        for a in random_like(layout, seed=seed):
            if aligned:
                out.append(tensors.aligned_copy(a))
            else:  # one float past an aligned start
                b = tensors.aligned_zeros((a.size + 1,), a.dtype)[1:].reshape(a.shape)
                b[...] = a
                out.append(b)
        return out

    trainable, update = arrays(1), arrays(2)
    if aligned:
        shared = tensors.as_tensor(trainable[0])
        assert np.shares_memory(shared._numpy(), trainable[0])  # type: ignore[attr-defined]
    before_w, before_u = [a.copy() for a in trainable], [a.copy() for a in update]
    kept_update = list(update)
    step = OptimizerStep(server_optimizer(TrainingSettings(server_learning_rate=0.5)), task.weights_type)
    _, new = step(step.initialize(), trainable, update)
    assert max_diff(trainable, before_w) == 0.0 and max_diff(kept_update, before_u) == 0.0
    expected = [w - 0.5 * u for w, u in zip(before_w, before_u, strict=True)]
    assert max_diff(new, expected) < 1e-6
    assert all(a.ctypes.data % tensors.ALIGN == 0 and a.flags.c_contiguous for a in new)
    assert not any(np.shares_memory(a, b) for a in new for b in [*trainable, *kept_update])


def server_algorithm(task: FederatedTask, training: TrainingSettings) -> ServerAlgorithm:
    return ServerAlgorithm(task, training, aggregator_for(training, task.result_layout, Slots(2)))


Results = list[tuple[list[np.ndarray], float]]


def aggregated(alg: ServerAlgorithm, state: algorithm.ServerState, results: Results) -> Outcome:
    """``results`` streamed into a round's aggregation and committed, as the servicer does, then
    finished into the round's outcome."""
    layout, rnd = alg.aggregator.layout, alg.aggregator.open_round(state.aggregator)
    for i, (update, weight) in enumerate(results):
        upload = rnd.receive(f"client-{i}", weight, timeout=10)
        for part in chunking.data_messages(layout.encode([*update, np.float32(weight)]), 4096):
            view = chunking.data_of(part)
            assert view is not None
            upload.feed(view)
        upload.finish()
        rnd.commit(upload)
    return rnd.finish()


def one_round(alg: ServerAlgorithm, state: algorithm.ServerState, results: Results) -> algorithm.ServerState:
    return alg.apply(state, aggregated(alg, state, results))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_optimizer_state_has_tffs_dtypes(task: FederatedTask, optimizer: str) -> None:
    alg = server_algorithm(task, TrainingSettings(server_optimizer=optimizer))
    state = alg.initialize()
    for s in (state.finalizer, alg.step.initialize()):
        assert [np.asarray(x).dtype for x in tensors.flatten(s)] == [leaf.dtype for leaf in alg.finalizer_layout.leaves]
    after = one_round(alg, state, two_results(alg, seed=1)).finalizer
    assert [np.asarray(x).dtype for x in tensors.flatten(after)] == [leaf.dtype for leaf in alg.finalizer_layout.leaves]


# ---- the server state's checkpoint form --------------------------------------------------------
def assert_same_state(a: algorithm.ServerState, b: algorithm.ServerState, tol: float = 0.0) -> None:
    assert a.round == b.round
    if tol == 0.0:
        assert b"".join(a.payload) == b"".join(b.payload)
    assert max_diff(a.weights, b.weights) <= tol
    assert same_as_typed(a.finalizer, b.finalizer) <= tol  # (dtypes: see test_optimizer_state_has_tffs_dtypes)
    assert a.aggregator == b.aggregator


def through_a_file(parts: list[Any]) -> list[memoryview]:
    """Parts as a checkpoint load hands them back: memoryviews over one bytes blob."""
    joined = [b"".join(segments(p)) for p in parts]
    blob = memoryview(b"".join(joined))
    out, offset = [], 0
    for p in joined:
        n = len(p)
        out.append(blob[offset : offset + n])
        offset += n
    return out


def two_results(alg: ServerAlgorithm, seed: int) -> Results:
    return [(random_like(alg.aggregator.layout, seed=seed + i)[:-1], w) for i, w in enumerate((3.0, 5.0))]


@pytest.mark.parametrize(("aggregator", "optimizer"), [("mean", "sgd"), ("mean", "adam"), ("robust", "adam"),
                                                       ("dp", "sgd")])
def test_state_round_trips(task: FederatedTask, aggregator: str, optimizer: str) -> None:
    """A state written to a checkpoint and read back is the same state (the aggregator's adaptive
    norms included), and it trains on exactly as the original does."""
    training = TrainingSettings(aggregator=aggregator, server_optimizer=optimizer, server_learning_rate=0.1,
                                dp_noise_multiplier=0.0, clients_per_round=2, min_clients=2)
    alg = server_algorithm(task, training)
    state = alg.initialize()
    for r in range(2):
        state = one_round(alg, state, two_results(alg, seed=10 * r))
    assert state.round == 2
    if aggregator != "mean":
        assert state.aggregator != alg.aggregator.initial_state()  # the norms did adapt
    restored = alg.decode_state(state.round, through_a_file(alg.encode_state(state)))
    assert_same_state(state, restored)
    # the restored state is as good as the original: the next round is the same
    results = two_results(alg, seed=99)
    after = [one_round(alg, s, results) for s in (state, restored)]
    assert_same_state(after[0], after[1], tol=TOL)  # exact once the live state has TFF's dtypes
    assert max_diff(after[0].weights, state.weights) > 1e-4


def test_decode_state_refuses_damage(task: FederatedTask) -> None:
    alg = server_algorithm(task, TrainingSettings(server_optimizer="adam", aggregator="robust"))
    parts = [b"".join(segments(p)) for p in alg.encode_state(alg.initialize())]
    with pytest.raises(LayoutError, match="3 parts"):
        alg.decode_state(0, parts[:2])
    with pytest.raises(LayoutError, match="expected"):
        alg.decode_state(0, [parts[0][:-4], *parts[1:]])
    with pytest.raises(LayoutError, match="expected"):
        alg.decode_state(0, [parts[0], parts[1] + b"\0\0\0\0", parts[2]])
    with pytest.raises(LayoutError, match="robust aggregator's state"):
        alg.decode_state(0, [parts[0], parts[1], parts[2][:-4]])
    nan = bytearray(parts[0])
    nan[:4] = np.float32(np.nan).tobytes()
    with pytest.raises(LayoutError, match=r"trainable\.0 holds NaN"):
        alg.decode_state(0, [nan, *parts[1:]])


def test_model_weights_of_the_layouts_leaves(task: FederatedTask) -> None:
    leaves = random_like(task.weights_layout, seed=4)
    weights = algorithm.as_model_weights(task, leaves)
    assert isinstance(weights, tff.learning.models.ModelWeights)
    assert max_diff(list(weights.trainable), leaves) == 0.0 and list(weights.non_trainable) == []
