"""Turn bench/results/results.json into bench/BENCHMARKS.md and bench/benchmarks.png.

    python bench/report.py [--results bench/results/results.json] [--out bench/BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SYSTEMS = ["ours", "ours-dp", "ours-robust", "ours-secure", "flower", "flower-secagg", "raw_grpc",
           "tff_sim"]  # table and plot order
LABELS = {"ours": "ours", "ours-dp": "ours (dp)", "ours-robust": "ours (robust)", "ours-secure": "ours (secure)",
          "flower": "Flower", "flower-secagg": "Flower SecAgg+", "raw_grpc": "raw gRPC",
          "tff_sim": "TFF simulation"}
SECURE = ["ours", "ours-secure", "flower", "flower-secagg"]  # the secure-aggregation table's systems


def _fmt_s(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"


def _fmt_mb(v: float | None) -> str:
    return "n/a" if v is None else f"{v / 2**20:.1f}"


def _configs(records: list[dict]) -> list[tuple[float, int]]:
    return sorted({(r["size_mb"], r["clients"]) for r in records})


def _by_key(records: list[dict]) -> dict[tuple[str, float, int], dict]:
    return {(r["system"], r["size_mb"], r["clients"]): r for r in records}


def _cell(r: dict | None) -> str:
    if r is None:
        return "not run"
    if "error" in r:
        return "timed out" if "timed out" in r["error"] else "failed"
    return _fmt_s(r["median_round_s"])


def _ratio(a: dict | None, b: dict | None) -> str:
    ok = a and b and "error" not in a and "error" not in b
    return f"{a['median_round_s'] / b['median_round_s']:.2f}" if ok else "n/a"  # type: ignore[index]


def table(records: list[dict]) -> str:
    rows = ["| model | clients | system | median round | first round | slowest client work | "
            "coordination overhead | MiB on loopback / round | payload floor MiB | server peak RSS MiB | runs |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    index = _by_key(records)
    for size, clients in _configs(records):
        for system in sorted({r["system"] for r in records}, key=lambda s: (SYSTEMS + [s]).index(s)):
            r = index.get((system, size, clients))
            if r is None:
                continue
            head = f"| {size:g} MiB | {clients} | {LABELS.get(system, system)} |"
            if "error" in r:
                rows.append(f"{head} not measured: {r['error'].splitlines()[0]} |||||||")
                continue
            rows.append(
                f"{head} {_fmt_s(r['median_round_s'])} | {_fmt_s(r['first_round_s'])} | "
                f"{_fmt_s(r['client_work_s'])} | {_fmt_s(r['coordination_overhead_s'])} | "
                f"{_fmt_mb(r['bytes_per_round'])} | {_fmt_mb(r['payload_bytes_per_round'])} | "
                f"{r['server_peak_rss_mb']:.0f} | {r['repeats']} x {len(r['round_times_s']) // r['repeats']} |"
            )
    return "\n".join(rows)


def ratios(records: list[dict]) -> str:
    index = _by_key(records)
    rows = []
    for size, clients in _configs(records):
        ours = index.get(("ours", size, clients))
        if not ours or "error" in ours:
            continue
        cells = [_ratio(ours, index.get((other, size, clients))) for other in ("flower", "raw_grpc")]
        cells += [_ratio(index.get((variant, size, clients)), ours) for variant in ("ours-dp", "ours-robust")]
        rows.append(f"| {size:g} MiB | {clients} | {' | '.join(cells)} |")
    if not rows:
        return "_No results for `ours` yet, so no ratios._"
    return "\n".join(["| model | clients | ours / Flower | ours / raw gRPC | ours (dp) / ours | ours (robust) / ours |",
                      "|---|---|---|---|---|---|", *rows])


def secure_table(records: list[dict]) -> str:
    """ours (secure) beside ours (mean) and Flower's SecAgg+ beside plain Flower, per configuration."""
    index = _by_key(records)
    rows = []
    for size, clients in _configs(records):
        r = {s: index.get((s, size, clients)) for s in SECURE}
        if r["ours-secure"] is None and r["flower-secagg"] is None:
            continue
        rss = " / ".join("-" if x is None or "error" in x else f"{x['server_peak_rss_mb']:.0f}" for x in r.values())
        rows.append(f"| {size:g} MiB | {clients} | {' | '.join(_cell(r[s]) for s in SECURE)} | "
                    f"{_ratio(r['ours-secure'], r['ours'])} | {_ratio(r['ours-secure'], r['flower-secagg'])} | "
                    f"{_ratio(r['flower-secagg'], r['flower'])} | {rss} |")
    if not rows:
        return ("_No secure-aggregation runs yet: `python bench/run.py --systems "
                "ours,ours-secure,flower,flower-secagg --sizes 1,25 --clients 4,16`._")
    return "\n".join([
        "| model | clients | ours (median round) | ours (secure) | Flower | Flower SecAgg+ | "
        "ours (secure) / ours | ours (secure) / Flower SecAgg+ | Flower SecAgg+ / Flower | "
        "server peak RSS MiB: ours / ours (secure) / Flower / Flower SecAgg+ |",
        "|---|---|---|---|---|---|---|---|---|---|", *rows])


