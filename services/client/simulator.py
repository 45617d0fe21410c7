"""Many client sessions from one process, for scale tests and benchmarks:

    python -m services.client.simulator --config F --sessions 50 --name-prefix sim-0

Each session is a full client (its own gRPC session, join, long polls, results) with its own
name and shard; they share the process's model and client work, and train in turn. Exits 0
when every session was told that training is done."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from services.common.config import ConfigError, load_config, parse_set
from services.common.cpus import limit_tf_threads
from services.common.logs import setup

log = logging.getLogger("services.client.simulator")


def main(argv: Sequence[str] | None = None) -> int:
    setup("client")
    p = argparse.ArgumentParser(prog="python -m services.client.simulator", description=__doc__)
    p.add_argument("--config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--sessions", type=int, required=True, help="client sessions in this process")
    p.add_argument("--name-prefix", default="sim", help="session i is named PREFIX-i")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.sessions < 1:
        p.error("--sessions must be >= 1")
    try:
        cfg = load_config(args.config, overrides=parse_set(args.overrides))
    except ConfigError as exc:
        log.error(str(exc))
        return 2

    limit_tf_threads(cfg.client.tf_threads)  # before TensorFlow loads
    from services.client.app import FederationClient  # heavy: TensorFlow + TFF
    from services.client.trainer import ClientUpdate
    from services.tasks import federated_task

    task = federated_task(cfg)
    update = ClientUpdate(task)  # one model for all sessions: they train in turn
    clients = [FederationClient(cfg, f"{args.name_prefix}-{i}", task, update) for i in range(args.sessions)]
    failures: list[BaseException] = []

    def run(client: FederationClient) -> None:
        try:
            client.run()
        except BaseException as exc:  # reported below; one failed session fails the process
            failures.append(exc)
            log.error("session %s failed: %s", client.name, exc)

    def on_signal(signum: int, _frame: object) -> None:
        for client in clients:
            client.session.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threads = [threading.Thread(target=run, args=(c,), name=c.name, daemon=True) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for client in clients:
        client.session.close()
    from services.client.session import Stopped

    return 0 if all(isinstance(f, Stopped) for f in failures) else 1


if __name__ == "__main__":
    sys.exit(main())
