"""The wire layout of weights and results: derived from the task's TFF types, it round-trips every
leaf bit for bit in TFF's order, decodes without copying, and refuses anything but exactly the
layout's size with finite floats (naming the leaf); types without a fixed size have no layout.
Imports TensorFlow; the task's types are traced once for the module."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
import tensorflow_federated as tff
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorflow_federated.python.core.impl.types import type_conversions

from services.common import tensors
from services.common.config import ModelSettings, TrainingSettings
from services.common.task import Task, initial_weights
from services.common.tensors import Layout, LayoutError

T = tff.TensorType


@pytest.fixture(scope="module")
def task() -> Task:
    t = Task(TrainingSettings(), ModelSettings())
    t.weights_type, t.result_type  # noqa: B018 (trace the client work once, first: see ClientUpdate)
    return t


@pytest.fixture(scope="module")
def weights_layout(task: Task) -> Layout:
    return Layout.of(task.weights_type)


@pytest.fixture(scope="module")
def result_layout(task: Task) -> Layout:
    return Layout.of(task.result_type)


def random_leaves(layout: Layout, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for leaf in layout.leaves:
        if leaf.dtype.kind == "f":
            out.append(rng.standard_normal(leaf.shape).astype(leaf.dtype))
        else:
            out.append(rng.integers(0, 100, leaf.shape).astype(leaf.dtype))
    return out


# A small type with every kind of leaf the layout allows, to test what the real task types lack.
MIXED = tff.StructType([
    ("f", T(np.float32, [3])),
    ("i", T(np.int32, [2])),
    ("d", T(np.float64)),
    ("u", T(np.uint8, [4])),
    ("h", T(np.float16, [2])),
    ("nested", tff.StructType([T(np.int64, [1]), T(np.float32, [0]), T(np.float32, [2, 1])])),
])


# ---- the real task types -----------------------------------------------------------------------
def test_weights_layout_is_the_models_tensors(task: Task, weights_layout: Layout) -> None:
    expected = [(64, 32), (32,), (32, 10), (10,)]  # the default MLP: 64 -> 32 -> 10
    assert [leaf.shape for leaf in weights_layout.leaves] == expected
    assert all(leaf.dtype == np.dtype("<f4") for leaf in weights_layout.leaves)
    assert [leaf.path for leaf in weights_layout.leaves] == [f"trainable.{i}" for i in range(4)]
    assert weights_layout.nbytes == 4 * sum(int(np.prod(s)) for s in expected)


def test_result_layout_is_the_update_then_its_weight(result_layout: Layout, weights_layout: Layout) -> None:
    assert [leaf.path for leaf in result_layout.leaves] == [f"update.{i}" for i in range(4)] + ["update_weight"]
    assert [leaf.shape for leaf in result_layout.leaves[:-1]] == [leaf.shape for leaf in weights_layout.leaves]
    assert result_layout.leaves[-1].shape == () and result_layout.leaves[-1].dtype == np.dtype("<f4")
    assert result_layout.nbytes == weights_layout.nbytes + 4


@pytest.mark.parametrize("which", ["weights", "result", "mixed"])
def test_leaves_lie_back_to_back(which: str, weights_layout: Layout, result_layout: Layout) -> None:
    layout = {"weights": weights_layout, "result": result_layout, "mixed": Layout.of(MIXED)}[which]
    offset = 0
    for leaf in layout.leaves:
        assert leaf.offset == offset
        assert leaf.nbytes == int(np.prod(leaf.shape, dtype=np.int64)) * leaf.dtype.itemsize
        offset += leaf.nbytes
    assert layout.nbytes == offset


def test_leaf_order_is_tffs(task: Task, weights_layout: Layout) -> None:
    leaves = tensors.flatten(task.initial_weights())
    assert [(np.shape(a), np.asarray(a).dtype) for a in leaves] == \
        [(leaf.shape, leaf.dtype) for leaf in weights_layout.leaves]
    decoded = weights_layout.decode(weights_layout.encode(leaves))
    for a, b in zip(leaves, decoded, strict=True):
        np.testing.assert_array_equal(a, b)
    # ... and back into TFF's container, in the right places
    weights = tensors.unflatten(task.weights_type, decoded)
    assert isinstance(weights, tff.learning.models.ModelWeights)
    original = task.initial_weights()
    assert len(weights.trainable) == len(original.trainable) and len(weights.non_trainable) == 0
    for a, b in zip(weights.trainable, original.trainable, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("which", ["weights", "result", "mixed"])
def test_round_trip_is_bit_exact(which: str, weights_layout: Layout, result_layout: Layout) -> None:
    layout = {"weights": weights_layout, "result": result_layout, "mixed": Layout.of(MIXED)}[which]
    leaves = random_leaves(layout, seed=1)
    buf = layout.encode(leaves)
    assert isinstance(buf, memoryview) and buf.readonly and buf.nbytes == layout.nbytes == len(buf)
    # little-endian, C order, back to back: the bytes are the leaves' own '<' bytes, concatenated
    assert bytes(buf) == b"".join(np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes() for a in leaves)
    decoded = layout.decode(buf)
    assert len(decoded) == len(leaves)
    for a, b, leaf in zip(leaves, decoded, layout.leaves, strict=True):
        assert b.shape == leaf.shape and b.dtype == leaf.dtype
        np.testing.assert_array_equal(a, b)


def test_encode_casts_to_the_wire_dtype(weights_layout: Layout) -> None:
    leaves64 = [a.astype(np.float64) for a in random_leaves(weights_layout, seed=2)]
    decoded = weights_layout.decode(weights_layout.encode(leaves64))
    for a, b in zip(leaves64, decoded, strict=True):
        assert b.dtype == np.float32
        np.testing.assert_array_equal(a.astype(np.float32), b)


def test_encode_refuses_wrong_count_or_shape(weights_layout: Layout) -> None:
    leaves = random_leaves(weights_layout)
    with pytest.raises(ValueError, match="expected 4 tensors, got 3"):
        weights_layout.encode(leaves[:3])
    with pytest.raises(ValueError, match="expected 4 tensors, got 5"):
        weights_layout.encode([*leaves, leaves[0]])
    with pytest.raises(ValueError, match=r"trainable\.2: shape \(10, 32\) is not \(32, 10\)"):
        weights_layout.encode([leaves[0], leaves[1], leaves[2].T, leaves[3]])


@pytest.mark.parametrize("kind", [bytearray, bytes, memoryview])
def test_decode_is_zero_copy(result_layout: Layout, kind: type) -> None:
    raw = bytearray(result_layout.encode(random_leaves(result_layout)))
    buf = raw if kind is bytearray else (bytes(raw) if kind is bytes else memoryview(raw))
    decoded = result_layout.decode(buf)
    backing = np.frombuffer(buf, np.uint8)
    for a in decoded:
        assert np.shares_memory(a, backing)
    if kind is not bytes:  # a write to the buffer shows through the views: they are not copies
        new = np.float32(decoded[0][0, 0]) + np.float32(1)
        raw[:4] = new.tobytes()
        assert decoded[0][0, 0] == new


def test_decode_of_read_only_buffer_gives_read_only_views(result_layout: Layout) -> None:
    decoded = result_layout.decode(result_layout.encode(random_leaves(result_layout)))
    assert not any(a.flags.writeable for a in decoded)


@pytest.mark.parametrize("delta", [-4, -1, 1, 4, None])
def test_wrong_size_is_refused(result_layout: Layout, delta: int | None) -> None:
    n = 0 if delta is None else result_layout.nbytes + delta
    with pytest.raises(LayoutError, match=f"expected {result_layout.nbytes} bytes for this model, got {n}"):
        result_layout.decode(bytes(n))


def test_all_zero_bytes_of_the_right_size_decode(result_layout: Layout) -> None:
    decoded = result_layout.decode(bytes(result_layout.nbytes))
    assert all(not a.any() for a in decoded)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "+inf", "-inf"])
def test_non_finite_is_refused_naming_the_leaf(result_layout: Layout, bad: float) -> None:
    for i, leaf in enumerate(result_layout.leaves):
        leaves = random_leaves(result_layout)
        leaves[i] = leaves[i].copy()
        leaves[i].reshape(-1)[-1] = bad  # the last element: the check must cover the whole leaf
        with pytest.raises(LayoutError, match=rf"^{re.escape(leaf.path)} holds NaN or Inf$"):
            result_layout.decode(result_layout.encode(leaves))


def test_non_finite_in_every_float_dtype_is_refused() -> None:
    layout = Layout.of(MIXED)
    for i, leaf in enumerate(layout.leaves):
        if leaf.dtype.kind != "f" or leaf.nbytes == 0:
            continue
        leaves = random_leaves(layout)
        leaves[i] = np.full(leaf.shape, np.nan, leaf.dtype)
        with pytest.raises(LayoutError, match=rf"^{re.escape(leaf.path)} holds"):
            layout.decode(layout.encode(leaves))


def test_int_leaves_are_not_finiteness_checked() -> None:
    """Integer bit patterns that would be NaN / Inf as floats are ordinary integers."""
    layout = Layout.of(tff.StructType([("i", T(np.int32, [3])), ("u", T(np.uint16, [2])), ("f", T(np.float32))]))
    nan32 = np.frombuffer(np.float32(np.nan).tobytes(), "<i4")[0]
    inf32 = np.frombuffer(np.float32(np.inf).tobytes(), "<i4")[0]
    buf = layout.encode([np.array([nan32, inf32, -1], np.int32), np.array([0x7E00, 0xFC00], np.uint16), 1.5])
    i, u, f = layout.decode(buf)
    assert i.tolist() == [nan32, inf32, -1] and u.tolist() == [0x7E00, 0xFC00] and f == 1.5
    # the same bytes declared as floats are refused: the type, not the bytes, decides
    as_floats = Layout.of(tff.StructType([("i", T(np.float32, [3])), ("u", T(np.float16, [2])), ("f", T(np.float32))]))
    with pytest.raises(LayoutError, match=r"^i holds"):
        as_floats.decode(buf)


# ---- fingerprints --------------------------------------------------------------------------------
def test_fingerprint(task: Task, weights_layout: Layout, result_layout: Layout) -> None:
    for layout in (weights_layout, result_layout):
        assert re.fullmatch(r"[0-9a-f]{16}", layout.fingerprint)
    assert weights_layout.fingerprint != result_layout.fingerprint
    assert Layout.of(task.weights_type).fingerprint == weights_layout.fingerprint  # deterministic


def test_fingerprint_differs_for_another_model(task: Task, weights_layout: Layout) -> None:
    # The type of the initial weights is the client work's weights type (checked here for the
    # default model), so another width's type can be had without tracing another client work.
    assert str(type_conversions.infer_type(task.initial_weights())) == str(task.weights_type)
    other = Layout.of(type_conversions.infer_type(initial_weights(0, ModelSettings(hidden_units=16))))
    assert other.fingerprint != weights_layout.fingerprint
    assert other.nbytes != weights_layout.nbytes
    with pytest.raises(LayoutError, match="same task"):
        weights_layout.check_fingerprint(other.fingerprint, "the server's model")


def test_fingerprint_differs_for_same_size_other_shape() -> None:
    """Sizes alone would not tell [2, 3] from [3, 2]: the fingerprint does."""
    a, b = Layout.of(T(np.float32, [2, 3])), Layout.of(T(np.float32, [3, 2]))
    assert a.nbytes == b.nbytes and a.fingerprint != b.fingerprint
    c = Layout.of(T(np.int32, [2, 3]))
    assert a.nbytes == c.nbytes and a.fingerprint != c.fingerprint


def test_check_fingerprint(weights_layout: Layout, result_layout: Layout) -> None:
    weights_layout.check_fingerprint(weights_layout.fingerprint, "x")  # no error
    with pytest.raises(LayoutError, match=r"^this result uses model layout") as info:
        weights_layout.check_fingerprint(result_layout.fingerprint, "this result")
    assert weights_layout.fingerprint in str(info.value) and result_layout.fingerprint in str(info.value)
    with pytest.raises(LayoutError):
        weights_layout.check_fingerprint("", "a client")
    with pytest.raises(LayoutError) as info:  # a hostile header: only 16 characters are echoed back
        weights_layout.check_fingerprint("A" * 10_000, "a client")
    assert "A" * 17 not in str(info.value)


# ---- types without a layout ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("type_spec", "match"),
    [
        pytest.param(T(np.str_, [2]), "dtype", id="string-tensor"),
        pytest.param(tff.StructType([("a", T(np.float32, [2])), ("s", T(np.str_))]), r"^s: dtype",
                     id="string-in-struct"),
        pytest.param(T(np.float32, [None, 3]), "no fixed-size", id="unknown-dim"),
        pytest.param(tff.StructType([("w", tff.StructType([T(np.float32, [None])]))]), r"^w\.0: ",
                     id="unknown-dim-nested"),
        pytest.param(T(np.float32, None), "no fixed-size", id="unknown-rank"),
        pytest.param(tff.SequenceType(T(np.float32, [2])), "no fixed-size", id="sequence"),
        pytest.param(tff.FederatedType(T(np.float32, [2]), tff.CLIENTS), "no fixed-size", id="federated"),
        pytest.param(tff.FunctionType(T(np.float32), T(np.float32)), "no fixed-size", id="function"),
        pytest.param(T(np.complex64, [2]), "dtype", id="complex"),
    ],
)
def test_unsupported_types_have_no_layout(type_spec: Any, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        Layout.of(type_spec)


# ---- fuzz ----------------------------------------------------------------------------------------
def _oracle_finite(layout: Layout, data: bytes) -> bool:
    """Whether every float leaf of ``data`` is finite, computed independently of ``decode``."""
    for leaf in layout.leaves:
        if leaf.dtype.kind == "f":
            values = np.frombuffer(data[leaf.offset : leaf.offset + leaf.nbytes], leaf.dtype)
            if not np.isfinite(values).all():
                return False
    return True


MIXED_LAYOUT = Layout.of(MIXED)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=MIXED_LAYOUT.nbytes, max_size=MIXED_LAYOUT.nbytes))
def test_fuzz_right_size_decodes_or_is_refused(data: bytes) -> None:
    finite = _oracle_finite(MIXED_LAYOUT, data)
    try:
        decoded = MIXED_LAYOUT.decode(data)
    except LayoutError as exc:
        assert not finite, f"finite data refused: {exc}"
        return
    assert finite, "NaN / Inf decoded"
    assert b"".join(a.tobytes() for a in decoded) == data


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(data=st.data())
def test_fuzz_result_layout(result_layout: Layout, data: st.DataObject) -> None:
    n = result_layout.nbytes
    size = data.draw(st.sampled_from([n, n, n, n - 1, n + 1, 0]), label="size")
    if data.draw(st.booleans(), label="random bytes"):
        base = bytearray(data.draw(st.binary(min_size=size, max_size=size)))
    else:  # finite floats with a few bytes overwritten, so that both outcomes are exercised
        base = bytearray(result_layout.encode(random_leaves(result_layout, seed=data.draw(st.integers(0, 9)))))
        base = (base + bytearray(8))[:size]
    for _ in range(data.draw(st.integers(0, 3), label="flips")):
        if size:
            i = data.draw(st.integers(0, size - 1))
            base[i] = data.draw(st.integers(0, 255))
    raw = bytes(base)
    try:
        decoded = result_layout.decode(raw)
    except LayoutError:
        assert size != n or not _oracle_finite(result_layout, raw)
        return
    assert size == n and _oracle_finite(result_layout, raw)
    assert len(decoded) == len(result_layout.leaves)
