"""``tff-k8s local`` keeps its federation going as a cluster would: a crashed process is restarted
with backoff (services.runner.restarts), a restarted server resumes from its checkpoint and the
clients rejoin it, and the summary says what was restarted and why. A child that exits 2 (bad
config, refused credentials) or crashes too often is given up on, not restarted in a loop.

The policy is tested on a fake clock, the supervisor on tiny processes (no TensorFlow), and the
runner for real (slow): SIGKILL to a client, then to the server, mid-training."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from federation_harness import ROOT, processes_mentioning
from rich.console import Console
from support.clock import FakeClock

from services.runner.local import LocalRun, build_config, parser, read_records
from services.runner.processes import Child, ProcessGroup
from services.runner.restarts import Action, ChildRestarts, RestartPolicy, describe_exit
from services.runner.supervisor import Supervisor


# ---- the policy, on a fake clock -----------------------------------------------------------------
def crash_loop(restarts: ChildRestarts, clock: FakeClock, crashes: int, *, ran_s: float = 0.5) -> list[float]:
    """Each run lasts ``ran_s`` then crashes (exit 1); the restart comes after the policy's delay.
    Returns the delays."""
    delays = []
    for _ in range(crashes):
        clock.advance(ran_s)
        decision = restarts.exited(1)
        assert decision.action is Action.RESTART, decision
        delays.append(decision.delay_s)
        clock.advance(decision.delay_s)
        restarts.started()
    return delays


def test_backoff_doubles_from_1s_and_caps_at_30s() -> None:
    clock = FakeClock()
    restarts = ChildRestarts(RestartPolicy(max_restarts=100), clock)
    assert crash_loop(restarts, clock, 8) == [1, 2, 4, 8, 16, 30, 30, 30]


def test_backoff_starts_over_after_a_healthy_run() -> None:
    clock = FakeClock()
    policy = RestartPolicy(max_restarts=100)
    restarts = ChildRestarts(policy, clock)
    assert crash_loop(restarts, clock, 4) == [1, 2, 4, 8]
    clock.advance(policy.healthy_after_s - 1)  # not quite healthy long enough: the backoff goes on
    assert restarts.exited(-signal.SIGKILL).delay_s == 16
    restarts.started()
    clock.advance(policy.healthy_after_s)
    assert restarts.exited(-signal.SIGKILL).delay_s == 1


def test_exit_0_is_finished_and_exit_2_is_never_restarted() -> None:
    clock = FakeClock()
    assert ChildRestarts(RestartPolicy(), clock).exited(0).action is Action.FINISHED
    restarts = ChildRestarts(RestartPolicy(), clock)
    decision = restarts.exited(2)
    assert decision.action is Action.GIVE_UP and "config" in decision.reason and decision.why == "exit 2"
    assert restarts.restarts == []
    # Not even after a crash it was restarted from (the config error showed up late).
    restarts = ChildRestarts(RestartPolicy(), clock)
    crash_loop(restarts, clock, 1)
    assert restarts.exited(2).action is Action.GIVE_UP


def test_gives_up_after_max_restarts_within_the_window_and_says_why() -> None:
    clock = FakeClock()
    policy = RestartPolicy(max_restarts=3, window_s=600)
    restarts = ChildRestarts(policy, clock)
    crash_loop(restarts, clock, 3)
    clock.advance(0.5)
    decision = restarts.exited(-signal.SIGSEGV)
    assert decision.action is Action.GIVE_UP and decision.why == "killed by SIGSEGV"
    assert decision.reason == "already restarted 3x within 600 s (the limit)"
    # Crashes spread wider than the window are restarted without end, as on a cluster.
    restarts = ChildRestarts(policy, clock)
    for _ in range(10):
        clock.advance(policy.window_s / 2)
        assert restarts.exited(1).action is Action.RESTART
        restarts.started()


def test_max_restarts_0_turns_restarts_off() -> None:
    decision = ChildRestarts(RestartPolicy(max_restarts=0), FakeClock()).exited(1)
    assert decision.action is Action.GIVE_UP and decision.reason == "restarts are off"


def test_exit_descriptions_and_summary() -> None:
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(3) == "exit 3"
    clock = FakeClock()
    restarts = ChildRestarts(RestartPolicy(), clock)
    for code in (-signal.SIGKILL, 1, 1):
        restarts.exited(code)
        restarts.started()
    assert restarts.summary() == "3x (killed by SIGKILL, exit 1 2x)"


# ---- the supervisor, on tiny processes -------------------------------------------------------------
def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def wait_exited(child: Child, timeout: float = 10) -> int:
    return child.process.wait(timeout)


def wait_logged(child: Child, text: str, count: int = 1, timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while child.log_path.read_text().count(text) < count:
        assert time.monotonic() < end, f"{child.name} did not log {text!r} {count}x"
        time.sleep(0.02)


def test_supervisor_restarts_a_killed_child_after_its_backoff(tmp_path: Path) -> None:
    clock = FakeClock()
    with ProcessGroup(tmp_path / "logs") as group:
        sup = Supervisor(group, RestartPolicy(), clock)
        first = sup.start("client-1", python("print('up', flush=True); import time; time.sleep(60)"))
        wait_logged(first, "up\n")
        first.signal(signal.SIGKILL)
        wait_exited(first)
        assert sup.poll() == ["client-1 killed by SIGKILL; restarting in 1 s"]
        clock.advance(0.9)
        assert sup.poll() == [] and sup.child("client-1") is first  # still backing off
        clock.advance(0.1)
        assert sup.poll() == ["client-1 restarted (1x so far)"]
        second = sup.child("client-1")
        assert second is not first and second.returncode is None and group.children == [second]
        assert sup.summary() == "restarted: client-1 1x (killed by SIGKILL)" and not sup.gave_up
        wait_logged(second, "up\n", count=2)
        pid = second.process.pid
    assert second.returncode is not None  # the group stopped the restarted process too
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    log = (tmp_path / "logs" / "client-1.log").read_text()
    assert "--- tff-k8s local: restart 1 (the run before ended: killed by SIGKILL) ---" in log


def test_supervisor_gives_up_on_exit_2_and_lets_exit_0_be(tmp_path: Path) -> None:
    clock = FakeClock()
    with ProcessGroup(tmp_path / "logs") as group:
        sup = Supervisor(group, RestartPolicy(), clock)
        bad = sup.start("server", python("import sys; sys.exit(2)"))
        fine = sup.start("client-0", python("pass"))
        assert (wait_exited(bad), wait_exited(fine)) == (2, 0)
        notes = sup.poll()
        clock.advance(3600)
        assert sup.poll() == []
        assert notes == ["server exit 2: not restarted, bad config, refused credentials or a layout mismatch, "
                         "which a restart cannot fix"]
        assert [(c.name, d.code) for c, d in sup.gave_up] == [("server", 2)]
        assert sup.finished("client-0") and not sup.finished("server") and sup.running() == []
        assert sup.summary() == "" and len(group.children) == 2


def test_supervisor_drops_pending_restarts_once_training_is_done(tmp_path: Path) -> None:
    clock = FakeClock()
    with ProcessGroup(tmp_path / "logs") as group:
        sup = Supervisor(group, RestartPolicy(), clock)
        child = sup.start("client-0", python("import sys; sys.exit(1)"))
        wait_exited(child)
        assert sup.poll() == ["client-0 exit 1; restarting in 1 s"] and sup.running() == ["client-0"]
        sup.stop_restarting()
        clock.advance(60)
        assert sup.poll() == [] and sup.running() == [] and sup.child("client-0") is child


# ---- the runner's verdict, on tiny processes standing in for the services --------------------------
class StandInRun(LocalRun):
    """The real runner (supervision, reporting, exit code) with stand-in commands for its processes."""

    def __init__(self, tmp_path: Path, commands: dict[str, list[str]], policy: RestartPolicy) -> None:
        args = parser().parse_args(["--clients", "1", "--rounds", "1", "--output-dir", str(tmp_path)])
        self.output = io.StringIO()
        super().__init__(build_config(args), 1, tmp_path, Console(file=self.output, width=200), policy)
        # The run's directory as an argument: processes_mentioning(tmp_path) finds what is left.
        self._commands = {name: [*argv, str(tmp_path)] for name, argv in commands.items()}

    def commands(self) -> dict[str, list[str]]:
        return self._commands


def test_runner_stops_and_exits_2_when_a_process_exits_2(tmp_path: Path) -> None:
    run = StandInRun(tmp_path, {
        "server": python("import sys; print('server.port: bad value', flush=True); sys.exit(2)"),
        "client-0": python("import time; time.sleep(60)"),
    }, RestartPolicy())
    started = time.monotonic()
    assert run.run(timeout=60) == 2
    text = run.output.getvalue()
    assert time.monotonic() - started < 15
    assert "server exit 2: gave up, bad config, refused credentials or a layout mismatch" in text
    assert "server.port: bad value" in text  # the log tail says what was wrong
    assert "restarted:" not in text and processes_mentioning(str(tmp_path)) == []


def test_runner_gives_up_on_a_crash_loop_and_says_why(tmp_path: Path) -> None:
    run = StandInRun(tmp_path, {
        "server": python("import sys; print('boom', flush=True); sys.exit(1)"),
        "client-0": python("import time; time.sleep(60)"),
    }, RestartPolicy(initial_s=0.05, max_restarts=2))
    assert run.run(timeout=60) == 1
    text = run.output.getvalue()
    assert "server exit 1: gave up, already restarted 2x within 600 s (the limit)" in text
    assert "restarted: server 2x (exit 1 2x)" in text
    assert (tmp_path / "logs" / "server.log").read_text().count("boom") == 3
    assert processes_mentioning(str(tmp_path)) == []


# ---- the runner, for real --------------------------------------------------------------------------
ROUNDS = 12
# Slower rounds (more local epochs) leave time to kill a process while training is under way.
SLOW_ROUNDS = ("--set", "training.local_epochs=20")
RUN_TIMEOUT_S = 400  # liveness bound: 3 processes import TensorFlow at once on 2 cores, plus a restart


@contextmanager
def local_run(tmp_path: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """``tff-k8s local`` as a process of its own, its output in a file. On the way out (a failed
    test too) it gets SIGINT, on which it stops its children, then SIGKILL if it hangs."""
    out, output = tmp_path / "out", tmp_path / "runner.txt"
    with open(output, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "local", "--output-dir", str(out), *args],
            cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "COLUMNS": "200"},  # rich wraps at 80 columns when not on a terminal
        )
        try:
            yield proc, out, output
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def wait_rounds(proc: subprocess.Popen[bytes], out: Path, output: Path, rounds: int) -> list[int]:
    end = time.monotonic() + RUN_TIMEOUT_S
    while len(done := [r["round"] for r in read_records(out / "metrics.jsonl")]) < rounds:
        if proc.poll() is not None or time.monotonic() > end:
            raise AssertionError(f"no round {rounds} (runner rc={proc.returncode}):\n{output.read_text()[-3000:]}")
        time.sleep(0.1)
    return done


def pid_of(out: Path, *words: str) -> int:
    """The one live process whose command line names this run's directory and every word."""
    found = [line for line in processes_mentioning(str(out)) if all(w in line for w in words)]
    assert len(found) == 1, found
    return int(found[0].split(":", 1)[0])


