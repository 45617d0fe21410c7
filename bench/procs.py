"""Owning processes and measuring them, Linux only (/proc), stdlib only.

Every process a benchmark starts goes through `Owned`: it runs in its own session (process
group), and on exit the whole tree is stopped (SIGTERM, then SIGKILL) — the groups, every
descendant found by walking /proc (some tools detach their children with a new session, e.g.
Flower's SuperLink starts its SuperExec that way) and, because `become_subreaper()` makes
orphans re-parent to us instead of init, anything whose parent died first.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Orphaned descendants re-parent to this process (so they stay findable and killable)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def descendants(pid: int) -> list[int]:
    """All live descendants of `pid` (not `pid` itself)."""
    children, found, todo = _children_map(), [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def hwm_mb(pid: int | None = None) -> float:
    """Peak resident set size (VmHWM) of one process, in MiB."""
    return _status_kb(pid or os.getpid(), "VmHWM") / 1024


class TreeRssPeak:
    """Polls the summed VmRSS of a process tree (root + descendants) in a thread; keeps the peak.

    A sampled sum is a lower bound of the true peak (a spike between samples can be missed);
    for a single process use `hwm_mb`, which the kernel tracks exactly.
    """

    def __init__(self, root: int, interval_s: float = 0.05, exclude: Iterable[int] = ()) -> None:
        self.root, self.interval_s, self.exclude = root, interval_s, set(exclude)
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def sample(self) -> float:
        pids = [self.root, *descendants(self.root)]
        return sum(_status_kb(p, "VmRSS") for p in pids if p not in self.exclude) / 1024

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.sample())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> TreeRssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def loopback_tx_bytes() -> int:
    """Bytes sent over the loopback interface so far (the whole network namespace, headers included)."""
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, data = line.partition(":")
        if name.strip() == "lo":
            return int(data.split()[8])
    return 0


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until something accepts TCP connections on 127.0.0.1:`port`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


def _signal(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _reap() -> None:
    """Collect exited children (including adopted orphans) so they do not stay zombies."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def kill_tree(roots: Sequence[int], grace_s: float = 3.0) -> None:
    """SIGTERM the process groups led by `roots` and every descendant, then SIGKILL survivors."""
    targets = set(roots)
    for root in roots:
        targets.update(descendants(root))
    for root in roots:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(root, signal.SIGTERM)
    _signal(targets, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        _reap()
        if not any(Path(f"/proc/{p}").exists() and _status_kb(p, "VmRSS") for p in targets):
            break
        time.sleep(0.05)
    targets.update(p for root in (*roots, os.getpid()) for p in descendants(root))
    targets.discard(os.getpid())
    for root in roots:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(root, signal.SIGKILL)
    _signal(targets, signal.SIGKILL)
    time.sleep(0.05)
    _reap()


def kill_own_descendants(grace_s: float = 3.0) -> None:
    """Stop every process below this one (e.g. TFF's worker_binary, which outlives its parent)."""
    kids = descendants(os.getpid())
    if kids:
        kill_tree(kids, grace_s)


class Owned:
    """Context manager owning the processes started through it; all are gone when it exits."""

    def __init__(self) -> None:
        become_subreaper()
        self.procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[object] = []

    def start(self, cmd: Sequence[str], log: Path | None = None, **kwargs: object) -> subprocess.Popen[bytes]:
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed in stop()
        if log:
            self._logs.append(out)
        proc = subprocess.Popen(
            list(cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, **kwargs,  # type: ignore[call-overload]
        )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        kill_tree([p.pid for p in self.procs])
        kill_own_descendants()
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=1)
        for f in self._logs:
            f.close()  # type: ignore[attr-defined]
        self.procs, self._logs = [], []

    def __enter__(self) -> Owned:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
