"""Keeps the local runner's children running as their Pods are kept on a cluster: a child that
crashed is started again after the backoff of services.runner.restarts (into the same log), one
that exited 0 is done, and one the policy gives up on is reported. The ProcessGroup stays the
one owner of the processes; the supervisor only decides when to ask it for a restart. Driven by
polling (``poll``) from the runner's loop, on an injectable clock."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from services.runner.processes import Child, ProcessGroup
from services.runner.restarts import Action, ChildRestarts, Decision, RestartPolicy


@dataclass
class _Supervised:
    child: Child
    history: ChildRestarts
    due: float | None = None  # when the pending restart is due
    done: bool = False  # ended, and will not be started again


class Supervisor:
    def __init__(self, group: ProcessGroup, policy: RestartPolicy,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.group, self.policy, self.clock = group, policy, clock
        self._children: dict[str, _Supervised] = {}
        self.gave_up: list[tuple[Child, Decision]] = []
        self.restarting = True

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> Child:
        child = self.group.start(name, argv, env)
        self._children[name] = _Supervised(child, ChildRestarts(self.policy, self.clock))
        return child

    def child(self, name: str) -> Child:
        """The current process of ``name`` (a restart replaces it)."""
        return self._children[name].child

    def finished(self, name: str) -> bool:
        """``name`` exited 0 and will not be restarted."""
        s = self._children[name]
        return s.done and s.child.returncode == 0

    def running(self) -> list[str]:
        """Children that run or wait for a restart."""
        return [n for n, s in self._children.items() if not s.done]

    def poll(self) -> list[str]:
        """Look at every child once: decide about those that ended, restart those whose backoff is
        over. Returns a line for each thing that happened, for the console."""
        notes = []
        for name, s in self._children.items():
            if s.done:
                continue
            if s.due is not None:
                if self.clock() >= s.due:
                    restart = len(s.history.restarts)
                    s.child = self.group.restart(s.child, f"tff-k8s local: restart {restart} (the run "
                                                          f"before ended: {s.history.restarts[-1][1]})")
                    s.history.started()
                    s.due = None
                    notes.append(f"{name} restarted ({restart}x so far)")
                continue
            code = s.child.returncode
            if code is None:
                continue
            if not self.restarting:
                s.done = True
                continue
            decision = s.history.exited(code)
            if decision.action is Action.RESTART:
                s.due = self.clock() + decision.delay_s
                notes.append(f"{name} {decision.why}; restarting in {decision.delay_s:g} s")
            else:
                s.done = True
                if decision.action is Action.GIVE_UP:
                    self.gave_up.append((s.child, decision))
                    notes.append(f"{name} {decision.why}: not restarted, {decision.reason}")
        return notes

    def stop_restarting(self) -> None:
        """From now on a child that ends stays ended; pending restarts are dropped (training is done)."""
        self.restarting = False
        for s in self._children.values():
            if s.due is not None:
                s.due, s.done = None, True

    def summary(self) -> str:
        """``restarted: client-1 1x (killed by SIGKILL)``; empty when nothing was restarted."""
        parts = [f"{name} {s.history.summary()}" for name, s in self._children.items() if s.history.restarts]
        return f"restarted: {'; '.join(parts)}" if parts else ""
