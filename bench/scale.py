"""Scale: one server with many connected clients, 100 (or all, if fewer) sampled per round.

    python bench/scale.py --connected 50,200,500 --per-round 100 --rounds 3 [--processes 4]

Clients are sessions of `python -m services.client.simulator` (a few processes, many sessions
each: a TensorFlow process per client would not fit this machine). Prints, per connected count,
the median round time, the server's peak RSS (server + its TFF worker) and that peak divided by
the connected clients, and writes bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import procs  # noqa: E402
from services.common.config import load_config  # noqa: E402
from services.runner.loopback import loopback_overrides  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def scale_run(connected: int, per_round: int, rounds: int, processes: int, timeout_s: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp, procs.Owned() as owned:
        work = Path(tmp)
        sampled = min(per_round, connected)
        cfg = load_config(None, environ={}, overrides={
            "training.rounds": rounds + 1,  # + the warm-up round
            "training.min_clients": connected,
            "training.clients_per_round": sampled,
            "training.local_epochs": 1,
            "training.round_deadline_s": 600,
            "data.num_shards": connected,
            **loopback_overrides(work / "out"),
            "client.reconnect_max_s": 1.0,
        })
        conf = work / "federation.yaml"
        conf.write_text(cfg.to_yaml())
        server = owned.start([sys.executable, "-m", "services.server", "--config", str(conf)],
                             log=work / "server.log")
        for p in range(processes):
            sessions = connected // processes + (1 if p < connected % processes else 0)
            owned.start([sys.executable, "-m", "services.client.simulator", "--config", str(conf),
                         "--sessions", str(sessions), "--name-prefix", f"scale-{p}"], log=work / f"sim-{p}.log")
        with procs.TreeRssPeak(server.pid) as rss:
            try:
                code = server.wait(timeout=timeout_s)
            except Exception:
                code = None
        metrics = work / "out" / "metrics.jsonl"
        records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
        if code != 0 or len(records) != rounds + 1:
            tail = (work / "server.log").read_text()[-2000:]
            return {"connected": connected, "error": f"server exit {code} after {len(records)} rounds", "log": tail}
        times = [r["seconds"] for r in records[1:]]
        return {
            "connected": connected, "sampled_per_round": sampled, "rounds": rounds,
            "round_times_s": times, "median_round_s": statistics.median(times),
            "results_per_round": [r["clients"] for r in records[1:]],
            "server_peak_rss_mb": round(rss.peak_mb, 1),
            "server_rss_kb_per_connected_client": round(rss.peak_mb * 1024 / connected, 1),
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connected", default="50,200,500")
    p.add_argument("--per-round", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--processes", type=int, default=4)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    args = p.parse_args(argv)
    rows = []
    for n in (int(x) for x in args.connected.split(",")):
        started = time.monotonic()
        row = scale_run(n, args.per_round, args.rounds, args.processes, args.timeout)
        row["wall_s"] = round(time.monotonic() - started, 1)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "log"}), flush=True)
    ok = [r for r in rows if "error" not in r]
    if len(ok) > 1:  # what one more connected client costs the server, net of its fixed footprint
        base = ok[0]
        for r in ok[1:]:
            r["server_rss_kb_per_added_client"] = round(
                (r["server_peak_rss_mb"] - base["server_peak_rss_mb"]) * 1024 / (r["connected"] - base["connected"]), 1)
            print(f"{r['connected']} connected: {r['server_rss_kb_per_added_client']} KiB of server RSS per client "
                  f"beyond {base['connected']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
