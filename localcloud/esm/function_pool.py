"""The function pool: warm worker processes (Lambda's execution environments) and reserved-concurrency slots."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from localcloud.esm.config import FunctionConfig
from localcloud.esm.sandbox import CpuShare

WORKER_SCRIPT = str(Path(__file__).with_name("worker.py"))
INIT_TIMEOUT_S = 10.0  # Lambda's init phase limit


# --------------------------------------------------------------------------------------------------------------
# Warm workers
# --------------------------------------------------------------------------------------------------------------


class _WorkerGone(Exception):
    pass


class _WorkerTimeout(Exception):
    pass


class _Throttled(Exception):
    """The invoke found every reserved-concurrency slot busy and was rejected."""


class _WorkerInitError(Exception):
    def __init__(self, error: Mapping[str, Any]) -> None:
        super().__init__(error.get("errorMessage"))
        self.error = dict(error)


@dataclass
class _InvokeResult:
    status: Literal["ok", "error", "timeout", "killed"]
    response: Any = None
    error: Mapping[str, Any] | None = None
    duration_ms: float = 0.0
    cold_start: bool = False
    init_ms: float | None = None
    worker_pid: int | None = None
    hung: bool = False  # the hang fault hook froze the worker during this invoke


class _Worker:
    """One warm sandbox: a ``worker.py`` process speaking JSON lines over two private pipes."""

    def __init__(
        self,
        function: FunctionConfig,
        env: Mapping[str, str],
        log_file: IO[bytes],
        python: str = sys.executable,
        *,
        isolated: bool = False,
        cpu: float = 1.0,
    ) -> None:
        """``isolated``: ``-I -S`` (no site-packages but those the environment names, see :mod:`.sandbox`);
        ``cpu``: the share of one core the worker may use (below 1, it is stopped for the rest of each period)."""
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        flags = ["-u", "-I", "-S"] if isolated else ["-P"]
        self._cpu: CpuShare | None = None
        try:
            self.proc = subprocess.Popen(
                [python, *flags, WORKER_SCRIPT, str(to_child_r), str(from_child_w)],
                pass_fds=(to_child_r, from_child_w),
                env=dict(env),
                cwd=str(function.asset_dir),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        if cpu < 1.0:
            self._cpu = CpuShare(self.proc.pid, cpu)
            self._cpu.start()
        self._to_child = os.fdopen(to_child_w, "w", encoding="utf-8")
        self._from_child = from_child_r
        self._buffer = b""
        started = time.monotonic()
        try:
            ready = self._read(started + INIT_TIMEOUT_S)
        except (_WorkerGone, _WorkerTimeout) as exc:
            self.kill()
            raise _WorkerInitError({"errorType": "Runtime.InitError", "errorMessage": repr(exc)}) from exc
        if ready.get("type") != "ready":
            self.kill()
            raise _WorkerInitError(ready.get("error") or {"errorType": "Runtime.InitError", "errorMessage": "?"})
        self.init_ms = float(ready.get("init_ms", 0.0))
        self.pid = int(ready.get("pid", self.proc.pid))

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _WorkerTimeout
            readable, _, _ = select.select([self._from_child], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(self._from_child, 1 << 16)
            if not chunk:
                raise _WorkerGone
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def invoke(
        self,
        event: Mapping[str, Any],
        *,
        request_id: str,
        function: FunctionConfig,
        kill_after_s: float | None,
        hang_after_s: float | None = None,
    ) -> _InvokeResult:
        started = time.monotonic()
        deadline_ms = int(time.time() * 1000 + function.timeout_s * 1000)
        message = {
            "type": "invoke",
            "request_id": request_id,
            "deadline_ms": deadline_ms,
            "invoked_function_arn": function.arn,
            "event": event,
        }
        try:
            self._to_child.write(json.dumps(message) + "\n")
            self._to_child.flush()
        except (BrokenPipeError, OSError):
            return _InvokeResult("error", error=_exit_error("the worker was gone before the invoke"))
        limit = function.timeout_s if kill_after_s is None else min(kill_after_s, function.timeout_s)
        hung = False
        try:
            if hang_after_s is not None and hang_after_s < limit:
                try:
                    reply = self._read(started + hang_after_s)
                except _WorkerTimeout:
                    # A frozen sandbox (a call stuck without a timeout, a stalled host): the handler stops
                    # where it is, its deadline passes, and only the function timeout ends the invocation.
                    self.freeze()
                    hung = True
                    reply = self._read(started + limit)
            else:
                reply = self._read(started + limit)
        except _WorkerGone:
            self.kill()
            return _InvokeResult(
                "error",
                error=_exit_error("the worker exited during the invoke"),
                duration_ms=(time.monotonic() - started) * 1000,
            )
        except _WorkerTimeout:
            self.kill()
            elapsed = (time.monotonic() - started) * 1000
            if kill_after_s is not None and kill_after_s < function.timeout_s:
                return _InvokeResult("killed", error=_exit_error("killed by the fault hook"), duration_ms=elapsed)
            return _InvokeResult(
                "timeout",
                error={
                    "errorType": "Sandbox.Timedout",
                    "errorMessage": f"{request_id} Task timed out after {function.timeout_s:.2f} seconds",
                },
                duration_ms=elapsed,
                hung=hung,
            )
        if hung:  # it answered before the freeze took hold: keep the answer, never reuse a frozen sandbox
            self.kill()
        if kill_after_s is not None:  # the fault hook fires even when the handler was quicker
            self.kill()
            return _InvokeResult(
                "killed", error=_exit_error("killed by the fault hook"), duration_ms=(time.monotonic() - started) * 1000
            )
        duration = float(reply.get("duration_ms", (time.monotonic() - started) * 1000))
        if reply.get("ok"):
            return _InvokeResult("ok", response=reply.get("response"), duration_ms=duration, hung=hung)
        return _InvokeResult("error", error=reply.get("error"), duration_ms=duration, hung=hung)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def freeze(self) -> None:
        """SIGSTOP the worker's process group (it is killed later, like any sandbox that overran)."""
        if self._cpu is not None:
            self._cpu.freeze()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGSTOP)

    def kill(self) -> None:
        if self._cpu is not None:
            self._cpu.stop(resume=False)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self.close_pipes()

    def shutdown(self) -> None:
        if self._cpu is not None:
            self._cpu.stop()
        with contextlib.suppress(OSError, ValueError):
            self._to_child.write('{"type": "shutdown"}\n')
            self._to_child.flush()
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.kill()
        self.close_pipes()

    def close_pipes(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._to_child.close()
        with contextlib.suppress(OSError):
            os.close(self._from_child)
        self._from_child = -1


def _exit_error(message: str) -> dict[str, Any]:
    return {"errorType": "Runtime.ExitError", "errorMessage": message}


class _FunctionPool:
    """Warm workers of one function, like Lambda's execution environments: reused, replaced when killed."""

    def __init__(
        self,
        function: FunctionConfig,
        env: Mapping[str, str],
        log_path: Path,
        python: str = sys.executable,
        *,
        isolated: bool = False,
        cpu: float = 1.0,
    ) -> None:
        self.python, self.isolated, self.cpu = python, isolated, cpu
        self.function = function
        self.env = dict(env)
        self.log_path = log_path
        self._log_file: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - lives as long as the pool
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._busy = 0
        self._slots = threading.Lock()

    @contextlib.contextmanager
    def slot(self) -> Iterator[bool]:
        """Try to take one of the function's reserved-concurrency slots for an invocation; never waits.

        Yields False when every slot is busy: Lambda rejects such an invoke (a throttle) and the caller, the
        shard's poller, backs off and tries again. Raises ``_WorkerGone`` when the pool is closed.
        """
        limit = self.function.reserved_concurrency
        with self._slots:
            if self._closed:
                raise _WorkerGone
            free = limit is None or self._busy < limit
            if free:
                self._busy += 1
        if not free:
            yield False
            return
        try:
            yield True
        finally:
            with self._slots:
                self._busy -= 1

    def acquire(self) -> tuple[_Worker, bool]:
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.alive:
                    return worker, False
                self._all.discard(worker)
            if self._closed:
                raise _WorkerGone
        worker = _Worker(self.function, self.env, self._log_file, self.python, isolated=self.isolated, cpu=self.cpu)
        with self._lock:
            self._all.add(worker)
            if self._closed:
                worker.kill()
                raise _WorkerGone
        return worker, True

    def release(self, worker: _Worker) -> None:
        with self._lock:
            if worker.alive and not self._closed:
                self._idle.append(worker)
            else:
                self._all.discard(worker)

    def discard(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            self._all.discard(worker)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers, self._all, self._idle = list(self._all), set(), []
        for worker in workers:
            worker.kill()
        self._log_file.close()
