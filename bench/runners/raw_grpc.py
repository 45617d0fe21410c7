"""Raw gRPC streaming of the same bytes: the floor for moving a round's payload on this machine.

This process is the server; it starts N client *processes* (not threads: each client of a real
federation is its own process, and Python threads would share one GIL and understate what N
independent peers cost and overlap). Clients dial the server on 127.0.0.1, as in the design.
Per round the server streams the model (1 MiB chunks, raw bytes: no pickle, no proto) to every
client that asks for it, and each client streams back an update of the same size. The round
time runs from releasing the round on the server to the last update fully received. The server
does no aggregation: this is transport only.
"""

from __future__ import annotations

import os
import struct
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import numpy as np

from bench import procs
from bench.runners import CHUNK_BYTES, client_constant, main, make_record, model_bytes, n_floats

GET = "/bench.Raw/GetModel"
PUT = "/bench.Raw/PutUpdate"
_OPTIONS = [("grpc.max_send_message_length", 4 << 20), ("grpc.max_receive_message_length", 4 << 20)]


def _chunks(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)
    for off in range(0, len(data), CHUNK_BYTES):
        yield bytes(view[off : off + CHUNK_BYTES])


class _Server:
    def __init__(self, model: bytes, clients: int) -> None:
        self.model, self.clients = model, clients
        self.cond = threading.Condition()
        self.round = -1
        self.waiting = 0
        self.received = 0
        self.work: list[float] = []

    def get_model(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        (r,) = struct.unpack("<q", request)
        with self.cond:
            self.waiting += 1
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.round >= r)
        yield from _chunks(self.model)

    def put_update(self, chunks: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        size = sum(len(c) for c in chunks)
        if size != len(self.model):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"update of {size} bytes")
        work = float(dict(context.invocation_metadata())["work-s"])
        with self.cond:
            self.received += 1
            self.work.append(work)
            self.cond.notify_all()
        return b""

    def run_round(self, r: int) -> tuple[float, float]:
        """Release round r, wait for all updates; return (wall seconds, slowest client work)."""
        with self.cond:
            self.received, self.work = 0, []
            t0 = time.perf_counter()
            self.round = r
            self.cond.notify_all()
            if not self.cond.wait_for(lambda: self.received == self.clients, timeout=600):
                raise TimeoutError(f"round {r}: {self.received}/{self.clients} updates")
            return time.perf_counter() - t0, max(self.work)


def run(size_mb: float, clients: int, rounds: int) -> dict:
    model = np.random.default_rng(0).standard_normal(n_floats(size_mb), dtype=np.float32).tobytes()
    state = _Server(model, clients)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2 * clients + 4), options=_OPTIONS)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Raw", {
        "GetModel": grpc.unary_stream_rpc_method_handler(state.get_model),
        "PutUpdate": grpc.stream_unary_rpc_method_handler(state.put_update),
    })])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    times, work, wire = [], [], []
    try:
        with procs.Owned() as owned:
            for i in range(clients):
                owned.start([sys.executable, "-m", "bench.runners.raw_grpc", "--client", str(port),
                             str(size_mb), str(rounds + 1), str(i)])
            with state.cond:  # warm-up starts once every client process is up and asking
                if not state.cond.wait_for(lambda: state.waiting >= clients, timeout=120):
                    raise TimeoutError(f"only {state.waiting}/{clients} clients connected")
            first, _ = state.run_round(0)
            for r in range(1, rounds + 1):
                lo0 = procs.loopback_tx_bytes()
                t, w = state.run_round(r)
                wire.append(procs.loopback_tx_bytes() - lo0)
                times.append(t)
                work.append(w)
            for p in owned.procs:
                p.wait(timeout=60)
    finally:
        server.stop(grace=None)
    return make_record(
        "raw_grpc", size_mb, clients, times, first_round_s=first, client_work_s=work,
        loopback_bytes=wire, server_peak_rss_mb=procs.hwm_mb(),
        notes=f"grpcio {grpc.__version__}; {clients} client processes; server RSS is its VmHWM",
    )


def client(port: int, size_mb: float, rounds: int, index: int) -> None:
    delta = np.float32(client_constant(index))
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=_OPTIONS) as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
        get = channel.unary_stream(GET)
        put = channel.stream_unary(PUT)
        for r in range(rounds):
            buf = b"".join(get(struct.pack("<q", r)))
            t0 = time.perf_counter()
            update = (np.frombuffer(buf, dtype=np.float32) + delta).tobytes()
            work = time.perf_counter() - t0
            assert len(update) == model_bytes(size_mb)
            put(_chunks(update), metadata=(("work-s", repr(work)),))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        port, size, rounds, index = sys.argv[2:6]
        client(int(port), float(size), int(rounds), int(index))
        os._exit(0)
    main(run)
