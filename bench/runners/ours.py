"""This project's federation: the real server and client entrypoints (`python -m services.server`,
`python -m services.client`) as processes on 127.0.0.1, plaintext as in a local run.

The model is the product's own MLP with its hidden layer sized so the weights are `size_mb` MiB
of float32; each client's local work is the product's TFF client work (one SGD step on a
one-example `.npz` data set: trivial, but real TFF). Up to 4 clients run as one process each; more
run as 4 simulator processes (`python -m services.client.simulator`) with several sessions each,
since a TensorFlow process per client does not fit 2 cores. Per round the server measures its
round (open -> aggregate -> finalize -> evaluate -> checkpoint) and each client its local work;
both come from the server's metrics.jsonl. Server peak RSS sums the server and its TFF worker.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import procs
from bench.runners import main, make_record, n_floats
from services.common.config import load_config
from services.common.data import NUM_CLASSES, NUM_FEATURES

MAX_CLIENT_PROCESSES = 4


def hidden_units(size_mb: float) -> int:
    """The MLP 64 -> H -> 10 has 75 H + 10 float32 weights."""
    return max(1, (n_floats(size_mb) - NUM_CLASSES) // (NUM_FEATURES + 1 + NUM_CLASSES))


def _config(work: Path, size_mb: float, clients: int, rounds: int) -> Path:
    data = work / "data"
    data.mkdir()
    np.savez(data / "one.npz", x=np.full((1, NUM_FEATURES), 0.5, np.float32), y=np.zeros(1, np.int64))
    port, metrics_port = procs.free_ports(2)
    cfg = load_config(None, environ={}, overrides={
        "training.rounds": rounds + 1,  # + the warm-up round
        "training.min_clients": clients,
        "training.clients_per_round": clients,
        "training.local_epochs": 1,
        "training.batch_size": 1,
        "training.round_deadline_s": 600,
        "model.hidden_units": hidden_units(size_mb),
        "data.source": "npz",
        "data.npz_dir": str(data),
        "data.eval_fraction": 0.002,  # a few held-out examples: evaluation stays in, but small
        "server.host": "127.0.0.1",
        "server.port": port,
        "server.metrics_port": metrics_port,
        "server.output_dir": str(work / "out"),
        "security.tls": False,
        "security.token_file": None,
        "client.health_port": 0,
        "client.server_address": f"127.0.0.1:{port}",
        "client.reconnect_max_s": 1.0,
    })
    path = work / "federation.yaml"
    path.write_text(cfg.to_yaml())
    return path


def _records(out: Path) -> list[dict[str, Any]]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run(size_mb: float, clients: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-ours-") as tmp, procs.Owned() as owned:
        work = Path(tmp)
        conf = ["--config", str(_config(work, size_mb, clients, rounds))]
        logs = work / "logs"
        logs.mkdir()
        server = owned.start([sys.executable, "-m", "services.server", *conf], log=logs / "server.log")
        processes = min(clients, MAX_CLIENT_PROCESSES)
        for p in range(processes):
            sessions = clients // processes + (1 if p < clients % processes else 0)
            if clients <= MAX_CLIENT_PROCESSES:
                cmd = ["-m", "services.client", *conf, "--set", f"client.name=bench-{p}"]
            else:
                cmd = ["-m", "services.client.simulator", *conf, "--sessions", str(sessions),
                       "--name-prefix", f"bench-{p}"]
            owned.start([sys.executable, *cmd], log=logs / f"client-{p}.log")
        out = work / "out"
        with procs.TreeRssPeak(server.pid) as rss:
            while len(_records(out)) < 1:  # the warm-up round
                if server.poll() is not None:
                    raise RuntimeError(f"server exited with {server.returncode}: {(logs / 'server.log').read_text()[-3000:]}")
                time.sleep(0.05)
            tx_start = procs.loopback_tx_bytes()
            code = server.wait(timeout=3600)
            tx_bytes = procs.loopback_tx_bytes() - tx_start
        records = _records(out)
        if code != 0 or len(records) != rounds + 1:
            raise RuntimeError(f"server exited with {code} after {len(records)} rounds: "
                               f"{(logs / 'server.log').read_text()[-3000:]}")
        measured = records[1:]
        phases = {k: statistics.median(r[k] for r in measured)
                  for k in ("collect_s", "aggregate_s", "evaluate_s", "checkpoint_s")}
        return make_record(
            "ours", size_mb, clients, [r["seconds"] for r in measured],
            first_round_s=records[0]["seconds"],
            client_work_s=[r["client_seconds_max"] for r in measured],
            loopback_bytes=[tx_bytes // rounds] * rounds,
            server_peak_rss_mb=rss.peak_mb,
            notes=f"hidden_units={hidden_units(size_mb)}; {processes} client processes; "
                  "round = open -> aggregate -> finalize -> evaluate -> checkpoint",
            server_phases_s=phases,
        )


if __name__ == "__main__":
    main(run)
