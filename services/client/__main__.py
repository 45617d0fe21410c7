"""Container entrypoint: ``python -m services.client --config /etc/tff-k8s/federation.yaml`` with
``SERVER_ADDRESS`` set. When the server says training is done, the client stays up and ready until
it is stopped (``client.on_done: idle``, as a Deployment's Pod must: an exit would be restarted) or
exits 0 (``exit``). Exit codes: 0 training done (or stopped by SIGTERM), 2 bad config, task, data or
security material (including a token or certificate the server refuses, and a task that differs
from the server's), 3 the server stayed away longer
than client.give_up_after_s, 1 anything else."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Sequence

from services.common.config import ConfigError, config_from_argv
from services.common.cpus import limit_tf_threads
from services.common.logs import setup
from services.common.transport import SecurityError

log = logging.getLogger("services.client")


def main(argv: Sequence[str] | None = None) -> int:
    setup("client")
    try:
        cfg = config_from_argv("client", sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        log.error(str(exc))
        return 2
    limit_tf_threads(cfg.client.tf_threads)  # before TensorFlow loads
    from services.common.health import start_health

    health = start_health("0.0.0.0", cfg.client.health_port)
    client = None
    stopped = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stopped.set()
        if client is not None:
            # From another thread: the signal may have interrupted this one inside gRPC, holding the
            # very lock that closing the channel waits for (seen: a client that never exited).
            threading.Thread(target=client.session.stop, name="stop", daemon=True).start()
        else:
            raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    from services.client.app import FederationClient  # heavy: TensorFlow + TFF
    from services.client.session import OtherTask, Refused, ServerGone, Stopped
    from services.common.tensors import LayoutError
    from services.tasks import TaskError

    try:
        client = FederationClient(cfg, on_reachable=health.ready)
        client.run()
        if cfg.client.on_done == "idle":
            log.info("idle until stopped (client.on_done: idle)")
            while not stopped.wait(3600):
                pass
        return 0
    except (SecurityError, Refused, LayoutError, OtherTask, TaskError) as exc:
        log.error(str(exc))
        return 2
    except Stopped:
        return 0
    except ServerGone as exc:
        log.error(str(exc))
        return 3
    finally:
        if client is not None:
            client.session.close()
        health.stop()


if __name__ == "__main__":
    sys.exit(main())
