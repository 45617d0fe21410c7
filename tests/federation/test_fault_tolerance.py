"""Fault tolerance and transport security, for real: server and client processes on loopback,
started with the containers' entrypoints, hit with the faults a cluster deals out (kill -9, a
stalled process, a server restart, SIGTERM, a wrong token) while they train.

Six federations, each shared by several promises (TensorFlow takes ~10-40 s to import per process):
- TLS + bearer token, 2 clients and one client with a wrong token; it is also the uninterrupted
  reference run for the server-restart test (same training config and seed);
- server kill -9 and restart on the same output_dir (2 clients);
- client kill -9 and a client stalled past the deadline (4 clients, min_results 3);
- mutual TLS, then SIGTERM to every process mid-training;
- the ``dp`` aggregator (adaptive clipping: state that changes every round), server kill -9 and a
  restart that resumes that state (2 clients);
- a client built for another model than the server's (it must refuse the task and say why).

No process starts TFF's worker_binary: clients train in their own process, so a stalled client is
the client process itself stopped with SIGSTOP, and the server runs every aggregator in-process.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from federation_harness import (
    Federation,
    dump_stacks,
    events,
    federation,
    processes_mentioning,
    worker_binaries,
)
from support.pki import make_pki

from services.runner.processes import Child

pytestmark = pytest.mark.slow

AREA = "fault tolerance"
SECURITY = "transport security"
# The TLS run and the server-restart run train the same rounds (2 clients, seed 0); enough of them
# that the server is still training when the restart test kills it (a round takes ~0.1 s).
REFERENCE_ROUNDS = 20
EXIT_TIMEOUT_S = 240  # liveness bound for a federation to finish (TF start-up is slow on 2 cores)
SIGTERM_EXIT_S = 30  # liveness bound for a clean stop after SIGTERM


# ---- helpers ------------------------------------------------------------------------------------
def msgs(child: Child, msg: str) -> list[dict[str, Any]]:
    return [e for e in events(child) if e.get("msg", "").startswith(msg)]


def wait_for(fed: Federation, what: str, predicate: Callable[[], bool], *, may_die: Iterable[Child] = (),
             timeout: float = EXIT_TIMEOUT_S) -> None:
    """Poll ``predicate``; fail with every process's log tail on timeout or an unexpected death."""
    allowed = {id(c) for c in may_die}
    end = time.monotonic() + timeout
    while not predicate():
        dead = [c for c in fed.group.children if c.returncode not in (None, 0) and id(c) not in allowed]
        if dead or time.monotonic() > end:
            why = f"{', '.join(c.name for c in dead)} died" if dead else "timed out"
            hung = [] if dead else dump_stacks(fed.group.children)  # where each live process was
            logs = "\n".join(f"--- {c.name} (rc={c.returncode})\n{c.log_tail(80 if c in hung else 25)}"
                             for c in fed.group.children)
            raise AssertionError(f"{why} waiting for {what}\n{logs}")
        time.sleep(0.2)


def wait_exit(fed: Federation, child: Child, timeout: float = EXIT_TIMEOUT_S, may_die: Iterable[Child] = ()) -> int:
    wait_for(fed, f"{child.name} to exit", lambda: child.returncode is not None,
             may_die=[child, *may_die], timeout=timeout)
    return child.returncode  # type: ignore[return-value]


def rounds_of(records: list[dict[str, Any]]) -> list[int]:
    return [r["round"] for r in records]


def client_id(server: Child, name: str) -> str:
    ids = {e["client_id"] for e in msgs(server, "client joined") if e.get("client") == name}
    assert len(ids) == 1, f"{name} joined as {ids}"
    return ids.pop()


def accepted_rounds(server: Child, cid: str) -> set[int]:
    return {e["round"] for e in msgs(server, "result accepted") if e.get("client_id") == cid}


# ---- 1. TLS + token (and the uninterrupted reference run) ---------------------------------------
@dataclass
class TlsRun:
    records: list[dict[str, Any]]
    server_events: list[dict[str, Any]]
    good_exits: list[int]
    server_exit: int
    bad_exit: int
    bad_events: list[dict[str, Any]]
    bad_log: str


