"""Who takes part in which round: joining (ids, shards, rejoin, restart), long-polled tasks, seeded
sampling of live clients, the round deadline, and the refusal of every result that is not wanted.
Blocking calls run in worker threads with timeouts so a bug fails a test instead of hanging it."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from support.clock import FakeClock

from services.common import tensors
from services.server import coordinator as coordinator_module
from services.server.aggregation import RoundAggregation, Slots
from services.server.aggregation.mean import Mean
from services.server.coordinator import Coordinator, Metrics, RoundTask, TaskKind
from services.server.refusals import Reject

PAYLOAD = b"global model"
LAYOUT = tensors.Layout((tensors.Leaf("update.0", np.dtype("<f4"), (2,), 0),
                         tensors.Leaf("update_weight", np.dtype("<f4"), (), 8)), 12, "0123456789abcdef")


def agg() -> RoundAggregation:
    """A round's aggregation (the coordinator only keeps it and closes it with the round)."""
    mean = Mean(LAYOUT, Slots(1))
    return mean.open_round(mean.initial_state())


def make(*, min_clients: int = 2, per_round: int = 2, deadline: float = 30.0, shards: int = 2, seed: int = 0,
         **kwargs: Any) -> Coordinator:
    return Coordinator(min_clients=min_clients, clients_per_round=per_round, round_deadline_s=deadline,
                       num_shards=shards, rng=np.random.default_rng(seed), **kwargs)


def result(weight: float = 1.0) -> Metrics:
    return {"num_examples": weight}


def join_all(c: Coordinator, n: int, prefix: str = "client") -> dict[str, str]:
    """name -> client id."""
    return {f"{prefix}-{i}": c.join(f"{prefix}-{i}").client_id for i in range(n)}


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


def in_thread(pool: ThreadPoolExecutor, fn: Callable[..., Any], *args: Any) -> Future:
    return pool.submit(fn, *args)


# ---- joining --------------------------------------------------------------------------------------
def test_join_assigns_ids_and_round_robin_shards() -> None:
    c = make(shards=3)
    records = [c.join(f"pod-{i}") for i in range(7)]
    assert [r.shard for r in records] == [0, 1, 2, 0, 1, 2, 0]
    ids = [r.client_id for r in records]
    assert len(set(ids)) == 7 and all(ids)
    assert [r.name for r in records] == [f"pod-{i}" for i in range(7)]
    assert c.assignments() == {f"pod-{i}": i % 3 for i in range(7)}


def test_rejoin_by_name_keeps_id_and_shard() -> None:
    c = make(shards=2)
    a, b = c.join("a"), c.join("b")
    again = c.join("a")
    assert (again.client_id, again.shard) == (a.client_id, a.shard)
    assert c.join("c").shard == 0  # a rejoin does not advance the round robin
    assert len(c.live_clients()) == 3
    assert c.join("b").client_id == b.client_id


def test_assignments_from_a_checkpoint_are_honoured() -> None:
    c = make(shards=4, assignments={"b": 3, "a": 2})
    assert c.join("b").shard == 3
    assert c.join("a").shard == 2
    new = c.join("c")
    assert 0 <= new.shard < 4
    assert c.assignments() == {"a": 2, "b": 3, "c": new.shard}


def test_assignments_snapshot_is_a_copy() -> None:
    given = {"a": 1}
    c = make(assignments=given)
    c.join("b")
    assert given == {"a": 1}
    snap = c.assignments()
    snap["zzz"] = 0
    assert "zzz" not in c.assignments()


@pytest.mark.parametrize("name", ["", "x" * 254, "line\nbreak", "nul\x00", "tab\t", "\x1b[31m"])
def test_invalid_names_are_rejected(name: str) -> None:
    c = make()
    with pytest.raises(Reject) as info:
        c.join(name)
    assert info.value.reason == "invalid"
    assert c.live_clients() == []


def test_longest_valid_name_is_accepted() -> None:
    assert make().join("x" * 253).name == "x" * 253


