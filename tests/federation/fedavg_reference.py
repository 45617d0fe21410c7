"""TFF's own single-process FedAvg (``tff.learning.algorithms.build_weighted_fed_avg``) on the
same shards, initial weights and hyper-parameters as a federation config: the reference the
distributed result must equal."""

from __future__ import annotations

import numpy as np
import tensorflow_federated as tff
from support.tff_runtime import TffRuntime

from services.common.config import FederationConfig
from services.common.data import digits_shard
from services.tasks import federated_task
from services.tasks.federated import client_optimizer, server_optimizer, to_dataset


def reference_weights(cfg: FederationConfig, rounds: int) -> list[np.ndarray]:
    t, d = cfg.training, cfg.data
    assert t.aggregator == "mean" and t.clients_per_round == cfg.num_shards, "reference covers full-participation mean"
    datasets = [
        to_dataset(digits_shard(i, cfg.num_shards, scheme=d.partition, alpha=d.dirichlet_alpha,
                                eval_fraction=d.eval_fraction, seed=t.seed), t)
        for i in range(cfg.num_shards)
    ]
    with TffRuntime(120):
        task = federated_task(cfg)
        process = tff.learning.algorithms.build_weighted_fed_avg(
            task.model_fn,
            client_optimizer_fn=client_optimizer(t),
            server_optimizer_fn=server_optimizer(t),
            model_aggregator=tff.aggregators.MeanFactory(),
        )
        state = process.set_model_weights(process.initialize(), task.initial_weights())
        for _ in range(rounds):
            state = process.next(state, datasets).state
        weights = process.get_model_weights(state)
    return [np.asarray(w) for w in [*weights.trainable, *weights.non_trainable]]
