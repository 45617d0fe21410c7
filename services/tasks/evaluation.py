"""Evaluating the global model: centrally on data the server holds (when the task gives it), and
federated, on each sampled client's own eval split, as TFF's ``build_fed_eval`` does: every client
reports its *unfinalized* metrics (sums and counts), the server adds them up and finalizes once,
so each client counts by its examples (TFF's ``sum_then_finalize``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from services.common.data import Arrays

EVAL_MIN_BATCH_ELEMENTS = 1 << 20  # activations a batch may always use (4 MiB of float32)
PREFIX = "ev_"  # a result's unfinalized evaluation metrics: ev_<metric>_<i>


def eval_batch_size(model: tf.keras.Model, examples: int) -> int:
    """Examples per evaluation batch: the widest layer's activations stay within a quarter of the
    model's size (or 4 MiB, whichever is more), so evaluating a large model does not cost several
    copies of it."""
    widest = max(int(np.prod([d or 1 for d in layer.output.shape[1:]])) for layer in model.layers)
    budget = max(model.count_params() // 4, EVAL_MIN_BATCH_ELEMENTS)
    return max(1, min(examples, budget // widest))


def evaluate(model: tf.keras.Model, arrays: Arrays, loss: tf.keras.losses.Loss,
             metrics: list[tf.keras.metrics.Metric]) -> dict[str, float]:
    """``eval_loss`` (the mean of the per-example loss) and ``eval_<metric>`` of ``model`` on
    ``arrays`` (the server's held-out set), in batches (:func:`eval_batch_size`)."""
    per_example = type(loss).from_config({**loss.get_config(), "reduction": tf.keras.losses.Reduction.NONE})
    batch = eval_batch_size(model, len(arrays.y))
    loss_sum = 0.0
    for start in range(0, len(arrays.y), batch):
        x, y = arrays.x[start : start + batch], arrays.y[start : start + batch]
        predictions = model(x, training=False)
        loss_sum += float(np.sum(per_example(y, predictions).numpy(), dtype=np.float64))
        for m in metrics:
            m.update_state(y, predictions)
    out = {"eval_loss": loss_sum / len(arrays.y)}
    out.update({f"eval_{m.name}": _result(m) for m in metrics})
    return out


def _result(metric: tf.keras.metrics.Metric) -> float:
    """A metric's value; a mean (accuracy, MAE...: a total and a count) divided in float64, so a
    share of hits is exactly hits / examples."""
    names = [v.name.split("/")[-1].split(":")[0] for v in metric.variables]
    if names == ["total", "count"]:
        total, count = (float(v.numpy()) for v in metric.variables)
        return total / count if count else 0.0
    return float(metric.result())


def flat_metrics(unfinalized: Mapping[str, Any]) -> dict[str, float]:
    """A client's unfinalized metrics as result metrics: each variable's values as ``ev_<name>_<i>``."""
    out: dict[str, float] = {}
    for name, values in unfinalized.items():
        flat: Any = np.concatenate([np.ravel(np.asarray(v, dtype=np.float64)) for v in values]) if values else []
        out.update({f"{PREFIX}{name}_{i}": float(v) for i, v in enumerate(flat)})
    return out


class MetricsFinalizer:
    """The server's half: which ``ev_`` keys a result carries, and the finalized metrics of their
    sum over the round's accepted results (``federated_eval_<metric>``). TFF finalizes a Keras
    metric by building a fresh one, loading the summed variables into it and reading
    ``result()``; here one model's own metric objects are loaded and read, every round."""

    def __init__(self, model: tff.learning.models.VariableModel) -> None:
        self.metrics = {m.name: m for m in model.get_metrics()}  # report_local_unfinalized_metrics' keys
        self.shapes = {name: [tuple(v.shape) for v in m.variables] for name, m in self.metrics.items()}
        self.keys = frozenset(flat_metrics({n: [np.zeros(s) for s in shapes] for n, shapes in self.shapes.items()}))

    def __call__(self, results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
        reporting = [m for m in results.values() if self.keys <= m.keys()]
        if not reporting:
            return {}
        out: dict[str, float] = {"federated_eval_clients": float(len(reporting))}
        for name, metric in self.metrics.items():
            i = 0
            for variable, shape in zip(metric.variables, self.shapes[name], strict=True):
                size = int(np.prod(shape))
                summed = [float(np.sum([m[f"{PREFIX}{name}_{j}"] for m in reporting], dtype=np.float64))
                          for j in range(i, i + size)]
                variable.assign(np.reshape(np.asarray(summed, dtype=variable.dtype.as_numpy_dtype), shape))
                i += size
            out[f"federated_eval_{name}"] = float(metric.result())
        return out
