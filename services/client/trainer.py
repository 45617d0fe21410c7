"""The client's *client work*: TFF's model-delta client update (the function
``tff.learning.templates.build_model_delta_client_work`` wraps in its ``client_update_computation``)
on this client's own data only, from the global weights the server sent to the ``ClientResult``
it sends back.

It runs in this process as a ``tf.function`` traced once, not through a TFF execution context:
TFF's context would ship the model to its C++ ``worker_binary`` and back over a local gRPC link on
every call, which cost more than the training itself (2.9 s of a 25 MiB round). The function, the
optimizer, its hyperparameters (``client_work.initialize()``'s state) and the metrics
are TFF's own, so the result is the one ``client_work.next`` computes; the tests compare the
federation with ``build_weighted_fed_avg`` on the same data."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.learning.models import model_weights as model_weights_lib
from tensorflow_federated.python.learning.templates import model_delta_client_work, proximal_client_work

from services.common import tensors
from services.common.config import FederationConfig
from services.common.data import Arrays
from services.tasks.evaluation import flat_metrics
from services.tasks.federated import FederatedTask, client_optimizer, eval_dataset, to_dataset

# Sessions that share a process (the simulator) share one model's variables: they train in turn.
_TRAINING = threading.Lock()


class ClientUpdate:
    """TFF's client update for ``task`` (FedAvg's or FedProx's), traced once and run in this process
    (see the module doc), and TFF's local evaluation of the global model on the same variables."""

    def __init__(self, task: FederatedTask) -> None:
        self.task = task
        # Tracing TFF's client work (for the types) builds a Keras model inside a tf.Graph, which
        # invalidates Keras models made before it: trace first, then build the model used here.
        self.weights_type = task.weights_type
        self.model = task.model_fn()
        self.optimizer = client_optimizer(task.training)
        # client_work's state is the optimizer's hyperparameters (see build_model_delta_client_work).
        self.hparams = self.optimizer.get_hparams(self.optimizer.initialize(tf.TensorSpec((), tf.float32)))
        common = dict(weighting=tff.learning.ClientWeighting.NUM_EXAMPLES,
                      # The same training loop as DATASET_REDUCE (TFF's default), ~6x faster on large models in eager.
                      loop_implementation=tff.learning.LoopImplementation.DATASET_ITERATOR)
        if task.training.algorithm == "fedprox":
            proximal = proximal_client_work.build_model_delta_update_with_tff_optimizer(
                lambda: self.model, delta_l2_regularizer=task.training.proximal_mu, **common)
            # FedProx's update takes no hyperparameters: the optimizer carries its own.
            self.update = lambda optimizer, weights, data, _hparams: proximal(optimizer, weights, data)
        else:
            self.update = model_delta_client_work.build_model_delta_update_with_tff_optimizer(
                lambda: self.model, **common)
        self._evaluate = _local_evaluation(self.model)
        # TFF finalizes a Keras metric by building a fresh one, loading the reported variables into
        # it and reading result(); here the model's own metric objects hold those variables already.
        self.metrics = self.model.get_metrics()

    def __call__(self, weights: list[np.ndarray], dataset: tf.data.Dataset) -> tuple[list[np.ndarray], dict[str, float]]:
        """Leaves of ``ModelWeights`` in, leaves of ``ClientResult`` and the finalized metrics out."""
        # Aligned leaves (an aligned receive buffer) go in without a copy, and the result's leaves
        # come out without one (services.common.tensors.as_tensor / as_array).
        model_weights = tensors.unflatten(self.weights_type, [tensors.as_tensor(w) for w in weights])
        with _TRAINING:
            # TFF builds fresh metric variables on every call; here they live on, so reset them.
            self.model.reset_metrics()
            result, _ = self.update(self.optimizer, model_weights, dataset, self.hparams)
            leaves = [tensors.as_array(t) for t in tensors.flatten(result)]
            metrics = {m.name: float(m.result()) for m in self.metrics}
        return leaves, metrics

    def evaluate(self, weights: list[np.ndarray], dataset: tf.data.Dataset) -> dict[str, float]:
        """The global model's unfinalized metrics on ``dataset`` (TFF's local evaluation, as
        ``build_fed_eval``'s client side computes them), as ``ev_`` result metrics."""
        model_weights = tensors.unflatten(self.weights_type, [tensors.as_tensor(w) for w in weights])
        with _TRAINING:
            self.model.reset_metrics()
            unfinalized = self._evaluate(model_weights, dataset)
            self.model.reset_metrics()
        return flat_metrics({name: [v.numpy() for v in values] for name, values in unfinalized.items()})


def _local_evaluation(model: tff.learning.models.VariableModel) -> Any:
    """TFF's client evaluation (``tff.learning.algorithms.build_fed_eval``'s local computation):
    the incoming weights assigned, a forward pass per batch (training=False), the model's local
    unfinalized metrics."""

    @tf.function
    def local_eval(incoming: Any, dataset: tf.data.Dataset) -> Any:
        weights = model_weights_lib.ModelWeights.from_model(model)
        tf.nest.map_structure(lambda v, t: v.assign(t), weights, incoming)

        def step(state: tf.Tensor, batch: Any) -> tf.Tensor:
            model.forward_pass(batch, training=False)
            return state

        dataset.reduce(tf.constant(0), step)
        return model.report_local_unfinalized_metrics()

    return local_eval


@dataclass(frozen=True)
class Trained:
    result: tuple[memoryview, ...]  # the ClientResult in its wire layout: its tensors, back to back
    weight: float  # its update_weight (also the payload's last tensor)
    metrics: dict[str, float]


class ClientTrainer:
    def __init__(self, cfg: FederationConfig, data: Arrays, task: FederatedTask, update: ClientUpdate,
                 eval_data: Arrays | None = None) -> None:
        self.task = task
        self.update = update
        self.dataset = to_dataset(data, cfg.training)
        self.eval_dataset = eval_dataset(eval_data, cfg.training) if eval_data is not None else None
        self.weights_layout = task.weights_layout
        self.result_layout = task.result_layout

    def train(self, layout: str, weights_bytes: Any, *, evaluate: bool = False) -> Trained:
        """Decode (layout-, size- and finiteness-checked) global weights and train locally; with
        ``evaluate`` (and an eval split), evaluate them first (federated evaluation)."""
        self.weights_layout.check_fingerprint(layout, "the server's model")
        weights = self.weights_layout.decode(weights_bytes)
        evaluated = self.update.evaluate(weights, self.eval_dataset) \
            if evaluate and self.eval_dataset is not None else {}
        started = time.monotonic()
        leaves, train = self.update(weights, self.dataset)
        seconds = time.monotonic() - started
        metrics = {f"train_{name}": value for name, value in train.items()
                   if name not in ("num_examples", "num_batches")}
        metrics.update(num_examples=train["num_examples"], seconds=seconds, **evaluated)
        # TFF's client update zeroes a delta that is not finite, so the result needs no check here
        # (the server checks every chunk anyway).
        return Trained(self.result_layout.parts(leaves, check_finite=False), float(leaves[-1]), metrics)