# ---- tasks ----------------------------------------------------------------------------------------
def test_unknown_client_cannot_poll() -> None:
    with pytest.raises(Reject) as info:
        make().next_task("nope", 0)
    assert info.value.reason == "unknown_client"


@pytest.mark.timeout(30)
def test_next_task_waits_then_returns_wait() -> None:
    c = make()
    cid = c.join("a").client_id
    started = time.monotonic()
    assert c.next_task(cid, 0.2) == (TaskKind.WAIT, None)
    assert 0.15 <= time.monotonic() - started < 10


def test_sampled_clients_get_train_others_wait() -> None:
    c = make(min_clients=3, per_round=2)
    ids = join_all(c, 3)
    task = c.open_round(1, PAYLOAD, "layout", agg())
    assert len(task.sampled) == 2 and task.sampled <= set(ids.values())
    for cid in ids.values():
        kind, got = c.next_task(cid, 0)
        if cid in task.sampled:
            assert (kind, got) == (TaskKind.TRAIN, task)
            assert got is not None and got.round == 1 and got.payload == PAYLOAD
        else:
            assert (kind, got) == (TaskKind.WAIT, None)


@pytest.mark.timeout(30)
def test_waiting_poll_wakes_when_a_round_opens(pool: ThreadPoolExecutor) -> None:
    c = make(min_clients=1, per_round=1)
    cid = c.join("a").client_id
    poll = in_thread(pool, c.next_task, cid, 20.0)
    time.sleep(0.1)
    assert not poll.done()
    started = time.monotonic()
    task = c.open_round(1, PAYLOAD, "layout", agg())
    assert poll.result(timeout=10) == (TaskKind.TRAIN, task)
    assert time.monotonic() - started < 10  # woken, not at the 20 s poll timeout


def test_answered_client_gets_no_second_task() -> None:
    c = make(min_clients=1, per_round=1)
    cid = c.join("a").client_id
    task = c.open_round(1, PAYLOAD, "layout", agg())
    assert c.next_task(cid, 0)[0] is TaskKind.TRAIN
    assert c.next_task(cid, 0)[0] is TaskKind.TRAIN  # a retried poll gets the same task
    c.submit(cid, task.task_id, 1, result())
    assert c.next_task(cid, 0) == (TaskKind.WAIT, None)


def test_no_task_after_the_deadline() -> None:
    clock = FakeClock()
    c = make(min_clients=1, per_round=1, deadline=10, clock=clock)
    cid = c.join("a").client_id
    task = c.open_round(1, PAYLOAD, "layout", agg())
    assert task.remaining(clock()) == 10
    clock.advance(10)
    assert task.remaining(clock()) == 0
    assert c.next_task(cid, 0) == (TaskKind.WAIT, None)


@pytest.mark.timeout(30)
def test_done_after_finish(pool: ThreadPoolExecutor) -> None:
    c = make(min_clients=2)
    ids = list(join_all(c, 2).values())
    waiting = in_thread(pool, c.next_task, ids[0], 20.0)
    time.sleep(0.05)
    c.finish()
    assert waiting.result(timeout=5) == (TaskKind.DONE, None)
    assert c.next_task(ids[1], 0) == (TaskKind.DONE, None)
    assert c.wait_all_told_done(timeout=1)


def test_wait_all_told_done_waits_for_live_clients() -> None:
    c = make(min_clients=2)
    ids = list(join_all(c, 2).values())
    c.finish()
    c.next_task(ids[0], 0)
    assert not c.wait_all_told_done(timeout=0.05)
    c.next_task(ids[1], 0)
    assert c.wait_all_told_done(timeout=0.05)


def test_finish_closes_the_open_round() -> None:
    c = make(min_clients=1, per_round=1)
    cid = c.join("a").client_id
    task = c.open_round(1, PAYLOAD, "layout", agg())
    c.finish()
    with pytest.raises(Reject) as info:
        c.submit(cid, task.task_id, 1, result())
    assert info.value.reason == "stale"


