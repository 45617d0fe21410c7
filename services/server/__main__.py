"""Container entrypoint: ``python -m services.server --config /etc/tff-k8s/federation.yaml``.

Exit codes: 0 training finished (or stopped by SIGTERM/SIGINT, resumable), 2 bad config,
1 anything else."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Sequence
from contextlib import nullcontext

from services.common.config import ConfigError, config_from_argv
from services.common.logs import setup

log = logging.getLogger("services.server")
DONE_LINGER_S = 15.0  # time to tell every live client that training is done


def main(argv: Sequence[str] | None = None) -> int:
    setup("server")
    try:
        cfg = config_from_argv("server", sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        log.error(str(exc))
        return 2
    stopping = []

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stopping.append(signum)
        if server is not None:
            server.stop()

    server = None
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    from services.common.tff_runtime import TffRuntime  # heavy: TensorFlow + TFF
    from services.server.app import FederationServer

    # Only the robust and dp aggregators run TFF computations; the mean path runs in-process.
    runtime = TffRuntime(cfg.server.tff_startup_timeout_s) if cfg.training.aggregator != "mean" else nullcontext()
    with runtime:
        server = FederationServer(cfg)
        if stopping:
            return 0
        server.start()
        try:
            finished = server.run()
            if finished:
                server.coordinator.wait_all_told_done(DONE_LINGER_S)
                log.info("training finished", extra={"fields": {"round": server.state.round}})
        finally:
            server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
