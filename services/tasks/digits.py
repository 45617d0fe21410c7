"""The bundled task: an MLP over scikit-learn's 8x8 digits (64 pixels scaled to [0, 1]) that
outputs class logits. A task like any other; its data can also come bundled (``data.source:
digits``, sharded by the server) or as ``.npz`` files."""

from __future__ import annotations

import tensorflow as tf

from services.common.config import ModelSettings
from services.common.data import NUM_CLASSES, NUM_FEATURES
from services.tasks.base import LearningTask
from services.tasks.spec import DataFormat, Label


class DigitsTask(LearningTask):
    name = "digits"
    label = Label(dtype="int32", classes=NUM_CLASSES)
    data_format = DataFormat(format="npz")

    def __init__(self, model: ModelSettings | None = None) -> None:
        self.settings = model or ModelSettings()

    def build_model(self) -> tf.keras.Model:
        return self._mlp("glorot_uniform")

    def model_to_fill(self) -> tf.keras.Model:
        # Drawing random numbers for a large model takes seconds; these weights are replaced at once.
        return self._mlp("zeros")

    def _mlp(self, kernel: str) -> tf.keras.Model:
        net = tf.keras.Sequential(
            [
                tf.keras.layers.InputLayer(input_shape=(NUM_FEATURES,), name="pixels"),
                tf.keras.layers.Dense(self.settings.hidden_units, activation="relu", kernel_initializer=kernel,
                                      name="hidden"),
                tf.keras.layers.Dense(NUM_CLASSES, kernel_initializer=kernel, name="logits"),
            ],
            name="digits_mlp",
        )
        for layer in net.layers:  # the same config either way (what a saved model records)
            layer.kernel_initializer = tf.keras.initializers.get("glorot_uniform")
        return net

    def loss(self) -> tf.keras.losses.Loss:
        return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def metrics(self) -> list[tf.keras.metrics.Metric]:
        return [tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