@pytest.fixture(scope="module")
def tls_run(tmp_path_factory: pytest.TempPathFactory) -> TlsRun:
    """Server with TLS and a bearer token; two clients with the right token train REFERENCE_ROUNDS rounds; a third
    with a wrong token is refused."""
    tmp = tmp_path_factory.mktemp("tls-token")
    pki = make_pki(tmp / "tls")
    (tmp / "token").write_text("the-right-token\n")
    (tmp / "wrong-token").write_text("not-the-right-token\n")
    settings = {
        "security.tls": True, "security.ca_file": str(pki.ca), "security.cert_file": str(pki.server_cert),
        "security.key_file": str(pki.server_key), "security.token_file": str(tmp / "token"),
    }
    with federation(tmp, clients=2, rounds=REFERENCE_ROUNDS, **settings) as fed:
        server = fed.start_server()
        good = [fed.start_client(i) for i in range(2)]
        bad = fed.start_client(2, f"security.token_file={tmp / 'wrong-token'}")
        bad_exit = wait_exit(fed, bad)
        server_exit = wait_exit(fed, server, may_die=[bad])
        good_exits = [wait_exit(fed, c, may_die=[bad]) for c in good]
        return TlsRun(fed.records(), events(server), good_exits, server_exit, bad_exit, events(bad),
                      fed.log_text(bad))


def test_tls_federation_trains_end_to_end(tls_run: TlsRun, faults) -> None:
    assert tls_run.server_exit == 0 and tls_run.good_exits == [0, 0]
    assert rounds_of(tls_run.records) == list(range(1, REFERENCE_ROUNDS + 1))
    assert all(r["clients"] == 2 for r in tls_run.records)
    listening = [e for e in tls_run.server_events if e.get("msg") == "server listening"]
    assert listening and listening[0]["tls"] is True and listening[0]["auth"] is True
    faults.record(SECURITY, "TLS + bearer token", "server with a CA-signed certificate for 127.0.0.1 and a token; "
                  "2 clients verify it against the CA and present the token", "training completes",
                  f"all {REFERENCE_ROUNDS} rounds applied with 2 clients each over TLS; server and clients exit 0")


def test_wrong_token_is_refused(tls_run: TlsRun, faults) -> None:
    assert tls_run.bad_exit == 2, tls_run.bad_log[-3000:]
    errors = [e for e in tls_run.bad_events if e.get("level") == "error"]
    assert errors and "UNAUTHENTICATED" in errors[-1]["msg"] and "security.token_file" in errors[-1]["msg"]
    assert "Traceback" not in tls_run.bad_log
    refusals = [e for e in tls_run.server_events if e.get("msg", "").startswith("refused unauthenticated call")]
    assert refusals and refusals[0]["msg"].endswith("/Join")
    # The refused client never joined, and the good clients trained undisturbed.
    assert {e.get("client") for e in tls_run.server_events if e.get("msg") == "client joined"} == {"client-0", "client-1"}
    faults.record(SECURITY, "wrong bearer token", "a client presents another token than the server's "
                  "security.token_file", "UNAUTHENTICATED; client exits 2 with a clear message; refusal logged",
                  "Join refused with UNAUTHENTICATED; the client logs it (no traceback) and exits 2; the server logs "
                  "'refused unauthenticated call to /tff_k8s.v1.Federation/Join'; the others train on")


