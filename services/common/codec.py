"""The wire codec: TFF values <-> bytes of a serialized ``tff`` Value proto.

Decoding never trusts the peer: the proto must parse, its layout must follow the expected type
before TFF deserializes anything (TFF would otherwise build whatever the peer names, e.g. a
``tf.data`` dataset from a peer-supplied GraphDef), its own type (read from the proto, not
assumed) must equal the expected TFF type exactly (names, dtypes, shapes), and every number must
be finite. TFF's ``deserialize_value(proto, type_hint)`` alone does not check this (it adopts the
hint), so the check is done here. Nothing is pickled.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow_federated as tff
from google.protobuf.message import DecodeError
from tensorflow_federated.proto.v0 import executor_pb2


class CodecError(ValueError):
    """Bytes that are not a valid value of the expected TFF type."""


def encode(value: Any, type_spec: tff.Type) -> bytes:
    proto, _ = tff.framework.serialize_value(value, type_spec)
    return proto.SerializeToString()


def decode(data: bytes, type_spec: tff.Type) -> Any:
    """Parse, type-check and finiteness-check ``data``; return the value as ``tff.structure.Struct``
    / numpy arrays."""
    proto = executor_pb2.Value()
    try:
        proto.ParseFromString(data)
    except DecodeError as exc:
        raise CodecError(f"not a TFF Value proto ({exc})") from None
    _check_layout(proto, type_spec)
    try:
        value, actual = tff.framework.deserialize_value(proto)
    except Exception as exc:  # TFF raises assorted types on malformed protos
        raise CodecError(f"cannot decode TFF value: {type(exc).__name__}: {exc}") from None
    if not type_spec.is_equivalent_to(actual):
        raise CodecError(f"expected TFF type {type_spec}, got {actual}")
    _check_finite(value)
    return value


_KINDS = {tff.StructType: "struct", tff.TensorType: "array", tff.SequenceType: "sequence",
          tff.FederatedType: "federated", tff.FunctionType: "computation"}


def _check_layout(proto: executor_pb2.Value, type_spec: tff.Type, path: str = "value") -> None:
    """The kind of every part of ``proto`` (struct, array, ...) must be the one ``type_spec`` asks for,
    structs with as many elements, checked on the raw proto before any of it is deserialized."""
    expected = next((kind for cls, kind in _KINDS.items() if isinstance(type_spec, cls)), None)
    kind = proto.WhichOneof("value")
    if kind != expected:
        raise CodecError(f"{path}: expected a value of kind {expected}, got {kind or 'an empty value'}")
    if isinstance(type_spec, tff.StructType):
        elements = proto.struct.element
        if len(elements) != len(type_spec):
            raise CodecError(f"{path}: expected {len(type_spec)} elements, got {len(elements)}")
        for i, ((name, member), element) in enumerate(
            zip(tff.structure.iter_elements(type_spec), elements, strict=True)
        ):
            _check_layout(element.value, member, f"{path}.{name or i}")


def _check_finite(value: Any, path: str = "value") -> None:
    if isinstance(value, tff.structure.Struct):
        for i, (name, item) in enumerate(tff.structure.iter_elements(value)):
            _check_finite(item, f"{path}.{name or i}")
        return
    arr = np.asarray(value)
    if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
        raise CodecError(f"{path} holds NaN or Inf")
