"""The digits task (services/tasks/digits.py) as the tests use it: the task under training
settings, its Keras model (initialized or to be filled), its seeded initial weights and the
server's central evaluation with the task's own loss and metrics."""

from __future__ import annotations

import tensorflow as tf
import tensorflow_federated as tff

from services.common.config import ModelSettings, TrainingSettings
from services.common.data import Arrays
from services.tasks.digits import DigitsTask
from services.tasks.evaluation import evaluate as evaluate_task
from services.tasks.federated import FederatedTask


def task(training: TrainingSettings | None = None, model: ModelSettings | None = None) -> FederatedTask:
    return FederatedTask(training or TrainingSettings(), DigitsTask(model))


def keras_model(model: ModelSettings | None = None, *, initialized: bool = True) -> tf.keras.Model:
    digits = DigitsTask(model)
    return digits.build_model() if initialized else digits.model_to_fill()


def initial_weights(seed: int, model: ModelSettings | None = None) -> tff.learning.models.ModelWeights:
    return task(TrainingSettings(seed=seed), model).initial_weights()


def evaluate(model: tf.keras.Model, arrays: Arrays) -> dict[str, float]:
    digits = DigitsTask()
    return evaluate_task(model, arrays, digits.loss(), digits.metrics())