# ---- sampling -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("live", "per_round"), [(5, 3), (5, 5), (4, 1), (2, 3)])
def test_sampling_picks_distinct_live_clients(live: int, per_round: int) -> None:
    c = make(min_clients=max(live, per_round), per_round=per_round)
    ids = set(join_all(c, live).values())
    seen: set[str] = set()
    for r in range(1, 30):
        task = c.open_round(r, PAYLOAD, "layout", agg())
        assert len(task.sampled) == min(per_round, live)
        assert task.sampled <= ids
        seen |= task.sampled
    assert seen == ids  # over many rounds every client gets a turn


def test_sampling_with_no_live_clients_is_empty() -> None:
    task = make().open_round(1, PAYLOAD, "layout", agg())
    assert task.sampled == frozenset()


@pytest.fixture
def deterministic_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = itertools.count()
    monkeypatch.setattr(coordinator_module.secrets, "token_hex", lambda n=8: f"{next(counter):0{2 * n}x}")


def _sampled_names(seed: int, rounds: int = 20, clients: int = 12, per_round: int = 3) -> list[frozenset[str]]:
    c = make(min_clients=clients, per_round=per_round, seed=seed)
    by_id = {cid: name for name, cid in join_all(c, clients).items()}
    return [frozenset(by_id[cid] for cid in c.open_round(r, PAYLOAD, "layout", agg()).sampled) for r in range(1, rounds + 1)]


def test_sampling_is_deterministic_for_a_seeded_rng(deterministic_ids: None) -> None:
    assert _sampled_names(7) == _sampled_names(7)
    assert _sampled_names(7) != _sampled_names(8)


def test_same_seed_samples_same_client_names() -> None:
    assert _sampled_names(7) == _sampled_names(7)


# ---- liveness ------------------------------------------------------------------------------------
def test_clients_not_seen_for_liveness_s_are_not_sampled() -> None:
    clock = FakeClock()
    c = make(min_clients=2, per_round=2, liveness_s=10, clock=clock)
    a = c.join("a").client_id
    b = c.join("b").client_id
    clock.advance(8)
    c.next_task(b, 0)  # b polls, a stays silent
    clock.advance(5)  # a last seen 13 s ago, b 5 s ago
    assert c.live_clients() == [b]
    task = c.open_round(1, PAYLOAD, "layout", agg())
    assert task.sampled == {b}
    clock.advance(1)
    c.join("a")  # a is back
    assert set(c.live_clients()) == {a, b}


def test_seen_exactly_at_liveness_s_is_live() -> None:
    clock = FakeClock()
    c = make(liveness_s=10, clock=clock)
    a = c.join("a").client_id
    clock.advance(10)
    assert c.live_clients() == [a]
    clock.advance(0.001)
    assert c.live_clients() == []


def test_busy_client_stays_live_until_the_round_closes() -> None:
    clock = FakeClock()
    c = make(min_clients=1, per_round=1, liveness_s=10, deadline=100, clock=clock)
    a = c.join("a").client_id
    task = c.open_round(1, PAYLOAD, "layout", agg())
    assert c.next_task(a, 0)[0] is TaskKind.TRAIN
    clock.advance(50)  # training takes a while; no polls meanwhile
    assert c.live_clients() == [a]
    clock.advance(60)  # past the deadline: wait_round returns at once and frees the client
    assert c.wait_round(task) == {}
    assert c.live_clients() == []


@pytest.mark.timeout(30)
def test_wait_for_clients(pool: ThreadPoolExecutor) -> None:
    c = make(min_clients=2)
    waiting = in_thread(pool, c.wait_for_clients, 0.05)
    c.join("a")
    time.sleep(0.1)
    assert not waiting.done()
    c.join("b")
    assert waiting.result(timeout=5) is True


