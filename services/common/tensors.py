"""The wire layout of model weights and client results: the tensors of a fixed TFF type, flattened
in the type's own order, each as its little-endian C-order bytes, back to back.

The layout is derived from the TFF type (``Task.weights_type`` / ``Task.result_type``, which come
from ``type_signature``), so both sides know the exact size of every tensor before a byte
arrives: a payload must have exactly that many bytes, floats must be finite, and that is all a
peer controls. Nothing is parsed from the peer beyond this (no protobuf of the value, no pickle,
no graph), encoding is one copy and decoding is zero-copy (numpy views over the received buffer).
A fingerprint of the type travels in the stream headers, so a client built for another model is
refused with a message that says so instead of a size mismatch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Numeric dtypes a layout may hold (TFF's string tensors have no fixed size).
_KINDS = "biuf"


class LayoutError(ValueError):
    """Bytes that are not a value of the expected layout (size, or a NaN / Inf)."""


@dataclass(frozen=True)
class Leaf:
    path: str  # e.g. "update.0" or "trainable.1": used in error messages
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


@dataclass(frozen=True)
class Layout:
    leaves: tuple[Leaf, ...]
    nbytes: int
    fingerprint: str  # 16 hex digits of SHA-256 over the type's text

    @classmethod
    def of(cls, type_spec: Any) -> Layout:
        """The layout of a TFF type built of structs and fixed-shape numeric tensors."""
        import tensorflow_federated as tff  # the type system only; callers already hold TFF

        leaves: list[Leaf] = []
        offset = 0

        def walk(t: Any, path: str) -> None:
            nonlocal offset
            if isinstance(t, tff.StructType):
                for i, (name, member) in enumerate(tff.structure.iter_elements(t)):
                    walk(member, f"{path}.{name or i}" if path else str(name or i))
                return
            shape = getattr(t, "shape", None)
            if not isinstance(t, tff.TensorType) or shape is None or any(d is None for d in shape):
                raise TypeError(f"{path or 'value'}: {t} has no fixed-size wire layout")
            dtype = np.dtype(t.dtype)
            if dtype.kind not in _KINDS:
                raise TypeError(f"{path or 'value'}: dtype {dtype} has no fixed-size wire layout")
            leaf = Leaf(path or "value", dtype.newbyteorder("<"), tuple(int(d) for d in shape), offset)
            leaves.append(leaf)
            offset += leaf.nbytes

        walk(type_spec, "")
        fingerprint = hashlib.sha256(str(type_spec).encode()).hexdigest()[:16]
        return cls(tuple(leaves), offset, fingerprint)

    # ---- encode --------------------------------------------------------------------------------
    def encode(self, arrays: Sequence[Any]) -> memoryview:
        """One read-only buffer holding ``arrays`` (the leaves, in order), each of its leaf's shape."""
        self._check_count(arrays)
        out = bytearray(self.nbytes)
        for leaf, array in zip(self.leaves, arrays, strict=True):
            view: np.ndarray = np.ndarray(leaf.shape, leaf.dtype, buffer=out, offset=leaf.offset)
            a = np.asarray(array)
            if a.shape != leaf.shape:
                raise ValueError(f"{leaf.path}: shape {a.shape} is not {leaf.shape}")
            view[...] = a  # one copy, casting to the wire dtype
        return memoryview(out).toreadonly()

    def parts(self, arrays: Sequence[np.ndarray], *, check_finite: bool = True) -> tuple[memoryview, ...]:
        """The wire form of ``arrays`` without a copy: read-only byte views of each, back to back.
        Each array must already be C-ordered with its leaf's shape and wire dtype; floats finite
        (unless ``check_finite`` is False: the caller knows they are)."""
        self._check_count(arrays)
        out = []
        for leaf, a in zip(self.leaves, arrays, strict=True):
            if a.shape != leaf.shape or a.dtype != leaf.dtype or not a.flags.c_contiguous:
                raise ValueError(f"{leaf.path}: {a.dtype}{list(a.shape)} is not {leaf.dtype}{list(leaf.shape)} in C order")
            if check_finite and leaf.dtype.kind == "f" and not np.isfinite(a).all():
                raise LayoutError(f"{leaf.path} holds NaN or Inf")
            out.append(a.data.cast("B").toreadonly() if a.size else memoryview(b""))
        return tuple(out)

    # ---- decode --------------------------------------------------------------------------------
    def decode(self, data: bytes | bytearray | memoryview) -> list[np.ndarray]:
        """Views of ``data`` as the leaves (no copy); refuses a wrong size and NaN / Inf."""
        size = memoryview(data).nbytes
        if size != self.nbytes:
            raise LayoutError(f"expected {self.nbytes} bytes for this model, got {size}")
        arrays = []
        for leaf in self.leaves:
            a: np.ndarray = np.ndarray(leaf.shape, leaf.dtype, buffer=data, offset=leaf.offset)
            if leaf.dtype.kind == "f" and not np.isfinite(a).all():
                raise LayoutError(f"{leaf.path} holds NaN or Inf")
            arrays.append(a)
        return arrays

    def check_fingerprint(self, fingerprint: str, who: str) -> None:
        if fingerprint != self.fingerprint:
            raise LayoutError(
                f"{who} uses model layout {fingerprint[:16]!r}, this side {self.fingerprint!r}: "
                "server and clients must run the same task (model.*, same tff-k8s version)"
            )

    def _check_count(self, arrays: Sequence[Any]) -> None:
        if len(arrays) != len(self.leaves):
            raise ValueError(f"expected {len(self.leaves)} tensors, got {len(arrays)}")


