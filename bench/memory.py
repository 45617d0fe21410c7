"""Large models and the server's memory bound: train models of several sizes with several client
counts, with each aggregator, and measure the server's peak RSS against the model size.

    python bench/memory.py --sizes 100 --clients 4,8 --rounds 2 --aggregators mean,dp,robust

Each run is `bench/runners/ours.py` (the real server and client entrypoints on loopback). For each
aggregator the server's *fixed overhead* is its peak RSS with a 1 MiB model and 4 clients
(TensorFlow, TFF, gRPC); for each run the script prints (peak - fixed) / model size, which the
design bounds by 3 + the results in flight (``server.upload_slots``) whatever the number of
clients: the global model, the round's running sum and, during the optimizer step, the new
weights, plus one staged result per upload slot (each result is staged until it is committed or
refused). The aggregators run side by side in one invocation, so they share the machine's load.
Writes bench/results/memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.runners import model_bytes, ours  # noqa: E402
from services.common.config import load_config, parse_set  # noqa: E402

RESULTS = ROOT / "bench" / "results"
BASELINE_MB = 1.0


def measure(sizes: list[float], clients: list[int], rounds: int, aggregator: str) -> dict:
    # The runner reads its experiment settings from the environment (see bench/runners/ours.py).
    extra = os.environ.get("BENCH_OURS_SET", "")
    os.environ["BENCH_OURS_SET"] = f"{extra} training.aggregator={aggregator}".strip()
    try:
        base = ours.run(BASELINE_MB, 4, rounds)
        fixed = base["server_peak_rss_mb"]
        runs = []
        for size in sizes:
            for n in clients:
                load = os.getloadavg()[0]  # other work on the machine skews the round times
                rec = ours.run(size, n, rounds)
                model_mb = model_bytes(size) / 2**20
                runs.append({
                    "size_mb": size, "clients": n, "rounds": rounds,
                    "median_round_s": statistics.median(rec["round_times_s"]),
                    "server_peak_rss_mb": rec["server_peak_rss_mb"],
                    "model_multiple": (rec["server_peak_rss_mb"] - fixed) / model_mb,
                    "loadavg_before": load,
                })
                print(f"{aggregator}: {size:g} MiB x {n} clients: round {runs[-1]['median_round_s']:.2f} s, server peak "
                      f"RSS {rec['server_peak_rss_mb']:.0f} MiB = fixed {fixed:.0f} + "
                      f"{runs[-1]['model_multiple']:.2f} x model", flush=True)
    finally:
        os.environ["BENCH_OURS_SET"] = extra
    return {"aggregator": aggregator, "fixed_overhead_mb": fixed, "baseline_size_mb": BASELINE_MB, "runs": runs}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100", help="model sizes in MiB, comma-separated")
    p.add_argument("--clients", default="4,8", help="client counts, comma-separated")
    p.add_argument("--rounds", type=int, default=2, help="measured rounds per run")
    p.add_argument("--aggregators", default="mean,dp,robust", help="comma-separated, measured one after the other")
    p.add_argument("--out", type=Path, default=RESULTS / "memory.json")
    args = p.parse_args()
    sizes, clients = [float(s) for s in args.sizes.split(",")], [int(c) for c in args.clients.split(",")]
    result = {
        "upload_slots": load_config(None, environ={}, overrides=parse_set(os.environ.get("BENCH_OURS_SET", "").split()))
        .server.upload_slots,
        "aggregators": [measure(sizes, clients, args.rounds, a) for a in args.aggregators.split(",")],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
