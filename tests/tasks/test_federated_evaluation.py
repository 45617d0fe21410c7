"""Federated evaluation (services/tasks/evaluation.py, the client's ClientUpdate.evaluate): each
client reports its unfinalized metrics on its own eval split and the server sums and finalizes
them. That must equal TFF's own ``tff.learning.algorithms.build_fed_eval`` on the same clients'
data and the same model (< 1e-5), for a task with BatchNorm (the CNN) and for the CSV classifier;
clients weigh by their examples, not one each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow_federated as tff
from support.tff_runtime import TffRuntime

from services.client.trainer import ClientUpdate
from services.common.config import from_mapping
from services.common.data import Arrays
from services.tasks import federated_task
from services.tasks.evaluation import MetricsFinalizer
from services.tasks.federated import eval_dataset

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TOL = 1e-5


def prepared(example: str, out: Path) -> None:
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", f"examples.{example}.prepare", "--out", str(out), "--shards", "3"],
                   check=True, cwd=EXAMPLES.parent, capture_output=True, timeout=300)


@pytest.mark.parametrize("example", ["digits_cnn_images", "breast_cancer_csv"])
def test_federated_evaluation_equals_tffs_build_fed_eval(example: str, tmp_path: Path) -> None:
    prepared(example, tmp_path)
    cfg = from_mapping({"task": {"source": str(EXAMPLES / example / "task.yaml")},
                        "data": {"source": "files", "path": str(tmp_path)}})
    task = federated_task(cfg)
    # three clients of unequal size: two shards, and the small held-out folder
    clients = [task.learning.load(tmp_path / name, task.input_spec) for name in ("shard-0", "shard-1", "held-out")]
    clients[2] = Arrays(clients[2].x[:17], clients[2].y[:17])
    # a model that is not the initial one: the initial weights nudged
    start = task.initial_weights()
    rng = np.random.default_rng(1)
    trainable = [w + 0.1 * rng.standard_normal(w.shape).astype(w.dtype) for w in start.trainable]
    weights = [*trainable, *start.non_trainable]

    update = ClientUpdate(task)
    reports = {f"c{i}": update.evaluate(weights, eval_dataset(c, cfg.training)) for i, c in enumerate(clients)}
    ours = MetricsFinalizer(task.model_fn())(reports)

    with TffRuntime(120):
        evaluation = tff.learning.algorithms.build_fed_eval(task.model_fn)
        state = evaluation.set_model_weights(
            evaluation.initialize(),
            tff.learning.models.ModelWeights(trainable=trainable, non_trainable=list(start.non_trainable)))
        output = evaluation.next(state, [eval_dataset(c, cfg.training) for c in clients])
    theirs = output.metrics["client_work"]["eval"]["current_round_metrics"]
    assert ours["federated_eval_num_examples"] == float(theirs["num_examples"]) == sum(len(c) for c in clients)
    for name in ("loss", "accuracy"):
        assert abs(ours[f"federated_eval_{name}"] - float(theirs[name])) < TOL, name
    # by examples: the mean over all examples, not the mean of the clients' means
    per_client = [MetricsFinalizer(task.model_fn())({"c": r})["federated_eval_accuracy"] for r in reports.values()]
    assert ours["federated_eval_accuracy"] == pytest.approx(
        sum(a * len(c) for a, c in zip(per_client, clients, strict=True)) / sum(len(c) for c in clients), abs=TOL)
    assert ours["federated_eval_clients"] == 3.0


def test_a_result_without_every_key_counts_for_nothing_in_the_evaluation() -> None:
    task = federated_task(from_mapping({}))
    finalizer = MetricsFinalizer(task.model_fn())
    full = {k: 1.0 for k in finalizer.keys}
    partial = dict(list(full.items())[:-1])
    assert finalizer({"a": partial}) == {}
    assert finalizer({"a": full, "b": partial})["federated_eval_clients"] == 1.0
