"""Every example (examples/) trains to its stated target with ``tff-k8s local``, from data its own
prepare script writes, as its README says: the declarative CSV classifier (no code), the
declarative CNN with BatchNorm on image folders, and the text module task. The CNN's distributed
result also equals TFF's own single-process algorithm on the same data after three rounds, for
FedAvg and FedProx (< 1e-5): the equality the digits MLP has, on a model with non-trainable variables."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from services.common.config import load_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Example:
    folder: str
    task: str  # what --task gets
    rounds: int
    metric: str  # the metrics.jsonl key of the stated target
    target: float
    central: bool  # the server evaluates on the example's held-out folder too


EXAMPLES = {
    "breast_cancer_csv": Example("breast_cancer_csv", "examples/breast_cancer_csv/task.yaml", 10,
                                 "federated_eval_accuracy", 0.90, central=False),
    "digits_cnn_images": Example("digits_cnn_images", "examples/digits_cnn_images/task.yaml", 10,
                                 "eval_accuracy", 0.88, central=True),
    "text_module": Example("text_module", "examples.text_module.task", 8, "eval_accuracy", 0.45, central=True),
}
CLIENTS = 4


def prepare(example: Example, out: Path, shards: int = CLIENTS) -> Path:
    subprocess.run([sys.executable, "-m", f"examples.{example.folder}.prepare", "--out", str(out),
                    "--shards", str(shards)], cwd=ROOT, check=True, capture_output=True, timeout=300)
    return out


def run_local(example: Example, data: Path, out: Path, *args: str, clients: int = CLIENTS,
              rounds: int | None = None) -> subprocess.CompletedProcess[str]:
    central = ["--set", f"data.server_eval_path={data / 'held-out'}"] if example.central else []
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "local", "--clients", str(clients),
         "--rounds", str(rounds or example.rounds), "--task", example.task, "--data", str(data),
         "--output-dir", str(out), *central, *args],
        cwd=ROOT, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL,
    )


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module", params=sorted(EXAMPLES))
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    example = EXAMPLES[request.param]
    data = prepare(example, tmp_path_factory.mktemp(f"{example.folder}-data"))
    out = tmp_path_factory.mktemp(f"{example.folder}-run")
    return example, data, out, run_local(example, data, out)


def test_every_example_trains_to_its_stated_target(trained) -> None:
    example, _, out, proc = trained
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = records(out)
    assert [r["round"] for r in rows] == list(range(1, example.rounds + 1))
    assert rows[-1][example.metric] >= example.target, rows[-1]
    assert rows[-1]["federated_eval_clients"] == CLIENTS  # every client evaluated on its own split
    assert rows[0]["federated_eval_accuracy"] < rows[-1]["federated_eval_accuracy"]  # it learned
    assert ("held-out accuracy" if example.central else "federated eval accuracy") in proc.stdout


def test_every_example_exports_a_plain_keras_model(trained) -> None:
    import tensorflow as tf

    example, data, out, _ = trained
    model = tf.keras.models.load_model(out / "model.keras")
    cfg = load_config(out / "federation.yaml", environ={})
    from services.tasks import federated_task

    task = federated_task(cfg)
    held_out = task.learning.load(data / "held-out", task.input_spec)
    accuracy = float(np.mean(np.argmax(model.predict(held_out.x, verbose=0), axis=1) == held_out.y))
    if example.central:  # the exported model is the one the last round's held-out accuracy measured
        assert accuracy == pytest.approx(records(out)[-1]["eval_accuracy"], abs=1e-6)
    else:
        assert accuracy >= example.target


def max_diff(ours: list[np.ndarray], reference: list[np.ndarray]) -> float:
    assert len(ours) == len(reference)
    return max(float(np.max(np.abs(a - b))) for a, b in zip(ours, reference, strict=True))


@pytest.mark.parametrize("algorithm", ["fedavg", "fedprox"])
def test_the_cnn_with_batchnorm_equals_tffs_algorithm_after_three_rounds(tmp_path: Path, algorithm: str) -> None:
    import tensorflow as tf
    from support.fedavg_reference import reference_weights

    example = EXAMPLES["digits_cnn_images"]
    data = prepare(example, tmp_path / "data", shards=3)
    out = tmp_path / "run"
    proc = run_local(example, data, out, "--set", f"training.algorithm={algorithm}",
                     "--set", "training.proximal_mu=0.5", clients=3, rounds=3)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cfg = load_config(out / "federation.yaml", environ={})
    assert cfg.training.algorithm == algorithm
    model = tf.keras.models.load_model(out / "model.keras")  # its variables, trainable first as TFF's ModelWeights
    ours = [v.numpy() for v in [*model.trainable_variables, *model.non_trainable_variables]]
    assert max_diff(ours, reference_weights(cfg, rounds=3)) < 1e-5
