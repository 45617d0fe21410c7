"""What a declarative task's Keras architecture may contain, checked on the config's JSON before
anything is deserialized: built-in Keras layers, initializers, activations, regularizers and
constraints by name. No ``Lambda`` or ``TFOpLambda`` (they carry code), no module outside Keras'
own, no ``registered_name`` (a custom object), no unknown keys that name classes.

Keras' ``safe_mode`` is not enough: deserializing still imports the module a config names and calls
its ``from_config`` (CVE-2025-1550, which affects Keras 2.14). Here nothing is imported: this module
reads JSON only (no TensorFlow), and a refused config names the offending object and its path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from services.tasks.spec import TaskError

# Built-in, code-free Keras 2.14 classes, by the module Keras' serializer records for them.
LAYERS = frozenset({
    "InputLayer", "Dense", "Activation", "Dropout", "SpatialDropout1D", "SpatialDropout2D", "Flatten", "Reshape",
    "Permute", "RepeatVector", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose",
    "SeparableConv1D", "SeparableConv2D", "DepthwiseConv2D", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
    "AveragePooling1D", "AveragePooling2D", "AveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "ZeroPadding1D", "ZeroPadding2D", "Cropping1D",
    "Cropping2D", "UpSampling1D", "UpSampling2D", "BatchNormalization", "LayerNormalization",
    "Normalization", "Rescaling", "Embedding", "SimpleRNN", "LSTM", "GRU", "Bidirectional", "Add", "Subtract",
    "Multiply", "Average", "Maximum", "Minimum", "Concatenate", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax",
    "GaussianNoise", "GaussianDropout", "ActivityRegularization", "Masking", "CategoryEncoding", "Discretization",
})
MODELS = frozenset({"Sequential", "Functional", "Model"})
INITIALIZERS = frozenset({
    "Zeros", "Ones", "Constant", "RandomNormal", "RandomUniform", "TruncatedNormal", "VarianceScaling",
    "GlorotUniform", "GlorotNormal", "HeUniform", "HeNormal", "LecunUniform", "LecunNormal", "Orthogonal",
    "Identity",
})
REGULARIZERS = frozenset({"L1", "L2", "L1L2", "OrthogonalRegularizer"})
CONSTRAINTS = frozenset({"MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm", "RadialConstraint"})
ACTIVATIONS = frozenset({
    "linear", "relu", "relu6", "sigmoid", "hard_sigmoid", "softmax", "softplus", "softsign", "tanh", "elu",
    "selu", "exponential", "swish", "silu", "gelu", "mish", "log_softmax",
})
ALLOWED = {"keras.layers": LAYERS, "keras.initializers": INITIALIZERS, "keras.regularizers": REGULARIZERS,
           "keras.constraints": CONSTRAINTS, "keras.activations": ACTIVATIONS, "keras.models": MODELS,
           "keras": MODELS}
# Configs written before Keras recorded modules name built-ins by class alone: Keras looks those up
# in its own registry, importing nothing.
ANY_BUILTIN = frozenset().union(*ALLOWED.values())
# Config keys whose values are serialized objects or names of them.
ACTIVATION_KEYS = frozenset({"activation", "recurrent_activation"})
# A .keras file's compile settings: the model is loaded with compile=False, so they are never read.
UNREAD_KEYS = frozenset({"compile_config"})
MAX_DEPTH = 64
MAX_OBJECTS = 10_000


def check_model_json(text: str | bytes, where: str) -> dict[str, Any]:
    """The parsed config when every object in it is allowed; else :class:`TaskError` naming the
    first refused object and its path (``where``: the file, for the message)."""
    try:
        config = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TaskError(f"{where}: not a JSON Keras model config ({exc})") from None
    if not isinstance(config, dict) or config.get("class_name") not in MODELS:
        raise TaskError(f"{where}: the top level must be a Keras model (class_name one of {sorted(MODELS)})")
    for count, (path, obj) in enumerate(_objects(config, "$", 0)):
        if count >= MAX_OBJECTS:
            raise TaskError(f"{where}: more than {MAX_OBJECTS} Keras objects in the config")
        _check_object(obj, path, where)
    return config


def _objects(node: Any, path: str, depth: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every serialized Keras object (a mapping with ``class_name``) and every activation name."""
    if depth > MAX_DEPTH:
        raise TaskError(f"{path}: nested deeper than {MAX_DEPTH}")
    if isinstance(node, dict):
        if "class_name" in node:
            yield path, node
        for key, value in node.items():
            if key in UNREAD_KEYS and depth == 0:
                continue
            child = f"{path}.{key}"
            if key in ACTIVATION_KEYS and isinstance(value, str):
                yield child, {"class_name": value, "_activation": True}
                continue
            yield from _objects(value, child, depth + 1)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _objects(value, f"{path}[{i}]", depth + 1)


def _check_object(obj: dict[str, Any], path: str, where: str) -> None:
    name = obj.get("class_name")
    if obj.get("_activation"):
        if name not in ACTIVATIONS:
            raise TaskError(f"{where}: {path} = {name!r} is not a built-in Keras activation "
                            f"(allowed: {', '.join(sorted(ACTIVATIONS))})")
        return
    label = f"{where}: {path} ({name!r})"
    if not isinstance(name, str):
        raise TaskError(f"{label}: class_name must be a string")
    if name in ("Lambda", "TFOpLambda", "SlicingOpLambda"):
        raise TaskError(f"{label}: a {name} layer carries code and is never deserialized; "
                        "use built-in layers, or a module task (docs/tasks.md) for custom code")
    if obj.get("registered_name") not in (None, name):
        raise TaskError(f"{label}: registered_name {obj.get('registered_name')!r} names a custom object; "
                        "declarative tasks use built-in Keras objects only (custom ones: a module task)")
    module = obj.get("module")
    allowed = ANY_BUILTIN if module is None else ALLOWED.get(module) if isinstance(module, str) else None
    if allowed is None:
        raise TaskError(f"{label}: module {module!r} is outside Keras' built-in layers, initializers, "
                        "regularizers and constraints (it is never imported)")
    if name not in allowed:
        raise TaskError(f"{label}: not an allowed {module} class (allowed: {', '.join(sorted(allowed))})")
    for key in ("build_config", "compile_config"):
        if key in obj and not isinstance(obj[key], dict | type(None)):
            raise TaskError(f"{label}: {key} must be a mapping")
