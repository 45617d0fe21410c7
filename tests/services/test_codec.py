"""The wire codec: TFF values survive encode/decode unchanged, and decode accepts nothing but a value of
exactly the expected TFF type (names, dtypes, shapes) with finite numbers; everything else, however
malformed, is a CodecError. Imports TensorFlow (one module-level cost); the Task is built once."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tensorflow_federated.proto.v0 import executor_pb2

from services.common import codec
from services.common.codec import CodecError
from services.common.config import TrainingSettings
from services.common.task import Task, initial_weights

F32 = np.float32


def tensor(shape: tuple[int, ...], dtype: Any = F32) -> tff.TensorType:
    return tff.TensorType(dtype, shape)


def weights_like(shapes: list[tuple[int, ...]], dtype: Any = F32, names: tuple[str, str] = ("trainable", "non_trainable"),
                 ) -> tff.StructType:
    return tff.StructType([(names[0], tff.StructType([tensor(s, dtype) for s in shapes])), (names[1], tff.StructType([]))])


SMALL_SHAPES = [(2, 3), (3,)]
SMALL_TYPE = weights_like(SMALL_SHAPES)


def small_weights(seed: int = 0, dtype: Any = F32, shapes: list[tuple[int, ...]] = SMALL_SHAPES,
                  ) -> tff.learning.models.ModelWeights:
    rng = np.random.default_rng(seed)
    return tff.learning.models.ModelWeights(trainable=[rng.standard_normal(s).astype(dtype) for s in shapes],
                                            non_trainable=[])


@pytest.fixture(scope="module")
def task() -> Task:
    t = Task(TrainingSettings())
    t.weights_type, t.result_type  # noqa: B018 (build client work once, here)
    return t


def client_result(task: Task, weight: float = 3.0, seed: int = 0) -> collections.OrderedDict:
    rng = np.random.default_rng(seed)
    update = [rng.standard_normal(t.shape).astype(F32) for t in task.result_type.update]
    return collections.OrderedDict(update=update, update_weight=F32(weight))


def assert_value_of_type(value: Any, type_spec: tff.Type, path: str = "value") -> None:
    """``value`` is exactly a value of ``type_spec``: same names, dtypes and shapes, finite numbers."""
    if isinstance(type_spec, tff.StructType):
        assert isinstance(value, tff.structure.Struct), f"{path}: {type(value).__name__} is not a Struct"
        got = list(tff.structure.iter_elements(value))
        want = list(tff.structure.iter_elements(type_spec))
        assert [n for n, _ in got] == [n for n, _ in want], path
        for i, ((name, item), (_, item_type)) in enumerate(zip(got, want, strict=True)):
            assert_value_of_type(item, item_type, f"{path}.{name or i}")
        return
    assert isinstance(type_spec, tff.TensorType), type_spec
    arr = np.asarray(value)
    assert arr.dtype == type_spec.dtype and arr.shape == tuple(type_spec.shape), (path, arr.dtype, arr.shape)
    assert np.all(np.isfinite(arr)), path


def assert_same(decoded: Any, original: Any) -> None:
    decoded_leaves = tf.nest.flatten(tff.structure.to_odict_or_tuple(decoded) if isinstance(
        decoded, tff.structure.Struct) else decoded)
    original_leaves = tf.nest.flatten(original)
    assert len(decoded_leaves) == len(original_leaves)
    for d, o in zip(decoded_leaves, original_leaves, strict=True):
        assert np.asarray(d).dtype == np.asarray(o).dtype
        np.testing.assert_array_equal(d, o)


# ---- round trips -----------------------------------------------------------------------------------
def test_model_weights_like_round_trip() -> None:
    original = small_weights()
    decoded = codec.decode(codec.encode(original, SMALL_TYPE), SMALL_TYPE)
    assert_value_of_type(decoded, SMALL_TYPE)
    assert_same(decoded.trainable, original.trainable)
    assert len(decoded.non_trainable) == 0


def test_encoding_is_deterministic() -> None:
    assert codec.encode(small_weights(1), SMALL_TYPE) == codec.encode(small_weights(1), SMALL_TYPE)
    assert codec.encode(small_weights(1), SMALL_TYPE) != codec.encode(small_weights(2), SMALL_TYPE)


def test_task_wire_types_are_the_models(task: Task) -> None:
    h = task.model.hidden_units
    trainable = [tuple(t.shape) for t in task.weights_type.trainable]
    assert trainable == [(64, h), (h,), (h, 10), (10,)]
    assert [tuple(t.shape) for t in task.result_type.update] == trainable
    assert task.result_type.update_weight == tff.TensorType(F32)


def test_real_weights_round_trip(task: Task) -> None:
    original = initial_weights(0)
    decoded = codec.decode(codec.encode(original, task.weights_type), task.weights_type)
    assert_value_of_type(decoded, task.weights_type)
    assert_same(decoded.trainable, original.trainable)


def test_real_client_result_round_trip(task: Task) -> None:
    original = client_result(task, weight=17.0)
    decoded = codec.decode(codec.encode(original, task.result_type), task.result_type)
    assert_value_of_type(decoded, task.result_type)
    assert_same(decoded.update, original["update"])
    assert float(decoded.update_weight) == 17.0


def test_tff_client_result_container_round_trips(task: Task) -> None:
    original = client_result(task)
    as_tff = tff.learning.templates.ClientResult(update=original["update"], update_weight=original["update_weight"])
    assert codec.encode(as_tff, task.result_type) == codec.encode(original, task.result_type)


def test_weights_and_results_are_not_interchangeable(task: Task) -> None:
    weights = codec.encode(initial_weights(0), task.weights_type)
    result = codec.encode(client_result(task), task.result_type)
    with pytest.raises(CodecError, match="expected"):
        codec.decode(weights, task.result_type)
    with pytest.raises(CodecError, match="expected"):
        codec.decode(result, task.weights_type)


# ---- rejections --------------------------------------------------------------------------------------
def _encoded(value: Any, type_spec: tff.Type) -> bytes:
    return codec.encode(value, type_spec)


REJECTED = {
    "wrong-shape": lambda: _encoded(small_weights(shapes=[(2, 4), (3,)]), weights_like([(2, 4), (3,)])),
    "transposed": lambda: _encoded(small_weights(shapes=[(3, 2), (3,)]), weights_like([(3, 2), (3,)])),
    "scalar-for-vector": lambda: _encoded(small_weights(shapes=[(2, 3), ()]), weights_like([(2, 3), ()])),
    "float64": lambda: _encoded(small_weights(dtype=np.float64), weights_like(SMALL_SHAPES, np.float64)),
    "float16": lambda: _encoded(small_weights(dtype=np.float16), weights_like(SMALL_SHAPES, np.float16)),
    "int32": lambda: _encoded(small_weights(dtype=np.int32), weights_like(SMALL_SHAPES, np.int32)),
    "missing-element": lambda: _encoded(small_weights(shapes=[(2, 3)]), weights_like([(2, 3)])),
    "extra-element": lambda: _encoded(small_weights(shapes=[*SMALL_SHAPES, (1,)]), weights_like([*SMALL_SHAPES, (1,)])),
    "extra-field": lambda: _encoded(
        collections.OrderedDict(trainable=small_weights().trainable, non_trainable=[], extra=F32(1)),
        tff.StructType([("trainable", SMALL_TYPE.trainable), ("non_trainable", tff.StructType([])),
                        ("extra", tensor(()))])),
    "missing-field": lambda: _encoded(collections.OrderedDict(trainable=small_weights().trainable),
                                      tff.StructType([("trainable", SMALL_TYPE.trainable)])),
    "wrong-names": lambda: _encoded(collections.OrderedDict(weights=small_weights().trainable, other=[]),
                                    weights_like(SMALL_SHAPES, names=("weights", "other"))),
    "swapped-fields": lambda: _encoded(collections.OrderedDict(non_trainable=[], trainable=small_weights().trainable),
                                       tff.StructType([("non_trainable", tff.StructType([])),
                                                       ("trainable", SMALL_TYPE.trainable)])),
    "unnamed": lambda: _encoded([small_weights().trainable, []], tff.StructType([
        (None, SMALL_TYPE.trainable), (None, tff.StructType([]))])),
    "bare-tensor": lambda: _encoded(np.zeros((2, 3), F32), tensor((2, 3))),
    "federated": lambda: _encoded(collections.OrderedDict(trainable=small_weights().trainable, non_trainable=[]),
                                  tff.FederatedType(SMALL_TYPE, tff.SERVER)),
    "garbage": lambda: b"\xff\xfe this is not a protobuf \x00\x01",
    "empty": lambda: b"",
    "truncated": lambda: _encoded(small_weights(), SMALL_TYPE)[:-7],
    "half": lambda: _encoded(small_weights(), SMALL_TYPE)[: len(_encoded(small_weights(), SMALL_TYPE)) // 2],
    "empty-value": lambda: executor_pb2.Value().SerializeToString(),
}


@pytest.mark.parametrize("make", list(REJECTED.values()), ids=list(REJECTED))
def test_decode_rejects(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CodecError) as info:
        codec.decode(make(), SMALL_TYPE)
    assert len(str(info.value)) > 10


def test_type_mismatch_message_shows_both_types() -> None:
    data = _encoded(small_weights(dtype=np.float64), weights_like(SMALL_SHAPES, np.float64))
    with pytest.raises(CodecError) as info:
        codec.decode(data, SMALL_TYPE)
    assert "float32[2,3]" in str(info.value) and "float64[2,3]" in str(info.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["matrix", "vector"])
def test_non_finite_weights_are_rejected_with_their_path(bad: float, where: str) -> None:
    weights = small_weights()
    index = 0 if where == "matrix" else 1
    weights.trainable[index].flat[-1] = bad
    with pytest.raises(CodecError, match=rf"value\.trainable\.{index} holds NaN or Inf"):
        codec.decode(codec.encode(weights, SMALL_TYPE), SMALL_TYPE)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_update_weight_is_rejected(task: Task, bad: float) -> None:
    data = codec.encode(client_result(task, weight=bad), task.result_type)
    with pytest.raises(CodecError, match=r"value\.update_weight holds NaN or Inf"):
        codec.decode(data, task.result_type)


def test_largest_finite_float_is_accepted() -> None:
    weights = small_weights()
    weights.trainable[0][:] = np.finfo(F32).max
    weights.trainable[1][:] = np.finfo(F32).tiny / 2  # subnormal is finite
    assert_value_of_type(codec.decode(codec.encode(weights, SMALL_TYPE), SMALL_TYPE), SMALL_TYPE)


def _graph_writing(marker: Path) -> bytes:
    """A TFF sequence Value whose dataset graph has a WriteFile node: it runs if the graph is imported."""
    from tensorflow_federated.python.core.impl.types import type_serialization

    ds = tf.data.Dataset.from_tensors(F32(1.0))
    graph = tf.compat.v1.GraphDef.FromString(tf.raw_ops.DatasetToGraphV2(input_dataset=ds._variant_tensor).numpy())
    for name, text in (("evil_path", str(marker)), ("evil_text", "written by a peer")):
        node = graph.node.add(name=name, op="Const")
        node.attr["dtype"].type = tf.string.as_datatype_enum
        node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(text))
    graph.node.add(name="evil_write", op="WriteFile", input=["evil_path", "evil_text"])
    for node in graph.node:
        if node.op == "TensorDataset":
            node.input.append("^evil_write")
    value = executor_pb2.Value()
    value.sequence.serialized_graph_def = graph.SerializeToString()
    value.sequence.element_type.CopyFrom(type_serialization.serialize_type(tensor(())))
    return value.SerializeToString()


def test_sequence_values_are_rejected(task: Task, tmp_path: Path) -> None:
    with pytest.raises(CodecError):
        codec.decode(_graph_writing(tmp_path / "marker"), task.result_type)


def test_decode_never_runs_a_peer_supplied_graph(task: Task, tmp_path: Path) -> None:
    """TFF's deserialize_value would import and run a sequence Value's GraphDef (DatasetFromGraph) before
    any type check: a peer could make the other side run arbitrary TF ops, such as writing files."""
    marker = tmp_path / "marker"
    with pytest.raises(CodecError):
        codec.decode(_graph_writing(marker), task.result_type)
    assert not marker.exists(), "decode executed a WriteFile op sent by the peer"


# ---- fuzzing -----------------------------------------------------------------------------------------
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])
SMALL_RESULT_TYPE = tff.StructType([("update", tff.StructType([tensor((2, 3)), tensor((3,))])),
                                    ("update_weight", tensor(()))])
SMALL_RESULT = codec.encode(collections.OrderedDict(update=small_weights().trainable, update_weight=F32(2.0)),
                            SMALL_RESULT_TYPE)


def decode_or_codec_error(data: bytes, type_spec: tff.Type) -> None:
    try:
        value = codec.decode(data, type_spec)
    except CodecError:
        return
    assert_value_of_type(value, type_spec)


@FUZZ
@given(data=st.binary(max_size=400))
def test_random_bytes_decode_or_codec_error(data: bytes) -> None:
    decode_or_codec_error(data, SMALL_RESULT_TYPE)


@FUZZ
@given(flips=st.lists(st.integers(0, len(SMALL_RESULT) * 8 - 1), min_size=1, max_size=6))
def test_bit_flipped_small_payload_decodes_or_codec_error(flips: list[int]) -> None:
    data = bytearray(SMALL_RESULT)
    for bit in flips:
        data[bit // 8] ^= 1 << (bit % 8)
    decode_or_codec_error(bytes(data), SMALL_RESULT_TYPE)


@FUZZ
@given(cut=st.integers(0, len(SMALL_RESULT)), insert=st.binary(max_size=8))
def test_spliced_small_payload_decodes_or_codec_error(cut: int, insert: bytes) -> None:
    assume(insert or cut < len(SMALL_RESULT))
    decode_or_codec_error(SMALL_RESULT[:cut] + insert + SMALL_RESULT[cut + 1 :], SMALL_RESULT_TYPE)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_bit_flipped_real_result_decodes_or_codec_error(task: Task, data: st.DataObject) -> None:
    payload = bytearray(codec.encode(client_result(task), task.result_type))
    # Half the flips land in the first bytes (headers, type and shape fields), the rest anywhere.
    head = data.draw(st.lists(st.integers(0, 64 * 8 - 1), max_size=3))
    anywhere = data.draw(st.lists(st.integers(0, len(payload) * 8 - 1), max_size=3))
    assume(head or anywhere)
    for bit in head + anywhere:
        payload[bit // 8] ^= 1 << (bit % 8)
    decode_or_codec_error(bytes(payload), task.result_type)
