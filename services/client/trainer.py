"""The client's *client work*: TFF's ``build_model_delta_client_work`` run on this client's own
data only, from the global weights the server sent to the ``ClientResult`` it sends back."""

from __future__ import annotations

import threading
import time

from services.common import codec
from services.common.config import FederationConfig
from services.common.data import Arrays
from services.common.task import Task, to_dataset
from services.common.tff_runtime import use_in_this_thread

# One TFF execution context per process: sessions that share a process (the simulator) train in turn.
_TFF_CALLS = threading.Lock()


class ClientTrainer:
    def __init__(self, cfg: FederationConfig, data: Arrays, task: Task | None = None) -> None:
        self.task = task or Task(cfg.training, cfg.model)
        self.dataset = to_dataset(data, cfg.training)
        with _TFF_CALLS:
            use_in_this_thread()
            self.state = self.task.client_work.initialize()

    def train(self, weights_bytes: bytes) -> tuple[bytes, dict[str, float]]:
        """Decode (type-checked) global weights, train locally, return (ClientResult bytes, metrics)."""
        weights = codec.decode(weights_bytes, self.task.weights_type)
        with _TFF_CALLS:
            use_in_this_thread()
            started = time.monotonic()
            out = self.task.client_work.next(self.state, [weights], [self.dataset])
            seconds = time.monotonic() - started
        train = out.measurements["train"]
        metrics = {
            "train_loss": float(train["loss"]),
            "train_accuracy": float(train["sparse_categorical_accuracy"]),
            "num_examples": float(train["num_examples"]),
            "seconds": seconds,
        }
        return codec.encode(out.result[0], self.task.result_type), metrics