# ---- the round ----------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_wait_round_returns_early_when_all_answered(pool: ThreadPoolExecutor) -> None:
    c = make(min_clients=2, per_round=2, deadline=25)
    ids = list(join_all(c, 2).values())
    task = c.open_round(1, PAYLOAD, "layout", agg())
    started = time.monotonic()
    waiting = in_thread(pool, c.wait_round, task)
    c.submit(ids[0], task.task_id, 1, result(1))
    time.sleep(0.05)
    assert not waiting.done()
    c.submit(ids[1], task.task_id, 1, result(2))
    got = waiting.result(timeout=20)
    assert time.monotonic() - started < 20  # not at the 25 s deadline
    assert {cid: r["num_examples"] for cid, r in got.items()} == {ids[0]: 1, ids[1]: 2}


@pytest.mark.timeout(30)
def test_wait_round_returns_at_the_deadline(pool: ThreadPoolExecutor) -> None:
    c = make(min_clients=2, per_round=2, deadline=0.4)
    ids = list(join_all(c, 2).values())
    task = c.open_round(1, PAYLOAD, "layout", agg())
    started = time.monotonic()
    waiting = in_thread(pool, c.wait_round, task)
    c.submit(ids[0], task.task_id, 1, result())
    got = waiting.result(timeout=5)
    elapsed = time.monotonic() - started
    assert 0.35 <= elapsed < 10
    assert set(got) == {ids[0]}


def test_late_result_after_the_round_closed_is_stale() -> None:
    c = make(min_clients=2, per_round=2, deadline=0.05)
    ids = list(join_all(c, 2).values())
    task = c.open_round(1, PAYLOAD, "layout", agg())
    c.submit(ids[0], task.task_id, 1, result())
    assert set(c.wait_round(task)) == {ids[0]}
    for check in (c.begin_upload, lambda *a: c.submit(*a, result())):
        with pytest.raises(Reject) as info:
            check(ids[1], task.task_id, 1)
        assert info.value.reason == "stale"


def test_results_of_the_next_round_do_not_mix() -> None:
    c = make(min_clients=1, per_round=1, deadline=0.05)
    cid = c.join("a").client_id
    first = c.open_round(1, PAYLOAD, "layout", agg())
    c.wait_round(first)
    second = c.open_round(2, PAYLOAD, "layout", agg())
    assert second.task_id != first.task_id
    with pytest.raises(Reject, match="not open"):
        c.submit(cid, first.task_id, 1, result())
    c.submit(cid, second.task_id, 2, result(5))
    assert first.results == {} and second.results[cid]["num_examples"] == 5


@pytest.fixture
def open_round() -> tuple[Coordinator, RoundTask, dict[str, str]]:
    c = make(min_clients=3, per_round=2, seed=0)
    ids = join_all(c, 3)
    return c, c.open_round(4, PAYLOAD, "layout", agg()), ids


@pytest.mark.parametrize("how", ["begin_upload", "submit"])
def test_submission_refusals(open_round: tuple[Coordinator, RoundTask, dict[str, str]], how: str) -> None:
    c, task, ids = open_round
    sampled = sorted(task.sampled)
    outsider = next(cid for cid in ids.values() if cid not in task.sampled)

    def attempt(cid: str, task_id: str, round_number: int) -> str:
        with pytest.raises(Reject) as info:
            if how == "submit":
                c.submit(cid, task_id, round_number, result())
            else:
                c.begin_upload(cid, task_id, round_number)
        return info.value.reason

    assert attempt("not-a-client", task.task_id, 4) == "unknown_client"
    assert attempt(sampled[0], "0" * 16, 4) == "stale"
    assert attempt(sampled[0], task.task_id, 3) == "stale"
    assert attempt(sampled[0], task.task_id, 5) == "stale"
    assert attempt(outsider, task.task_id, 4) == "not_sampled"
    c.submit(sampled[0], task.task_id, 4, result(1))
    assert attempt(sampled[0], task.task_id, 4) == "duplicate"
    assert task.results[sampled[0]]["num_examples"] == 1  # the first result stands
    assert c.begin_upload(sampled[1], task.task_id, 4) is task


def test_submit_without_an_open_round_is_stale() -> None:
    c = make()
    cid = c.join("a").client_id
    with pytest.raises(Reject) as info:
        c.submit(cid, "anything", 1, result())
    assert info.value.reason == "stale"


