"""Who takes part in which round: the client registry (names unique within a silo; a client id is
good only from the silo it joined from), liveness, sampling, the round deadline and the bookkeeping
of results. Pure Python (no TensorFlow, no gRPC), driven by the servicer threads on one side and the
round loop on the other, all under one condition variable; what it refuses is a Reject
(services/server/refusals.py). What a result counts for is the round's aggregation's business
(services/server/aggregation): the coordinator only decides whether a result is wanted, and lets the
aggregation commit it under the coordinator's lock; the aggregation also says which sampled clients
get the task and may still send a result (``secure``: only those whose keys are in), and a secure
round's unmasking reaches the round that closed last (:meth:`Coordinator.round_of`)."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from services.server.aggregation.interface import RoundAggregation
from services.server.clock import Clock
from services.server.refusals import Reject

MAX_NAME = 253


@dataclass
class ClientRecord:
    client_id: str
    name: str
    shard: int
    last_seen: float
    busy_round: int = 0  # the round it was handed and has not answered yet
    told_done: bool = False
    silo: str = ""  # cross-silo: the silo its certificate names (services/server/identity.py)


Metrics = dict[str, float]  # a result's training metrics, from its header


@dataclass
class RoundTask:
    round: int
    task_id: str
    payload: Any  # the global model in its wire layout: a buffer, or a sequence of them back to back
    layout: str  # the fingerprint of that layout
    sampled: frozenset[str]
    deadline: float
    aggregation: RoundAggregation  # where results stream in (the servicer's business)
    results: dict[str, Metrics] = field(default_factory=dict)  # the accepted results' metrics, by client
    uploading: set[str] = field(default_factory=set)  # clients whose result is streaming in

    def remaining(self, now: float) -> float:
        return max(0.0, self.deadline - now)


class TaskKind(Enum):
    TRAIN = "train"
    WAIT = "wait"
    DONE = "done"


class Coordinator:
    def __init__(
        self,
        *,
        min_clients: int,
        clients_per_round: int,
        round_deadline_s: float,
        num_shards: int,
        rng: np.random.Generator,
        assignments: dict[str, int] | None = None,
        liveness_s: float = 30.0,
        clock: Clock | None = None,
    ) -> None:
        self.min_clients = min_clients
        self.clients_per_round = clients_per_round
        self.round_deadline_s = round_deadline_s
        self.num_shards = num_shards
        self.rng = rng
        self.liveness_s = liveness_s
        self.clock = clock or Clock()
        self._cv = threading.Condition()
        self._clients: dict[str, ClientRecord] = {}
        self._by_name: dict[str, str] = {}
        self._assignments: dict[str, int] = dict(assignments or {})
        self._task: RoundTask | None = None
        self._last: RoundTask | None = None  # the round that closed last
        self._done = False
        self._stopped = False

    # ---- what the servicer calls --------------------------------------------------------------
    def join(self, name: str, silo: str = "") -> ClientRecord:
        """``silo``: the caller's silo, from its certificate; a name is only unique within its silo."""
        if not name or len(name) > MAX_NAME or not name.isprintable():
            raise Reject("invalid", f"client name must be 1..{MAX_NAME} printable characters")
        key = f"{silo}/{name}" if silo else name
        with self._cv:
            now = self.clock()
            known = self._by_name.get(key)
            if known is not None:
                record = self._clients[known]
                record.last_seen = now
                return record
            shard = self._assignments.get(key)
            if shard is None:
                shard = len(self._assignments) % self.num_shards
                self._assignments[key] = shard
            record = ClientRecord(secrets.token_hex(8), name, shard, now, silo=silo)
            self._clients[record.client_id] = record
            self._by_name[key] = record.client_id
            self._cv.notify_all()
            return record

    def next_task(self, client_id: str, timeout: float) -> tuple[TaskKind, RoundTask | None]:
        """Block until this client has a task, training is done, or ``timeout`` passes."""
        with self._cv:
            record = self._known(client_id)
            end = self.clock() + timeout
            while True:
                record.last_seen = self.clock()
                if self._done or self._stopped:
                    record.told_done = self._done
                    self._cv.notify_all()
                    return (TaskKind.DONE if self._done else TaskKind.WAIT), None
                task = self._task
                if task and client_id in task.sampled and client_id not in task.results \
                        and task.aggregation.hands_task(client_id):
                    if self.clock() < task.deadline:
                        record.busy_round = task.round
                        return TaskKind.TRAIN, task
                left = end - self.clock()
                if left <= 0:
                    return TaskKind.WAIT, None
                self.clock.wait(self._cv, min(left, 1.0))

    def begin_upload(self, client_id: str, task_id: str, round_number: int) -> RoundTask:
        """Cheap checks before a result's payload is read (is it wanted at all, and not already
        streaming in?); pair with :meth:`end_upload`."""
        with self._cv:
            self._known(client_id).last_seen = self.clock()
            task = self._wanted(client_id, task_id, round_number)
            if client_id in task.uploading:
                raise Reject("duplicate", f"a result for round {round_number} from this client is already streaming in")
            task.uploading.add(client_id)
            return task

    def round_of(self, client_id: str, task_id: str, round_number: int) -> RoundTask:
        """The open round, or the one that closed last (a secure round's unmasking outlives its
        collection), that this known client was sampled for: the secure phases' round."""
        with self._cv:
            self._known(client_id).last_seen = self.clock()
            for task in (self._task, self._last):
                if task is not None and task.task_id == task_id and task.round == round_number:
                    if client_id not in task.sampled:
                        raise Reject("not_sampled", f"client was not sampled for round {round_number}")
                    return task
            raise Reject("stale", f"round {round_number} task {task_id[:32]!r} is not open (stale or replayed)")

    def end_upload(self, task: RoundTask, client_id: str) -> None:
        with self._cv:
            task.uploading.discard(client_id)

    def submit(self, client_id: str, task_id: str, round_number: int, metrics: Metrics,
               on_accept: Callable[[], None] | None = None) -> None:
        """Accept a result; ``on_accept`` (the aggregation's commit) runs under the lock once it is
        known to be wanted, so a refused result never counts and a round never closes half-way
        through a commit."""
        with self._cv:
            record = self._known(client_id)
            task = self._wanted(client_id, task_id, round_number)
            if on_accept is not None:
                on_accept()
            task.results[client_id] = metrics
            record.busy_round = 0
            record.last_seen = self.clock()
            self._cv.notify_all()

    def check_silo(self, client_id: str, silo: str) -> None:
        """A client id is only good from the silo it joined from: another silo's caller gets
        unknown_client, as if the id did not exist."""
        with self._cv:
            record = self._clients.get(client_id)
            if record is not None and record.silo != silo:
                raise Reject("unknown_client", f"unknown client id {client_id[:32]!r}: join first")

    def silos_of(self, client_ids: list[str]) -> dict[str, str]:
        """Each known client's silo ("" outside cross-silo federations)."""
        with self._cv:
            return {cid: self._clients[cid].silo for cid in client_ids if cid in self._clients}

    # ---- what the round loop calls ------------------------------------------------------------
    def live_clients(self) -> list[str]:
        with self._cv:
            return self._live()

    def wait_for_clients(self, poll_s: float = 1.0) -> bool:
        """Block until ``min_clients`` are live; False if stopped first."""
        with self._cv:
            while not self._stopped and len(self._live()) < self.min_clients:
                self.clock.wait(self._cv, poll_s)
            return not self._stopped

    def open_round(self, round_number: int, payload: Any, layout: str, aggregation: RoundAggregation) -> RoundTask:
        with self._cv:
            # By name, not by the random ids: the same seed samples the same clients on every run.
            live = sorted(self._live(), key=lambda cid: (self._clients[cid].silo, self._clients[cid].name))
            count = min(self.clients_per_round, len(live))
            sampled = frozenset(self.rng.choice(live, size=count, replace=False).tolist()) if count else frozenset()
            self._last = None  # the previous round is finished or dropped: let its aggregation go
            self._task = RoundTask(
                round_number, secrets.token_hex(8), payload, layout, sampled, self.clock() + self.round_deadline_s,
                aggregation,
            )
            self._cv.notify_all()
            return self._task

    def wait_round(self, task: RoundTask) -> dict[str, Metrics]:
        """Block until every sampled client answered, the deadline passed, or a stop; then close
        the round (late results are refused as stale; its aggregation takes no more) and return
        the metrics of what arrived."""
        with self._cv:
            while not self._stopped and self._awaited(task) and self.clock() < task.deadline:
                self.clock.wait(self._cv, min(1.0, task.remaining(self.clock())))
            self._task, self._last = None, task
            task.aggregation.close()
            for cid in task.sampled:
                if cid in self._clients and self._clients[cid].busy_round == task.round:
                    self._clients[cid].busy_round = 0
            self._cv.notify_all()
            return dict(task.results)

    def finish(self) -> None:
        with self._cv:
            self._done = True
            if self._task is not None:
                self._task.aggregation.close()
            self._task = None
            self._cv.notify_all()

    def wait_all_told_done(self, timeout: float) -> bool:
        """After :meth:`finish`: wait until every live client has been told DONE."""
        end = self.clock() + timeout
        with self._cv:
            while True:
                pending = [c for c in self._clients.values() if not c.told_done and self._is_live(c)]
                if not pending or self._stopped:
                    return not pending
                left = end - self.clock()
                if left <= 0:
                    return False
                self.clock.wait(self._cv, min(left, 0.5))

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify_all()

    def assignments(self) -> dict[str, int]:
        with self._cv:
            return dict(self._assignments)

    # ---- helpers (callers hold the lock) ------------------------------------------------------
    def _known(self, client_id: str) -> ClientRecord:
        record = self._clients.get(client_id)
        if record is None:
            raise Reject("unknown_client", f"unknown client id {client_id[:32]!r}: join first")
        return record

    def _wanted(self, client_id: str, task_id: str, round_number: int) -> RoundTask:
        task = self._task
        if task is None or task.task_id != task_id or task.round != round_number:
            raise Reject("stale", f"round {round_number} task {task_id[:32]!r} is not open (stale or replayed)")
        if client_id not in task.sampled:
            raise Reject("not_sampled", f"client was not sampled for round {round_number}")
        if client_id in task.results:
            raise Reject("duplicate", f"a result for round {round_number} was already accepted from this client")
        return task

    @staticmethod
    def _awaited(task: RoundTask) -> bool:
        """Whether a sampled client may still send a result (its aggregation may rule it out)."""
        return any(cid not in task.results and task.aggregation.expects(cid) for cid in task.sampled)

    def _is_live(self, record: ClientRecord) -> bool:
        return bool(record.busy_round) or self.clock() - record.last_seen <= self.liveness_s

    def _live(self) -> list[str]:
        return [cid for cid, rec in self._clients.items() if self._is_live(rec)]
