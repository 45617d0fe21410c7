"""What a finished federation looks like where Kubernetes runs it (``server.on_finish: serve``,
``client.on_done: idle``, the defaults): nothing exits (an exit would be restarted by the Pod's
restart policy), the server stays ready and says it has finished, a restarted server stays
finished, and a config for another run starts that run afresh, keeping the previous one's files."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from federation_harness import Federation, federation
from support import prometheus
from support.grpc_health import health_status

from services.common.health import LIVE, READY

pytestmark = pytest.mark.slow

SERVE = {"server.on_finish": "serve", "client.on_done": "idle"}
QUIET_S = 8.0


def finished(fed: Federation) -> bool:
    try:
        return bool(json.loads((fed.out_dir / "run.json").read_text()).get("finished"))
    except (OSError, ValueError):
        return False


def metric(fed: Federation, name: str) -> float:
    return prometheus.metric(f"127.0.0.1:{fed.cfg.server.metrics_port}", name)


def test_finished_federation_stays_up_ready_and_finished(tmp_path: Path) -> None:
    with federation(tmp_path, clients=2, rounds=2, **SERVE) as fed:
        server = fed.start_server()
        clients = [fed.start_client(i) for i in range(2)]
        fed.wait_until("training finished", lambda: finished(fed))
        time.sleep(QUIET_S)
        assert all(c.returncode is None for c in [server, *clients]), "a finished federation must not exit"
        health = f"127.0.0.1:{fed.cfg.server.health_port}"
        assert health_status(health, LIVE) == health_status(health, READY) == "SERVING"
        assert metric(fed, "tff_k8s_training_finished") == 1
        assert [r["round"] for r in fed.records()] == [1, 2]
        for child in [*clients, server]:
            child.signal(signal.SIGTERM)
            assert fed.wait_exit(child, timeout=60) == 0, fed.log_text(child)

        # A restarted server (a Pod restarted after the run) is finished at once: no round runs again.
        again = fed.start_server("server-restarted")
        fed.wait_until("the restarted server is ready",
                       lambda: health_status(health, READY) == "SERVING", timeout=180)
        assert metric(fed, "tff_k8s_training_finished") == 1
        assert [r["round"] for r in fed.records()] == [1, 2]
        again.signal(signal.SIGTERM)
        assert fed.wait_exit(again, timeout=60) == 0


def _run_to_end(tmp_path: Path, rounds: int, **overrides: Any) -> Federation:
    with federation(tmp_path, clients=2, rounds=rounds, **overrides) as fed:
        server = fed.start_server()
        for i in range(2):
            fed.start_client(i)
        assert fed.wait_exit(server) == 0, fed.log_text(server)
        return fed


def test_another_config_starts_a_new_run_and_keeps_the_old_one(tmp_path: Path) -> None:
    first = _run_to_end(tmp_path, rounds=2)
    old_run = first.cfg.run_id
    old_lines = (first.out_dir / "metrics.jsonl").read_text()
    second = _run_to_end(tmp_path, rounds=3)  # more rounds: another run
    assert second.cfg.run_id != old_run
    assert [r["round"] for r in second.records()] == [1, 2, 3], "the new run starts at round 1"
    archived = second.out_dir / "runs" / old_run
    assert (archived / "metrics.jsonl").read_text() == old_lines
    assert (archived / "checkpoint.bin").exists() and (archived / "model.keras").exists()
    assert json.loads((second.out_dir / "run.json").read_text())["run_id"] == second.cfg.run_id


def test_a_named_run_is_extended_by_more_rounds(tmp_path: Path) -> None:
    first = _run_to_end(tmp_path, rounds=2, **{"training.run_id": "digits-a"})
    lines = (first.out_dir / "metrics.jsonl").read_text().splitlines()
    second = _run_to_end(tmp_path, rounds=4, **{"training.run_id": "digits-a"})
    assert [r["round"] for r in second.records()] == [1, 2, 3, 4]
    assert (second.out_dir / "metrics.jsonl").read_text().splitlines()[:2] == lines, "rounds 1-2 kept, not redone"
    assert not (second.out_dir / "runs").exists()
