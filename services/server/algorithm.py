"""The server's half of federated averaging, in TFF's own parts: the *aggregator* (``mean`` |
``robust`` | ``dp``) folds the clients' ``ClientResult``s into one update and the *finalizer*
(TFF's apply-optimizer step, as in ``build_apply_optimizer_finalizer``) applies it with the
server optimizer. The math is TFF's, so the result equals
``tff.learning.algorithms.build_weighted_fed_avg`` on the same data.

Speed: the finalizer's step (TFF's optimizer and non-finite check) runs in this process as a
``tf.function``, and with the ``mean`` aggregator :class:`~services.server.fold.StreamingMean`
folds each result in as it streams in, so a round never ships the model through TFF's execution context (its C++
``worker_binary`` behind a local gRPC link). The ``robust`` and ``dp`` aggregators are stateful
TFF processes that take all results at once; only they use the TFF runtime.
"""

from __future__ import annotations

import gc
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
from services.server.fold import StreamingMean


def aggregation_factory(training: TrainingSettings):  # type: ignore[no-untyped-def]
    if training.aggregator == "robust":
        return tff.learning.robust_aggregator(weighted=True)
    if training.aggregator == "dp":
        return tff.learning.dp_aggregator(training.dp_noise_multiplier, training.clients_per_round)
    return tff.aggregators.MeanFactory()


@dataclass(frozen=True)
class ServerState:
    """Everything that defines the federation after ``round`` rounds (what a checkpoint holds).
    ``weights`` are the leaves of ``ModelWeights`` (aligned, so TensorFlow reads them in place);
    ``payload`` is their wire form, views of the same memory. Never written to once made."""

    round: int
    payload: tuple[memoryview, ...]
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
        """One step. The weights and the update go in without copies (:func:`services.common.tensors.as_tensor`) and the
        new weights come out without copies, so the step holds three models at its peak: the old
        weights, the update and the new weights. Consumes ``update``."""
        update_in = tuple(tensors.as_tensor(u) for u in update)
        update.clear()
        weights_in = tuple(tensors.as_tensor(w) for w in trainable)
        state_in = tf.nest.map_structure(tensors.as_tensor, state)
        new_state, new_weights = self._step(state_in, weights_in, update_in)
        del update_in
        return tf.nest.map_structure(tensors.as_array, new_state), [tensors.as_array(w) for w in new_weights]


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
        """The mean aggregator folds results in as they stream in (services.server.fold); the
        robust and dp aggregators keep per-round state and take all results at once."""
        return self.training.aggregator == "mean"

    def new_fold(self) -> StreamingMean | None:
        """The round's running sum (mean aggregator), or None (results are kept whole)."""
        return StreamingMean(self.result_layout) if self.streaming else None

    def _state(self, round_number: int, leaves: list[np.ndarray], aggregator: Any, finalizer: Any) -> ServerState:
        """``leaves`` become the state's weights as they are (aligned, never written to again)."""
        payload = self.weights_layout.parts(leaves)  # checks shapes, dtypes and finiteness
        return ServerState(round_number, payload, leaves, aggregator, finalizer)

    def _aligned(self, leaves: Sequence[Any]) -> list[np.ndarray]:
        """The leaves as aligned, writable arrays in the wire dtypes: as they are when they
        already are, else copied one at a time (each original is let go)."""
        source, out = list(leaves), []
        for i, leaf in enumerate(self.weights_layout.leaves):
            a = np.asarray(source[i])
            ready = (a.dtype == leaf.dtype and a.flags.c_contiguous and a.flags.writeable
                     and (a.size == 0 or a.ctypes.data % tensors.ALIGN == 0))
            out.append(a if ready else tensors.aligned_copy(a, leaf.dtype.newbyteorder("=")))
            source[i] = a = None  # type: ignore[assignment]
        return out

    def initialize(self) -> ServerState:
        if self.streaming:
            aggregator: Any = _empty(self.aggregator_type)  # MeanFactory's state holds no values
        else:
            self.run_tff()
            aggregator = self.aggregator.initialize()
        weights = self._aligned(tensors.flatten(self.task.initial_weights()))
        gc.collect()  # the Keras model that drew them holds reference cycles: free its weights now
        return self._state(0, weights, aggregator, self.step.initialize())

    def finalize(self, state: ServerState, update: list[np.ndarray], aggregator: Any) -> ServerState:
        """Apply the aggregated ``update`` to the global model with the server optimizer."""
        trainable, rest = state.weights[: self.n_trainable], state.weights[self.n_trainable :]
        opt_state, new_trainable = self.step(state.finalizer, trainable, update)
        del update
        return self._state(state.round + 1, [*new_trainable, *rest], aggregator, opt_state)

    def apply_mean(self, state: ServerState, fold: StreamingMean) -> ServerState:
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
        update = [tensors.aligned_copy(u, np.float32) for u in tensors.flatten(agg.result)]
        return self.finalize(state, update, agg.state)

    # ---- the checkpoint form: weights and optimizer state in their layouts, then the aggregator's
    # state as a TFF Value (robust / dp hold strings; type-checked when read back) ----------------
    def encode_state(self, state: ServerState) -> list[memoryview | bytes | tuple[memoryview, ...]]:
        return [
            state.payload,
            self.finalizer_layout.encode(tensors.flatten(state.finalizer)),
            codec.encode(state.aggregator, self.aggregator_type),
        ]

    def decode_state(self, round_number: int, parts: Sequence[Any]) -> ServerState:
        if len(parts) != 3:
            raise tensors.LayoutError(f"a server state has 3 parts, got {len(parts)}")
        weights, finalizer, aggregator = parts
        decoded = _to_numpy(_containers(tensors.unflatten(self.finalizer_type, self.finalizer_layout.decode(finalizer))))
        # Into the containers the optimizer itself makes (tuples where TFF's type says list); both
        # flattened by tf.nest, which orders dict keys the same way on both sides.
        opt_state = tf.nest.pack_sequence_as(self.step.initialize(), tf.nest.flatten(decoded))
        agg_state = codec.decode(bytes(aggregator), self.aggregator_type)
        leaves = self._aligned(self.weights_layout.decode(weights))
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

