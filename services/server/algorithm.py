"""The server's half of federated averaging, in TFF's own parts: the *aggregator* (the one
``training.aggregator`` names from services/common/aggregators.py; services/server/aggregation)
turns the clients' ``ClientResult``s into one update and the *finalizer* (TFF's apply-optimizer
step, as in ``build_apply_optimizer_finalizer``) applies it with the server optimizer. The math is
TFF's: with ``mean`` the result equals ``tff.learning.algorithms.build_weighted_fed_avg`` on the same
data, with ``robust`` and ``dp`` TFF's aggregators of those names (tests/services/
test_aggregators_equal_tff.py), and ``secure``'s update is the weighted mean within its
quantization step.

Both run in this process: the aggregators in numpy on results staged as they stream in, the
finalizer's step (TFF's optimizer and non-finite check) as a ``tf.function``. No round ships the
model through TFF's execution context (its C++ ``worker_binary`` behind a local gRPC link).
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.core.impl.types import type_conversions
from tensorflow_federated.python.learning.templates import apply_optimizer_finalizer

from services.common import tensors
from services.common.config import TrainingSettings
from services.server.aggregation import Aggregator, Outcome
from services.server.aggregation import State as AggregatorState
from services.server.state import ServerState
from services.tasks.federated import FederatedTask, server_optimizer


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
    """The aggregator and the finalizer of one task: the initial state, a round's step, and the
    checkpoint form of the state."""

    def __init__(self, task: FederatedTask, training: TrainingSettings, aggregator: Aggregator) -> None:
        self.task = task
        self.aggregator = aggregator
        finalizer = tff.learning.templates.build_apply_optimizer_finalizer(server_optimizer(training), task.weights_type)
        self.step = OptimizerStep(server_optimizer(training), task.weights_type)
        self.weights_layout = task.weights_layout
        if aggregator.layout != task.result_layout:
            raise TypeError("the aggregator is for another ClientResult layout than this task's")
        self.finalizer_type = finalizer.initialize.type_signature.result.member
        self.finalizer_layout = tensors.Layout.of(self.finalizer_type)
        self.n_trainable = len(self.weights_layout.leaves) - len(
            tensors.Layout.of(task.weights_type.non_trainable).leaves  # type: ignore[attr-defined]
        )

    def _state(self, round_number: int, leaves: list[np.ndarray], aggregator: AggregatorState,
               finalizer: Any) -> ServerState:
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
        weights = self._aligned(tensors.flatten(self.task.initial_weights()))
        gc.collect()  # the Keras model that drew them holds reference cycles: free its weights now
        return self._state(0, weights, self.aggregator.initial_state(), self.step.initialize())

    def apply(self, state: ServerState, outcome: Outcome) -> ServerState:
        """One round: the aggregated update applied to the global model with the server optimizer
        (consumes ``outcome.update``); the aggregator's next state comes with it."""
        trainable, rest = state.weights[: self.n_trainable], state.weights[self.n_trainable :]
        opt_state, new_trainable = self.step(state.finalizer, trainable, outcome.update)
        return self._state(state.round + 1, [*new_trainable, *rest], outcome.state, opt_state)

    # ---- the checkpoint form: weights and optimizer state in their layouts, then the aggregator's
    # state (its float32 scalars) -----------------------------------------------------------------
    def encode_state(self, state: ServerState) -> list[memoryview | bytes | tuple[memoryview, ...]]:
        return [
            state.payload,
            self.finalizer_layout.encode(tensors.flatten(state.finalizer)),
            self.aggregator.encode_state(state.aggregator),
        ]

    def decode_state(self, round_number: int, parts: Sequence[Any]) -> ServerState:
        if len(parts) != 3:
            raise tensors.LayoutError(f"a server state has 3 parts, got {len(parts)}")
        weights, finalizer, aggregator = parts
        decoded = _to_numpy(_containers(tensors.unflatten(self.finalizer_type, self.finalizer_layout.decode(finalizer))))
        # Into the containers the optimizer itself makes (tuples where TFF's type says list); both
        # flattened by tf.nest, which orders dict keys the same way on both sides.
        opt_state = tf.nest.pack_sequence_as(self.step.initialize(), tf.nest.flatten(decoded))
        agg_state = self.aggregator.decode_state(aggregator)
        leaves = self._aligned(self.weights_layout.decode(weights))
        return self._state(round_number, leaves, agg_state, opt_state)


def _containers(structure: Any) -> Any:
    """TFF's Python containers as plain ones tf.nest maps over (OrderedDict, tuple)."""
    if isinstance(structure, tff.structure.Struct):
        return tff.structure.to_odict_or_tuple(structure)
    return structure


def as_model_weights(task: FederatedTask, leaves: Sequence[np.ndarray]) -> tff.learning.models.ModelWeights:
    value = tensors.unflatten(task.weights_type, leaves)
    return tff.learning.models.ModelWeights(trainable=list(value.trainable), non_trainable=list(value.non_trainable))

