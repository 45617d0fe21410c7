"""Benchmark runners: one module per system, one common result record.

Interface (what bench/run.py relies on, and what `ours.py` must provide):

    run(size_mb: float, clients: int, rounds: int[, variant: str]) -> dict    # a `make_record` record

`variant` is what follows the first `-` of the system's name (`flower-secagg`: `secagg`); the
driver passes it as `--variant` to the runners that take one (`ours` takes its aggregator from
BENCH_OURS_SET instead, see bench/run.py).

Every runner runs one warm-up round first (connections, process start-up, TFF tracing and
compilation), reports it as `first_round_s` and leaves it out of `round_times_s`. Each module is
also a CLI (`python -m bench.runners.<name> --size-mb 1 --clients 4 --rounds 5 [--out f.json]`)
via `main(run)` (`--variant V` where the system has one); the driver runs every configuration as its own process group.

A model of `size_mb` is size_mb * 2**20 bytes of random float32 weights in one flat array;
each client's local work is `weights + c_i` with a per-client constant c_i (distinct updates).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable, Sequence
from typing import Any

CHUNK_BYTES = 1 << 20  # streaming chunk for the gRPC runners


class Unavailable(RuntimeError):
    """The system cannot run on this machine (e.g. its environment is not installed)."""


def n_floats(size_mb: float) -> int:
    return int(size_mb * 2**20) // 4


def model_bytes(size_mb: float) -> int:
    return n_floats(size_mb) * 4


def client_constant(index: int) -> float:
    """The per-client constant added by the trivial local work."""
    return 1e-3 * (index + 1)


def make_record(
    system: str,
    size_mb: float,
    clients: int,
    round_times_s: Sequence[float],
    *,
    first_round_s: float,
    client_work_s: Sequence[float] | None,
    loopback_bytes: Sequence[int],
    server_peak_rss_mb: float,
    notes: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """The common result record (one configuration, one repetition).

    bytes_per_round: median bytes sent over the loopback interface per measured round (every
      hop of the system, TCP/IP and protocol headers included).
    payload_bytes_per_round: the logical floor, model bytes x 2 (down + up) x clients.
    client_work_s: per round, the slowest client's local work (None where it cannot be separated).
    """
    median = statistics.median(round_times_s)
    work = statistics.median(client_work_s) if client_work_s else None
    return {
        "system": system,
        "size_mb": size_mb,
        "clients": clients,
        "rounds": len(round_times_s),
        "round_times_s": list(round_times_s),
        "median_round_s": median,
        "first_round_s": first_round_s,
        "client_work_s": work,
        "coordination_overhead_s": None if work is None else median - work,
        "bytes_per_round": int(statistics.median(loopback_bytes)) if loopback_bytes else None,
        "payload_bytes_per_round": model_bytes(size_mb) * 2 * clients,
        "model_bytes": model_bytes(size_mb),
        "server_peak_rss_mb": server_peak_rss_mb,
        "notes": notes,
        **extra,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--size-mb", type=float, required=True)
    p.add_argument("--clients", type=int, required=True)
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--out", help="write the JSON record here (default: stdout)")
    p.add_argument("--variant", default="", help="the system's variant, e.g. secagg for flower-secagg")
    return p.parse_args(argv)


def main(run: Callable[..., dict[str, Any]], argv: Sequence[str] | None = None) -> None:
    """CLI wrapper for a runner's `run`; exit code 3 means the system is unavailable here."""
    args = parse_args(argv)
    try:
        record = run(args.size_mb, args.clients, args.rounds, **({"variant": args.variant} if args.variant else {}))
    except Unavailable as e:
        record = {"unavailable": str(e)}
        code = 3
    else:
        code = 0
    text = json.dumps(record)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    # Skip interpreter teardown: the runner already stopped its processes, and TFF's executor
    # finalizer would otherwise try to signal the worker_binary that is already gone.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
