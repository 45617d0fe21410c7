"""The federation server process: gRPC + health + metrics endpoints around the round loop.

Round loop: wait for ``min_clients`` -> sample ``clients_per_round`` -> send the global model ->
collect results until the deadline -> if at least ``min_results`` arrived, aggregate + finalize
(TFF) and hand the new state to the writer thread, which evaluates it on held-out data, checkpoints
it atomically and then appends the round's line to ``metrics.jsonl`` while the next round runs;
otherwise retry the round with a new sample (never half-applied). At the end: flush, export
``model.keras``, mark the run finished (``run.json``, the ``tff_k8s_training_finished`` gauge).

The output directory holds one run (services/server/runs.py): a checkpoint of another run is never
resumed; its files are moved under ``runs/`` and training starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from grpc_health.v1 import health_pb2_grpc

from services.common.config import FederationConfig
from services.common.data import load_digits_split
from services.common.health import Health
from services.common.logs import fields
from services.common.task import Task, evaluate
from services.common.tensors import as_tensor
from services.common.tff_runtime import use_in_this_thread
from services.common.transport import SERVER_OPTIONS, TokenAuthInterceptor, read_token, server_credentials
from services.server import checkpoint, runs
from services.server.algorithm import ServerAlgorithm, ServerState, as_model_weights, decode_result
from services.server.coordinator import Coordinator, Result
from services.server.servicer import FederationServicer, add_to_server
from services.server.telemetry import Telemetry, memory_mb

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
MODEL_FILE = "model.keras"
POLL_S = 10.0
# Every connected client holds one thread in its long poll: room for ~1000 clients per server.
GRPC_THREADS = 1024


def config_fingerprint(cfg: FederationConfig) -> str:
    """What a checkpoint must agree with to be resumed: the model-defining training settings."""
    t = cfg.training
    keys = dict(seed=t.seed, aggregator=t.aggregator, server_optimizer=t.server_optimizer,
                num_shards=cfg.num_shards, partition=cfg.data.partition, hidden_units=cfg.model.hidden_units)
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def weighted_train_metrics(results: dict[str, Result]) -> dict[str, float]:
    total = sum(r.metrics.get("num_examples", 0.0) for r in results.values())
    out: dict[str, float] = {"num_examples": total}
    for key in ("train_loss", "train_accuracy"):
        if total > 0:
            out[key] = sum(r.metrics.get(key, 0.0) * r.metrics.get("num_examples", 0.0) for r in results.values()) / total
    out["client_seconds_max"] = max((r.metrics.get("seconds", 0.0) for r in results.values()), default=0.0)
    return out


class FederationServer:
    """``health`` is the process's health endpoint (started before TensorFlow loaded): the server
    reports ready on it from :meth:`start` until :meth:`shutdown`."""

    def __init__(self, cfg: FederationConfig, health: Health) -> None:
        self.cfg = cfg
        self.run_id = cfg.run_id
        self.out_dir = Path(cfg.server.output_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.stop_event = threading.Event()
        training = cfg.training
        self.task = Task(training, cfg.model)
        # Only the robust and dp aggregators run TFF computations (the caller starts the runtime).
        self.algorithm = ServerAlgorithm(self.task, training, run_tff=use_in_this_thread)
        _, self.eval_data = load_digits_split(cfg.data.eval_fraction, training.seed)
        self.state, rng, assignments = self._restore_or_init()
        # Zeros, not a random draw: its weights are replaced by the state's before every use (made
        # after the state, so start-up never holds the initial model's transients and these too).
        self.eval_model = self.task.keras_model(initialized=False)
        self._keras_model(self.state)  # its variables adopt the weights: the zeros are freed now
        self.coordinator = Coordinator(
            min_clients=training.min_clients,
            clients_per_round=training.clients_per_round,
            round_deadline_s=training.round_deadline_s,
            num_shards=cfg.num_shards,
            rng=rng,
            assignments=assignments,
            liveness_s=3 * POLL_S,
        )
        self.telemetry = Telemetry(connected=lambda: len(self.coordinator.live_clients()))
        result_layout = self.algorithm.result_layout
        self.servicer = FederationServicer(
            self.coordinator,
            result_layout,
            lambda data: decode_result(result_layout, data),
            self.telemetry,
            chunk_bytes=cfg.server.chunk_bytes,
            max_payload_bytes=cfg.server.max_payload_bytes,
            upload_slots=cfg.server.upload_slots,
            poll_s=POLL_S,
        )
        self.writer = checkpoint.Writer(self.out_dir)
        self.health = health
        self.grpc_server: grpc.Server | None = None
        self.http_server: Any = None

    # ---- state ------------------------------------------------------------------------------
    def _restore_or_init(self) -> tuple[ServerState, np.random.Generator, dict[str, int]]:
        rng = np.random.default_rng(self.cfg.training.seed)
        ckpt = checkpoint.load(self.out_dir)
        if ckpt is not None and ckpt.header.get("run_id") != self.run_id:
            runs.archive(self.out_dir, str(ckpt.header.get("run_id") or f"unnamed-{ckpt.header.get('fingerprint')}"))
            ckpt = None
        defining = self.cfg.model_dump(mode="json", include={"training", "model", "data"})
        runs.begin(self.out_dir, self.run_id, defining, resuming=ckpt is not None)
        log.info("run", extra=fields(run=self.run_id, resuming=ckpt is not None))
        if ckpt is None:
            return self.algorithm.initialize(), rng, {}
        header = ckpt.header
        if header.get("fingerprint") != config_fingerprint(self.cfg):
            raise checkpoint.CheckpointError(
                f"training.run_id {self.run_id!r}: {self.out_dir}/{checkpoint.CHECKPOINT_NAME} of this run was "
                "written with other model settings (seed, aggregator, server optimizer, shards, partition or "
                "model size); restore them, or unset training.run_id (or choose another) to start a new run"
            )
        state = self.algorithm.decode_state(int(header["round"]), ckpt.parts)
        rng.bit_generator.state = header["rng"]
        self._reconcile_metrics(state.round, header.get("record"))
        log.info("resumed from checkpoint", extra=fields(round=state.round))
        return state, rng, {str(k): int(v) for k, v in header.get("assignments", {}).items()}

    def _reconcile_metrics(self, round_number: int, last: dict[str, Any] | None) -> None:
        """A crash between checkpoint and metrics write must not lose or repeat a round's line."""
        path = self.out_dir / METRICS_FILE
        lines = path.read_text().splitlines() if path.exists() else []
        kept = [line for line in lines if line.strip() and json.loads(line).get("round", 0) <= round_number]
        if last is not None and not any(json.loads(line).get("round") == round_number for line in kept):
            kept.append(json.dumps(last))
        if kept != lines:
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(path)

    def _keras_model(self, state: ServerState) -> tf.keras.Model:
        """The evaluation model holding ``state``'s weights. They are handed to TensorFlow without
        a copy and its variables adopt them (TensorFlow's AssignVariableOp takes over a buffer
        that nothing else in TensorFlow references), so the model holds no second copy of the
        weights; the state's weights are never written to (only ever read)."""
        weights = as_model_weights(self.task, state.weights)
        model = self.eval_model
        for variable, value in zip(model.trainable_variables, weights.trainable, strict=True):
            variable.assign(as_tensor(value))
        for variable, value in zip(model.non_trainable_variables, weights.non_trainable, strict=True):
            variable.assign(as_tensor(value))
        return model

    def _record(self, state: ServerState, record: dict[str, Any]) -> None:
        """Hand round ``state`` to the writer thread, which evaluates it on the held-out data,
        checkpoints it and then appends its metrics line, while the next round runs."""
        header = {
            "record": record,
            "round": state.round,
            "rng": self.coordinator.rng.bit_generator.state,
            "assignments": self.coordinator.assignments(),
            "fingerprint": config_fingerprint(self.cfg),
            "run_id": self.run_id,
        }

        def evaluated_checkpoint() -> checkpoint.Checkpoint:
            started = time.monotonic()
            record.update(evaluate(self._keras_model(state), self.eval_data))
            record["evaluate_s"] = round(time.monotonic() - started, 4)
            return checkpoint.Checkpoint(header, self.algorithm.encode_state(state))

        def then(seconds: float) -> None:
            record["checkpoint_s"] = round(seconds, 4)
            with open(self.out_dir / METRICS_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")
            log.info("round recorded", extra=fields(**{k: v for k, v in record.items() if k not in ("time", "started_at")}))

        self.writer.submit(evaluated_checkpoint, then)

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
        self.health.ready(True)
        log.info("server listening", extra=fields(address=address, tls=self.cfg.security.tls, auth=bool(token),
                                                  metrics_port=s.metrics_port, health_port=s.health_port,
                                                  run=self.run_id, round=self.state.round))

    def stop(self) -> None:
        self.stop_event.set()
        self.coordinator.stop()

    def shutdown(self) -> None:
        self.writer.close()
        self.health.ready(False)
        if self.grpc_server is not None:
            self.grpc_server.stop(grace=2).wait(5)
        if self.http_server is not None:
            self.http_server.shutdown()

    # ---- the round loop ---------------------------------------------------------------------
    def run(self) -> bool:
        """Run rounds until ``training.rounds`` are applied (True) or a stop (False)."""
        try:
            finished = self._rounds()
        finally:
            self.writer.flush()  # every applied round durable (and in metrics.jsonl) before leaving
        if finished:
            self.export_model()
            runs.finish(self.out_dir, self.state.round)
            self.telemetry.training_finished()
            self.coordinator.finish()
        return finished

    def serve_finished(self) -> None:
        """The finished state (``server.on_finish: serve``): every client that asks is told DONE, health
        stays SERVING and the metrics endpoint up, until :meth:`stop`."""
        log.info("training finished: serving the finished state until stopped",
                 extra=fields(run=self.run_id, round=self.state.round))
        while not self.stop_event.wait(3600):
            pass

    def _rounds(self) -> bool:
        training = self.cfg.training
        required = training.required_results
        while self.state.round < training.rounds:
            if not self.coordinator.wait_for_clients():
                return False
            started, started_at = time.monotonic(), time.time()
            round_number = self.state.round + 1
            fold = self.algorithm.new_fold()
            task = self.coordinator.open_round(
                round_number, self.state.payload, self.algorithm.weights_layout.fingerprint, fold)
            log.info("round started", extra=fields(round=round_number, sampled=len(task.sampled)))
            results = self.coordinator.wait_round(task)
            if fold is not None:
                fold.close()  # uploads still streaming in stop here (see services.server.fold)
            if self.stop_event.is_set():
                return False
            if len(results) < required:
                self.telemetry.round_retried()
                log.warning("round retried: too few results", extra=fields(
                    round=round_number, results=len(results), required=required))
                continue
            collected = time.monotonic()
            # The previous round's evaluation and checkpoint must be done: the step below holds
            # three models at once, and the server's memory bound counts on nothing else.
            self.writer.flush()
            writer_wait_s = time.monotonic() - collected
            if fold is not None:
                self.state = self.algorithm.apply_mean(self.state, fold)
            else:
                self.state = self.algorithm.apply(self.state, [results[cid].value for cid in sorted(results)])
            aggregated = time.monotonic()
            record = {
                "round": self.state.round,
                "clients": len(results),
                "sampled": len(task.sampled),
                **weighted_train_metrics(results),
                "collect_s": round(collected - started, 4),
                "aggregate_s": round(aggregated - collected, 4),  # including writer_wait_s
                "writer_wait_s": round(writer_wait_s, 4),
                "seconds": round(aggregated - started, 4),
                **memory_mb(),
                "started_at": started_at,
                "time": time.time(),
            }
            log.info("round applied", extra=fields(**{k: v for k, v in record.items() if k not in ("time", "started_at")}))
            self._record(self.state, dict(record))
            self.telemetry.round_done(record["seconds"])
        return True

    def export_model(self) -> Path:
        path = self.out_dir / MODEL_FILE
        tmp = self.out_dir / f".tmp-{MODEL_FILE}"
        self._keras_model(self.state).save(tmp)
        tmp.replace(path)
        log.info("model exported", extra=fields(path=str(path), round=self.state.round))
        return path
