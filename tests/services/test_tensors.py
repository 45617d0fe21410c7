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
from support.digits import initial_weights
from support.digits import task as digits_task
from tensorflow_federated.python.core.impl.types import type_conversions

from services.common import tensors
from services.common.config import ModelSettings, TrainingSettings
from services.common.tensors import Layout, LayoutError
from services.tasks.federated import FederatedTask

T = tff.TensorType


@pytest.fixture(scope="module")
def task() -> FederatedTask:
    t = digits_task(TrainingSettings(), ModelSettings())
    t.weights_type, t.result_type  # noqa: B018 (trace the client work once, first: see ClientUpdate)
    return t


@pytest.fixture(scope="module")
def weights_layout(task: FederatedTask) -> Layout:
    return Layout.of(task.weights_type)


@pytest.fixture(scope="module")
def result_layout(task: FederatedTask) -> Layout:
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
def test_weights_layout_is_the_models_tensors(task: FederatedTask, weights_layout: Layout) -> None:
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


def test_leaf_order_is_tffs(task: FederatedTask, weights_layout: Layout) -> None:
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


# ---- parts: the wire form without a copy ---------------------------------------------------------
def wire_leaves(layout: Layout, seed: int = 0) -> list[np.ndarray]:
    """``random_leaves`` as the server holds its tensors: aligned C-order arrays of the wire dtypes."""
    return [tensors.aligned_copy(a, leaf.dtype) for a, leaf in zip(random_leaves(layout, seed), layout.leaves,
                                                                      strict=True)]


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("which", ["weights", "result", "mixed"])
def test_parts_are_the_encoding(which: str, aligned: bool, weights_layout: Layout, result_layout: Layout) -> None:
    layout = {"weights": weights_layout, "result": result_layout, "mixed": Layout.of(MIXED)}[which]
    leaves = wire_leaves(layout, seed=3) if aligned else random_leaves(layout, seed=3)
    parts = layout.parts(leaves)
    assert isinstance(parts, tuple) and len(parts) == len(layout.leaves)
    assert all(isinstance(p, memoryview) and p.format == "B" and p.ndim == 1 for p in parts)
    assert [len(p) for p in parts] == [leaf.nbytes for leaf in layout.leaves]
    assert b"".join(parts) == bytes(layout.encode(leaves))
    for a, b in zip(leaves, layout.decode(b"".join(parts)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_parts_are_views_of_the_arrays(result_layout: Layout) -> None:
    leaves = wire_leaves(result_layout)
    parts = result_layout.parts(leaves)
    for a, p in zip(leaves, parts, strict=True):
        assert np.shares_memory(np.frombuffer(p, np.uint8), a)
    leaves[0][0, 0] = 42.0  # a write to an array shows through its part: no copy was made
    leaves[-1][...] = 7.0
    assert bytes(parts[0][:4]) == np.float32(42).tobytes()
    assert bytes(parts[-1]) == np.float32(7).tobytes()


def test_parts_are_read_only(result_layout: Layout) -> None:
    leaves = wire_leaves(result_layout)
    for p in result_layout.parts(leaves):
        assert p.readonly
        with pytest.raises(TypeError):
            p[0] = 1
    assert all(a.flags.writeable for a in leaves)  # the arrays themselves are left as they were


def test_parts_of_decoded_arrays_are_the_received_bytes(result_layout: Layout) -> None:
    received = result_layout.encode(random_leaves(result_layout, seed=4))
    parts = result_layout.parts(result_layout.decode(received))  # read-only views over one buffer
    assert b"".join(parts) == bytes(received)
    assert all(np.shares_memory(np.frombuffer(p, np.uint8), np.frombuffer(received, np.uint8)) for p in parts)


def test_parts_refuse_wrong_count(weights_layout: Layout) -> None:
    leaves = wire_leaves(weights_layout)
    with pytest.raises(ValueError, match="expected 4 tensors, got 3"):
        weights_layout.parts(leaves[:3])
    with pytest.raises(ValueError, match="expected 4 tensors, got 5"):
        weights_layout.parts([*leaves, leaves[0]])


BAD_FORMS = {
    "float64": lambda a: a.astype(np.float64),  # encode would cast; parts has no copy to cast in
    "float16": lambda a: a.astype(np.float16),
    "int32": lambda a: a.astype(np.int32),
    "big-endian": lambda a: a.astype(">f4"),
    "strided": lambda a: np.stack([a, a], axis=-1)[..., 0],  # the leaf's shape and dtype, not contiguous
    "fortran": lambda a: np.asfortranarray(a) if a.ndim > 1 else None,
    "reversed": lambda a: a[::-1] if a.ndim == 1 else None,
    "extra-axis": lambda a: a[None],
    "flattened": lambda a: a.reshape(-1) if a.ndim > 1 else None,
    "transposed": lambda a: np.ascontiguousarray(a.T) if a.ndim > 1 else None,
}


@pytest.mark.parametrize("bad", list(BAD_FORMS))
def test_parts_refuse_anything_but_the_wire_form(weights_layout: Layout, bad: str) -> None:
    """Every leaf is checked; the refusal is a plain ValueError (the caller's mistake), not a
    LayoutError (a peer's bad bytes)."""
    tried = 0
    for i, leaf in enumerate(weights_layout.leaves):
        leaves = wire_leaves(weights_layout)
        replacement = BAD_FORMS[bad](leaves[i])
        if replacement is None:
            continue
        leaves[i] = replacement
        tried += 1
        with pytest.raises(ValueError, match=rf"^{re.escape(leaf.path)}: ") as info:
            weights_layout.parts(leaves)
        assert type(info.value) is ValueError
    assert tried >= 2


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "+inf", "-inf"])
def test_parts_refuse_non_finite_naming_the_leaf(result_layout: Layout, bad: float) -> None:
    for i, leaf in enumerate(result_layout.leaves):
        leaves = wire_leaves(result_layout)
        leaves[i].reshape(-1)[-1] = bad  # the last element: the check must cover the whole leaf
        with pytest.raises(LayoutError, match=rf"^{re.escape(leaf.path)} holds NaN or Inf$"):
            result_layout.parts(leaves)


