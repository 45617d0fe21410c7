"""Smoke run of the benchmark driver (bench/run.py) so it cannot rot. No timed assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import procs
from bench.report import render

ROOT = Path(__file__).resolve().parents[2]
FLOWER_VENV = ROOT / "bench" / ".venv-flower"


def _run_driver(tmp_path: Path, systems: str) -> dict:
    procs.become_subreaper()
    out = tmp_path / "results.json"
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--sizes", "0.1", "--clients", "2",
         "--rounds", "2", "--repeats", "1", "--systems", systems, "--timeout", "400", "--out", str(out)],
        cwd=ROOT, timeout=900,  # exits 1 when a run failed: the records say which
    )
    return json.loads(out.read_text())


def _check(record: dict, system: str) -> None:
    assert "error" not in record, record
    assert record["system"] == system and record["clients"] == 2 and record["size_mb"] == 0.1
    assert len(record["round_times_s"]) == 2 and all(t > 0 for t in record["round_times_s"])
    assert record["median_round_s"] > 0 and record["first_round_s"] > 0
    assert record["server_peak_rss_mb"] > 0
    model = record["model_bytes"]
    assert model == int(0.1 * 2**20) // 4 * 4
    assert record["payload_bytes_per_round"] == model * 2 * 2
    if system == "tff_sim":  # one process: only the server value crosses the localhost link
        assert record["client_work_s"] is None and record["bytes_per_round"] >= 2 * model
    else:  # every client's model and update cross loopback
        assert 0 < record["client_work_s"] < record["median_round_s"]
        assert record["bytes_per_round"] >= record["payload_bytes_per_round"]


def _no_leftovers() -> None:
    """Nothing the driver started survives it (orphans re-parent to us: we are a subreaper)."""
    left = procs.descendants(os.getpid())
    procs.kill_own_descendants()
    assert not left, f"processes left behind: {left}"


@pytest.mark.slow
def test_driver_baselines(tmp_path: Path) -> None:
    results = _run_driver(tmp_path, "raw_grpc,tff_sim,ours")
    records = {r["system"]: r for r in results["records"]}
    _check(records["raw_grpc"], "raw_grpc")
    _check(records["tff_sim"], "tff_sim")
    _check(records["ours"], "ours")
    ours_run = next(r for r in results["runs"] if r["system"] == "ours")
    assert set(ours_run["server_phases_s"]) == {"collect_s", "aggregate_s", "evaluate_s", "checkpoint_s"}
    assert results["machine"]["cores"] >= 1
    _no_leftovers()

    text = render(results, "benchmarks.png")
    assert "raw gRPC" in text and "TFF simulation" in text and "ours / raw gRPC" in text


@pytest.mark.slow
@pytest.mark.skipif(not (FLOWER_VENV / "bin" / "flwr").exists(),
                    reason="bench/.venv-flower missing: run bench/setup_flower.sh")
@pytest.mark.parametrize("system", ["flower", "flower-secagg"])
def test_driver_flower(tmp_path: Path, system: str) -> None:
    results = _run_driver(tmp_path, system)
    _check(results["records"][0], system)
    if system == "flower-secagg":  # 2 clients: every client is every other's neighbour
        run = results["runs"][0]
        assert run["secagg"]["num-shares"] == 2 and len(run["client_mask_s"]) == 2
    _no_leftovers()


def _record(system: str, size_mb: float, clients: int, median_s: float, rss_mb: float) -> dict:
    return {"system": system, "size_mb": size_mb, "clients": clients, "repeats": 1,
            "round_times_s": [median_s] * 3, "median_round_s": median_s, "first_round_s": median_s,
            "client_work_s": 0.01, "coordination_overhead_s": median_s - 0.01, "bytes_per_round": 2**20,
            "payload_bytes_per_round": 2**20, "model_bytes": 2**20, "server_peak_rss_mb": rss_mb}


def test_report_secure_rows() -> None:
    """The secure-aggregation table: secure / ours, ours secure / Flower SecAgg+, server memory;
    a timed-out Flower SecAgg+ run is a row of its own, not a crash."""
    machine = {"cpu_model": "x", "cores": 2, "ram_gib": 8, "kernel": "k", "python": "3.11", "flwr": "1.42.0",
               "tensorflow_federated": "0.87", "tensorflow": "2.14", "grpcio": "1", "numpy": "1"}
    records = [_record("ours", 1, 4, 1.0, 300), _record("ours-secure", 1, 4, 1.5, 320),
               _record("flower", 1, 4, 10.0, 480), _record("flower-secagg", 1, 4, 30.0, 500),
               _record("ours", 25, 16, 4.0, 900),
               {"system": "flower-secagg", "size_mb": 25, "clients": 16, "error": "timed out after 1500s: ..."}]
    text = render({"machine": machine, "records": records}, "benchmarks.png")
    assert "## Secure aggregation" in text and "Flower SecAgg+" in text and "ours (secure)" in text
    assert "| 1 MiB | 4 | 1.00 s | 1.50 s | 10.00 s | 30.00 s | 1.50 | 0.05 | 3.00 | 300 / 320 / 480 / 500 |" in text
    assert "| 25 MiB | 16 | 4.00 s | not run | not run | timed out | n/a | n/a | n/a | 900 / - / - / - |" in text
    no_secure = render({"machine": machine, "records": records[:1]}, "benchmarks.png")
    assert "No secure-aggregation runs yet" in no_secure


def test_flower_secagg_params() -> None:
    """SecAgg+'s neighbourhood grows as log2(n): odd, at most n, a majority threshold."""
    from bench.runners.flower import secagg_params

    assert [(secagg_params(n)["num-shares"], secagg_params(n)["reconstruction-threshold"])
            for n in (2, 3, 4, 16, 100)] == [(2, 2), (3, 2), (3, 2), (5, 3), (9, 5)]
