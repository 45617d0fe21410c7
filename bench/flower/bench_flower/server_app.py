"""ServerApp: FedAvg over one flat float32 array of random weights, timed per round.

Each round appends one JSON line to the run config's `timings-file`: wall-clock start/end of
the round (the strategy's configure step -> its aggregate step done), the slowest client's local
work, and the bytes sent over the loopback interface during the round (Linux /proc/net/dev, `lo`
tx). Federated evaluation is off, so a plain round is one broadcast + one upload.

With the run config's `secagg = true` the same FedAvg runs under Flower's SecAgg+ protocol
(`flwr.server.workflow.SecAggPlusWorkflow`, the ClientApp wraps its train function in
`secaggplus_mod`). That workflow only drives Flower's legacy strategy API (`LegacyContext`,
`flwr.server.strategy.FedAvg`), so secure rounds use the legacy FedAvg; a round then spans all
four SecAgg+ stages (setup, share keys, collect masked vectors, unmask), from `configure_fit`
(called in the setup stage) to `aggregate_fit` (called at the end of unmasking).
"""

import json
import time
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.common import ndarrays_to_parameters
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
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


class RoundTimer:
    """Start/stop of one round and its JSON line in the timings file (both strategies)."""

    def __init__(self, timings_file: str) -> None:
        self.timings_file = timings_file
        self._t0 = 0.0
        self._lo0 = 0

    def start(self) -> None:
        self._t0, self._lo0 = time.time(), loopback_tx_bytes()

    def stop(self, server_round: int, works: list[float], errors: int, **extra) -> None:
        record = {
            "round": server_round,
            "start": self._t0,
            "end": time.time(),
            "loopback_bytes": loopback_tx_bytes() - self._lo0,
            "client_work_s": max(works, default=0.0),
            "replies": len(works),
            "errors": errors,
            **extra,
        }
        with open(self.timings_file, "a") as f:
            f.write(json.dumps(record) + "\n")


class TimedFedAvg(FedAvg):
    def __init__(self, timings_file: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.timer = RoundTimer(timings_file)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.timer.start()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        result = super().aggregate_train(server_round, replies)
        ok = [m for m in replies if not m.has_error()]
        works = [float(m.content["metrics"]["work-s"]) for m in ok]
        self.timer.stop(server_round, works, len(replies) - len(ok))
        return result


class TimedLegacyFedAvg(LegacyFedAvg):
    """The legacy FedAvg that SecAggPlusWorkflow drives, timed like TimedFedAvg."""

    def __init__(self, timings_file: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.timer = RoundTimer(timings_file)

    def configure_fit(self, server_round, parameters, client_manager):
        self.timer.start()
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):
        result = super().aggregate_fit(server_round, results, failures)
        metrics = [fitres.metrics for _, fitres in results]
        self.timer.stop(
            server_round, [float(m["work-s"]) for m in metrics], len(failures),
            # the ClientApp's SecAgg+ stage 2 (quantize + mask), slowest client, local work excluded
            client_mask_s=max((float(m.get("mask-s", 0.0)) for m in metrics), default=0.0),
        )
        return result


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    nodes = int(cfg["min-nodes"])
    rounds = int(cfg["num-rounds"])
    n_floats = int(float(cfg["size-mb"]) * 2**20) // 4
    weights = np.random.default_rng(0).standard_normal(n_floats, dtype=np.float32)
    if not cfg["secagg"]:
        strategy = TimedFedAvg(
            timings_file=str(cfg["timings-file"]),
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=nodes,
            min_available_nodes=nodes,
        )
        strategy.start(grid=grid, initial_arrays=ArrayRecord([weights]), num_rounds=rounds)
        return
    legacy = TimedLegacyFedAvg(
        timings_file=str(cfg["timings-file"]),
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=nodes,
        min_available_clients=nodes,
        initial_parameters=ndarrays_to_parameters([weights]),
    )
    shares = int(cfg["secagg-num-shares"])
    workflow = SecAggPlusWorkflow(
        # Flower refuses an integer <= 2; the float 1.0 is its spelling of "all sampled clients"
        num_shares=1.0 if shares >= nodes else shares,
        reconstruction_threshold=int(cfg["secagg-reconstruction-threshold"]),
        max_weight=float(cfg["secagg-max-weight"]),
        clipping_range=float(cfg["secagg-clipping-range"]),
        quantization_range=int(cfg["secagg-quantization-range"]),
        modulus_range=int(cfg["secagg-modulus-range"]),
    )
    DefaultWorkflow(fit_workflow=workflow)(
        grid, LegacyContext(context=context, config=ServerConfig(num_rounds=rounds), strategy=legacy)
    )
