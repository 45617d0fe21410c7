"""An owned TFF execution context, for the tests that compare with TFF's own algorithms (no service
starts one: the services run TFF's math in-process).

TFF's default local context starts a C++ ``worker_binary`` that outlives its Python parent and,
when the binary dies (SIGILL at start on some CPUs, or later), retries the call forever. Here we
start the binary ourselves: it dies with its parent (``PR_SET_PDEATHSIG``), start-up has a timeout
that fails loudly, and :meth:`TffRuntime.close` (also on ``with`` exit) stops it. It runs in its own
session, so a SIGTERM sent to the service's process group (``tini -g``) reaches only the Python
parent, which finishes or abandons its TFF call and then stops the worker; if the worker dies while
the runtime is open, a watchdog logs it and exits the process (TFF would otherwise hang in retries).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

import grpc
import tensorflow_federated as tff
from tensorflow_federated.python.core.backends.native import compiler
from tensorflow_federated.python.core.environments.tensorflow_frontend import tensorflow_computation
from tensorflow_federated.python.core.impl.context_stack import context_stack_impl
from tensorflow_federated.python.core.impl.execution_contexts import sync_execution_context
from tensorflow_federated.python.core.impl.executor_stacks import python_executor_stacks
from tensorflow_federated.python.core.impl.executors import remote_executor, remote_executor_grpc_stub
from tensorflow_federated.python.core.impl.types import placements

log = logging.getLogger(__name__)

_MAX_MESSAGE = 2 * 1000 * 1000 * 1000
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.max_send_message_length", _MAX_MESSAGE),
]
_PR_SET_PDEATHSIG = 1
WORKER_DIED_EXIT = 1  # the process exit status when the TFF worker dies under a running service


class TffRuntimeError(RuntimeError):
    """The TFF worker could not be started or died."""


def worker_binary_path() -> Path:
    return Path(tff.__file__).resolve().parent / "data" / "worker_binary"


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TffRuntime:
    """Start with ``TffRuntime(timeout_s).start()`` or ``with TffRuntime(timeout_s):``; while it runs it
    is TFF's default context in the thread that started it (TFF's context stack is thread-local:
    other threads call :func:`use_in_this_thread`)."""

    active: TffRuntime | None = None

    def __init__(self, startup_timeout_s: float = 120.0) -> None:
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self._stub: remote_executor_grpc_stub.RemoteExecutorGrpcStub | None = None
        self._channel: grpc.Channel | None = None
        self.context: sync_execution_context.SyncExecutionContext | None = None
        self._stderr: IO[bytes] | None = None

    def start(self) -> TffRuntime:
        binary = worker_binary_path()
        if not binary.is_file():
            raise TffRuntimeError(f"TFF worker binary not found at {binary}")
        port = _free_port()
        self._stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [str(binary), f"--port={port}", "--max_concurrent_computation_calls=-1"],
            stdout=subprocess.DEVNULL,
            # A file, not a pipe: a pipe nobody reads fills up, and closing it kills the worker with
            # SIGPIPE at its next log line. Read back only if it dies at start.
            stderr=self._stderr,
            preexec_fn=_die_with_parent,
            start_new_session=True,
        )
        self._channel = grpc.insecure_channel(f"localhost:{port}", _CHANNEL_OPTIONS)
        self._stub = remote_executor_grpc_stub.RemoteExecutorGrpcStub(self._channel)
        deadline = time.monotonic() + self.startup_timeout_s
        while not self._stub.is_ready:
            code = self.process.poll()
            if code is not None:
                self._stderr.seek(0)
                err = self._stderr.read().decode(errors="replace")[-2000:]
                self.close()
                why = f"signal {-code}" if code < 0 else f"exit code {code}"
                hint = " (SIGILL: this CPU lacks an instruction the binary needs)" if code == -signal.SIGILL else ""
                raise TffRuntimeError(f"TFF worker_binary died at start with {why}{hint}. {err}")
            if time.monotonic() > deadline:
                self.close()
                raise TffRuntimeError(
                    f"TFF worker_binary did not become ready within {self.startup_timeout_s:.0f}s "
                    "(server.tff_startup_timeout_s)"
                )
            time.sleep(0.05)
        stub = self._stub

        def stack_fn(cardinalities):
            cardinalities.setdefault(placements.CLIENTS, 0)
            ex = remote_executor.RemoteExecutor(stub)
            ex.set_cardinalities(cardinalities)
            return ex

        context = sync_execution_context.SyncExecutionContext(
            executor_fn=python_executor_stacks.ResourceManagingExecutorFactory(executor_stack_fn=stack_fn),
            compiler_fn=compiler.desugar_and_transform_to_native,
            transform_args=tensorflow_computation.transform_args,
            transform_result=tensorflow_computation.transform_result,
        )
        self.context = context
        TffRuntime.active = self
        context_stack_impl.context_stack.set_default_context(context)
        log.info("TFF worker_binary ready (pid %d, port %d)", self.process.pid, port)
        threading.Thread(target=self._watch, args=(self.process,), name="tff-worker-watchdog", daemon=True).start()
        return self

    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        code = proc.wait()
        if self.process is proc:  # not stopped by close(): TFF would retry its calls forever
            why = f"signal {-code}" if code < 0 else f"exit code {code}"
            log.critical("TFF worker_binary (pid %d) died with %s; exiting", proc.pid, why)
            os._exit(WORKER_DIED_EXIT)

    def close(self) -> None:
        if TffRuntime.active is self:
            TffRuntime.active = None
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        proc, self.process = self.process, None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> TffRuntime:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()


def use_in_this_thread() -> None:
    """Make the running :class:`TffRuntime` TFF's default context in the calling thread."""
    runtime = TffRuntime.active
    if runtime is None:
        raise TffRuntimeError("no TFF runtime is running in this process")
    if context_stack_impl.context_stack.current is not runtime.context:
        context_stack_impl.context_stack.set_default_context(runtime.context)
