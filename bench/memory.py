"""Large models and the server's memory bound: train models of several sizes with several client
counts and measure the server's peak RSS against the model size.

    python bench/memory.py --sizes 200 --clients 4,8 --rounds 2

Each run is `bench/runners/ours.py` (the real server and client entrypoints on loopback, mean
aggregator). The server's *fixed overhead* is its peak RSS with a 1 MiB model and 4 clients
(TensorFlow, TFF, gRPC); for each run the script prints (peak - fixed) / model size, which the
design bounds by about 3 whatever the number of clients: the global model, the running sum (each
result is folded in chunk by chunk as it streams in, never held whole) and, during the optimizer
step, the new weights. Writes bench/results/memory.json. With ``--aggregator robust`` (or dp) the
server keeps every accepted result whole until the round ends, since those TFF aggregators take
all results at once; the multiple then grows with the client count (bench/results/memory-robust.json).
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

RESULTS = ROOT / "bench" / "results"
BASELINE_MB = 1.0


def measure(sizes: list[float], clients: list[int], rounds: int, aggregator: str = "mean") -> dict:
    # The runner reads its experiment settings from the environment (see bench/runners/ours.py).
    os.environ["BENCH_OURS_SET"] = f"{os.environ.get('BENCH_OURS_SET', '')} training.aggregator={aggregator}".strip()
    base = ours.run(BASELINE_MB, 4, rounds)
    fixed = base["server_peak_rss_mb"]
    runs = []
    for size in sizes:
        for n in clients:
            rec = ours.run(size, n, rounds)
            model_mb = model_bytes(size) / 2**20
            runs.append({
                "size_mb": size, "clients": n, "rounds": rounds,
                "median_round_s": statistics.median(rec["round_times_s"]),
                "server_peak_rss_mb": rec["server_peak_rss_mb"],
                "model_multiple": (rec["server_peak_rss_mb"] - fixed) / model_mb,
            })
            print(f"{size:g} MiB x {n} clients: round {runs[-1]['median_round_s']:.2f} s, server peak RSS "
                  f"{rec['server_peak_rss_mb']:.0f} MiB = fixed {fixed:.0f} + {runs[-1]['model_multiple']:.2f} x model",
                  flush=True)
    return {"aggregator": aggregator, "fixed_overhead_mb": fixed, "baseline_size_mb": BASELINE_MB, "runs": runs}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="200", help="model sizes in MiB, comma-separated")
    p.add_argument("--clients", default="4,8", help="client counts, comma-separated")
    p.add_argument("--rounds", type=int, default=2, help="measured rounds per run")
    p.add_argument("--aggregator", choices=["mean", "robust", "dp"], default="mean",
                   help="robust / dp keep every result whole until the round ends (a bound per client)")
    p.add_argument("--out", type=Path, help="default: bench/results/memory.json (mean), memory-<aggregator>.json")
    args = p.parse_args()
    out = args.out or RESULTS / ("memory.json" if args.aggregator == "mean" else f"memory-{args.aggregator}.json")
    result = measure([float(s) for s in args.sizes.split(",")], [int(c) for c in args.clients.split(",")],
                     args.rounds, args.aggregator)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
