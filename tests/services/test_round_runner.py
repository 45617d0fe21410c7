"""The round loop (services/server/rounds.py), in-process: the real coordinator and the real
``mean`` aggregation, a fake clock the test moves past deadlines by hand (nothing sleeps through a
deadline), the test itself as the clients (doing what the servicer does with an upload), a numpy
optimizer step and an in-memory store. No gRPC, no TensorFlow.

Promises: a round is applied once every sampled client answered, with the weighted mean of the
accepted results; at the deadline it is applied with the results that arrived if there are at
least ``min_results``, else retried with a new sample and nothing applied; a result refused or
late changes nothing; the previous round's record is flushed before the next update is made
(the memory bound); a stop ends the loop without applying anything half-way; ``rounds`` rounds are
applied once each, also when resuming from a later state."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import pytest
from support.clock import FakeClock

from services.common import tensors
from services.common.config import TrainingSettings
from services.server.aggregation import Outcome, RoundClosed, Slots
from services.server.aggregation.mean import Mean
from services.server.coordinator import Coordinator, RoundTask, TaskKind
from services.server.refusals import Reject
from services.server.rounds import RoundRunner
from services.server.state import ServerState
from services.server.telemetry import Telemetry

ELEMENTS = 6
LAYOUT = tensors.Layout((tensors.Leaf("update.0", np.dtype("<f4"), (ELEMENTS,), 0),
                         tensors.Leaf("update_weight", np.dtype("<f4"), (), 4 * ELEMENTS)), 4 * ELEMENTS + 4,
                        "0123456789abcdef")
DEADLINE_S = 600.0  # fake seconds: only ever reached when the test says so
WAIT = 20.0  # real seconds before a wait counts as a hang


def state_at(round_number: int, weights: np.ndarray) -> ServerState:
    w = tensors.aligned_copy(weights.astype(np.float32))
    return ServerState(round_number, (w.data.cast("B").toreadonly(),), [w], {}, None)


def sgd(state: ServerState, outcome: Outcome) -> ServerState:
    """The optimizer step: plain SGD with learning rate 1 (weights - update)."""
    return state_at(state.round + 1, state.weights[0] - outcome.update[0])


class MemoryStore:
    """What the runner hands the store, and when it flushes (each flush is logged in ``events``)."""

    def __init__(self, events: list[str]) -> None:
        self.records: list[dict[str, Any]] = []
        self.states: list[ServerState] = []
        self.events = events

    def record(self, state: ServerState, record: dict[str, Any], *, rng_state: Mapping[str, Any],
               assignments: dict[str, int]) -> None:
        assert rng_state and set(assignments) >= {"a", "b"}
        self.records.append(record)
        self.states.append(state)
        self.events.append(f"record {state.round}")

    def flush(self) -> None:
        self.events.append("flush")


class Federation:
    """A runner on a fake clock, clients a, b, c (c never answers unless told), run in a thread."""

    def __init__(self, *, clients: int = 3, per_round: int = 2, min_results: int | None = None, rounds: int = 2,
                 start: ServerState | None = None, min_clients: int | None = None) -> None:
        self.clock = FakeClock()
        min_clients = min_clients or clients
        self.training = TrainingSettings(rounds=rounds, min_clients=min_clients, clients_per_round=per_round,
                                         min_results=min_results, round_deadline_s=DEADLINE_S)
        self.coordinator = Coordinator(min_clients=min_clients, clients_per_round=per_round,
                                       round_deadline_s=DEADLINE_S, num_shards=min_clients,
                                       rng=np.random.default_rng(0), clock=self.clock)
        self.events: list[str] = []
        self.store = MemoryStore(self.events)
        self.telemetry = Telemetry()
        applied: list[Outcome] = []

        def apply(state: ServerState, outcome: Outcome) -> ServerState:
            self.events.append(f"apply {state.round + 1}")
            applied.append(outcome)
            return sgd(state, outcome)

        self.applied = applied
        self.runner = RoundRunner(training=self.training, coordinator=self.coordinator,
                                  aggregator=Mean(LAYOUT, Slots(2)), apply=apply, store=self.store,
                                  telemetry=self.telemetry, weights_fingerprint="fp",
                                  state=start or state_at(0, np.zeros(ELEMENTS)))
        self.ids = {name: self.coordinator.join(name).client_id for name in "abc"[:clients]}
        self.result: list[bool] = []
        self.thread = threading.Thread(target=lambda: self.result.append(self.runner.run()), daemon=True)

    def __enter__(self) -> Federation:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.runner.stop()
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the runner did not stop"

    # ---- the test as the clients ------------------------------------------------------------------
    def keep_alive(self) -> None:
        """Every client shows it is there (as their long polls do), whatever the fake time."""
        for name in self.ids:
            self.coordinator.join(name)

    def task_for(self, name: str, round_number: int) -> RoundTask | None:
        """Wait (real time) until round ``round_number`` is open; its task if ``name`` was sampled."""
        end = time.monotonic() + WAIT
        while time.monotonic() < end:
            task = self.coordinator._task
            if task is not None and task.round == round_number:
                if self.ids[name] not in task.sampled:
                    return None
                kind, given = self.coordinator.next_task(self.ids[name], 0)
                assert kind is TaskKind.TRAIN and given is task
                return task
            time.sleep(0.002)
        raise AssertionError(f"round {round_number} never opened")

    def sampled(self, round_number: int) -> list[str]:
        return [name for name in self.ids if self.task_for(name, round_number) is not None]

    def answer(self, name: str, task: RoundTask, update: np.ndarray, weight: float,
               corrupt: Callable[[bytearray], None] | None = None) -> None:
        """What the servicer does with an upload: stage it chunk by chunk, finish it, and commit it
        if the coordinator accepts it; discard it otherwise."""
        cid = self.ids[name]
        data = bytearray(LAYOUT.encode([update.astype(np.float32), np.float32(weight)]))
        if corrupt is not None:
            corrupt(data)
        self.coordinator.begin_upload(cid, task.task_id, task.round)
        try:
            upload = task.aggregation.receive(cid, weight, timeout=WAIT)
            try:
                for i in range(0, len(data), 8):
                    upload.feed(bytes(data[i : i + 8]))
                upload.finish()
                self.coordinator.submit(cid, task.task_id, task.round, {"num_examples": weight, "train_loss": 1.0},
                                        on_accept=lambda: task.aggregation.commit(upload))
            finally:
                upload.discard()
        finally:
            self.coordinator.end_upload(task, cid)

    def wait_applied(self, count: int) -> None:
        end = time.monotonic() + WAIT
        while len(self.store.records) < count:
            assert time.monotonic() < end, f"only {len(self.store.records)} of {count} rounds were applied"
            time.sleep(0.002)

    def wait_round_open(self, round_number: int, attempt: int) -> RoundTask:
        """The ``attempt``-th opening of round ``round_number`` (1: the first; a retry opens it anew)."""
        end = time.monotonic() + WAIT
        while time.monotonic() < end:
            self.keep_alive()
            task = self.coordinator._task
            retried = self.telemetry.rounds_retried
            if task is not None and task.round == round_number and retried == attempt - 1:
                return task
            time.sleep(0.002)
        raise AssertionError(f"round {round_number} was not opened a {attempt}. time")


def ones(v: float) -> np.ndarray:
    return np.full(ELEMENTS, v, np.float32)


@pytest.fixture
def fed() -> Iterator[Federation]:
    with Federation() as f:
        yield f


def test_a_round_is_applied_once_every_sampled_client_answered(fed: Federation) -> None:
    a, b = fed.sampled(1)
    fed.answer(a, fed.coordinator._task, ones(1.0), 1.0)  # type: ignore[arg-type]
    time.sleep(0.05)
    assert fed.store.records == []  # one of two answered: the round waits (no deadline has passed)
    fed.answer(b, fed.coordinator._task, ones(4.0), 3.0)  # type: ignore[arg-type]
    fed.wait_applied(1)
    record = fed.store.records[0]
    assert record["round"] == 1 and record["clients"] == 2 and record["sampled"] == 2
    assert record["aggregator"] == "mean" and record["weight_sum"] == 4.0
    assert record["num_examples"] == 4.0 and record["train_loss"] == 1.0
    assert record["seconds"] == 0.0  # fake time did not move: the round took no (fake) time
    np.testing.assert_allclose(fed.store.states[0].weights[0], -(1.0 * 1 + 4.0 * 3) / 4)
    assert fed.clock() == 1000.0  # no deadline was passed


def test_at_the_deadline_too_few_results_retry_the_round_and_apply_nothing(fed: Federation) -> None:
    first = fed.wait_round_open(1, attempt=1)
    a, _ = fed.sampled(1)
    fed.answer(a, first, ones(9.0), 1.0)  # one of the two (min_results 2): not enough
    fed.clock.advance(DEADLINE_S - 1)
    time.sleep(0.05)
    assert fed.coordinator._task is first  # not yet
    fed.clock.advance(1)
    second = fed.wait_round_open(1, attempt=2)  # the same round, a new task and a new aggregation
    assert second.task_id != first.task_id and second.aggregation is not first.aggregation
    assert fed.store.records == [] and fed.applied == [] and fed.runner.state.round == 0
    assert first.aggregation.closed
    with pytest.raises(Reject):  # the old task's clients are stale now
        fed.answer(next(n for n in fed.ids if fed.ids[n] in first.sampled and n != a), first, ones(9.0), 1.0)
    for name in fed.sampled(1):
        fed.answer(name, second, ones(2.0), 2.0)
    fed.wait_applied(1)
    np.testing.assert_allclose(fed.store.states[0].weights[0], -2.0)  # the retry's results only


def test_at_the_deadline_enough_results_apply_and_a_late_one_counts_for_nothing() -> None:
    with Federation(clients=3, per_round=3, min_results=2) as fed:
        task = fed.wait_round_open(1, attempt=1)
        a, b, c = fed.sampled(1)
        fed.answer(a, task, ones(1.0), 1.0)
        fed.answer(b, task, ones(3.0), 1.0)
        late = task.aggregation.receive(fed.ids[c], 1.0, timeout=WAIT)  # c is mid-upload ...
        late.feed(LAYOUT.encode([ones(100.0), np.float32(1.0)])[:8])
        fed.clock.advance(DEADLINE_S)  # ... when the deadline passes
        fed.wait_applied(1)
        with pytest.raises(RoundClosed):
            late.feed(b"\0" * 8)
        late.discard()
        assert fed.store.records[0]["clients"] == 2 and fed.store.records[0]["sampled"] == 3
        np.testing.assert_allclose(fed.store.states[0].weights[0], -2.0)  # (1 + 3) / 2, nothing of c


def test_a_refused_result_does_not_change_the_round(fed: Federation) -> None:
    """A result refused mid-stream (a NaN in its second half) is not a result and adds nothing; the
    client resends a valid one and the round is applied with it, as if the first was never sent."""
    task = fed.wait_round_open(1, attempt=1)
    a, b = fed.sampled(1)

    def nan_at_4(data: bytearray) -> None:
        data[16:20] = np.float32(np.nan).tobytes()

    with pytest.raises(tensors.LayoutError):
        fed.answer(a, task, ones(50.0), 1.0, corrupt=nan_at_4)
    assert task.results == {} and task.aggregation.count == 0
    fed.answer(a, task, ones(1.0), 1.0)
    fed.answer(b, task, ones(3.0), 1.0)
    fed.wait_applied(1)
    assert fed.store.states[0].weights[0].tolist() == [-2.0] * ELEMENTS


def test_rounds_are_applied_once_each_and_the_store_is_flushed_before_each_update(fed: Federation) -> None:
    for r in (1, 2):
        task = fed.wait_round_open(r, attempt=1)
        for name in fed.sampled(r):
            fed.answer(name, task, ones(float(r)), 1.0)
    fed.thread.join(WAIT)
    assert fed.result == [True] and [rec["round"] for rec in fed.store.records] == [1, 2]
    # The previous round's record is durable before the next update is made (the step holds three
    # models at once: nothing else may be held then), and everything is flushed at the end.
    assert fed.events == ["flush", "apply 1", "record 1", "flush", "apply 2", "record 2", "flush"]
    np.testing.assert_allclose(fed.runner.state.weights[0], -3.0)


def test_a_resumed_runner_goes_on_from_its_state() -> None:
    with Federation(rounds=3, start=state_at(2, ones(10.0))) as fed:
        task = fed.wait_round_open(3, attempt=1)
        for name in fed.sampled(3):
            fed.answer(name, task, ones(1.0), 1.0)
        fed.thread.join(WAIT)
        assert fed.result == [True] and [rec["round"] for rec in fed.store.records] == [3]
        np.testing.assert_allclose(fed.runner.state.weights[0], 9.0)


def test_a_stop_mid_round_applies_nothing(fed: Federation) -> None:
    task = fed.wait_round_open(1, attempt=1)
    a, _ = fed.sampled(1)
    fed.answer(a, task, ones(1.0), 1.0)
    fed.runner.stop()
    fed.thread.join(WAIT)
    assert fed.result == [False] and fed.applied == [] and fed.store.records == []
    assert fed.events == ["flush"] and task.aggregation.closed  # flushed on the way out


def test_too_few_clients_wait_without_opening_a_round() -> None:
    with Federation(clients=2, per_round=2, min_clients=3) as fed:
        fed.clock.advance(10 * DEADLINE_S)
        fed.keep_alive()
        time.sleep(0.1)
        assert fed.coordinator._task is None and fed.telemetry.rounds_retried == 0
        fed.ids["c"] = fed.coordinator.join("c").client_id
        assert fed.wait_round_open(1, attempt=1).round == 1