# ---- 2. server kill -9 and restart ----------------------------------------------------------------
def test_server_killed_and_restarted_resumes(tmp_path: Path, tls_run: TlsRun, faults) -> None:
    """Same training config and seed as the TLS run (the uninterrupted reference)."""
    with federation(tmp_path, clients=2, rounds=REFERENCE_ROUNDS) as fed:
        first = fed.start_server()
        clients = [fed.start_client(i) for i in range(2)]
        wait_for(fed, "two rounds", lambda: len(fed.records()) >= 2)
        first.signal(signal.SIGKILL)  # the whole group
        assert fed.wait_exit(first, 30) == -signal.SIGKILL
        at_kill = rounds_of(fed.records())
        assert len(at_kill) < REFERENCE_ROUNDS, "training finished before the kill: nothing was tested"
        second = fed.start_server("server-restarted")
        assert wait_exit(fed, second, may_die=[first]) == 0
        assert [wait_exit(fed, c, may_die=[first]) for c in clients] == [0, 0]
        records = fed.records()
        resumed = msgs(second, "resumed from checkpoint")
        applied = {s.name: [e["round"] for e in msgs(s, "round applied")] for s in (first, second)}
        recorded = [e["round"] for s in (first, second) for e in msgs(s, "round recorded")]
        rejoined = [c for c in clients if msgs(c, "rejoined")]
    assert rounds_of(records) == list(range(1, REFERENCE_ROUNDS + 1))  # every round once, none twice
    assert len(recorded) == len(set(recorded)), f"a round was recorded twice: {recorded}"
    # The checkpoint is written after a round is applied (by a writer thread, and the metrics line
    # after it): the restart resumes from the last durable one, at or after the last metrics line,
    # and redoes only the rounds the first server applied after it.
    assert resumed
    checkpointed = resumed[0]["round"]
    assert at_kill[-1] <= checkpointed <= max(applied["server"])
    assert applied["server-restarted"] == list(range(checkpointed + 1, REFERENCE_ROUNDS + 1))
    assert applied["server"] == list(range(1, max(applied["server"]) + 1))
    assert rejoined == clients  # both clients outlived the server and joined the new one
    ours, reference = records[-1]["eval_accuracy"], tls_run.records[-1]["eval_accuracy"]
    assert abs(ours - reference) <= 0.01, (ours, reference)
    faults.record(AREA, "server kill -9 mid-training, restarted on the same output_dir",
                  f"SIGKILL to the server's process group after >= 2 of {REFERENCE_ROUNDS} rounds; a new server "
                  "started on the same checkpoint directory", "resumes; rounds 1..N once each; final accuracy within "
                  "1 point of an uninterrupted run",
                  f"resumed from the last durable checkpoint, redoing only rounds applied after it; rounds "
                  f"1..{REFERENCE_ROUNDS} each recorded once; clients reconnected with backoff and rejoined; final "
                  "held-out accuracy within 1 point of the uninterrupted (TLS) run")


# ---- 3. client kill -9 and a client stalled past the deadline ---------------------------------------
def first_round_without(records: Callable[[], list[dict[str, Any]]], after: int) -> Callable[[], bool]:
    """Until a round after ``after`` is applied with 3 of the 4 clients."""
    return lambda: any(r["round"] > after and r["clients"] == 3 for r in records())


def stop_while_holding_a_task(fed: Federation, server: Child, child: Child, cid: str, *,
                              may_die: list[Child]) -> int:
    """SIGSTOP ``child`` (the client process itself: it trains in-process) while the round in
    progress counts on it: the round has started and no result of this client has been accepted for
    it, so its task is being trained or is on its way to it. Returns that round. If a result of the
    client lands anyway (it was sent just before the stop), thaw it and try again on a later round."""
    end = time.monotonic() + EXIT_TIMEOUT_S
    while time.monotonic() < end:
        evs = events(server)
        started = [e["round"] for e in evs if e.get("msg") == "round started"]
        applied = {e["round"] for e in evs if e.get("msg") == "round applied"}
        mine = {e["round"] for e in evs if e.get("msg") == "result accepted" and e.get("client_id") == cid}
        if started and started[-1] not in applied | mine:
            round_number = started[-1]
            os.kill(child.process.pid, signal.SIGSTOP)
            time.sleep(1.0)  # a result already on the wire is accepted and logged within this
            if round_number not in accepted_rounds(server, cid):
                return round_number
            os.kill(child.process.pid, signal.SIGCONT)
        dead = [c.name for c in fed.group.children if c.returncode not in (None, 0) and c not in may_die]
        assert not dead, f"{', '.join(dead)} died while waiting to stop {child.name}"
        time.sleep(0.02)
    raise AssertionError(f"found no round in which to stop {child.name}")


