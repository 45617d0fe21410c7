"""Flower 1.42's deployment runtime on loopback: one SuperLink, N SuperNodes, `flwr run`.

Flower lives in its own environment, bench/.venv-flower (bench/setup_flower.sh), because it
needs protobuf >= 5; this runner only starts its executables, it never imports flwr.

    flower-superlink --insecure --host 127.0.0.1 --port P --disable-runtime-dependency-installation
    flower-supernode --insecure --superlink 127.0.0.1:P --port Q_i          (i = 1..N)
    flwr run bench/flower bench --stream --run-config 'size-mb=.. num-rounds=.. ...'

with the connection `bench` ({address = "127.0.0.1:P", insecure = true}) in
$FLWR_HOME/config.toml, FLWR_HOME a fresh temporary folder. The SuperLink serves its Fleet,
Control and Runtime APIs over HTTP on the one port P; each SuperNode serves its own Runtime
API on Q_i, so every node needs a port of its own.

Per round, the app's ServerApp (bench/flower/bench_flower/server_app.py) records wall time,
the slowest client's local work and the loopback bytes of the round to a JSON-lines file.
Those bytes include every Flower hop on this machine: ServerApp <-> SuperLink,
SuperLink <-> SuperNodes and SuperNode <-> ClientApp. Server RSS is the sampled sum of the
SuperLink's process tree (SuperLink, its SuperExec and the ServerApp process).

Variant `secagg` (system `flower-secagg`): the same app under Flower's SecAgg+ protocol
(run config `secagg=true`: `SecAggPlusWorkflow` in the ServerApp, `secaggplus_mod` around the
ClientApp's train function) with the parameters of `secagg_params`.
"""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
import time
from pathlib import Path

from bench import procs
from bench.runners import Unavailable, main, make_record
from services.runner.loopback import free_ports

BENCH = Path(__file__).resolve().parents[1]
VENV = BENCH / ".venv-flower"
APP = BENCH / "flower"


def _flwr_version() -> str:
    found = sorted(VENV.glob("lib/python*/site-packages/flwr-*.dist-info"))
    return found[-1].name.removeprefix("flwr-").removesuffix(".dist-info") if found else "?"


def secagg_params(clients: int) -> dict[str, int | float]:
    """SecAgg+ parameters for `clients` sampled clients (Flower's run-config keys, `secagg-` dropped).

    num-shares: each client's neighbourhood (itself included), SecAgg+'s O(log n) graph: the
      smallest odd number >= log2(n) + 1, at most n (3 for 4 clients, 5 for 16).
    reconstruction-threshold: a majority of the shares (2 of 3, 3 of 5).
    max-weight 1: every client reports num_examples = 1, so the weight factor is exactly 1 and
      the update is not scaled down before quantization (Flower's default 1000 would cost 10 bits).
    clipping-range 8, quantization-range 2^22, modulus-range 2^32: Flower's defaults; the random
      N(0, 1) weights lie well inside [-8, 8] (quantization step 16 / 2^22 = 3.8e-6).
    """
    shares = math.ceil(math.log2(clients)) + 1
    shares = min(clients, shares + (1 - shares % 2))
    return {"num-shares": shares, "reconstruction-threshold": shares // 2 + 1, "max-weight": 1.0,
            "clipping-range": 8.0, "quantization-range": 2**22, "modulus-range": 2**32}


