"""This project's federation: the real server and client entrypoints (`python -m services.server`,
`python -m services.client`) as processes on 127.0.0.1, plaintext as in a local run.

The model is the product's own MLP with its hidden layer sized so the weights are `size_mb` MiB
of float32; each client's local work is the product's TFF client work (one SGD step on a
one-example `.npz` data set: trivial, but real TFF). Up to 4 clients run as one process each; more
run as 4 simulator processes (`python -m services.client.simulator`) with several sessions each,
since a TensorFlow process per client does not fit 2 cores. A round's time is the period from its
start to the next round's start (the server evaluates and checkpoints each round on a background
thread while the next one runs, so the period is what a round really costs); each client's local
work comes from the server's metrics.jsonl. Server peak RSS sums the server and any child it
starts (none: every aggregator runs in the server's process).
"""

from __future__ import annotations

import bisect
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import procs
from bench.runners import main, make_record, n_floats
from services.common.config import load_config, parse_set
from services.common.cpus import cpu_limit
from services.common.data import NUM_CLASSES, NUM_FEATURES
from services.runner.loopback import loopback_overrides

MAX_CLIENT_PROCESSES = 4


def hidden_units(size_mb: float) -> int:
    """The MLP 64 -> H -> 10 has 75 H + 10 float32 weights."""
    return max(1, (n_floats(size_mb) - NUM_CLASSES) // (NUM_FEATURES + 1 + NUM_CLASSES))


def _config(work: Path, size_mb: float, clients: int, rounds: int) -> Path:
    data = work / "data"
    data.mkdir()
    np.savez(data / "one.npz", x=np.full((1, NUM_FEATURES), 0.5, np.float32), y=np.zeros(1, np.int64))
    cfg = load_config(None, environ={}, overrides={
        "training.rounds": rounds + 2,  # + the warm-up round, + one whose start ends the last period
        "training.min_clients": clients,
        "training.clients_per_round": clients,
        "training.local_epochs": 1,
        "training.batch_size": 1,
        "training.round_deadline_s": 600,
        "model.hidden_units": hidden_units(size_mb),
        "data.source": "npz",
        "data.npz_dir": str(data),
        "data.eval_fraction": 0.002,  # a few held-out examples: evaluation stays in, but small
        **loopback_overrides(work / "out"),
        "client.reconnect_max_s": 1.0,
        # Each client process gets its share of the cores for TensorFlow's thread pools, as a
        # Kubernetes CPU limit gives each client pod (services/common/cpus.py); by default TF
        # would start a pool per process as wide as the machine.
        "client.tf_threads": max(1, cpu_limit() // min(clients, MAX_CLIENT_PROCESSES)),
        # Experiments: BENCH_OURS_SET="server.upload_slots=8 training.aggregator=robust"
        **parse_set(os.environ.get("BENCH_OURS_SET", "").split()),
    })
    path = work / "federation.yaml"
    path.write_text(cfg.to_yaml())
    return path


def _records(out: Path) -> list[dict[str, Any]]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _tx_between(samples: list[tuple[float, int]], start: float, end: float) -> int:
    """Loopback bytes sent between two wall times, from counter samples taken every ~10 ms: from
    the last sample at or before ``start`` to the first at or after ``end``, so a window shorter
    than the sampling interval is never undercounted (it may include up to two samples' traffic
    more)."""
    times = [t for t, _ in samples]
    first = max(bisect.bisect_right(times, start) - 1, 0)
    last = min(bisect.bisect_left(times, end), len(samples) - 1)
    return samples[last][1] - samples[first][1]


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
        tx: list[tuple[float, int]] = []  # (wall time, loopback tx counter), read at round boundaries
        with procs.TreeRssPeak(server.pid) as rss:
            deadline = time.monotonic() + 3600
            while server.poll() is None and time.monotonic() < deadline:
                tx.append((time.time(), procs.loopback_tx_bytes()))
                time.sleep(0.01)
            code = server.poll()
        records = _records(out)
        if code != 0 or len(records) != rounds + 2:
            raise RuntimeError(f"server exited with {code} after {len(records)} rounds: "
                               f"{(logs / 'server.log').read_text()[-3000:]}")
        measured = records[1:-1]
        periods = [b["started_at"] - a["started_at"] for a, b in zip(records[1:], records[2:], strict=False)]
        phases = {k: statistics.median(r[k] for r in measured)
                  for k in ("collect_s", "aggregate_s", "evaluate_s", "checkpoint_s")}
        return make_record(
            "ours", size_mb, clients, periods,
            first_round_s=records[1]["started_at"] - records[0]["started_at"],
            client_work_s=[r["client_seconds_max"] for r in measured],
            # Over all measured rounds at once: sampling error spread over them, not added to each.
            loopback_bytes=[_tx_between(tx, records[1]["started_at"], records[-1]["started_at"]) // rounds] * rounds,
            server_peak_rss_mb=rss.peak_mb,
            notes=f"hidden_units={hidden_units(size_mb)}; {processes} client processes; "
                  "round = start of one round to the start of the next",
            server_phases_s=phases,
        )


if __name__ == "__main__":
    main(run)