def test_client_killed_and_client_stalled(tmp_path: Path, faults) -> None:
    """4 clients, all sampled each round, min_results 3. client-0 is killed with SIGKILL (and later
    restarted under the same name, as kubelet restarts a container); client-1 is frozen (SIGSTOP to
    the client process) while it holds a round's task, until that round has been applied without it."""
    rounds, deadline = 30, 10.0
    with federation(tmp_path, clients=4, rounds=rounds, **{
        "training.min_results": 3, "training.round_deadline_s": deadline,
    }) as fed:
        server = fed.start_server()
        clients = [fed.start_client(i) for i in range(4)]
        killed, stalled = clients[0], clients[1]
        wait_for(fed, "the first round", lambda: len(fed.records()) >= 1)
        killed_id = client_id(server, "client-0")
        wait_for(fed, "a result from client-0", lambda: bool(accepted_rounds(server, killed_id)))

        killed.signal(signal.SIGKILL)  # the whole process group
        assert fed.wait_exit(killed, 30) == -signal.SIGKILL
        pre_kill = max(accepted_rounds(server, killed_id), default=0)
        wait_for(fed, "a round without client-0", first_round_without(fed.records, pre_kill), may_die=[killed])
        restarted = fed.start_client(0)
        wait_for(fed, "client-0 to rejoin and train", lambda: max(accepted_rounds(server, killed_id), default=0) > pre_kill + 1,
                 may_die=[killed])

        stalled_id = client_id(server, "client-1")
        stall_round = stop_while_holding_a_task(fed, server, stalled, stalled_id, may_die=[killed])
        try:
            wait_for(fed, "a round without client-1", first_round_without(fed.records, stall_round - 1),
                     may_die=[killed])
            applied_while_stopped = rounds_of(fed.records())
        finally:
            os.kill(stalled.process.pid, signal.SIGCONT)
        exits = {c.name: wait_exit(fed, c, may_die=[killed]) for c in [server, restarted, *clients[1:]]}
        records = fed.records()
        stalled_events = events(stalled)
        server_events = events(server)

    by_round = {r["round"]: r for r in records}
    killed_rounds = accepted_rounds_from(server_events, killed_id)
    stalled_rounds = accepted_rounds_from(server_events, stalled_id)
    kill_round = min(r for r in by_round if r > pre_kill and r not in killed_rounds)
    assert exits == {"server": 0, "client-0": 0, "client-1": 0, "client-2": 0, "client-3": 0}
    assert rounds_of(records) == list(range(1, rounds + 1))  # finished; no round applied twice
    assert (by_round[kill_round]["clients"], by_round[kill_round]["sampled"]) == (3, 4)
    assert max(killed_rounds) > kill_round  # the restarted client-0 trained again
    assert stall_round in applied_while_stopped and stall_round not in stalled_rounds
    assert (by_round[stall_round]["clients"], by_round[stall_round]["sampled"]) == (3, 4)
    # Once thawed, client-1 finished its old task; the server refused the result as stale.
    late = [e for e in stalled_events if e.get("msg") == "result not used"]
    # (A slow start can make client-1 late for round 1 too: look for the stalled round's.)
    assert [e for e in late if e["round"] == stall_round and "not open" in e["why"]], late
    stale = [e for e in server_events if e.get("msg", "").startswith("rejected request") and e.get("reason") == "stale"]
    assert any(f"round {stall_round} " in e["msg"] for e in stale), stale
    assert max(stalled_rounds) > stall_round  # and it trained later rounds
    faults.record(AREA, "client kill -9 mid-training", "SIGKILL to one of 4 clients' process group "
                  f"(min_results 3, round_deadline_s {deadline:g}); later restarted under the same name",
                  "the round completes with the other 3; training finishes; no round twice",
                  "that round was applied at its deadline with 3 of 4 sampled clients; the restarted client rejoined "
                  f"and trained; all {rounds} rounds applied once each; every live process exited 0")
    faults.record(AREA, "client stalled past the deadline", "SIGSTOP to a client process (it trains in-process) "
                  "while it holds a round's task; SIGCONT once that round was applied without it",
                  "excluded from that round; late result refused as stale (FAILED_PRECONDITION); client does not crash",
                  "that round was applied with 3 of 4 clients; the late result was refused with FAILED_PRECONDITION "
                  "('not open (stale or replayed)'); the client logged it, trained later rounds and exited 0")


