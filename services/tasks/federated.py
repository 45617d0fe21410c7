"""A learning task as the federation runs it: TFF's model and client work for the task under the
run's training settings, the optimizers, and the TFF types that are the wire contract (derived
from ``type_signature``, never restated by hand). Every task goes through this one path."""

from __future__ import annotations

from functools import cached_property

import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.learning.templates import proximal_client_work

from services.common import tensors
from services.common.config import TrainingSettings
from services.common.data import Arrays
from services.tasks import contract
from services.tasks.base import LearningTask, input_spec_of, tensor_specs
from services.tasks.formats.checks import InputSpec


def client_optimizer(training: TrainingSettings) -> tff.learning.optimizers.Optimizer:
    if training.client_optimizer == "adam":
        return tff.learning.optimizers.build_adam(learning_rate=training.client_learning_rate)
    return tff.learning.optimizers.build_sgdm(learning_rate=training.client_learning_rate,
                                              momentum=training.client_momentum or None)


def server_optimizer(training: TrainingSettings) -> tff.learning.optimizers.Optimizer:
    lr = training.server_learning_rate
    if training.server_optimizer == "adam":
        return tff.learning.optimizers.build_adam(learning_rate=lr)
    if training.server_optimizer == "yogi":
        return tff.learning.optimizers.build_yogi(learning_rate=lr)
    if training.server_optimizer == "adagrad":
        return tff.learning.optimizers.build_adagrad(learning_rate=lr)
    return tff.learning.optimizers.build_sgdm(learning_rate=lr, momentum=training.server_momentum or None)


def to_dataset(arrays: Arrays, training: TrainingSettings) -> tf.data.Dataset:
    """The client's local data as TFF client work consumes it: ``local_epochs`` passes, batched."""
    ds = tf.data.Dataset.from_tensor_slices((arrays.x, arrays.y))
    return ds.repeat(training.local_epochs).batch(training.batch_size)


def eval_dataset(arrays: Arrays, training: TrainingSettings) -> tf.data.Dataset:
    """One pass over evaluation data, in the training batch size."""
    return tf.data.Dataset.from_tensor_slices((arrays.x, arrays.y)).batch(training.batch_size)


class FederatedTask:
    """TFF client work for ``learning`` under ``training`` and the wire types derived from its type
    signature."""

    def __init__(self, training: TrainingSettings, learning: LearningTask) -> None:
        self.training = training
        self.learning = learning

    @property
    def name(self) -> str:
        return self.learning.name

    @cached_property
    def input_spec(self) -> InputSpec:
        return input_spec_of(self.learning.build_model(), self.learning.label)

    def keras_model(self) -> tf.keras.Model:
        return self.learning.build_model()

    def model_to_fill(self) -> tf.keras.Model:
        return self.learning.model_to_fill()

    def model_fn(self) -> tff.learning.models.VariableModel:
        return tff.learning.models.from_keras_model(
            self.learning.build_model(), input_spec=tensor_specs(self.input_spec),
            loss=self.learning.loss(), metrics=self.learning.metrics(),
        )

    def initial_weights(self) -> tff.learning.models.ModelWeights:
        """Deterministic initial global model for ``training.seed`` (the same in every process)."""
        tf.keras.utils.set_random_seed(self.training.seed)
        model = self.learning.build_model()
        # The variables' own buffers (aligned, no copy); the model is dropped right after.
        return tff.learning.models.ModelWeights(
            trainable=[tensors.as_array(v.read_value()) for v in model.trainable_variables],
            non_trainable=[tensors.as_array(v.read_value()) for v in model.non_trainable_variables],
        )

    @cached_property
    def client_work(self) -> tff.learning.templates.ClientWorkProcess:
        weighting = tff.learning.ClientWeighting.NUM_EXAMPLES
        if self.training.algorithm == "fedprox":
            return proximal_client_work.build_model_delta_client_work(
                self.model_fn, client_optimizer(self.training), weighting,
                delta_l2_regularizer=self.training.proximal_mu,
                loop_implementation=tff.learning.LoopImplementation.DATASET_REDUCE)
        return tff.learning.templates.build_model_delta_client_work(
            self.model_fn, client_optimizer(self.training), weighting)

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

    @cached_property
    def contract(self) -> contract.Contract:
        """What a client and the server must agree on (checked at join), and the run's identity."""
        described = self.learning.describe(self.learning.build_model())
        return contract.Contract.of({**described, "weights": self.weights_layout.fingerprint,
                                     "client_training": contract.client_training(self.training)})
