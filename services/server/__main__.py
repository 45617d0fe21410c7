"""Container entrypoint: ``python -m services.server --config /etc/tff-k8s/federation.yaml``.

The plaintext health endpoint (``server.health_port``) starts first, before TensorFlow loads. When
training has finished the server stays up in the finished state until it is stopped
(``server.on_finish: serve``: a restarted server resumes into that state at once) or exits 0
(``exit``). Exit codes: 0 training finished (or stopped by SIGTERM/SIGINT, resumable), 2 bad config
or a checkpoint of this run written with other model settings, 1 anything else."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

from services.common.config import ConfigError, config_from_argv
from services.common.cpus import limit_tf_threads
from services.common.health import start_health
from services.common.logs import setup

log = logging.getLogger("services.server")
DONE_LINGER_S = 15.0  # time to tell every live client that training is done


M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # glibc's mallopt() parameters (malloc.h)


def tune_malloc() -> bool:
    """glibc's allocator, for a process that frees model-sized buffers every round: allocations of
    4 MiB and more always come from the kernel and go back to it when freed, and at most 2 arenas.
    By default glibc raises its mmap threshold (up to 32 MiB) after the first large buffer is
    freed and keeps later ones in per-thread arenas, which kept about twice the model resident
    (bench/memory.py). False where the C library is not glibc (nothing changed)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 4 << 20)) and bool(libc.mallopt(M_ARENA_MAX, 2))
    except (OSError, AttributeError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    tune_malloc()
    setup("server")
    try:
        cfg = config_from_argv("server", sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        log.error(str(exc))
        return 2
    stopping = []
    server = None

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stopping.append(signum)
        if server is not None:
            # From another thread: the signal may have interrupted this one holding a lock stop() takes.
            threading.Thread(target=server.stop, name="stop", daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    health = start_health(cfg.server.host, cfg.server.health_port)

    # TensorFlow's oneDNN build allocates through a caching allocator that keeps what it freed: the
    # model-sized buffers of start-up and of each round's step would stay resident. The server's
    # TensorFlow work (the optimizer step, evaluation) gains nothing from oneDNN: switch it off
    # before TensorFlow loads.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    limit_tf_threads()
    from services.server.app import FederationServer  # heavy: TensorFlow + TFF
    from services.server.checkpoint import CheckpointError

    # The server runs no TFF execution context (no worker_binary): the aggregators and the
    # optimizer step are TFF's math run in this process.
    try:
        try:
            server = FederationServer(cfg, health)
        except CheckpointError as exc:
            log.error(str(exc))
            return 2
        if stopping:
            return 0
        server.start()
        try:
            if server.run():
                if cfg.server.on_finish == "serve":
                    server.serve_finished()
                else:
                    server.coordinator.wait_all_told_done(DONE_LINGER_S)
                    log.info("training finished", extra={"fields": {"round": server.round}})
        finally:
            server.shutdown()
    finally:
        health.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