def test_parts_refuse_non_finite_in_every_float_dtype() -> None:
    layout = Layout.of(MIXED)
    for i, leaf in enumerate(layout.leaves):
        if leaf.dtype.kind != "f" or leaf.nbytes == 0:
            continue
        leaves = wire_leaves(layout)
        leaves[i] = tensors.aligned_copy(np.full(leaf.shape, np.nan, leaf.dtype))
        with pytest.raises(LayoutError, match=rf"^{re.escape(leaf.path)} holds"):
            layout.parts(leaves)


# ---- aligned arrays ------------------------------------------------------------------------------
ALIGNED_SHAPES = [(), (1,), (3,), (7, 5), (2, 3, 4), (4097,), (64, 32)]
ALIGNED_DTYPES = [np.float32, np.float64, np.float16, np.int32, np.int64, np.uint8, "<f4"]


def test_align_is_what_tensorflow_needs() -> None:
    assert tensors.ALIGN == 64


@pytest.mark.parametrize("dtype", ALIGNED_DTYPES, ids=str)
def test_aligned_zeros(dtype: Any) -> None:
    for shape in ALIGNED_SHAPES:
        for _ in range(8):  # numpy's own buffers are 64-byte aligned now and then by chance
            a = tensors.aligned_zeros(shape, dtype)
            assert a.ctypes.data % tensors.ALIGN == 0, (shape, dtype)
            assert a.shape == shape and a.dtype == np.dtype(dtype)
            assert a.flags.c_contiguous and a.flags.writeable
            assert a.nbytes == int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            assert not a.any()


@pytest.mark.parametrize("shape", [(0,), (0, 5), (3, 0, 2)])
def test_aligned_zeros_of_zero_size(shape: tuple[int, ...]) -> None:
    # Alignment is not checked for zero-size arrays: numpy gives an empty slice its base's
    # (unaligned) address, and there are no bytes to read there.
    a = tensors.aligned_zeros(shape, np.float32)
    assert a.shape == shape and a.dtype == np.float32 and a.size == 0 and a.flags.c_contiguous
    assert tensors.aligned_copy(a).shape == shape


def test_aligned_zeros_are_independent_arrays() -> None:
    a, b = tensors.aligned_zeros([3, 4], np.float32), tensors.aligned_zeros((3, 4), np.float32)
    assert a.shape == (3, 4) and not np.shares_memory(a, b)
    a[...] = 1.0
    assert a.sum() == 12 and not b.any()
    s = tensors.aligned_zeros((), np.float64)
    s[...] = 2.5
    assert s.shape == () and float(s) == 2.5


COPY_SOURCES = {
    "float32": np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32),
    "int64": np.arange(10, dtype=np.int64),
    "scalar": np.float32(2.5),
    "zero-size": np.zeros((0, 3), np.float16),
    "strided": np.random.default_rng(1).standard_normal((6, 4))[:, ::2],
    "fortran": np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4)),
    "big-endian": np.arange(5, dtype=">f4"),
}


@pytest.mark.parametrize("name", list(COPY_SOURCES))
def test_aligned_copy(name: str) -> None:
    source = COPY_SOURCES[name]
    before = np.array(source, copy=True)
    out = tensors.aligned_copy(source)
    assert out.flags.c_contiguous and (out.ctypes.data % tensors.ALIGN == 0 or not out.size)  # zero-size: see above
    assert out.shape == np.shape(source) and out.dtype == np.asarray(source).dtype
    np.testing.assert_array_equal(out, source)
    if out.size:
        assert not np.shares_memory(out, source)
        out[...] = 0
        np.testing.assert_array_equal(source, before)  # a copy: the source is untouched


def test_aligned_copy_casts_to_the_given_dtype() -> None:
    source = np.random.default_rng(2).standard_normal((9, 3))  # float64
    for dtype in (np.float32, np.dtype("<f4"), "float16", np.int32):
        out = tensors.aligned_copy(source, dtype)
        assert out.dtype == np.dtype(dtype) and out.ctypes.data % tensors.ALIGN == 0
        np.testing.assert_array_equal(out, source.astype(dtype))
    listed = tensors.aligned_copy([[1, 2], [3, 4]], np.float32)
    assert listed.dtype == np.float32 and listed.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert tensors.aligned_copy([1.5, 2.5]).dtype == np.float64


# ---- fingerprints --------------------------------------------------------------------------------
def test_fingerprint(task: FederatedTask, weights_layout: Layout, result_layout: Layout) -> None:
    for layout in (weights_layout, result_layout):
        assert re.fullmatch(r"[0-9a-f]{16}", layout.fingerprint)
    assert weights_layout.fingerprint != result_layout.fingerprint
    assert Layout.of(task.weights_type).fingerprint == weights_layout.fingerprint  # deterministic


def test_fingerprint_differs_for_another_model(task: FederatedTask, weights_layout: Layout) -> None:
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
