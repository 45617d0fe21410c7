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
from tensorflow_federated.python.learning.templates import model_delta_client_work

from services.common import tensors
from services.common.config import FederationConfig
from services.common.data import Arrays
from services.common.task import Task, client_optimizer, to_dataset

# Sessions that share a process (the simulator) share one model's variables: they train in turn.
_TRAINING = threading.Lock()


class ClientUpdate:
    """TFF's client update for ``task``, traced once and run in this process (see the module doc)."""

    def __init__(self, task: Task) -> None:
        self.task = task
        # Tracing TFF's client work (for the types) builds a Keras model inside a tf.Graph, which
        # invalidates Keras models made before it: trace first, then build the model used here.
        self.weights_type = task.weights_type
        self.model = task.model_fn()
        self.optimizer = client_optimizer(task.training)
        # client_work's state is the optimizer's hyperparameters (see build_model_delta_client_work).
        self.hparams = self.optimizer.get_hparams(self.optimizer.initialize(tf.TensorSpec((), tf.float32)))
        self.update = model_delta_client_work.build_model_delta_update_with_tff_optimizer(
            lambda: self.model,
            weighting=tff.learning.ClientWeighting.NUM_EXAMPLES,
            # The same training loop as DATASET_REDUCE (TFF's default), ~6x faster on large models in eager.
            loop_implementation=tff.learning.LoopImplementation.DATASET_ITERATOR,
        )
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


@dataclass(frozen=True)
class Trained:
    result: tuple[memoryview, ...]  # the ClientResult in its wire layout: its tensors, back to back
    weight: float  # its update_weight (also the payload's last tensor)
    metrics: dict[str, float]


class ClientTrainer:
    def __init__(self, cfg: FederationConfig, data: Arrays, task: Task, update: ClientUpdate) -> None:
        self.task = task
        self.update = update
        self.dataset = to_dataset(data, cfg.training)
        self.weights_layout = task.weights_layout
        self.result_layout = task.result_layout

    def train(self, layout: str, weights_bytes: Any) -> Trained:
        """Decode (layout-, size- and finiteness-checked) global weights and train locally."""
        self.weights_layout.check_fingerprint(layout, "the server's model")
        weights = self.weights_layout.decode(weights_bytes)
        started = time.monotonic()
        leaves, train = self.update(weights, self.dataset)
        seconds = time.monotonic() - started
        metrics = {
            "train_loss": train["loss"],
            "train_accuracy": train["sparse_categorical_accuracy"],
            "num_examples": train["num_examples"],
            "seconds": seconds,
        }
        # TFF's client update zeroes a delta that is not finite, so the result needs no check here
        # (the server checks every chunk anyway).
        return Trained(self.result_layout.parts(leaves, check_finite=False), float(leaves[-1]), metrics)
