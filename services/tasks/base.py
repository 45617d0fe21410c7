"""The learning task seam: what a federation learns, whoever defines it (the bundled digits MLP,
a declarative task file, or a module in the image). A task gives a fresh Keras model, its loss and
metrics, the label it predicts and how one folder of its data is read; everything else (TFF's
client work, the wire types, the aggregators, evaluation, export) is the framework's and goes
through exactly the same path for every task (services/tasks/federated.py)."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from services.common.data import Arrays
from services.tasks.formats import read_folder
from services.tasks.formats.checks import InputSpec, check_arrays
from services.tasks.spec import DataFormat, Label, TaskError


class LearningTask(ABC):
    """One learning task. Subclasses give :meth:`build_model`, :meth:`loss`, :meth:`metrics` and
    either a :attr:`data_format` or their own :meth:`read`."""

    name: str = "task"
    label: Label = Label()
    data_format: DataFormat | None = None

    @abstractmethod
    def build_model(self) -> tf.keras.Model:
        """A fresh, uncompiled Keras model with one input (its weights drawn from Keras' seeded
        generators, or given by the task)."""

    def model_to_fill(self) -> tf.keras.Model:
        """A model whose weights are replaced right away (the server's evaluation and export model):
        a task may skip drawing random weights here."""
        return self.build_model()

    @abstractmethod
    def loss(self) -> tf.keras.losses.Loss:
        """A fresh loss object."""

    def metrics(self) -> list[tf.keras.metrics.Metric]:
        """Fresh metric objects (TFF builds them again for every client update)."""
        return []

    # ---- data ------------------------------------------------------------------------------------
    def read(self, folder: Path, spec: InputSpec) -> Arrays:
        """One folder of this task's data (a shard, a silo's data, an eval split), as arrays."""
        if self.data_format is None:
            raise TaskError(f"task {self.name}: it names no data format and has no loader")
        return read_folder(folder, self.data_format, spec)

    def load(self, folder: Path, spec: InputSpec) -> Arrays:
        """:meth:`read`, then every example checked against the model's input and the label."""
        return check_arrays(self.read(folder, spec), spec, str(folder))

    # ---- what the contract and the run identity cover (services/tasks/contract.py) ---------------
    def describe(self, model: tf.keras.Model) -> dict[str, Any]:
        """The task as data: its architecture (each layer's class and config, names left out, so
        two processes that built other models before agree), loss, metrics, input and label."""
        layers = []
        for layer in model.layers:
            config = {k: v for k, v in layer.get_config().items() if k != "name"}
            layers.append({"class": type(layer).__name__, "config": config})
        spec = input_spec_of(model, self.label)
        return {
            "architecture": json.loads(json.dumps(layers, default=_jsonable, sort_keys=True)),
            "input": {"shape": list(spec.shape), "dtype": spec.dtype},
            "label": self.label.model_dump(mode="json"),
            "loss": _serialized(self.loss()),
            "metrics": [_serialized(m) for m in self.metrics()],
        }


def input_spec_of(model: tf.keras.Model, label: Label) -> InputSpec:
    """The model's one input (shape without the batch, dtype) and the task's label."""
    if len(model.inputs) != 1:
        raise TaskError(f"model {model.name}: a task's model takes exactly one input, it takes {len(model.inputs)}")
    tensor = model.inputs[0]
    shape = tuple(None if d is None else int(d) for d in tensor.shape[1:])
    return InputSpec(shape=shape, dtype=tensor.dtype.name, label=label)


def tensor_specs(spec: InputSpec) -> tuple[tf.TensorSpec, tf.TensorSpec]:
    """The ``(x, y)`` batch spec TFF's ``from_keras_model`` takes."""
    return (tf.TensorSpec([None, *spec.shape], tf.as_dtype(spec.dtype)),
            tf.TensorSpec([None, *spec.label.shape], tf.as_dtype(spec.label.dtype)))


def _serialized(obj: Any) -> dict[str, Any]:
    return {"class": type(obj).__name__, "config": json.loads(json.dumps(obj.get_config(), default=_jsonable))}


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, tf.DType):
        return value.name
    return repr(value)
