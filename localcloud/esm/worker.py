"""A warm Lambda "container" for the local cloud: one process that imports the handler once and serves invokes.

Why this is hand-written: moto has no Lambda runtime that runs local code in a warm process (its Lambda
backend either needs Docker or does nothing), and the event source mapping runner has to reproduce what
Lambda does around the handler -- an init phase that imports the module once, a context object with a
deadline, a clean environment, and a process that can be killed when it overruns its timeout.

The runner starts this file as a script (``python -P worker.py IN_FD OUT_FD``), so it deliberately
imports nothing from the ``localcloud`` package: the process sees only the function's asset directory
(``LAMBDA_TASK_ROOT``, first on ``sys.path``) and the interpreter's site-packages, like a Lambda runtime with
layers. The handler's stdout and stderr go wherever the runner pointed them (a log file); the protocol uses
two private pipes, so ``print`` and Powertools' JSON logs cannot corrupt it.

Protocol: one JSON document per line.

* worker -> runner, once: ``{"type": "ready", "init_ms": 12.3, "pid": 123}`` or
  ``{"type": "init_error", "error": {"errorType": ..., "errorMessage": ..., "stackTrace": [...]}}``
  (after which the worker exits, as a Lambda sandbox does on ``Runtime.ImportModuleError``).
* runner -> worker: ``{"type": "invoke", "request_id": ..., "deadline_ms": <epoch ms>,
  "invoked_function_arn": ..., "event": {...}}``.
* worker -> runner: ``{"type": "result", "request_id": ..., "ok": true, "response": <json>, "duration_ms": ...}``
  or ``{"type": "result", "request_id": ..., "ok": false, "error": {...}, "duration_ms": ...}``.
* runner -> worker: ``{"type": "shutdown"}`` (or just EOF).
"""

from __future__ import annotations

import decimal
import importlib
import json
import os
import sys
import time
import traceback
from typing import Any, TextIO


class LambdaContext:
    """The attributes and method of the Python runtime's context object (awslambdaric ``LambdaContext``)."""

    def __init__(self, request_id: str, invoked_function_arn: str, deadline_ms: int) -> None:
        self.aws_request_id = request_id
        self.invoked_function_arn = invoked_function_arn
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        # A string in the real runtime too: it is read from AWS_LAMBDA_FUNCTION_MEMORY_SIZE.
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self.identity = None
        self.client_context = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))

    def __repr__(self) -> str:
        return f"LambdaContext(aws_request_id={self.aws_request_id!r}, function_name={self.function_name!r})"


def _error(exc: BaseException, error_type: str | None = None) -> dict[str, Any]:
    return {
        "errorType": error_type or type(exc).__name__,
        "errorMessage": str(exc),
        "stackTrace": traceback.format_exception(exc)[-10:],
    }


def _to_json(value: Any) -> str:
    """Serialise a handler's return value the way the runtime does (Decimals become numbers)."""

    def default(obj: Any) -> Any:
        if isinstance(obj, decimal.Decimal):
            return int(obj) if obj == obj.to_integral_value() else float(obj)
        raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")

    return json.dumps(value, default=default)


def _send(out: TextIO, message: dict[str, Any]) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def _load_handler(spec: str) -> Any:
    module_name, _, function_name = spec.rpartition(".")
    if not module_name:
        raise ValueError(f"Bad handler {spec!r}: expected 'module.function'")
    module = importlib.import_module(module_name.replace("/", "."))
    handler = getattr(module, function_name, None)
    if handler is None:
        raise AttributeError(f"Handler {function_name!r} missing on module {module_name!r}")
    return handler


def _sandbox() -> None:
    """The Lambda's sys.path after the asset (the layer's and the runtime's site-packages) and its memory cap."""
    for entry in filter(None, os.environ.get("LOCALCLOUD_SYS_PATH", "").split(os.pathsep)):
        if entry not in sys.path:
            sys.path.insert(1, entry)  # after the asset, before the standard library, as on Lambda
    memory_mb = os.environ.get("LOCALCLOUD_MEMORY_MB")
    if memory_mb:
        import resource  # noqa: PLC0415 - POSIX only, and only in a sandbox

        limit = int(memory_mb) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def serve(in_stream: TextIO, out_stream: TextIO) -> int:
    task_root = os.environ.get("LAMBDA_TASK_ROOT", os.getcwd())
    if task_root not in sys.path:
        sys.path.insert(0, task_root)
    _sandbox()
    started = time.perf_counter()
    try:
        handler = _load_handler(os.environ["_HANDLER"])
    except Exception as exc:  # the runtime reports any init failure, then the sandbox is discarded
        kind = "Runtime.ImportModuleError" if isinstance(exc, ImportError) else "Runtime.HandlerNotFound"
        if not isinstance(exc, ImportError | AttributeError | ValueError):
            kind = "Runtime.UserCodeSyntaxError" if isinstance(exc, SyntaxError) else "Runtime.InitError"
        _send(out_stream, {"type": "init_error", "error": _error(exc, kind)})
        return 1
    _send(out_stream, {"type": "ready", "init_ms": (time.perf_counter() - started) * 1000, "pid": os.getpid()})

    for line in in_stream:
        message = json.loads(line)
        if message.get("type") == "shutdown":
            break
        request_id = message["request_id"]
        context = LambdaContext(request_id, message["invoked_function_arn"], int(message["deadline_ms"]))
        begin = time.perf_counter()
        try:
            response = handler(message["event"], context)
            payload = _to_json(response)
        except Exception as exc:  # an unhandled function error: the runtime reports it, the sandbox stays warm
            reply = {"type": "result", "request_id": request_id, "ok": False, "error": _error(exc)}
        else:
            reply = {"type": "result", "request_id": request_id, "ok": True, "response": json.loads(payload)}
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        reply["duration_ms"] = (time.perf_counter() - begin) * 1000
        _send(out_stream, reply)
    return 0


def main(argv: list[str]) -> int:
    in_fd, out_fd = int(argv[1]), int(argv[2])
    with (
        os.fdopen(in_fd, "r", encoding="utf-8") as in_stream,
        os.fdopen(out_fd, "w", encoding="utf-8") as out_stream,
    ):
        return serve(in_stream, out_stream)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
