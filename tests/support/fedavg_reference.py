"""TFF's own single-process FedAvg (``tff.learning.algorithms.build_weighted_fed_avg``) or FedProx
(``build_weighted_fed_prox``) on the same task, shards, initial weights and hyper-parameters as a
federation config: the reference the distributed result must equal."""

from __future__ import annotations

import numpy as np
import tensorflow_federated as tff
from support.tff_runtime import TffRuntime

from services.common.config import FederationConfig
from services.tasks import federated_task
from services.tasks.federated import client_optimizer, server_optimizer, to_dataset
from services.tasks.sources import client_data


def reference_weights(cfg: FederationConfig, rounds: int) -> list[np.ndarray]:
    t = cfg.training
    assert t.aggregator == "mean" and t.clients_per_round == cfg.num_shards, "reference covers full-participation mean"
    task = federated_task(cfg)
    datasets = [to_dataset(client_data(cfg, task, i, cfg.num_shards).train, t) for i in range(cfg.num_shards)]
    with TffRuntime(120):
        common = dict(client_optimizer_fn=client_optimizer(t), server_optimizer_fn=server_optimizer(t),
                      model_aggregator=tff.aggregators.MeanFactory())
        if t.algorithm == "fedprox":
            process = tff.learning.algorithms.build_weighted_fed_prox(task.model_fn, proximal_strength=t.proximal_mu,
                                                                      **common)
        else:
            process = tff.learning.algorithms.build_weighted_fed_avg(task.model_fn, **common)
        state = process.set_model_weights(process.initialize(), task.initial_weights())
        for _ in range(rounds):
            state = process.next(state, datasets).state
        weights = process.get_model_weights(state)
    return [np.asarray(w) for w in [*weights.trainable, *weights.non_trainable]]
