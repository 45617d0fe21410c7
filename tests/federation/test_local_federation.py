"""The README's main job, for real: ``tff-k8s local`` starts a server and client processes on
loopback, trains on the bundled digits, and leaves results (and no processes) behind. The
distributed result must equal TFF's own single-process FedAvg on the same data: clients train
in-process (TFF's client update as a tf.function) and the server folds a weighted mean, so this
equality is what shows they still compute ``build_weighted_fed_avg``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from federation_harness import ROOT, processes_mentioning, worker_binaries

from services.common.config import load_config

pytestmark = pytest.mark.slow


def run_local(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "local", "--output-dir", str(out), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str], set[int]]:
    """The default job: 4 clients, 10 rounds, digits."""
    before = worker_binaries()
    out = tmp_path_factory.mktemp("default-run")
    return out, run_local(out), before


@pytest.fixture(scope="module")
def three_client_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("three-clients")
    return out, run_local(out, "--clients", "3", "--rounds", "3", "--seed", "7")


def records(out: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def model_weights(out: Path) -> list[np.ndarray]:
    import tensorflow as tf

    return tf.keras.models.load_model(out / "model.keras").get_weights()


def test_default_run_succeeds_and_writes_results(default_run) -> None:
    out, proc, _ = default_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = records(out)
    assert [r["round"] for r in rows] == list(range(1, 11))
    assert all(r["clients"] == 4 for r in rows)
    for r in rows:  # a round's seconds are its collection and aggregation; evaluation and checkpoint follow
        assert r["seconds"] == pytest.approx(r["collect_s"] + r["aggregate_s"], abs=2e-3)
        assert r["started_at"] <= r["time"] and r["evaluate_s"] >= 0 and r["checkpoint_s"] >= 0
    assert [r["started_at"] for r in rows] == sorted(r["started_at"] for r in rows)
    assert (out / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "held-out accuracy" in proc.stdout


def test_default_run_reaches_90_percent_held_out_accuracy(default_run) -> None:
    out, _, _ = default_run
    assert records(out)[-1]["eval_accuracy"] >= 0.90


def test_exported_model_loads_with_plain_keras_and_scores_the_same(default_run) -> None:
    import tensorflow as tf
    from sklearn.datasets import load_digits

    from services.common.data import load_digits_split

    out, _, _ = default_run
    cfg = load_config(out / "federation.yaml", environ={})
    model = tf.keras.models.load_model(out / "model.keras")
    assert tuple(model.input_shape) == (None, 64)
    # The held-out split, rebuilt from raw sklearn pixels scaled the documented way (data / 16).
    digits = load_digits()
    _, held_out = load_digits_split(cfg.data.eval_fraction, cfg.training.seed)
    order = np.random.default_rng(cfg.training.seed).permutation(len(digits.target))
    n_eval = len(held_out)
    x = (digits.data[order][:n_eval] / 16).astype("float32")
    y = digits.target[order][:n_eval]
    np.testing.assert_array_equal(x, held_out.x)
    accuracy = float(np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y))
    assert accuracy == pytest.approx(records(out)[-1]["eval_accuracy"], abs=1e-9)


def test_default_run_equals_tff_single_process_fedavg(default_run) -> None:
    from support.fedavg_reference import reference_weights

    out, _, _ = default_run
    cfg = load_config(out / "federation.yaml", environ={})
    ours, reference = model_weights(out), reference_weights(cfg, rounds=10)
    assert len(ours) == len(reference)
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(ours, reference, strict=True))
    assert worst < 1e-5


def test_three_clients_equal_tff_fedavg_after_three_rounds(three_client_run) -> None:
    from support.fedavg_reference import reference_weights

    out, proc = three_client_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [r["clients"] for r in records(out)] == [3, 3, 3]
    cfg = load_config(out / "federation.yaml", environ={})
    worst = max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(model_weights(out), reference_weights(cfg, rounds=3), strict=True)
    )
    assert worst < 1e-5


def test_runner_leaves_no_process_behind(default_run, three_client_run) -> None:
    for out, *_ in (default_run, three_client_run):
        assert processes_mentioning(str(out)) == []
        # The mean aggregator trains and aggregates in-process: no process started TFF's worker_binary.
        logs = sorted((out / "logs").glob("*.log"))
        assert len(logs) >= 4 and not [p.name for p in logs if "worker_binary" in p.read_text(errors="replace")]
    # No TFF worker_binary left by the runs (the reference computations own and stop theirs).
    assert worker_binaries() <= default_run[2]
