"""When a local child process that ended is started again: the local runner's version of the
restart policy a Pod gets on Kubernetes (``restartPolicy: Always`` with CrashLoopBackOff).

Kubernetes waits 10 s before restarting a crashed container, doubles the wait on each further
crash up to 5 min, and starts over at 10 s once a container ran 10 min (twice the cap) without
crashing. Locally the same shape is scaled down: 1 s doubling to 30 s, reset after 60 s of healthy
running. Where it departs, because a local run has an end and nobody watching a pod list:
- exit 0 means the child finished (the services exit 0 when training is done, see
  ``services.runner.loopback``): it is not restarted;
- exit 2 means bad config, refused credentials or a layout mismatch (the services' entrypoints):
  no restart can fix that, so the runner gives up at once;
- a child that crashes more than ``max_restarts`` times within ``window_s`` is given up on too,
  instead of crash-looping until the run's timeout.
Pure bookkeeping (no processes); time comes from an injectable clock."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

FATAL_EXIT = 2  # the services' "will not fix itself" exit code


def describe_exit(code: int) -> str:
    """``killed by SIGKILL`` for a signal (Popen's negative return codes), else ``exit N``."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


@dataclass(frozen=True)
class RestartPolicy:
    initial_s: float = 1.0
    max_s: float = 30.0
    healthy_after_s: float = 60.0  # a child that ran this long starts over at initial_s
    max_restarts: int = 5  # per child within window_s; 0: never restart
    window_s: float = 600.0

    def delay(self, attempt: int) -> float:
        """The wait before restart number ``attempt`` (0-based) since the last healthy run."""
        return min(self.max_s, self.initial_s * 2 ** min(attempt, 62))


class Action(Enum):
    FINISHED = "finished"
    RESTART = "restart"
    GIVE_UP = "give up"


@dataclass(frozen=True)
class Decision:
    action: Action
    code: int  # how the child ended (Popen's return code)
    delay_s: float = 0.0  # for RESTART: the wait before it
    reason: str = ""  # for GIVE_UP: why no restart

    @property
    def why(self) -> str:
        return describe_exit(self.code)


@dataclass
class ChildRestarts:
    """One child's restart history under ``policy``: call :meth:`started` each time it starts and
    :meth:`exited` each time it ends."""

    policy: RestartPolicy
    clock: Callable[[], float] = time.monotonic
    attempt: int = 0  # crashes since the last healthy run
    started_at: float = 0.0
    restarts: list[tuple[float, str]] = field(default_factory=list)  # (when, how the run before ended)

    def __post_init__(self) -> None:
        self.started_at = self.clock()

    def started(self) -> None:
        self.started_at = self.clock()

    def exited(self, code: int) -> Decision:
        now = self.clock()
        if code == 0:
            return Decision(Action.FINISHED, code)
        if code == FATAL_EXIT:
            return Decision(Action.GIVE_UP, code, reason="bad config, refused credentials or a layout "
                            "mismatch, which a restart cannot fix")
        p = self.policy
        recent = [t for t, _ in self.restarts if now - t < p.window_s]
        if len(recent) >= p.max_restarts:
            reason = (f"already restarted {len(recent)}x within {p.window_s:g} s (the limit)" if p.max_restarts
                      else "restarts are off")
            return Decision(Action.GIVE_UP, code, reason=reason)
        if now - self.started_at >= p.healthy_after_s:
            self.attempt = 0
        delay = p.delay(self.attempt)
        self.attempt += 1
        self.restarts.append((now, describe_exit(code)))
        return Decision(Action.RESTART, code, delay_s=delay)

    def summary(self) -> str:
        """``1x (killed by SIGKILL)``, ``3x (exit 1 2x, killed by SIGKILL)``."""
        counts: dict[str, int] = {}
        for _, why in self.restarts:
            counts[why] = counts.get(why, 0) + 1
        whys = ", ".join(why if n == 1 else f"{why} {n}x" for why, n in counts.items())
        return f"{len(self.restarts)}x ({whys})"