def finish(proc: subprocess.Popen[bytes], output: Path) -> tuple[int, str]:
    try:
        code = proc.wait(RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the runner did not finish:\n{output.read_text()[-3000:]}") from None
    return code, output.read_text()


@pytest.mark.slow
def test_client_killed_mid_training_is_restarted_and_training_completes(tmp_path: Path) -> None:
    with local_run(tmp_path, "--clients", "2", "--rounds", str(ROUNDS), *SLOW_ROUNDS) as (proc, out, output):
        at_kill = wait_rounds(proc, out, output, 2)
        os.kill(pid_of(out, "-m services.client", "local-client-1"), signal.SIGKILL)
        code, text = finish(proc, output)
    records = read_records(out / "metrics.jsonl")
    assert len(at_kill) < ROUNDS, "training finished before the kill: nothing was tested"
    assert code == 0, text[-3000:]
    assert [r["round"] for r in records] == list(range(1, ROUNDS + 1))
    # Every round needs both clients' results: the rounds after the kill were trained by the restarted one.
    assert all(r["clients"] == 2 for r in records)
    assert "client-1 killed by SIGKILL; restarting in 1 s" in text
    assert "restarted: client-1 1x (killed by SIGKILL)" in text and "done" in text
    log = (out / "logs" / "client-1.log").read_text(errors="replace")
    assert "--- tff-k8s local: restart 1 (the run before ended: killed by SIGKILL) ---" in log
    assert processes_mentioning(str(out)) == []


@pytest.mark.slow
def test_server_killed_mid_training_is_restarted_and_resumes(tmp_path: Path) -> None:
    with local_run(tmp_path, "--clients", "2", "--rounds", str(ROUNDS), *SLOW_ROUNDS) as (proc, out, output):
        at_kill = wait_rounds(proc, out, output, 2)
        os.kill(pid_of(out, "-m services.server"), signal.SIGKILL)
        code, text = finish(proc, output)
    records = read_records(out / "metrics.jsonl")
    assert len(at_kill) < ROUNDS, "training finished before the kill: nothing was tested"
    assert code == 0, text[-3000:]
    assert [r["round"] for r in records] == list(range(1, ROUNDS + 1))  # every round once, none twice
    assert "restarted: server 1x (killed by SIGKILL)" in text
    log = (out / "logs" / "server.log").read_text(errors="replace")
    before, _, after = log.partition("--- tff-k8s local: restart 1 (the run before ended: killed by SIGKILL) ---")
    assert after and '"resumed from checkpoint"' in after and '"resumed from checkpoint"' not in before
    assert '"training finished"' in after
    assert processes_mentioning(str(out)) == []
