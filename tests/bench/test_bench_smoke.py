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
def test_driver_flower(tmp_path: Path) -> None:
    results = _run_driver(tmp_path, "flower")
    _check(results["records"][0], "flower")
    _no_leftovers()
