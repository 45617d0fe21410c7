"""The learning task both sides share: the Keras model, its input spec, the TFF model and client
work, and the TFF types that are the wire contract (derived from ``type_signature``, never
restated by hand)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from services.common import tensors
from services.common.config import ModelSettings, TrainingSettings
from services.common.data import NUM_CLASSES, NUM_FEATURES, Arrays

INPUT_SPEC = (
    tf.TensorSpec(shape=[None, NUM_FEATURES], dtype=tf.float32),
    tf.TensorSpec(shape=[None], dtype=tf.int32),
)
DEFAULT_MODEL = ModelSettings()


def keras_model(model: ModelSettings = DEFAULT_MODEL, *, initialized: bool = True) -> tf.keras.Model:
    """An MLP over the 64 digits pixels (scaled to [0, 1]) that outputs class logits.
    ``initialized=False``: zeros instead of random weights, for a model whose weights are
    assigned right away (drawing random numbers for a large model takes seconds)."""
    kernel = "glorot_uniform" if initialized else "zeros"
    net = tf.keras.Sequential(
        [
            tf.keras.layers.InputLayer(input_shape=(NUM_FEATURES,), name="pixels"),
            tf.keras.layers.Dense(model.hidden_units, activation="relu", kernel_initializer=kernel, name="hidden"),
            tf.keras.layers.Dense(NUM_CLASSES, kernel_initializer=kernel, name="logits"),
        ],
        name="digits_mlp",
    )
    for layer in net.layers:  # the same config either way (what a saved model records)
        layer.kernel_initializer = tf.keras.initializers.get("glorot_uniform")
    return net


def model_fn(model: ModelSettings = DEFAULT_MODEL) -> tff.learning.models.VariableModel:
    return tff.learning.models.from_keras_model(
        keras_model(model),
        input_spec=INPUT_SPEC,
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[tf.keras.metrics.SparseCategoricalAccuracy()],
    )


def initial_weights(seed: int, model_settings: ModelSettings = DEFAULT_MODEL) -> tff.learning.models.ModelWeights:
    """Deterministic initial global model for ``seed`` (the same in every process)."""
    tf.keras.utils.set_random_seed(seed)
    model = keras_model(model_settings)
    # The variables' own buffers (aligned, no copy); the model is dropped right after.
    return tff.learning.models.ModelWeights(
        trainable=[tensors.as_array(v.read_value()) for v in model.trainable_variables],
        non_trainable=[tensors.as_array(v.read_value()) for v in model.non_trainable_variables],
    )


def client_optimizer(training: TrainingSettings) -> tff.learning.optimizers.Optimizer:
    return tff.learning.optimizers.build_sgdm(learning_rate=training.client_learning_rate)


def server_optimizer(training: TrainingSettings) -> tff.learning.optimizers.Optimizer:
    if training.server_optimizer == "adam":
        return tff.learning.optimizers.build_adam(learning_rate=training.server_learning_rate)
    return tff.learning.optimizers.build_sgdm(learning_rate=training.server_learning_rate)


def to_dataset(arrays: Arrays, training: TrainingSettings) -> tf.data.Dataset:
    """The client's local data as TFF client work consumes it: ``local_epochs`` passes, batched."""
    ds = tf.data.Dataset.from_tensor_slices((arrays.x, arrays.y))
    return ds.repeat(training.local_epochs).batch(training.batch_size)


@dataclass
class Task:
    """TFF client work for this task and the wire types derived from its type signature."""

    training: TrainingSettings
    model: ModelSettings = DEFAULT_MODEL

    def model_fn(self) -> tff.learning.models.VariableModel:
        return model_fn(self.model)

    def keras_model(self, *, initialized: bool = True) -> tf.keras.Model:
        return keras_model(self.model, initialized=initialized)

    def initial_weights(self) -> tff.learning.models.ModelWeights:
        return initial_weights(self.training.seed, self.model)

    @cached_property
    def client_work(self) -> tff.learning.templates.ClientWorkProcess:
        return tff.learning.templates.build_model_delta_client_work(
            self.model_fn, client_optimizer(self.training), tff.learning.ClientWeighting.NUM_EXAMPLES
        )

    @cached_property
    def weights_type(self) -> tff.Type:
        """What the server sends: ``ModelWeights`` (member type of the CLIENTS-placed argument)."""
        return self.client_work.next.type_signature.parameter[1].member

    @cached_property
    def result_type(self) -> tff.Type:
        """What a client sends back: ``ClientResult(update, update_weight)``."""
        return self.client_work.next.type_signature.result.result.member

    @cached_property
    def weights_layout(self) -> tensors.Layout:
        """How the global model travels (services/common/tensors.py)."""
        return tensors.Layout.of(self.weights_type)

    @cached_property
    def result_layout(self) -> tensors.Layout:
        """How a client's result travels."""
        return tensors.Layout.of(self.result_type)


EVAL_MIN_BATCH_ELEMENTS = 1 << 20  # activations a batch may always use (4 MiB of float32)


def eval_batch_size(model: tf.keras.Model, examples: int) -> int:
    """Examples per evaluation batch: the widest layer's activations stay within a quarter of the
    model's size (or 4 MiB, whichever is more), so evaluating a large model does not cost several
    copies of it."""
    widest = max(int(np.prod(layer.output.shape[1:])) for layer in model.layers)
    budget = max(model.count_params() // 4, EVAL_MIN_BATCH_ELEMENTS)
    return max(1, min(examples, budget // widest))


def evaluate(model: tf.keras.Model, arrays: Arrays) -> dict[str, float]:
    """Loss and accuracy of ``model`` on ``arrays`` (the held-out set), in batches
    (:func:`eval_batch_size`)."""
    batch = eval_batch_size(model, len(arrays.y))
    loss_sum, correct = 0.0, 0
    for start in range(0, len(arrays.y), batch):
        x, y = arrays.x[start : start + batch], arrays.y[start : start + batch]
        logits = model(x, training=False).numpy()
        loss_sum += float(np.sum(tf.keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)))
        correct += int(np.sum(np.argmax(logits, axis=1) == y))
    return {
        "eval_loss": loss_sum / len(arrays.y),
        "eval_accuracy": correct / len(arrays.y),
    }