ALIGN = 64  # bytes: what TensorFlow requires of a buffer it uses without copying


def aligned_zeros(shape: Sequence[int], dtype: Any) -> np.ndarray:
    """A zeroed C-order array whose data starts on an ``ALIGN``-byte boundary (pages are only
    touched when written, as with ``np.zeros``)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.zeros(nbytes + ALIGN, np.uint8)
    return np.ndarray(tuple(shape), dtype, buffer=raw, offset=-raw.ctypes.data % ALIGN)


def aligned_copy(array: Any, dtype: Any = None) -> np.ndarray:
    out = aligned_zeros(np.shape(array), dtype or np.asarray(array).dtype)
    out[...] = array
    return out


def as_tensor(array: Any) -> Any:
    """``array`` as a TensorFlow tensor without a copy when TensorFlow can use its memory as is
    (C order, ``ALIGN``-byte aligned, writable: DLPack's terms); a copy otherwise. TensorFlow
    never writes to a function's inputs, so the array is left unchanged."""
    import tensorflow as tf  # callers already hold TensorFlow

    a = np.asarray(array)
    if a.flags.c_contiguous and a.flags.writeable and a.ctypes.data % ALIGN == 0 and a.dtype.isnative:
        return tf.experimental.dlpack.from_dlpack(a.__dlpack__())
    return tf.convert_to_tensor(a)


def as_array(tensor: Any) -> np.ndarray:
    """A tensor's values as numpy without a copy (the array keeps the tensor's buffer alive),
    copied into aligned memory in the rare case TensorFlow's buffer is not aligned."""
    a = np.asarray(tensor._numpy() if hasattr(tensor, "_numpy") else tensor)  # EagerTensor: no copy
    return a if a.ndim == 0 or a.size == 0 or a.ctypes.data % ALIGN == 0 else aligned_copy(a)


def flatten(value: Any) -> list[Any]:
    """The leaves of a structured value (``ModelWeights``, ``ClientResult``, optimizer state, ...)
    in TFF's order, which is the layout's order."""
    import tensorflow_federated as tff

    return list(tff.structure.flatten(tff.structure.from_container(value, recursive=True)))


def unflatten(type_spec: Any, leaves: Sequence[Any]) -> Any:
    """``leaves`` put back into the Python containers ``type_spec`` names (e.g. ``ModelWeights``)."""
    import tensorflow_federated as tff

    return tff.types.type_to_py_container(tff.structure.pack_sequence_as(type_spec, list(leaves)), type_spec)