def accepted_rounds_from(server_events: list[dict[str, Any]], cid: str) -> set[int]:
    return {e["round"] for e in server_events if e.get("msg") == "result accepted" and e.get("client_id") == cid}


def worker_messages(child: Child) -> list[str]:
    return [e["msg"] for e in events(child) if "worker_binary" in e.get("msg", "")]


def workers_started_by(children: Iterable[Child]) -> set[int]:
    """The TFF worker_binary processes whose parent is one of ``children`` (on a shared machine,
    other people's tests start theirs)."""
    parents, out = {c.process.pid for c in children}, set()
    for pid in worker_binaries():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) in parents:
            out.add(pid)
    return out


# ---- 4. mutual TLS, then SIGTERM everything mid-training ------------------------------------------
def test_mutual_tls_then_sigterm_stops_everything_cleanly(tmp_path: Path, faults) -> None:
    """Three clients train over mutual TLS with the default mean aggregator, which runs no TFF
    worker_binary anywhere. Then SIGTERM to every process mid-training."""
    before = worker_binaries()
    pki = make_pki(tmp_path / "tls")
    settings = {
        "security.tls": True, "security.mutual_tls": True, "security.ca_file": str(pki.ca),
        "security.cert_file": str(pki.server_cert), "security.key_file": str(pki.server_key),
    }
    client_tls = (f"security.cert_file={pki.client_cert}", f"security.key_file={pki.client_key}")
    with federation(tmp_path, clients=3, rounds=100_000, **settings) as fed:
        server = fed.start_server()
        clients = [fed.start_client(i, *client_tls) for i in range(3)]
        wait_for(fed, "two rounds over mutual TLS", lambda: len(fed.records()) >= 2)
        started_workers = worker_binaries() - before

        everyone = [server, *clients]
        for child in everyone:  # as tini -g forwards a Pod's SIGTERM to the process group
            child.signal(signal.SIGTERM)
        exits = {c.name: wait_exit(fed, c, timeout=SIGTERM_EXIT_S) for c in everyone}
        records = fed.records()
        logs = {c.name: msgs(c, "signal SIGTERM") for c in everyone}
        worker_logs = {c.name: worker_messages(c) for c in everyone}
        from services.server import checkpoint

        ckpt = checkpoint.load(fed.out_dir)
    assert started_workers == set(), started_workers
    assert worker_logs == {c: [] for c in worker_logs}
    assert exits == {"server": 0, "client-0": 0, "client-1": 0, "client-2": 0}
    assert all(logs.values()), logs
    assert processes_mentioning(str(tmp_path)) == []
    assert worker_binaries() <= before
    # Stopped between rounds or mid-round: whatever was applied is checkpointed, nothing half-applied.
    assert rounds_of(records) == list(range(1, len(records) + 1)) and len(records) >= 2
    assert ckpt is not None and ckpt.header["round"] == len(records) and len(ckpt.parts) == 3
    # The metrics line is the checkpoint's record, written after it was durable (plus how long that took).
    assert ckpt.header["record"] == {k: v for k, v in records[-1].items() if k != "checkpoint_s"}
    assert records[-1]["checkpoint_s"] >= 0
    faults.record(SECURITY, "mutual TLS", "server requires client certificates signed by the CA; 3 clients present "
                  "one", "training runs", "rounds applied over mutual TLS with all 3 clients")
    faults.record(AREA, "SIGTERM mid-training", "SIGTERM to the server's and the clients' process groups at once "
                  "(as tini -g forwards it)", f"all exit 0 (waited up to {SIGTERM_EXIT_S} s); no process left; resumable",
                  "server and clients logged the signal and exited 0; no process left (and, with the mean aggregator, "
                  "no TFF worker_binary was ever started); metrics and checkpoint agree on the last applied round")