def run(size_mb: float, clients: int, rounds: int, variant: str = "", timeout_s: float | None = None) -> dict:
    if variant not in ("", "secagg"):
        raise ValueError(f"flower: unknown variant {variant!r} (only 'secagg')")
    bin_dir = VENV / "bin"
    if not (bin_dir / "flwr").exists():
        raise Unavailable(f"{VENV} is missing: run bench/setup_flower.sh")
    timeout_s = timeout_s or 180 + (rounds + 1) * (20 + 4 * clients + 0.05 * size_mb * clients) * (
        10 if variant else 1)
    secagg = secagg_params(clients) if variant else {}
    with tempfile.TemporaryDirectory(prefix="bench-flower-") as tmp_name, procs.Owned() as owned:
        tmp = Path(tmp_name)
        link_port, *node_ports = free_ports(clients + 1)
        (tmp / "home").mkdir()
        (tmp / "home" / "config.toml").write_text(
            f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
            f'address = "127.0.0.1:{link_port}"\ninsecure = true\n'
        )
        env = {"FLWR_HOME": str(tmp / "home"), "PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp)}
        link = owned.start(
            [str(bin_dir / "flower-superlink"), "--insecure", "--host", "127.0.0.1",
             "--port", str(link_port), "--disable-runtime-dependency-installation"],
            log=tmp / "superlink.log", env=env,
        )
        procs.wait_for_port(link_port, 120, link)
        for i, port in enumerate(node_ports):
            owned.start(
                [str(bin_dir / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link_port}",
                 "--port", str(port)],
                log=tmp / f"supernode-{i}.log", env=env,
            )
        timings = tmp / "timings.jsonl"
        run_config = (f"size-mb={float(size_mb)} num-rounds={rounds + 1} min-nodes={clients} "
                      f'timings-file="{timings}" secagg={"true" if secagg else "false"}')
        run_config += "".join(f" secagg-{k}={v}" for k, v in secagg.items())
        with procs.TreeRssPeak(link.pid) as rss:
            cli = owned.start(
                [str(bin_dir / "flwr"), "run", str(APP), "bench", "--stream", "--run-config", run_config],
                log=tmp / "flwr-run.log", env=env, cwd=tmp,
            )
            records = _wait_for_rounds(cli, timings, rounds + 1, clients, timeout_s, tmp)
        superlink_hwm = procs.hwm_mb(link.pid)
    extra = {"client_mask_s": [r["client_mask_s"] for r in records[1:]], "secagg": secagg} if secagg else {}
    extra["round_errors"] = [r["errors"] for r in records]  # warm-up round first
    return make_record(
        "flower-secagg" if secagg else "flower", size_mb, clients, [r["end"] - r["start"] for r in records[1:]],
        first_round_s=records[0]["end"] - records[0]["start"],
        client_work_s=[r["client_work_s"] for r in records[1:]],
        loopback_bytes=[r["loopback_bytes"] for r in records[1:]],
        server_peak_rss_mb=rss.peak_mb, superlink_hwm_mb=superlink_hwm,
        notes=f"flwr {_flwr_version()}; server RSS = SuperLink + SuperExec + ServerApp (sampled sum)"
              + (f"; SecAgg+ {secagg}" if secagg else ""),
        **extra,
    )


def _wait_for_rounds(cli: subprocess.Popen[bytes], timings: Path, rounds: int, clients: int, timeout_s: float,
                     logs: Path) -> list[dict]:
    """Wait until the ServerApp has recorded every round (and `flwr run` has exited).

    A round is bad when an update is missing from its aggregate. An error with every update in
    it is a failure the protocol recovered from (SecAgg+: a client's reply lost after its masked
    input arrived, e.g. in the unmask stage); such rounds count, their errors in `round_errors`.
    """
    deadline = time.monotonic() + timeout_s
    records: list[dict] = []
    while time.monotonic() < deadline:
        if timings.exists():
            records = [json.loads(line) for line in timings.read_text().splitlines() if line.strip()]
        if len(records) >= rounds and cli.poll() is not None:
            break
        if cli.poll() not in (None, 0):
            break
        time.sleep(0.2)
    bad = [r for r in records if r["replies"] < clients]
    if len(records) < rounds or bad:
        tails = "\n".join(f"--- {f.name}\n" + f.read_text(errors="replace")[-2000:]
                          for f in sorted(logs.glob("*.log")))
        raise RuntimeError(f"flower: {len(records)}/{rounds} rounds recorded, {len(bad)} with errors, "
                           f"flwr run exit {cli.poll()}\n{tails}")
    return records[:rounds]


if __name__ == "__main__":
    main(run)