def test_the_aggregation_and_payload_are_kept_as_given_and_closed_with_the_round(
        open_round: tuple[Coordinator, RoundTask, dict[str, str]]) -> None:
    """The round's aggregation is the servicer's business (results stream into it): the coordinator
    keeps it on the task, keeps each accepted result's metrics as handed over, and closes the
    aggregation when the round closes, so no upload of it can count any more."""
    c, _, ids = open_round
    payload = (b"first tensor", memoryview(b"second"))  # a model sent as several buffers
    aggregation = agg()
    task = c.open_round(5, payload, "layout", aggregation)
    assert task.aggregation is aggregation and task.payload is payload and not aggregation.closed
    cid = sorted(task.sampled)[0]
    r = result(3)
    c.submit(cid, task.task_id, 5, r)
    assert task.results[cid] is r and aggregation.count == 0  # nothing committed it
    task.deadline = c.clock()
    c.wait_round(task)
    assert aggregation.closed
    finishing = c.open_round(6, PAYLOAD, "layout", agg())
    c.finish()
    assert finishing.aggregation.closed


# ---- uploads in flight ----------------------------------------------------------------------------
def test_second_upload_while_one_streams_is_duplicate(
        open_round: tuple[Coordinator, RoundTask, dict[str, str]]) -> None:
    c, task, _ = open_round
    a, b = sorted(task.sampled)
    assert c.begin_upload(a, task.task_id, 4) is task
    for _ in range(2):  # a refused attempt does not end the upload that is streaming
        with pytest.raises(Reject, match="already streaming") as info:
            c.begin_upload(a, task.task_id, 4)
        assert info.value.reason == "duplicate"
    assert c.begin_upload(b, task.task_id, 4) is task  # other clients are not held up
    assert task.uploading == {a, b}
    c.end_upload(task, a)  # the first upload broke off without a result: a may try again
    assert task.uploading == {b}
    assert c.begin_upload(a, task.task_id, 4) is task
    c.submit(a, task.task_id, 4, result(7))  # the streaming upload hands in its own result
    c.end_upload(task, a)
    c.end_upload(task, a)  # harmless twice (the servicer ends every upload in a finally)
    with pytest.raises(Reject, match="already accepted") as info:
        c.begin_upload(a, task.task_id, 4)
    assert info.value.reason == "duplicate"
    assert task.results[a]["num_examples"] == 7 and task.uploading == {b}


@pytest.mark.timeout(30)
def test_concurrent_uploads_from_one_client_let_exactly_one_in(
        open_round: tuple[Coordinator, RoundTask, dict[str, str]]) -> None:
    c, task, _ = open_round
    cid = sorted(task.sampled)[0]
    outcomes: list[str] = []
    start = threading.Barrier(8)

    def attempt() -> None:
        start.wait(timeout=10)
        try:
            c.begin_upload(cid, task.task_id, 4)
            outcomes.append("in")
        except Reject as exc:
            outcomes.append(exc.reason)

    with ThreadPoolExecutor(max_workers=8) as executor:
        for f in [executor.submit(attempt) for _ in range(8)]:
            f.result(timeout=20)
    assert sorted(outcomes) == ["duplicate"] * 7 + ["in"]


def test_an_upload_left_open_does_not_block_the_next_round() -> None:
    c = make(min_clients=1, per_round=1, deadline=0.05)
    cid = c.join("a").client_id
    first = c.open_round(1, PAYLOAD, "layout", agg())
    c.begin_upload(cid, first.task_id, 1)  # still streaming when the round closes
    assert c.wait_round(first) == {}
    second = c.open_round(2, PAYLOAD, "layout", agg())
    assert c.begin_upload(cid, second.task_id, 2) is second
    c.end_upload(first, cid)  # the old upload ends late: it touches only its own round
    assert first.uploading == set() and second.uploading == {cid}


