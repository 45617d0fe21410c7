"""Benchmark driver: every system x size x clients x repeat as its own process group.

    python bench/run.py --sizes 1,25,100 --clients 4,16 --rounds 5 --repeats 3 \
        --systems raw_grpc,tff_sim,flower[,ours][,ours-dp,ours-robust][,ours-secure,flower-secagg]

Each run is `python -m bench.runners.<system> ...` in a new session with a timeout; whatever it
leaves behind is killed with its group (and, since the driver is a child subreaper, any orphan).
``ours-<aggregator>`` is ours with ``training.aggregator`` set (``ours`` is the default, mean);
any other ``<runner>-<variant>`` passes ``--variant <variant>`` to its runner (``flower-secagg``:
Flower's SecAgg+ workflow).
Results go to bench/results/results.json (--out; per-run files and logs beside it): `machine` (CPU, cores, RAM, versions), `runs` (one
record per repetition, or an `error`/`unavailable` entry) and `records` (repetitions of one
configuration merged: all measured rounds pooled, medians recomputed, RSS and bytes maxed).
With --append, records of configurations not run this time are kept.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import procs  # noqa: E402
from bench.runners import flower  # noqa: E402

RESULTS = ROOT / "bench" / "results"
KEY = ("system", "size_mb", "clients")


def machine_info() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), "?")
    mem_kb = int(next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines()
                      if ln.startswith("MemTotal")))

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "cpu_model": model, "cores": os.cpu_count(), "ram_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(), "python": platform.python_version(),
        "tensorflow_federated": version("tensorflow-federated"), "tensorflow": version("tensorflow"),
        "grpcio": version("grpcio"), "numpy": version("numpy"), "flwr": flower._flwr_version(),
    }


def run_one(system: str, size_mb: float, clients: int, rounds: int, repeat: int, timeout_s: float,
            workdir: Path) -> dict:
    tag = f"{system}-{size_mb:g}mb-{clients}c-r{repeat}"
    out, log = workdir / "runs" / f"{tag}.json", workdir / "logs" / f"{tag}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    module, _, variant = system.partition("-")  # ours-dp: ours with training.aggregator=dp
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", f"bench.runners.{module}", "--size-mb", str(size_mb),
           "--clients", str(clients), "--rounds", str(rounds), "--out", str(out)]
    if variant and module == "ours":
        env["BENCH_OURS_SET"] = f"{env.get('BENCH_OURS_SET', '')} training.aggregator={variant}".strip()
    elif variant:  # flower-secagg: the runner's own variant
        cmd += ["--variant", variant]
    base = {"system": system, "size_mb": size_mb, "clients": clients, "repeat": repeat,
            "loadavg_before": os.getloadavg()[0]}  # other work on the machine skews the numbers
    t0 = time.monotonic()
    with procs.Owned() as owned:
        proc = owned.start(cmd, log=log, cwd=ROOT, env=env)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = None
    elapsed = time.monotonic() - t0
    if code in (0, 3) and out.exists():  # the runner's record names its module: the system is ours-<aggregator>
        record = {**json.loads(out.read_text()), **base}
    else:
        tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
        why = f"timed out after {timeout_s:.0f}s" if code is None else f"exit {code}"
        last = next((ln for ln in reversed(tail.splitlines()) if ln.strip()), "")
        record = {**base, "error": f"{why}: {last} (log {log})", "log_tail": tail}
    status = record.get("error") or record.get("unavailable") or f"median {record['median_round_s']:.4f}s"
    print(f"[{tag}] {elapsed:6.1f}s  {status.splitlines()[0]}", flush=True)
    return record


def merge(runs: list[dict]) -> dict:
    """One record per configuration from its successful repetitions."""
    ok = [r for r in runs if "median_round_s" in r]
    if not ok:
        first = runs[0]
        return {k: first[k] for k in KEY} | {"error": first.get("error") or first.get("unavailable")}
    times = [t for r in ok for t in r["round_times_s"]]
    works = [r["client_work_s"] for r in ok if r["client_work_s"] is not None]
    median = statistics.median(times)
    work = statistics.median(works) if works else None
    return {
        **{k: ok[0][k] for k in KEY},
        "repeats": len(ok), "failed_repeats": len(runs) - len(ok),
        "round_times_s": times, "median_round_s": median,
        "repeat_medians_s": [r["median_round_s"] for r in ok],
        "first_round_s": statistics.median(r["first_round_s"] for r in ok),
        "client_work_s": work, "coordination_overhead_s": None if work is None else median - work,
        "bytes_per_round": max((r["bytes_per_round"] or 0) for r in ok),
        "payload_bytes_per_round": ok[0]["payload_bytes_per_round"],
        "model_bytes": ok[0]["model_bytes"],
        "server_peak_rss_mb": max(r["server_peak_rss_mb"] for r in ok),
        "notes": ok[0].get("notes", ""),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1,25,100", help="model sizes in MiB of float32 weights")
    p.add_argument("--clients", default="4,16")
    p.add_argument("--rounds", type=int, default=5, help="measured rounds per run (plus one warm-up)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--systems", default="raw_grpc,tff_sim,flower")
    p.add_argument("--timeout", type=float, default=900, help="seconds per run")
    p.add_argument("--out", type=Path, default=RESULTS / "results.json")
    p.add_argument("--append", action="store_true", help="keep records of configurations not run now")
    args = p.parse_args(argv)
    procs.become_subreaper()

    previous = json.loads(args.out.read_text()) if args.append and args.out.exists() else {}
    runs: list[dict] = []
    configs = [(s, float(mb), int(c)) for mb in args.sizes.split(",") for c in args.clients.split(",")
               for s in args.systems.split(",")]
    for system, size_mb, clients in configs:
        for repeat in range(args.repeats):
            runs.append(run_one(system, size_mb, clients, args.rounds, repeat, args.timeout, args.out.parent))
            if "unavailable" in runs[-1]:
                break
    done = {tuple(r[k] for k in KEY) for r in runs}
    records = [r for r in previous.get("records", []) if tuple(r[k] for k in KEY) not in done]
    records += [merge([r for r in runs if (r["system"], r["size_mb"], r["clients"]) == cfg])
                for cfg in dict.fromkeys((r["system"], r["size_mb"], r["clients"]) for r in runs)]
    old_runs = [r for r in previous.get("runs", []) if tuple(r[k] for k in KEY) not in done]
    result = {"machine": machine_info(), "records": records, "runs": old_runs + runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0 if all("error" not in r for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
