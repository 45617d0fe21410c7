"""Start a real federation (server + client processes on loopback) for a test, with the same
entrypoints the containers use; every process is stopped when the test ends, even on failure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.config import FederationConfig, load_config
from services.runner.loopback import loopback_overrides
from services.runner.processes import Child, ProcessGroup

ROOT = Path(__file__).resolve().parents[2]
# Python's fault handler: a process sent SIGABRT writes every thread's stack to its log first
# (see dump_stacks), so a test that times out on a hung process says where it hung.
DEBUG_ENV = {"PYTHONFAULTHANDLER": "1"}


def federation_config(out_dir: Path, *, clients: int, rounds: int, **overrides: Any) -> FederationConfig:
    base: dict[str, Any] = {
        "training.rounds": rounds,
        "training.min_clients": clients,
        "training.clients_per_round": clients,
        "training.round_deadline_s": 120,
        "data.num_shards": clients,
        **loopback_overrides(out_dir),
    }
    base.update(overrides)
    return load_config(None, overrides=base, environ={})


@dataclass
class Federation:
    cfg: FederationConfig
    out_dir: Path
    group: ProcessGroup
    config_path: Path
    clients: list[Child] = field(default_factory=list)
    server: Child | None = None

    def _argv(self, role: str, *sets: str) -> list[str]:
        argv = [sys.executable, "-m", f"services.{role}", "--config", str(self.config_path)]
        for item in sets:
            argv += ["--set", item]
        return argv

    def start_server(self, name: str = "server") -> Child:
        self.server = self.group.start(name, self._argv("server"), {"PYTHONUNBUFFERED": "1", **DEBUG_ENV})
        return self.server

    def start_client(self, index: int, *sets: str, env: dict[str, str] | None = None) -> Child:
        child = self.group.start(
            f"client-{index}", self._argv("client", f"client.name=client-{index}", *sets),
            {"SERVER_ADDRESS": self.cfg.client.server_address, "PYTHONUNBUFFERED": "1", **DEBUG_ENV, **(env or {})},
        )
        self.clients.append(child)
        return child

    def records(self) -> list[dict[str, Any]]:
        path = self.out_dir / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def wait_until(self, what: str, predicate: Callable[[], bool], timeout: float = 240) -> None:
        end = time.monotonic() + timeout
        while not predicate():
            dead = [c for c in self.group.children if c.returncode not in (None, 0)]
            if time.monotonic() > end or dead:
                hung = dump_stacks(self.group.children) if not dead else []
                logs = "\n".join(f"--- {c.name} (rc={c.returncode})\n{c.log_tail(60 if c in hung else 15)}"
                                 for c in self.group.children)
                raise AssertionError(f"timed out or a process died waiting for {what}\n{logs}")
            time.sleep(0.2)

    def wait_exit(self, child: Child, timeout: float = 240) -> int:
        try:
            return child.process.wait(timeout)
        except subprocess.TimeoutExpired:
            dump_stacks([child])
            raise AssertionError(f"{child.name} did not exit within {timeout}s\n{child.log_tail(60)}") from None

    def log_text(self, child: Child) -> str:
        return child.log_path.read_text(errors="replace")


@contextmanager
def federation(tmp_path: Path, *, clients: int, rounds: int, **overrides: Any) -> Iterator[Federation]:
    out_dir = tmp_path / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = federation_config(out_dir, clients=clients, rounds=rounds, **overrides)
    config_path = tmp_path / "federation.yaml"
    config_path.write_text(cfg.to_yaml())
    with ProcessGroup(tmp_path / "logs") as group:
        yield Federation(cfg, out_dir, group, config_path)


def dump_stacks(children: list[Child]) -> list[Child]:
    """SIGABRT to those of ``children`` still running, which (PYTHONFAULTHANDLER) write every
    thread's Python stack to their logs and die; returns them. Only for a test that already failed."""
    hung = [c for c in children if c.returncode is None]
    for child in hung:
        try:
            os.kill(child.process.pid, signal.SIGABRT)
        except ProcessLookupError:
            pass
    for child in hung:
        try:
            child.process.wait(10)
        except subprocess.TimeoutExpired:
            pass
    return hung


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (e.g. a test's temp dir)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            found.append(f"{pid}: {cmd}")
    return found


def worker_binaries() -> set[int]:
    pids = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if b"worker_binary" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.add(int(pid))
            except OSError:
                pass
    return pids


def events(child: Child) -> list[dict[str, Any]]:
    """The structured (JSON) log lines of a process; TensorFlow's own stderr lines are skipped."""
    out = []
    for line in child.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out
