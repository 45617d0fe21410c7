"""The server's half of federated averaging, in TFF's own parts: the *aggregator* (``mean`` |
``robust`` | ``dp``) folds the clients' ``ClientResult``s into one update and the *finalizer*
(``build_apply_optimizer_finalizer``) applies it with the server optimizer. The math is TFF's,
so the result equals ``tff.learning.algorithms.build_weighted_fed_avg`` on the same data."""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow_federated as tff

from services.common import codec
from services.common.config import TrainingSettings
from services.common.task import Task, server_optimizer


def aggregation_factory(training: TrainingSettings):  # type: ignore[no-untyped-def]
    if training.aggregator == "robust":
        return tff.learning.robust_aggregator(weighted=True)
    if training.aggregator == "dp":
        return tff.learning.dp_aggregator(training.dp_noise_multiplier, training.clients_per_round)
    return tff.aggregators.MeanFactory()


class WeightedMeanFold:
    """``MeanFactory``'s weighted mean, folded in as results arrive: sum(weight * update) and
    sum(weight) in float32, divided at the end (``divide_no_nan``), the same math as TFF's
    federated computation up to the order of the additions. Holds one model-sized sum."""

    def __init__(self) -> None:
        self.sum: list[np.ndarray] | None = None
        self.weight = np.float32(0)
        self.count = 0

    def add(self, result: Any) -> None:
        weight = np.float32(result.update_weight)
        parts = [np.asarray(u, dtype=np.float32) * weight for u in result.update]
        if self.sum is None:
            self.sum = parts
        else:
            for acc, part in zip(self.sum, parts, strict=True):
                acc += part
        self.weight = np.float32(self.weight + weight)
        self.count += 1

    def mean(self) -> list[np.ndarray]:
        if self.sum is None:
            raise ValueError("no results were folded in")
        if self.weight == 0:
            return [np.zeros_like(s) for s in self.sum]
        return [s / self.weight for s in self.sum]


@dataclass(frozen=True)
class ServerState:
    """Everything that defines the federation after ``round`` rounds (what a checkpoint holds)."""

    round: int
    weights: Any  # ModelWeights structure
    aggregator: Any
    finalizer: Any


class ServerAlgorithm:
    def __init__(self, task: Task, training: TrainingSettings) -> None:
        self.task = task
        self.training = training
        result_type = task.result_type
        factory = aggregation_factory(training)
        self.weighted = isinstance(factory, tff.aggregators.WeightedAggregationFactory)
        if self.weighted:
            self.aggregator = factory.create(result_type.update, result_type.update_weight)
        else:
            self.aggregator = factory.create(result_type.update)
        self.finalizer = tff.learning.templates.build_apply_optimizer_finalizer(
            server_optimizer(training), task.weights_type
        )
        self.state_type = tff.StructType(
            [
                ("weights", task.weights_type),
                ("aggregator", self.aggregator.initialize.type_signature.result.member),
                ("finalizer", self.finalizer.initialize.type_signature.result.member),
            ]
        )

    @property
    def streaming(self) -> bool:
        """The mean aggregator folds results in as they arrive (:class:`WeightedMeanFold`); the
        robust and dp aggregators keep per-round state and take all results at once."""
        return self.training.aggregator == "mean"

    def apply_mean(self, state: ServerState, fold: WeightedMeanFold) -> ServerState:
        """One round from a folded weighted mean (the mean aggregator is stateless)."""
        fin = self.finalizer.next(state.finalizer, state.weights, fold.mean())
        return ServerState(state.round + 1, fin.result, state.aggregator, fin.state)

    def initialize(self) -> ServerState:
        return ServerState(
            0, self.task.initial_weights(), self.aggregator.initialize(), self.finalizer.initialize()
        )

    def apply(self, state: ServerState, results: Sequence[Any]) -> ServerState:
        """One round: aggregate the ``ClientResult``s, then apply the update to the global model."""
        updates = [r.update for r in results]
        if self.weighted:
            agg = self.aggregator.next(state.aggregator, updates, [r.update_weight for r in results])
        else:
            agg = self.aggregator.next(state.aggregator, updates)
        fin = self.finalizer.next(state.finalizer, state.weights, agg.result)
        return ServerState(state.round + 1, fin.result, agg.state, fin.state)

    # The checkpoint form: one TFF Value of ``state_type`` (type-checked when read back).
    def encode_state(self, state: ServerState) -> bytes:
        value = collections.OrderedDict(weights=state.weights, aggregator=state.aggregator, finalizer=state.finalizer)
        return codec.encode(value, self.state_type)

    def decode_state(self, round_number: int, data: bytes) -> ServerState:
        value = codec.decode(data, self.state_type)
        return ServerState(round_number, value.weights, value.aggregator, value.finalizer)

    def encode_weights(self, weights: Any) -> bytes:
        return codec.encode(weights, self.task.weights_type)


def as_model_weights(weights: Any) -> tff.learning.models.ModelWeights:
    return tff.learning.models.ModelWeights(
        trainable=list(weights.trainable), non_trainable=list(weights.non_trainable)
    )
