"""The global model as Keras sees it: central evaluation after each round (when the server holds
eval data) and the exported ``model.keras``, from one evaluation model whose variables adopt a
state's weights."""

from __future__ import annotations

import logging
from pathlib import Path

import tensorflow as tf

from services.common.data import Arrays
from services.common.logs import fields
from services.common.tensors import as_tensor
from services.server.algorithm import as_model_weights
from services.server.state import ServerState
from services.tasks.evaluation import evaluate
from services.tasks.federated import FederatedTask

log = logging.getLogger(__name__)


class Evaluator:
    def __init__(self, task: FederatedTask, eval_data: Arrays | None) -> None:
        self.task = task
        self.eval_data = eval_data
        # Its weights are replaced by a state's before every use (no random draw where the task can skip it).
        self.model = task.model_to_fill()

    def adopt(self, state: ServerState) -> tf.keras.Model:
        """The evaluation model holding ``state``'s weights. They are handed to TensorFlow without
        a copy and its variables adopt them (TensorFlow's AssignVariableOp takes over a buffer
        that nothing else in TensorFlow references), so the model holds no second copy of the
        weights; the state's weights are never written to (only ever read)."""
        weights = as_model_weights(self.task, state.weights)
        for variable, value in zip(self.model.trainable_variables, weights.trainable, strict=True):
            variable.assign(as_tensor(value))
        for variable, value in zip(self.model.non_trainable_variables, weights.non_trainable, strict=True):
            variable.assign(as_tensor(value))
        return self.model

    def evaluate(self, state: ServerState) -> dict[str, float]:
        """Central evaluation on the server's held-out data; nothing without it (federated only)."""
        if self.eval_data is None:
            return {}
        learning = self.task.learning
        return evaluate(self.adopt(state), self.eval_data, learning.loss(), learning.metrics())

    def export(self, state: ServerState, path: Path) -> Path:
        """``state``'s model as a plain Keras file, written atomically."""
        tmp = path.with_name(f".tmp-{path.name}")
        self.adopt(state).save(tmp)
        tmp.replace(path)
        log.info("model exported", extra=fields(path=str(path), round=state.round))
        return path
