"""A task that is data: a task file (services/tasks/spec.py) naming a Keras architecture (a JSON
model config or a ``.keras`` file), the loss and metrics by name, the label and the data format.
No user code runs on either side: the architecture is checked against the allowlist
(services/tasks/allowlist.py) before Keras deserializes any of it, and losses and metrics are built
from a fixed table of Keras classes."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import tensorflow as tf

from services.tasks.allowlist import check_model_json
from services.tasks.base import LearningTask
from services.tasks.spec import TaskError, TaskFile

LOSS_CLASSES: dict[str, Any] = {
    "sparse_categorical_crossentropy": tf.keras.losses.SparseCategoricalCrossentropy,
    "categorical_crossentropy": tf.keras.losses.CategoricalCrossentropy,
    "binary_crossentropy": tf.keras.losses.BinaryCrossentropy,
    "mean_squared_error": tf.keras.losses.MeanSquaredError,
    "mean_absolute_error": tf.keras.losses.MeanAbsoluteError,
    "huber": tf.keras.losses.Huber,
}
FROM_LOGITS = frozenset({"sparse_categorical_crossentropy", "categorical_crossentropy", "binary_crossentropy"})
# Each metric name with the Keras class it builds and the name it reports under
# (train_<name>, eval_<name>, federated_eval_<name>).
METRIC_CLASSES: dict[str, tuple[Any, str]] = {
    "accuracy": (tf.keras.metrics.SparseCategoricalAccuracy, "accuracy"),
    "sparse_categorical_accuracy": (tf.keras.metrics.SparseCategoricalAccuracy, "accuracy"),
    "categorical_accuracy": (tf.keras.metrics.CategoricalAccuracy, "accuracy"),
    "binary_accuracy": (tf.keras.metrics.BinaryAccuracy, "accuracy"),
    "mean_absolute_error": (tf.keras.metrics.MeanAbsoluteError, "mae"),
    "mean_squared_error": (tf.keras.metrics.MeanSquaredError, "mse"),
    "precision": (tf.keras.metrics.Precision, "precision"),
    "recall": (tf.keras.metrics.Recall, "recall"),
}
KERAS_CONFIG = "config.json"  # inside a .keras file


def checked_architecture(source: Path, *, keras_file: bool) -> str:
    """The model config's JSON text once the allowlist accepts it (``source``: a JSON config, or a
    ``.keras`` file whose ``config.json`` is read from the zip without loading anything)."""
    try:
        if keras_file:
            with zipfile.ZipFile(source) as archive:
                text = archive.read(KERAS_CONFIG).decode()
        else:
            text = source.read_text()
    except (OSError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise TaskError(f"{source}: cannot read the model ({type(exc).__name__}: {exc})") from None
    check_model_json(text, str(source))
    return text


class DeclarativeTask(LearningTask):
    def __init__(self, spec: TaskFile, base: Path) -> None:
        self.spec = spec
        self.name = spec.name
        self.label = spec.label
        self.data_format = spec.data
        relative = spec.model.keras or spec.model.config
        assert relative is not None
        self.source = (base / relative).resolve()
        self.is_keras_file = spec.model.keras is not None
        self.architecture = checked_architecture(self.source, keras_file=self.is_keras_file)
        if spec.loss.from_logits and spec.loss.name not in FROM_LOGITS:
            raise TaskError(f"task {spec.name}: loss.from_logits applies to crossentropy losses only, "
                            f"not {spec.loss.name}")

    def build_model(self) -> tf.keras.Model:
        if self.is_keras_file:
            # Checked above; compile=False: the file's compile_config (optimizer, loss) is never read.
            return tf.keras.models.load_model(self.source, compile=False, safe_mode=True)
        return tf.keras.models.model_from_json(self.architecture)

    def loss(self) -> tf.keras.losses.Loss:
        cls = LOSS_CLASSES[self.spec.loss.name]
        return cls(from_logits=self.spec.loss.from_logits) if self.spec.loss.name in FROM_LOGITS else cls()

    def metrics(self) -> list[tf.keras.metrics.Metric]:
        return [cls(name=report) for cls, report in (METRIC_CLASSES[m] for m in self.spec.metrics)]