def secure_section(records: list[dict]) -> str:
    return f"""## Secure aggregation
`ours-secure` is ours with `training.aggregator: secure`; `flower-secagg` is the Flower app
under Flower's SecAgg+ (`SecAggPlusWorkflow` on the server, `secaggplus_mod` on the ClientApp;
its parameters are in `bench/runners/flower.py`'s `secagg_params` and in each record's `secagg`).
A Flower SecAgg+ round is its four protocol stages (setup, share keys, collect masked vectors,
unmask), each a round trip through the SuperLink. Issue 14's aim: ours (secure) <= 2x ours,
and ours (secure) / Flower SecAgg+ <= 0.1.

{secure_table(records)}
"""


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = _configs(records)
    systems = [s for s in SYSTEMS if any(r["system"] == s and "error" not in r for r in records)]
    index = _by_key(records)
    width = 0.8 / max(len(systems), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(configs)), 4.5))
    for i, system in enumerate(systems):
        xs, ys = [], []
        for j, cfg in enumerate(configs):
            r = index.get((system, *cfg))
            if r and "error" not in r:
                xs.append(j + (i - (len(systems) - 1) / 2) * width)
                ys.append(r["median_round_s"])
        ax.bar(xs, ys, width, label=LABELS.get(system, system))
    ax.set_yscale("log")
    ax.set_xticks(range(len(configs)), [f"{s:g} MiB\n{c} clients" for s, c in configs])
    ax.set_ylabel("median round wall time (s, log scale)")
    ax.set_title("One FedAvg round on loopback: broadcast + trivial local work + upload")
    ax.legend()
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def scale_table(rows: list[dict] | None) -> str:
    if not rows:
        return "_Not run yet: `python bench/scale.py` writes bench/results/scale.json._"
    lines = ["| connected clients | sampled per round | median round | server peak RSS MiB | RSS per added client |",
             "|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['connected']} | - | {r['error']} | - | - |")
            continue
        added = r.get("server_rss_kb_per_added_client")
        lines.append(f"| {r['connected']} | {r['sampled_per_round']} | {_fmt_s(r['median_round_s'])} | "
                     f"{r['server_peak_rss_mb']:.0f} | {'-' if added is None else f'{added:.0f} KiB'} |")
    return "\n".join(lines)


def memory_table(memory: dict | None) -> str:
    if not memory:
        return "_Not run yet: `python bench/memory.py` writes bench/results/memory.json._"
    slots = memory["upload_slots"]
    lines = [f"server.upload_slots {slots}: the design's bound is (3 + {slots}) x the model = {3 + slots}x above the "
             "fixed overhead, each aggregator's server peak with a 1 MiB model and 4 clients.", "",
             "| aggregator | model | clients | median round | load before | server peak RSS MiB | fixed MiB | "
             "(peak − fixed) / model |",
             "|---|---|---|---|---|---|---|---|"]
    for agg in memory["aggregators"]:
        for r in agg["runs"]:
            lines.append(f"| {agg['aggregator']} | {r['size_mb']:g} MiB | {r['clients']} | {_fmt_s(r['median_round_s'])} | "
                         f"{r['loadavg_before']:.1f} | {r['server_peak_rss_mb']:.0f} | {agg['fixed_overhead_mb']:.0f} | "
                         f"{r['model_multiple']:.2f} |")
    return "\n".join(lines)


