"""ServerApp: FedAvg over one flat float32 array of random weights, timed per round.

Each round appends one JSON line to the run config's `timings-file`: wall-clock start/end of
the round (configure_train -> aggregate_train done), the slowest client's local work, and the
bytes sent over the loopback interface during the round (Linux /proc/net/dev, `lo` tx).
Federated evaluation is off (fraction_evaluate=0), so a round is one broadcast + one upload.
"""

import json
import time
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg


def loopback_tx_bytes() -> int:
    """Bytes sent over the loopback interface so far (whole network namespace)."""
    with open("/proc/net/dev") as f:
        for line in f:
            name, _, data = line.partition(":")
            if name.strip() == "lo":
                return int(data.split()[8])
    return 0


class TimedFedAvg(FedAvg):
    def __init__(self, timings_file: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.timings_file = timings_file
        self._t0 = 0.0
        self._lo0 = 0

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._t0, self._lo0 = time.time(), loopback_tx_bytes()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        result = super().aggregate_train(server_round, replies)
        ok = [m for m in replies if not m.has_error()]
        record = {
            "round": server_round,
            "start": self._t0,
            "end": time.time(),
            "loopback_bytes": loopback_tx_bytes() - self._lo0,
            "client_work_s": max((float(m.content["metrics"]["work-s"]) for m in ok), default=0.0),
            "replies": len(ok),
            "errors": len(replies) - len(ok),
        }
        with open(self.timings_file, "a") as f:
            f.write(json.dumps(record) + "\n")
        return result


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    nodes = int(cfg["min-nodes"])
    n_floats = int(float(cfg["size-mb"]) * 2**20) // 4
    weights = np.random.default_rng(0).standard_normal(n_floats, dtype=np.float32)
    strategy = TimedFedAvg(
        timings_file=str(cfg["timings-file"]),
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=nodes,
        min_available_nodes=nodes,
    )
    strategy.start(grid=grid, initial_arrays=ArrayRecord([weights]), num_rounds=int(cfg["num-rounds"]))
