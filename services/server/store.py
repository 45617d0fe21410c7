"""The server's output directory as its state store: the run it holds (services/server/runs.py),
the checkpoint to resume from, ``metrics.jsonl`` kept in step with it, and each round's record.

:meth:`StateStore.restore` starts the run or resumes it: a checkpoint of another run is archived,
never resumed; one of this run written with other model settings is refused; ``metrics.jsonl`` is
reconciled with the checkpoint (a crash between the checkpoint and the metrics line neither loses
nor repeats a round's line). :meth:`StateStore.record` hands a round's state to the checkpoint
writer thread (services/server/checkpoint.py), which evaluates it, checkpoints it atomically and
then appends the round's line to ``metrics.jsonl``, while the next round runs. No TensorFlow here:
the evaluation and the state's encoding are handed in."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.common.config import FederationConfig
from services.common.logs import fields
from services.server import checkpoint, runs
from services.server.state import ServerState

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
MODEL_FILE = "model.keras"


def config_fingerprint(cfg: FederationConfig, task_fingerprint: str = "") -> str:
    """What a checkpoint must agree with to be resumed: the model-defining training settings and
    the learning task (services/tasks/contract.py)."""
    t = cfg.training
    keys: dict[str, Any] = dict(seed=t.seed, aggregator=t.aggregator, server_optimizer=t.server_optimizer,
                num_shards=cfg.num_shards, partition=cfg.data.partition, hidden_units=cfg.model.hidden_units)
    if task_fingerprint:
        keys["task"] = task_fingerprint
    if t.aggregator == "dp":  # what the dp aggregator's state means (an adaptive clip, or none)
        keys["dp_clip"] = t.dp_clip
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Codec:
    """How a state becomes a checkpoint's parts and back (ServerAlgorithm's), and a fresh one."""

    initialize: Callable[[], ServerState]
    encode: Callable[[ServerState], Sequence[Any]]
    decode: Callable[[int, Sequence[Any]], ServerState]


@dataclass(frozen=True)
class Restored:
    state: ServerState
    rng: np.random.Generator  # client sampling, where the run left it
    assignments: dict[str, int]  # client name -> data shard


class StateStore:
    def __init__(self, cfg: FederationConfig, codec: Codec,
                 evaluate: Callable[[ServerState], dict[str, float]], task_fingerprint: str = "") -> None:
        self.cfg = cfg
        self.run_id = cfg.run_id
        self.out_dir = Path(cfg.server.output_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.codec = codec
        self.evaluate = evaluate
        self.fingerprint = config_fingerprint(cfg, task_fingerprint)
        self.writer = checkpoint.Writer(self.out_dir)

    # ---- restore / resume -----------------------------------------------------------------------
    def restore(self) -> Restored:
        rng = np.random.default_rng(self.cfg.training.seed)
        ckpt = checkpoint.load(self.out_dir)
        if ckpt is not None and ckpt.header.get("run_id") != self.run_id:
            runs.archive(self.out_dir, str(ckpt.header.get("run_id") or f"unnamed-{ckpt.header.get('fingerprint')}"))
            ckpt = None
        defining = self.cfg.model_dump(mode="json", include={"training", "task", "model", "data"})
        runs.begin(self.out_dir, self.run_id, defining, resuming=ckpt is not None)
        log.info("run", extra=fields(run=self.run_id, resuming=ckpt is not None))
        if ckpt is None:
            return Restored(self.codec.initialize(), rng, {})
        header = ckpt.header
        if header.get("fingerprint") != self.fingerprint:
            raise checkpoint.CheckpointError(
                f"training.run_id {self.run_id!r}: {self.out_dir}/{checkpoint.CHECKPOINT_NAME} of this run was "
                "written with other model settings (seed, aggregator, server optimizer, shards, partition, "
                "model size or learning task); restore them, or unset training.run_id (or choose another) to start a new run"
            )
        state = self.codec.decode(int(header["round"]), ckpt.parts)
        rng.bit_generator.state = header["rng"]
        self.reconcile_metrics(state.round, header.get("record"))
        log.info("resumed from checkpoint", extra=fields(round=state.round))
        return Restored(state, rng, {str(k): int(v) for k, v in header.get("assignments", {}).items()})

    def reconcile_metrics(self, round_number: int, last: dict[str, Any] | None) -> None:
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

    # ---- each round -------------------------------------------------------------------------------
    def record(self, state: ServerState, record: dict[str, Any], *, rng_state: Mapping[str, Any],
               assignments: dict[str, int]) -> None:
        """Hand round ``state`` to the writer thread, which evaluates it on the held-out data,
        checkpoints it and then appends its metrics line, while the next round runs."""
        header = {"record": record, "round": state.round, "rng": rng_state, "assignments": assignments,
                  "fingerprint": self.fingerprint, "run_id": self.run_id}

        def evaluated_checkpoint() -> checkpoint.Checkpoint:
            started = time.monotonic()
            record.update(self.evaluate(state))
            record["evaluate_s"] = round(time.monotonic() - started, 4)
            return checkpoint.Checkpoint(header, self.codec.encode(state))

        def then(seconds: float) -> None:
            record["checkpoint_s"] = round(seconds, 4)
            with open(self.out_dir / METRICS_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")
            log.info("round recorded", extra=fields(**{k: v for k, v in record.items() if k not in ("time", "started_at")}))

        self.writer.submit(evaluated_checkpoint, then)

    def flush(self) -> None:
        """Every recorded round durable and in metrics.jsonl (raises if a write failed)."""
        self.writer.flush()

    def finish(self, rounds: int) -> None:
        runs.finish(self.out_dir, rounds)

    def close(self) -> None:
        self.writer.close()

    @property
    def model_path(self) -> Path:
        return self.out_dir / MODEL_FILE