def memory_section(memory: dict | None) -> str:
    return f"""## Large models and the server's memory (`bench/memory.py`)
The same federation with each aggregator (`mean`, `dp`, `robust`, measured one after the other in
one invocation) and 4 and 8 clients. Every aggregator stages each result in its own buffer as it
streams in (at most `server.upload_slots` at a time; the others wait for a slot, unread) and adds it
to the round's running sum only once it is complete and accepted; `dp` and `robust` take the
norms they clip and zero by while the chunks arrive, so by design they hold what `mean` holds. The server
holds the global model, the running sum, the staged results and, during the optimizer step, the
new weights: TensorFlow reads the weights and the update in place (DLPack) and its output becomes
the next global model without a copy. The evaluation model's variables adopt the state's buffers.
The server runs TensorFlow without oneDNN (whose caching allocator kept freed model-sized buffers
resident) and sets glibc's mmap threshold to 4 MiB with 2 arenas, so freed buffers go back to the
system. No aggregator starts TFF's `worker_binary`. (Before staging, `mean` added each chunk to
the sum as it arrived, 3.4x / 3.8x the model with 200 MiB and 4 / 8 clients, but a refused upload
stayed in the sum; `robust` and `dp` kept every result whole for TFF's `worker_binary`: 76x / 136x
with 50 MiB.)

{memory_table(memory)}

Where the measured multiple is above the (3 + upload_slots) x the design counts, what else the
server holds at its peak is not pinned down yet. The candidates: the uploads waiting for a slot
(gRPC keeps up to its flow-control window of each waiting stream, which grows with the client
count), the broadcast's window of 16 chunks, the evaluation of the previous round on the writer
thread, and the spread of one run's peak on a shared machine (the load average before each run is
in the table; the fixed overhead is one run too).
"""


def render(results: dict, plot_name: str, scale: list[dict] | None = None, memory: dict | None = None) -> str:
    m, records = results["machine"], results["records"]
    return f"""# Benchmarks

Generated by `bench/report.py` from `bench/results/results.json` (`python bench/run.py ...`).
Each configuration runs as its own processes on loopback (127.0.0.1); one warm-up round per run
(connections, process start, TFF compilation) is reported as *first round* and left out of the
medians. A model of N MiB is N x 2^20 bytes of random float32 weights; each client's local work
is `weights + c_i` (ours: its real TFF client update, one SGD step on one example, on an MLP with N
MiB of weights). A round is the period from one round's start to the next (ours evaluates and
checkpoints on a background thread, which this includes). *Coordination overhead* = median
round − slowest client's local work.
*MiB on loopback* is the growth of the `lo` interface's tx counter during a round (all hops of
the system, headers included); the *payload floor* is model x 2 x clients. Configurations
added with `--append` keep records from earlier invocations (each run's load average before it
starts is in results.json): compare systems within one invocation where you can. TFF's simulation runs
every client inside one `worker_binary`, so only the server value crosses its localhost link.

## Machine
{m['cpu_model']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, Linux {m['kernel']}.
Python {m['python']}; flwr {m['flwr']} (own venv); tensorflow-federated {m['tensorflow_federated']}
(tensorflow {m['tensorflow']}); grpcio {m['grpcio']}; numpy {m['numpy']}.

## Results
{table(records)}

## Ratios
{ratios(records)}

![median round time per system]({plot_name})

{secure_section(records)}
## Scale (`bench/scale.py`)
One server, client sessions from 4 simulator processes (`services.client.simulator`), the
digits MLP, 2 measured rounds. The round time is dominated by the clients' TFF work, which runs in
turn inside each simulator process; the server's memory is nearly flat in the connected count.

{scale_table(scale)}

{memory_section(memory)}"""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--results", type=Path, default=BENCH / "results" / "results.json")
    p.add_argument("--out", type=Path, default=BENCH / "BENCHMARKS.md")
    p.add_argument("--plot", type=Path, default=BENCH / "benchmarks.png")
    args = p.parse_args(argv)
    results = json.loads(args.results.read_text())
    scale_path = args.results.parent / "scale.json"
    scale = json.loads(scale_path.read_text()) if scale_path.exists() else None
    memory_path = args.results.parent / "memory.json"
    memory = json.loads(memory_path.read_text()) if memory_path.exists() else None
    plot(results["records"], args.plot)
    plot_name = args.plot.name if args.plot.parent == args.out.parent else str(args.plot)
    args.out.write_text(render(results, plot_name, scale, memory))
    print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
