"""The federation server process: wires the parts and runs the gRPC, health and metrics endpoints
around them.

- the coordinator (services/server/coordinator.py): who takes part in which round;
- the aggregator (services/server/aggregation) and the finalizer (services/server/algorithm.py):
  TFF's math, in-process;
- the servicer (services/server/servicer.py): the gRPC face, which validates and hands over;
- the round runner (services/server/rounds.py): the round loop;
- the state store (services/server/store.py): the run, its checkpoint, metrics.jsonl.

At the end: flush, export ``model.keras``, mark the run finished (``run.json``, the
``tff_k8s_training_finished`` gauge). The output directory holds one run (services/server/runs.py):
a checkpoint of another run is never resumed; its files are moved under ``runs/`` and training
starts afresh.
"""

from __future__ import annotations

import logging
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from services.common.config import FederationConfig
from services.common.health import Health
from services.common.logs import fields
from services.common.transport import SERVER_OPTIONS, TokenAuthInterceptor, read_token, server_credentials
from services.server.aggregation import Slots, aggregator_for
from services.server.algorithm import ServerAlgorithm
from services.server.coordinator import Coordinator
from services.server.evaluation import Evaluator
from services.server.identity import SiloGate
from services.server.rounds import RoundRunner
from services.server.servicer import FederationServicer, add_to_server
from services.server.store import Codec, StateStore
from services.server.telemetry import Telemetry
from services.tasks import federated_task
from services.tasks.evaluation import MetricsFinalizer
from services.tasks.sources import server_eval_data

log = logging.getLogger(__name__)

POLL_S = 10.0
# Every connected client holds one thread in its long poll: room for ~1000 clients per server.
GRPC_THREADS = 1024


class FederationServer:
    """``health`` is the process's health endpoint (started before TensorFlow loaded): the server
    reports ready on it from :meth:`start` until :meth:`shutdown`."""

    def __init__(self, cfg: FederationConfig, health: Health) -> None:
        self.cfg = cfg
        training = cfg.training
        self.task = federated_task(cfg)
        contract = self.task.contract
        self.run_id = cfg.run_id
        aggregator = aggregator_for(training, self.task.result_layout, Slots(cfg.server.upload_slots))
        self.algorithm = ServerAlgorithm(self.task, training, aggregator)
        self.evaluator = Evaluator(self.task, server_eval_data(cfg, self.task))
        federated_eval = MetricsFinalizer(self.task.model_fn())
        codec = Codec(self.algorithm.initialize, self.algorithm.encode_state, self.algorithm.decode_state)
        self.store = StateStore(cfg, codec, self.evaluator.evaluate, contract.fingerprint)
        restored = self.store.restore()
        self.evaluator.adopt(restored.state)  # its variables adopt the weights: the zeros are freed now
        self.coordinator = Coordinator(
            min_clients=training.min_clients,
            clients_per_round=training.clients_per_round,
            round_deadline_s=training.round_deadline_s,
            num_shards=cfg.num_shards,
            rng=restored.rng,
            assignments=restored.assignments,
            liveness_s=3 * POLL_S,
        )
        self.telemetry = Telemetry(connected=lambda: len(self.coordinator.live_clients()))
        self.servicer = FederationServicer(
            self.coordinator, self.task.result_layout, self.telemetry,
            chunk_bytes=cfg.server.chunk_bytes, max_payload_bytes=cfg.server.max_payload_bytes, poll_s=POLL_S,
            gate=SiloGate(cfg.security.silos), contract=contract, evaluate_every=cfg.evaluation.every,
            eval_keys=federated_eval.keys,
        )
        self.runner = RoundRunner(
            training=training, coordinator=self.coordinator, aggregator=aggregator, apply=self.algorithm.apply,
            store=self.store, telemetry=self.telemetry, weights_fingerprint=self.task.weights_layout.fingerprint,
            state=restored.state, federated_eval=federated_eval,
        )
        self.health = health
        self.grpc_server: grpc.Server | None = None
        self.http_server: Any = None

    @property
    def round(self) -> int:
        return self.runner.state.round

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        s = self.cfg.server
        interceptors = []
        token = read_token(self.cfg.security)
        if token:
            interceptors.append(TokenAuthInterceptor(token, on_reject=self.telemetry.reject))
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=GRPC_THREADS, thread_name_prefix="grpc"),
            interceptors=interceptors,
            options=SERVER_OPTIONS,
            maximum_concurrent_rpcs=2 * GRPC_THREADS,
        )
        add_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, server)
        address = f"{s.host}:{s.port}"
        creds = server_credentials(self.cfg.security)
        bound = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
        if not bound:
            raise RuntimeError(f"cannot bind the gRPC server to {address} (server.host / server.port)")
        server.start()
        self.grpc_server = server
        self.http_server = self.telemetry.serve(s.host, s.metrics_port)
        if self.round >= self.cfg.training.rounds and self.store.model_path.exists():
            # A restarted finished server says so before it reports ready (a probe or a scrape in
            # between would otherwise see a ready server that has not finished).
            self.telemetry.training_finished()
        self.health.ready(True)
        log.info("server listening", extra=fields(address=address, tls=self.cfg.security.tls, auth=bool(token),
                                                  metrics_port=s.metrics_port, health_port=s.health_port,
                                                  run=self.run_id, round=self.round,
                                                  aggregator=self.cfg.training.aggregator,
                                                  task=self.task.name, task_fingerprint=self.task.contract.fingerprint,
                                                  **({"silos": ",".join(self.servicer.gate.names)}
                                                     if self.servicer.gate.enabled else {})))

    def stop(self) -> None:
        self.runner.stop()

    def shutdown(self) -> None:
        self.store.close()
        self.health.ready(False)
        if self.grpc_server is not None:
            self.grpc_server.stop(grace=2).wait(5)
        if self.http_server is not None:
            self.http_server.shutdown()

    def run(self) -> bool:
        """Run rounds until ``training.rounds`` are applied (True) or a stop (False)."""
        finished = self.runner.run()
        if finished:
            self.evaluator.export(self.runner.state, self.store.model_path)
            self.store.finish(self.round)
            self.telemetry.training_finished()
            self.coordinator.finish()
        return finished

    def serve_finished(self) -> None:
        """The finished state (``server.on_finish: serve``): every client that asks is told DONE, health
        stays SERVING and the metrics endpoint up, until :meth:`stop`."""
        log.info("training finished: serving the finished state until stopped",
                 extra=fields(run=self.run_id, round=self.round))
        while not self.runner.stopping.wait(3600):
            pass