# ---- on_accept ------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_on_accept_runs_once_under_the_lock_before_the_result_counts(
        open_round: tuple[Coordinator, RoundTask, dict[str, str]], pool: ThreadPoolExecutor) -> None:
    c, task, _ = open_round
    cid = sorted(task.sampled)[0]
    seen: list[tuple[bool, bool]] = []
    probes: list[Future] = []

    def on_accept() -> None:
        probe = in_thread(pool, c.live_clients)  # needs the coordinator's lock
        time.sleep(0.1)
        seen.append((probe.done(), cid in task.results))
        probes.append(probe)

    c.submit(cid, task.task_id, 4, result(2), on_accept=on_accept)
    assert seen == [(False, False)]  # the lock was held, and the result was not yet recorded
    assert len(probes[0].result(timeout=10)) == 3  # ... and released afterwards
    assert task.results[cid]["num_examples"] == 2


@pytest.mark.parametrize(("why", "reason"), [("other-task", "stale"), ("other-round", "stale"), ("closed", "stale"),
                                           ("outsider", "not_sampled"), ("answered", "duplicate"),
                                           ("unknown", "unknown_client")])
def test_on_accept_never_runs_for_a_refused_result(
        open_round: tuple[Coordinator, RoundTask, dict[str, str]], why: str, reason: str) -> None:
    c, task, ids = open_round
    sampled = sorted(task.sampled)
    outsider = next(cid for cid in ids.values() if cid not in task.sampled)
    c.submit(sampled[0], task.task_id, 4, result(1))
    cid, task_id, round_number = sampled[1], task.task_id, 4
    if why == "other-task":
        task_id = "0" * 16
    elif why == "other-round":
        round_number = 3
    elif why == "closed":
        c.finish()
    elif why == "outsider":
        cid = outsider
    elif why == "answered":
        cid = sampled[0]
    else:
        cid = "not-a-client"
    calls: list[int] = []
    with pytest.raises(Reject) as info:
        c.submit(cid, task_id, round_number, result(9), on_accept=lambda: calls.append(1))
    assert info.value.reason == reason
    assert calls == []
    assert {k: r["num_examples"] for k, r in task.results.items()} == {sampled[0]: 1}


def test_failing_on_accept_records_nothing_and_propagates(
        open_round: tuple[Coordinator, RoundTask, dict[str, str]]) -> None:
    c, task, _ = open_round
    cid = sorted(task.sampled)[0]
    assert c.next_task(cid, 0)[0] is TaskKind.TRAIN

    def broken() -> None:
        raise RuntimeError("the aggregation refused the commit")

    with pytest.raises(RuntimeError, match="aggregation refused"):
        c.submit(cid, task.task_id, 4, result(1), on_accept=broken)
    assert task.results == {}
    assert c.next_task(cid, 0) == (TaskKind.TRAIN, task)  # still owed a result, not a duplicate
    calls: list[int] = []
    c.submit(cid, task.task_id, 4, result(2), on_accept=lambda: calls.append(1))
    assert calls == [1] and task.results[cid]["num_examples"] == 2


# ---- stopping -----------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_stop_unblocks_every_waiter(pool: ThreadPoolExecutor) -> None:
    c = make(min_clients=3, per_round=1, deadline=60)
    ids = list(join_all(c, 2).values())
    task = c.open_round(1, PAYLOAD, "layout", agg())
    idle = next(cid for cid in ids if cid not in task.sampled)
    waiters = {
        "poll": in_thread(pool, c.next_task, idle, 60.0),
        "round": in_thread(pool, c.wait_round, task),
        "clients": in_thread(pool, c.wait_for_clients, 60.0),
    }
    time.sleep(0.1)
    assert not any(f.done() for f in waiters.values())
    started = time.monotonic()
    c.stop()
    assert waiters["poll"].result(timeout=5) == (TaskKind.WAIT, None)  # stopped, not done: clients retry
    assert waiters["round"].result(timeout=5) == {}
    assert waiters["clients"].result(timeout=5) is False
    assert time.monotonic() - started < 10
    assert c.wait_for_clients() is False