# ---- 5. the dp aggregator's state across a server kill -9 and restart -----------------------------
def test_dp_server_killed_and_restarted_resumes_its_adaptive_clip(tmp_path: Path, faults) -> None:
    """With the dp aggregator the server's state includes the adaptive clipping norm, which moves
    every round. SIGKILL to the server mid-training; a new server on the same output_dir resumes
    from the checkpoint, and the clip it uses in each round is the one the previous round left,
    across the restart too. No process ever starts TFF's worker_binary."""
    rounds = 8
    with federation(tmp_path, clients=2, rounds=rounds, **{"training.aggregator": "dp"}) as fed:
        first = fed.start_server()
        clients = [fed.start_client(i) for i in range(2)]
        wait_for(fed, "two dp rounds", lambda: len(fed.records()) >= 2)
        started_workers = workers_started_by([first, *clients])
        first.signal(signal.SIGKILL)  # the whole group
        assert fed.wait_exit(first, 30) == -signal.SIGKILL
        at_kill = rounds_of(fed.records())
        assert len(at_kill) < rounds, "training finished before the kill: nothing was tested"
        second = fed.start_server("server-restarted")
        assert wait_exit(fed, second, may_die=[first]) == 0
        client_exits = [wait_exit(fed, c, may_die=[first]) for c in clients]
        records = fed.records()
        resumed = msgs(second, "resumed from checkpoint")
        worker_logs = [m for c in (first, second, *clients) for m in worker_messages(c)]
    assert started_workers == set() and worker_logs == []
    assert resumed and at_kill[-1] <= resumed[0]["round"]
    assert rounds_of(records) == list(range(1, rounds + 1))  # every round once, none twice
    clips = [(r["dp_clip"], r["dp_next_clip"]) for r in records]
    assert clips[0][0] == pytest.approx(0.1)  # TFF's initial adaptive clip
    assert all(after[0] == before_[1] for before_, after in zip(clips, clips[1:], strict=False)), clips
    assert len({c for c, _ in clips}) > 1  # it did adapt
    assert all(r["dp_noise_multiplier"] == 0.1 and r["dp_clients_per_round"] == 2 for r in records)
    assert client_exits == [0, 0]
    assert processes_mentioning(str(tmp_path)) == []
    faults.record(AREA, "dp server kill -9 mid-training, restarted on the same output_dir",
                  f"training.aggregator dp (adaptive clipping); SIGKILL to the server's process group after >= 2 of "
                  f"{rounds} rounds; a new server on the same output_dir", "resumes with the aggregator's state; "
                  "rounds 1..N once each", f"resumed from the checkpoint; rounds 1..{rounds} each recorded once; every "
                  "round's clip (metrics.jsonl dp_clip) is the one the round before left (dp_next_clip), across the "
                  "restart too; no process started TFF's worker_binary")


# ---- 6. a client built for another model -------------------------------------------------------------
def test_client_of_another_model_refuses_the_task(tmp_path: Path, faults) -> None:
    """A client whose model differs from the server's (model.hidden_units) is refused at join: its task
    contract names another architecture and weights layout. It must exit 2 and say which parts differ,
    not train on or send garbage."""
    with federation(tmp_path, clients=1, rounds=1) as fed:
        server = fed.start_server()
        other = fed.start_client(0, "model.hidden_units=16")
        other_exit = wait_exit(fed, other)
        errors = [e for e in events(other) if e.get("level") == "error"]
        log_text = fed.log_text(other)
        server.signal(signal.SIGTERM)
        server_exit = wait_exit(fed, server, timeout=SIGTERM_EXIT_S, may_die=[other])
        records = fed.records()
        accepted = msgs(server, "result accepted")
    assert other_exit == 2, log_text[-3000:]
    assert errors and "learning task differs from the server's in" in errors[-1]["msg"], errors
    assert "architecture (server" in errors[-1]["msg"] and "weights (server" in errors[-1]["msg"], errors
    assert "Traceback" not in log_text
    assert server_exit == 0 and records == [] and accepted == []
    faults.record(AREA, "client built for another model", "a client with model.hidden_units 16 joins a server "
                  "training the 32-unit model", "the server refuses it at join, naming what differs; the client "
                  "says why and exits 2; nothing is sent",
                  "FAILED_PRECONDITION at join: 'this client's learning task differs from the server's in: "
                  "architecture (...); weights (...)', logged by the client (no traceback), which exited 2; no "
                  "result reached the server")
