"""The round loop: wait for ``min_clients`` -> sample ``clients_per_round`` and open the round with
the global model and a fresh aggregation -> collect results until every sampled client answered or
the deadline passed -> if at least ``min_results`` were accepted, finish the aggregation into the
server update, apply it, and hand the new state to the store (which evaluates, checkpoints and
writes the metrics line while the next round runs); otherwise retry the round with a new sample
(never half-applied: the aggregation is dropped with whatever it held).

It talks to clients only through the coordinator and to the aggregator only through its
interface: no gRPC, no TensorFlow (the step is handed in), so it runs in a test with a fake clock."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from services.common.config import TrainingSettings
from services.common.logs import fields
from services.server.aggregation import Aggregator, Outcome, RoundRefused
from services.server.clock import Clock
from services.server.coordinator import Coordinator, Metrics
from services.server.state import ServerState
from services.server.telemetry import Telemetry, memory_mb

log = logging.getLogger(__name__)


class Recorder(Protocol):
    """Where applied rounds go (services/server/store.py's StateStore)."""

    def record(self, state: ServerState, record: dict[str, Any], *, rng_state: Mapping[str, Any],
               assignments: dict[str, int]) -> None: ...

    def flush(self) -> None: ...


def weighted_train_metrics(results: dict[str, Metrics]) -> dict[str, float]:
    """Each ``train_*`` metric of the round's results, weighted by their examples."""
    total = sum(m.get("num_examples", 0.0) for m in results.values())
    out: dict[str, float] = {"num_examples": total}
    keys = sorted({k for m in results.values() for k in m if k.startswith("train_")})
    for key in keys:
        if total > 0:
            out[key] = sum(m.get(key, 0.0) * m.get("num_examples", 0.0) for m in results.values()) / total
    out["client_seconds_max"] = max((m.get("seconds", 0.0) for m in results.values()), default=0.0)
    return out


def silo_rows(results: dict[str, Metrics], silos: Mapping[str, str]) -> dict[str, dict[str, float]]:
    """Cross-silo: per silo (``silos``: each client's silo), the round's accepted results, their
    examples and weight (not with secure aggregation, which hides it), and the slowest client's
    seconds. Empty outside cross-silo federations."""
    rows: dict[str, dict[str, float]] = {}
    for cid, m in results.items():
        silo = silos.get(cid, "")
        if not silo:
            continue
        row = rows.setdefault(silo, {"clients": 0, "num_examples": 0.0, "weight": 0.0, "seconds_max": 0.0})
        row["clients"] += 1
        row["num_examples"] += m.get("num_examples", 0.0)
        if "update_weight" in m:  # secure aggregation: the server never sees a result's weight
            row["weight"] += m["update_weight"]
        else:
            row.pop("weight", None)
        row["seconds_max"] = max(row["seconds_max"], m.get("seconds", 0.0))
    return dict(sorted(rows.items()))


class RoundRunner:
    def __init__(self, *, training: TrainingSettings, coordinator: Coordinator, aggregator: Aggregator,
                 apply: Callable[[ServerState, Outcome], ServerState], store: Recorder, telemetry: Telemetry,
                 weights_fingerprint: str, state: ServerState, clock: Clock | None = None,
                 federated_eval: Callable[[dict[str, Metrics]], dict[str, float]] | None = None) -> None:
        """``federated_eval``: the round's federated evaluation from its results' metrics
        (services/tasks/evaluation.py: MetricsFinalizer), of the model the round started from."""
        self.training = training
        self.coordinator = coordinator
        self.aggregator = aggregator
        self.apply = apply
        self.store = store
        self.telemetry = telemetry
        self.weights_fingerprint = weights_fingerprint
        self.state = state
        self.clock = clock or coordinator.clock
        self.stopping = threading.Event()
        self.federated_eval = federated_eval or (lambda _results: {})

    def stop(self) -> None:
        self.stopping.set()
        self.coordinator.stop()

    def run(self) -> bool:
        """Run rounds until ``training.rounds`` are applied (True) or a stop (False). Every applied
        round is durable (and in metrics.jsonl) when this returns."""
        try:
            while self.state.round < self.training.rounds:
                if not self.coordinator.wait_for_clients() or not self.run_round():
                    return False
            return True
        finally:
            self.store.flush()

    def run_round(self) -> bool:
        """One attempt at the next round: False when stopped meanwhile (nothing applied)."""
        started, started_at = self.clock(), time.time()
        round_number = self.state.round + 1
        aggregation = self.aggregator.open_round(self.state.aggregator)
        task = self.coordinator.open_round(round_number, self.state.payload, self.weights_fingerprint, aggregation)
        log.info("round started", extra=fields(round=round_number, sampled=len(task.sampled)))
        results = self.coordinator.wait_round(task)  # closes the aggregation: nothing more comes in
        if self.stopping.is_set():
            return False
        required = self.training.required_results
        if len(results) < required:
            self.telemetry.round_retried()
            log.warning("round retried: too few results", extra=fields(
                round=round_number, results=len(results), required=required))
            return True
        collected = self.clock()
        # The previous round's evaluation and checkpoint must be done: the step below holds
        # three models at once, and the server's memory bound counts on nothing else.
        self.store.flush()
        writer_wait_s = self.clock() - collected
        try:
            outcome = aggregation.finish()
        except RoundRefused as exc:
            self.telemetry.round_retried()
            log.warning("round retried: its aggregate cannot be finished", extra=fields(round=round_number, why=str(exc)))
            return True
        self.state = self.apply(self.state, outcome)
        aggregated = self.clock()
        seconds = round(aggregated - started, 4)
        record: dict[str, Any] = {
            "round": self.state.round,
            "clients": len(results),
            "sampled": len(task.sampled),
            **weighted_train_metrics(results),
            **self.federated_eval(results),
            "aggregator": self.aggregator.name,
            **outcome.measurements,
            "collect_s": round(collected - started, 4),
            "aggregate_s": round(aggregated - collected, 4),  # including writer_wait_s
            "writer_wait_s": round(writer_wait_s, 4),
            "seconds": seconds,
            **memory_mb(),
            "started_at": started_at,
            "time": time.time(),
        }
        silos = silo_rows(results, self.coordinator.silos_of(list(results)))
        if silos:
            record["silos"] = silos
            self.telemetry.silo_round(silos)
        log.info("round applied", extra=fields(**{k: v for k, v in record.items() if k not in ("time", "started_at")}))
        self.store.record(self.state, dict(record), rng_state=self.coordinator.rng.bit_generator.state,
                          assignments=self.coordinator.assignments())
        self.telemetry.round_done(seconds)
        return True
