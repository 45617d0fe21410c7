"""The server's half of federated averaging, in TFF's own parts: the *aggregator* (``mean`` |
``robust`` | ``dp``) folds the clients' ``ClientResult``s into one update and the *finalizer*
(TFF's apply-optimizer step, as in ``build_apply_optimizer_finalizer``) applies it with the
server optimizer. The math is TFF's, so the result equals
``tff.learning.algorithms.build_weighted_fed_avg`` on the same data.

Speed: the finalizer's step (TFF's optimizer and non-finite check) runs in this process as a
``tf.function``, and with the ``mean`` aggregator :class:`WeightedMeanFold` folds each result in
as it arrives, so a round never ships the model through TFF's execution context (its C++
``worker_binary`` behind a local gRPC link). The ``robust`` and ``dp`` aggregators are stateful
TFF processes that take all results at once; only they use the TFF runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.core.impl.types import type_conversions
from tensorflow_federated.python.learning.templates import apply_optimizer_finalizer

from services.common import codec, tensors
from services.common.config import TrainingSettings
from services.common.task import Task, server_optimizer

FOLD_BLOCK = 1 << 20  # elements per step of the fold: bounds its scratch memory to 4 MiB


def aggregation_factory(training: TrainingSettings):  # type: ignore[no-untyped-def]
    if training.aggregator == "robust":
        return tff.learning.robust_aggregator(weighted=True)
    if training.aggregator == "dp":
        return tff.learning.dp_aggregator(training.dp_noise_multiplier, training.clients_per_round)
    return tff.aggregators.MeanFactory()


class WeightedMeanFold:
    """``MeanFactory``'s weighted mean, folded in as results arrive: sum(weight * update) and
    sum(weight) in float32, divided at the end, the same math as TFF's federated computation up to
    the order of the additions. Holds one model-sized sum and a 4 MiB scratch block."""

    def __init__(self) -> None:
        self.sum: list[np.ndarray] | None = None
        self.weight = np.float32(0)
        self.count = 0
        self._scratch = np.empty(0, np.float32)

    def add(self, result: Result) -> None:
        update, w = result.update, np.float32(result.weight)
        if self.sum is None:
            self.sum = [np.zeros(u.shape, np.float32) for u in update]
            self._scratch = np.empty(min(FOLD_BLOCK, max(u.size for u in update)), np.float32)
        for acc, part in zip(self.sum, update, strict=True):
            flat_acc, flat = acc.reshape(-1), np.asarray(part, np.float32).reshape(-1)
            for start in range(0, flat.size, FOLD_BLOCK):
                block = self._scratch[: min(FOLD_BLOCK, flat.size - start)]
                np.multiply(flat[start : start + block.size], w, out=block)
                flat_acc[start : start + block.size] += block
        self.weight = np.float32(self.weight + w)
        self.count += 1

    def mean(self) -> list[np.ndarray]:
        """The weighted mean, computed in place (the fold is spent afterwards)."""
        if self.sum is None:
            raise ValueError("no results were folded in")
        mean, self.sum = self.sum, None
        for part in mean:
            if self.weight == 0:
                part[...] = 0
            else:
                part /= self.weight
        return mean


@dataclass(frozen=True)
class ServerState:
    """Everything that defines the federation after ``round`` rounds (what a checkpoint holds).
    ``weights`` are the leaves of ``ModelWeights``, views over ``payload`` (their wire form)."""

    round: int
    payload: memoryview
    weights: list[np.ndarray]
    aggregator: Any
    finalizer: Any  # the server optimizer's state, a structure of numpy arrays


class OptimizerStep:
    """TFF's apply-optimizer finalizer step, in this process: ``optimizer.next`` on the trainable
    weights, or no change when the update holds NaN / Inf (TFF's ``reject_non_finite_update``)."""

    def __init__(self, optimizer: tff.learning.optimizers.Optimizer, weights_type: tff.Type) -> None:
        trainable_type = weights_type.trainable  # type: ignore[attr-defined]
        self.specs = tuple(type_conversions.type_to_tf_tensor_specs(trainable_type))
        self.optimizer = optimizer

        @tf.function
        def step(state: Any, trainable: Any, update: Any) -> tuple[Any, Any]:
            new_state, new_weights = optimizer.next(state, trainable, update)
            should_reject, _ = apply_optimizer_finalizer.reject_non_finite_update(new_state, update)
            if should_reject:
                return state, trainable
            return new_state, new_weights

        self._step = step

    def initialize(self) -> Any:
        # Traced, as TFF does: hyperparameters come out in TFF's dtypes (float32 / int32), not numpy's.
        return _to_numpy(tf.function(lambda: self.optimizer.initialize(self.specs))())

    def __call__(self, state: Any, trainable: list[np.ndarray], update: list[np.ndarray]) -> tuple[Any, list[np.ndarray]]:
        """One step. Consumes ``update``: each array is released once TensorFlow has its copy, so the
        update is never held twice (the server's peak memory is a few models, see ServerAlgorithm)."""
        tensors_in = []
        for i, part in enumerate(update):
            tensors_in.append(tf.convert_to_tensor(part))
            update[i] = None  # type: ignore[call-overload]
            del part
        new_state, new_weights = self._step(state, tuple(trainable), tuple(tensors_in))
        return _to_numpy(new_state), [np.asarray(w) for w in new_weights]


def _to_numpy(structure: Any) -> Any:
    return tf.nest.map_structure(np.asarray, structure)


class ServerAlgorithm:
    def __init__(self, task: Task, training: TrainingSettings,
                 run_tff: Callable[[], None] = lambda: None) -> None:
        self.task = task
        self.training = training
        self.run_tff = run_tff  # makes a TFF runtime current in the calling thread (robust / dp)
        result_type = task.result_type
        factory = aggregation_factory(training)
        self.weighted = isinstance(factory, tff.aggregators.WeightedAggregationFactory)
        if self.weighted:
            self.aggregator = factory.create(result_type.update, result_type.update_weight)
        else:
            self.aggregator = factory.create(result_type.update)
        finalizer = tff.learning.templates.build_apply_optimizer_finalizer(server_optimizer(training), task.weights_type)
        self.step = OptimizerStep(server_optimizer(training), task.weights_type)
        self.weights_layout = task.weights_layout
        self.result_layout = task.result_layout
        self.finalizer_type = finalizer.initialize.type_signature.result.member
        self.finalizer_layout = tensors.Layout.of(self.finalizer_type)
        self.aggregator_type = self.aggregator.initialize.type_signature.result.member
        if self.result_layout.leaves[-1].path != "update_weight":
            raise TypeError(f"expected a ClientResult type ending in update_weight, got {result_type}")
        self.n_trainable = len(self.weights_layout.leaves) - len(
            tensors.Layout.of(task.weights_type.non_trainable).leaves  # type: ignore[attr-defined]
        )

    @property
    def streaming(self) -> bool:
        """The mean aggregator folds results in as they arrive (:class:`WeightedMeanFold`); the
        robust and dp aggregators keep per-round state and take all results at once."""
        return self.training.aggregator == "mean"

    def _state(self, round_number: int, leaves: Sequence[Any], aggregator: Any, finalizer: Any) -> ServerState:
        payload = self.weights_layout.encode(leaves)
        return ServerState(round_number, payload, self.weights_layout.decode(payload), aggregator, finalizer)

    def initialize(self) -> ServerState:
        if self.streaming:
            aggregator: Any = _empty(self.aggregator_type)  # MeanFactory's state holds no values
        else:
            self.run_tff()
            aggregator = self.aggregator.initialize()
        weights = tensors.flatten(self.task.initial_weights())
        return self._state(0, weights, aggregator, self.step.initialize())

    def finalize(self, state: ServerState, update: list[np.ndarray], aggregator: Any) -> ServerState:
        """Apply the aggregated ``update`` to the global model with the server optimizer."""
        trainable, rest = state.weights[: self.n_trainable], state.weights[self.n_trainable :]
        opt_state, new_trainable = self.step(state.finalizer, trainable, update)
        del update
        return self._state(state.round + 1, [*new_trainable, *rest], aggregator, opt_state)

    def apply_mean(self, state: ServerState, fold: WeightedMeanFold) -> ServerState:
        """One round from a folded weighted mean (the mean aggregator is stateless)."""
        return self.finalize(state, fold.mean(), state.aggregator)

    def apply(self, state: ServerState, results: Sequence[Result]) -> ServerState:
        """One round with a TFF aggregator that takes all results at once (robust, dp)."""
        self.run_tff()
        updates = [list(r.update) for r in results]
        if self.weighted:
            agg = self.aggregator.next(state.aggregator, updates, [r.weight for r in results])
        else:
            agg = self.aggregator.next(state.aggregator, updates)
        update = [np.asarray(u, np.float32) for u in tensors.flatten(agg.result)]
        return self.finalize(state, update, agg.state)

    # ---- the checkpoint form: weights and optimizer state in their layouts, then the aggregator's
    # state as a TFF Value (robust / dp hold strings; type-checked when read back) ----------------
    def encode_state(self, state: ServerState) -> list[memoryview | bytes]:
        return [
            state.payload,
            self.finalizer_layout.encode(tensors.flatten(state.finalizer)),
            codec.encode(state.aggregator, self.aggregator_type),
        ]

    def decode_state(self, round_number: int, parts: Sequence[bytes | bytearray | memoryview]) -> ServerState:
        if len(parts) != 3:
            raise tensors.LayoutError(f"a server state has 3 parts, got {len(parts)}")
        weights, finalizer, aggregator = parts
        decoded = _to_numpy(_containers(tensors.unflatten(self.finalizer_type, self.finalizer_layout.decode(finalizer))))
        # Into the containers the optimizer itself makes (tuples where TFF's type says list); both
        # flattened by tf.nest, which orders dict keys the same way on both sides.
        opt_state = tf.nest.pack_sequence_as(self.step.initialize(), tf.nest.flatten(decoded))
        agg_state = codec.decode(bytes(aggregator), self.aggregator_type)
        leaves = self.weights_layout.decode(weights)
        return self._state(round_number, leaves, agg_state, opt_state)


@dataclass(frozen=True)
class Result:
    """A client's decoded ``ClientResult``: the update's leaves (views over the received buffer)."""

    update: list[np.ndarray]
    weight: float


def decode_result(layout: tensors.Layout, data: Any) -> Result:
    leaves = layout.decode(data)
    return Result(leaves[:-1], float(leaves[-1]))


def _empty(type_spec: tff.Type) -> tff.structure.Struct:
    """The only value of a type made of empty structs (no TFF call needed to produce it)."""
    if not isinstance(type_spec, tff.StructType):
        raise TypeError(f"{type_spec} is not an empty structure")
    return tff.structure.Struct([(name, _empty(member)) for name, member in tff.structure.iter_elements(type_spec)])


def _containers(structure: Any) -> Any:
    """TFF's Python containers as plain ones tf.nest maps over (OrderedDict, tuple)."""
    if isinstance(structure, tff.structure.Struct):
        return tff.structure.to_odict_or_tuple(structure)
    return structure


def as_model_weights(task: Task, leaves: Sequence[np.ndarray]) -> tff.learning.models.ModelWeights:
    value = tensors.unflatten(task.weights_type, leaves)
    return tff.learning.models.ModelWeights(trainable=list(value.trainable), non_trainable=list(value.non_trainable))

