"""TFF's own single-process simulation of the same rounds (TFF's default local C++ context).

One round is a tff.federated_computation: federated_broadcast of the server weights, a
tff.tensorflow.computation client map `w + c_i` (c_i a per-client constant placed at CLIENTS),
and federated_mean. The weights round-trip through Python every round, as in a simulation loop.
Tracing (at definition) and the first call (context start, worker_binary start, compilation)
are reported separately from the measured rounds.

The local context runs the computation in TFF's `worker_binary`, a child process that talks
gRPC to this one over localhost and outlives its parent: this runner owns it (kills every
descendant on exit) and the server RSS is this process + worker_binary, sampled. Bytes on
the wire are what crosses that localhost link (the broadcast itself happens inside
worker_binary, so it is ~2x the model, not 2x the model x clients). The clients' local work
runs inside worker_binary and cannot be timed apart, so client_work_s is None.
"""

from __future__ import annotations

import os
import threading
import time

from bench import procs
from bench.runners import client_constant, main, make_record, n_floats

START_TIMEOUT_S = 300  # worker_binary can die at start (SIGILL on some CPUs) and TFF then waits forever


def _watchdog(done: threading.Event) -> None:
    if not done.wait(START_TIMEOUT_S):
        print(f"tff_sim: first TFF call did not finish in {START_TIMEOUT_S}s (worker_binary dead?)", flush=True)
        procs.kill_own_descendants()
        os._exit(2)


def run(size_mb: float, clients: int, rounds: int) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    procs.become_subreaper()
    try:
        return _run(size_mb, clients, rounds)
    finally:
        procs.kill_own_descendants()


def _run(size_mb: float, clients: int, rounds: int) -> dict:
    import numpy as np
    import tensorflow_federated as tff

    n = n_floats(size_mb)
    weights_type = tff.TensorType(np.float32, [n])
    t0 = time.perf_counter()

    @tff.tensorflow.computation(weights_type, np.float32)
    def client_work(w, c):
        return w + c

    @tff.federated_computation(
        tff.FederatedType(weights_type, tff.SERVER), tff.FederatedType(np.float32, tff.CLIENTS)
    )
    def round_fn(w, c):
        return tff.federated_mean(tff.federated_map(client_work, (tff.federated_broadcast(w), c)))

    trace_s = time.perf_counter() - t0
    weights = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
    constants = [np.float32(client_constant(i)) for i in range(clients)]
    times, wire = [], []
    with procs.TreeRssPeak(os.getpid()) as rss:
        started = threading.Event()
        threading.Thread(target=_watchdog, args=(started,), daemon=True).start()
        t0 = time.perf_counter()
        weights = round_fn(weights, constants)
        first = time.perf_counter() - t0
        started.set()
        for _ in range(rounds):
            lo0, t0 = procs.loopback_tx_bytes(), time.perf_counter()
            weights = round_fn(weights, constants)
            times.append(time.perf_counter() - t0)
            wire.append(procs.loopback_tx_bytes() - lo0)
    assert weights.shape == (n,) and weights.dtype == np.float32
    return make_record(
        "tff_sim", size_mb, clients, times, first_round_s=first, client_work_s=None,
        loopback_bytes=wire, server_peak_rss_mb=rss.peak_mb, trace_s=trace_s,
        notes=f"tensorflow-federated {tff.__version__}; python + worker_binary RSS (sampled sum)",
    )


if __name__ == "__main__":
    main(run)
