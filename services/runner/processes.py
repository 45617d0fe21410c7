"""Owning child processes: each starts in its own process group, and every group is stopped
(SIGTERM, then SIGKILL) when the owner exits, even on an exception. A child that ended can be
started again under the same name (``restart``), appending to the same log. Used by the local
runner (services.runner.supervisor decides when to restart) and by the multi-process tests."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes] = field(repr=False)
    argv: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict, repr=False)  # what start() added to os.environ

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def signal(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class ProcessGroup:
    """``with ProcessGroup() as group: group.start(...)`` — nothing outlives the ``with``."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log = open(log_path, "ab")
        proc = subprocess.Popen(
            list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )
        child = Child(name, proc, log_path, log, tuple(argv), dict(env or {}))
        self.children.append(child)
        return child

    def restart(self, child: Child, note: str = "") -> Child:
        """Stop ``child`` (at once, with its process group) and start the same command again under
        the same name; the new child takes its place. ``note`` goes into the log between the runs."""
        self.stop(child, timeout=0)
        self.children.remove(child)
        if note:
            with open(child.log_path, "ab") as log:
                log.write(f"--- {note} ---\n".encode())
        return self.start(child.name, child.argv, child.env)

    def stop(self, child: Child, timeout: float = 10.0) -> int:
        if child.returncode is None:
            child.signal(signal.SIGTERM)
            try:
                child.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        child.signal(signal.SIGKILL)  # the group; TFF's worker_binary dies with its parent (PDEATHSIG)
        code = child.process.wait()
        child.log.close()
        return code

    def stop_all(self, timeout: float = 10.0) -> None:
        for child in self.children:
            if child.returncode is None:
                child.signal(signal.SIGTERM)
        end = time.monotonic() + timeout
        for child in self.children:
            try:
                child.process.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for child in self.children:
            self.stop(child, timeout=0)

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
