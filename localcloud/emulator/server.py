"""The wire server (http.server in a thread), the admin API, the HTTP admin client and the command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from localcloud.emulator.quota import DEFAULT_MODEL, QUOTA_MODELS
from localcloud.emulator.state import Config, EmulatorState, Response

ADMIN_PREFIX = "/_emulator"


# ----------------------------------------------------------------------------------------------- HTTP


def _json_response(status: int, payload: Any) -> Response:
    return Response(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "PersonalizeEventsEmulator/1.0"
    timeout = 120  # idle keep-alive connections
    disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms delayed-ACK stall
    state: EmulatorState  # set on the per-server subclass

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        if self.path == ADMIN_PREFIX or self.path.startswith(ADMIN_PREFIX + "/"):
            resp = _admin(self.state, method, self.path, body)
        else:
            resp = self.state.handle_api(method, self.path, dict(self.headers.items()), body)
        if resp.delay_s > 0:
            time.sleep(resp.delay_s)
        try:
            self.send_response(resp.status)
            for k, v in resp.headers.items():
                self.send_header(k, v)
            self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
            self.send_header("Content-Length", str(len(resp.body)))
            self.end_headers()
            self.wfile.write(resp.body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout): already counted
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return


def _admin(state: EmulatorState, method: str, path: str, body: bytes) -> Response:
    parsed = urllib.parse.urlsplit(path)
    route = parsed.path[len(ADMIN_PREFIX) :].rstrip("/") or "/"
    query = dict(urllib.parse.parse_qsl(parsed.query))
    try:
        doc = json.loads(body or b"{}")
        if not isinstance(doc, dict):
            raise ValueError("body must be a JSON object")
        if (method, route) == ("GET", "/health"):
            return _json_response(200, {"status": "ok", "endpointUrl": state.endpoint_url})
        if (method, route) == ("GET", "/config"):
            return _json_response(200, state.config.to_json())
        if (method, route) == ("POST", "/config"):
            return _json_response(200, state.configure(**doc))
        if (method, route) == ("GET", "/datasets"):
            return _json_response(200, {"datasets": state.datasets()})
        if (method, route) == ("POST", "/datasets"):
            described = state.register_dataset(
                doc["datasetArn"],
                doc.get("schema"),
                status=doc.get("status", "ACTIVE"),
                access_denied=bool(doc.get("accessDenied", False)),
            )
            return _json_response(200, described)
        if (method, route) == ("GET", "/items"):
            arn = query.get("datasetArn", "")
            return _json_response(200, {"datasetArn": arn, "items": state.items(arn)})
        if (method, route) == ("GET", "/bulk"):
            arn = query.get("datasetArn", "")
            return _json_response(200, {"datasetArn": arn, "items": state.bulk_items(arn)})
        if (method, route) == ("GET", "/stats"):
            return _json_response(200, state.stats())
        if (method, route) == ("GET", "/calls"):
            calls = state.calls(int(query.get("since", "0")))
            nxt = calls[-1]["seq"] + 1 if calls else int(query.get("since", "0"))
            return _json_response(200, {"calls": calls, "next": nxt})
        if (method, route) == ("GET", "/accepted"):
            since = int(query.get("since", "0"))
            try:
                entries = state.accepted(since)
            except RuntimeError as exc:
                return _json_response(409, {"error": str(exc)})
            return _json_response(200, {"accepted": entries, "next": entries[-1]["seq"] + 1 if entries else since})
        if (method, route) == ("POST", "/inject"):
            state.inject(*doc.get("errors", []), operation=doc.get("operation", "PutItems"))
            return _json_response(200, {"ok": True})
        if (method, route) == ("POST", "/reset"):
            state.reset(datasets=bool(doc.get("datasets", False)))
            return _json_response(200, {"ok": True})
        return _json_response(404, {"error": f"no admin route {method} {route}"})
    except KeyError as exc:
        status = 404 if route in ("/items", "/bulk") else 400
        return _json_response(status, {"error": str(exc.args[0] if exc.args else exc)})
    except (ValueError, TypeError) as exc:
        return _json_response(400, {"error": str(exc)})


class _Server(ThreadingHTTPServer):
    """Tracks open connections so that ``stop()`` also ends idle keep-alive connections."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._conns_lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Knobs:
    """The fault, latency and quota setters, shared by the in-process emulator and the HTTP client."""

    def configure(self, **changes: Any) -> dict[str, Any]:
        raise NotImplementedError

    def set_faults(
        self,
        *,
        throttle_rate: float | None = None,
        error_rate: float | None = None,
        error_status: int | None = None,
        slow_rate: float | None = None,
        slow_ms: float | None = None,
    ) -> dict[str, Any]:
        return self.configure(**_given(locals()))

    def set_latency(self, latency_ms: float | None = None, jitter_ms: float | None = None) -> dict[str, Any]:
        return self.configure(**_given(locals()))

    def set_tps(self, tps: float | None) -> dict[str, Any]:
        return self.configure(tps=tps)

    def set_quota(
        self,
        *,
        model: str | None = None,
        burst: float | None = None,
        foreign_share: float | None = None,
        request_jitter_ms: float | None = None,
    ) -> dict[str, Any]:
        """Pick the quota model (see :mod:`localcloud.emulator.quota`); None leaves a knob unchanged."""
        changes = _given({"quota_model": model, "foreign_share": foreign_share, "request_jitter_ms": request_jitter_ms})
        if burst is not None:
            changes["quota_burst"] = burst
        return self.configure(**changes)


class PersonalizeEmulator(_Knobs):
    """The emulator's HTTP server in a background thread; also the in-process read/admin API.

    >>> with PersonalizeEmulator(tps=10, latency_ms=50) as emu:
    ...     emu.register_dataset("arn:aws:personalize:us-east-1:123456789012:dataset/demo/ITEMS")
    ...     boto3.client("personalize-events", endpoint_url=emu.endpoint_url)  # doctest: +SKIP
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tps: float | None = 10,
        latency_ms: float = 0.0,
        jitter_ms: float = 0.0,
        throttle_rate: float = 0.0,
        error_rate: float = 0.0,
        error_status: int | None = None,
        slow_rate: float = 0.0,
        slow_ms: float = 0.0,
        strict_types: bool = False,
        auto_create: bool = False,
        quota_model: str = DEFAULT_MODEL,
        quota_burst: float | None = None,
        foreign_share: float = 0.0,
        request_jitter_ms: float = 0.0,
        seed: int | None = None,
        call_log_limit: int = 1_000_000,
        log_items: bool = False,
        s3_endpoint_url: str | None = None,
    ) -> None:
        self.host, self._requested_port = host, port
        self.state = EmulatorState(
            Config(
                tps=tps,
                latency_ms=latency_ms,
                jitter_ms=jitter_ms,
                throttle_rate=throttle_rate,
                error_rate=error_rate,
                error_status=error_status,
                slow_rate=slow_rate,
                slow_ms=slow_ms,
                strict_types=strict_types,
                auto_create=auto_create,
                quota_model=quota_model,
                quota_burst=quota_burst,
                foreign_share=foreign_share,
                request_jitter_ms=request_jitter_ms,
            ),
            seed=seed,
            call_log_limit=call_log_limit,
            log_items=log_items,
        )
        self.state.imports.s3_endpoint_url = s3_endpoint_url  # import jobs read their CSV from here
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> PersonalizeEmulator:
        if self._server is not None:
            return self
        handler = type("_BoundHandler", (_Handler,), {"state": self.state})
        server = _Server((self.host, self._requested_port), handler)
        self._server = server
        self.state.endpoint_url = f"http://{self.host}:{server.server_address[1]}"
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="personalize-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> PersonalizeEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("emulator not started")
        return int(self._server.server_address[1])

    @property
    def endpoint_url(self) -> str:
        if self._server is None:
            raise RuntimeError("emulator not started")
        return self.state.endpoint_url

    # ---- read/admin (same names as EmulatorClient) ---------------------------------------------------
    def register_dataset(
        self,
        dataset_arn: str,
        schema: Mapping[str, Any] | str | None = None,
        *,
        status: str = "ACTIVE",
        access_denied: bool = False,
    ) -> dict[str, Any]:
        return self.state.register_dataset(dataset_arn, schema, status=status, access_denied=access_denied)

    def datasets(self) -> list[dict[str, Any]]:
        return self.state.datasets()

    def items(self, dataset_arn: str) -> dict[str, dict[str, Any]]:
        return self.state.items(dataset_arn)

    def bulk_items(self, dataset_arn: str) -> dict[str, dict[str, Any]]:
        """The bulk layer (what import jobs wrote); :meth:`items` is what the dataset exposes."""
        return self.state.bulk_items(dataset_arn)

    def stats(self) -> dict[str, Any]:
        return self.state.stats()

    def calls(self, since: int = 0) -> list[dict[str, Any]]:
        return self.state.calls(since)

    def accepted(self, since: int = 0) -> list[dict[str, Any]]:
        """The accepted-items log (needs ``log_items=True``): see :meth:`EmulatorState.accepted`."""
        return self.state.accepted(since)

    def config(self) -> dict[str, Any]:
        return self.state.config.to_json()

    def configure(self, **changes: Any) -> dict[str, Any]:
        return self.state.configure(**changes)

    def inject(self, *errors: str, operation: str = "PutItems") -> None:
        self.state.inject(*errors, operation=operation)

    def reset(self, *, datasets: bool = False) -> None:
        self.state.reset(datasets=datasets)


def _given(args: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments that were given (None means "leave unchanged")."""
    return {k: v for k, v in args.items() if k != "self" and v is not None}


class EmulatorClient(_Knobs):
    """The admin/read API over HTTP, for another process: same methods as :class:`PersonalizeEmulator`."""

    def __init__(self, endpoint_url: str, *, timeout: float = 10.0) -> None:
        if not endpoint_url.startswith(("http://", "https://")):
            raise ValueError("endpoint_url must be http(s)")
        self.endpoint_url = endpoint_url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, route: str, payload: Any = None, query: Mapping[str, Any] | None = None) -> Any:
        url = f"{self.endpoint_url}{ADMIN_PREFIX}{route}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = json.dumps(payload).encode() if payload is not None else None
        headers = {"Content-Type": "application/json"}
        req = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310 (http only)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = json.loads(exc.read() or b"{}").get("error", str(exc))
            if exc.code == 404:
                raise KeyError(detail) from None
            raise ValueError(detail) from None

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/health")
        return result

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.health()
                return
            except (OSError, ValueError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def register_dataset(
        self,
        dataset_arn: str,
        schema: Mapping[str, Any] | str | None = None,
        *,
        status: str = "ACTIVE",
        access_denied: bool = False,
    ) -> dict[str, Any]:
        if isinstance(schema, str):
            schema = json.loads(schema)
        payload = {
            "datasetArn": dataset_arn,
            "schema": schema,
            "status": status,
            "accessDenied": access_denied,
        }
        result: dict[str, Any] = self._call("POST", "/datasets", payload)
        return result

    def datasets(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/datasets")["datasets"]
        return result

    def items(self, dataset_arn: str) -> dict[str, dict[str, Any]]:
        result: dict[str, dict[str, Any]] = self._call("GET", "/items", query={"datasetArn": dataset_arn})["items"]
        return result

    def bulk_items(self, dataset_arn: str) -> dict[str, dict[str, Any]]:
        result: dict[str, dict[str, Any]] = self._call("GET", "/bulk", query={"datasetArn": dataset_arn})["items"]
        return result

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/stats")
        return result

    def calls(self, since: int = 0) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/calls", query={"since": since})["calls"]
        return result

    def accepted(self, since: int = 0) -> list[dict[str, Any]]:
        """The accepted-items log; ``ValueError`` when the emulator runs without ``log_items``."""
        result: list[dict[str, Any]] = self._call("GET", "/accepted", query={"since": since})["accepted"]
        return result

    def config(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/config")
        return result

    def configure(self, **changes: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/config", changes)
        return result

    def inject(self, *errors: str, operation: str = "PutItems") -> None:
        self._call("POST", "/inject", {"errors": list(errors), "operation": operation})

    def reset(self, *, datasets: bool = False) -> None:
        self._call("POST", "/reset", {"datasets": datasets})


# ------------------------------------------------------------------------------------------------ CLI


def add_quota_arguments(parser: argparse.ArgumentParser) -> None:
    """The quota-model options, shared by this module's command line and ``python -m localcloud up``."""
    parser.add_argument(
        "--quota-model",
        choices=QUOTA_MODELS,
        default=DEFAULT_MODEL,
        help=f"how the per-second quota counts (default {DEFAULT_MODEL}, the most pessimistic per-second count)",
    )
    parser.add_argument("--quota-burst", type=float, default=None, help="token-bucket burst (default: --tps)")
    parser.add_argument(
        "--foreign-share", type=float, default=0.0, help="share of the quota another writer uses (0..1)"
    )
    parser.add_argument(
        "--request-jitter-ms", type=float, default=0.0, help="network delay before a call reaches the quota"
    )


def quota_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "quota_model": args.quota_model,
        "quota_burst": args.quota_burst,
        "foreign_share": args.foreign_share,
        "request_jitter_ms": args.request_jitter_ms,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localcloud.personalize_emulator",
        description="Run the Personalize Events emulator in the foreground.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: an ephemeral port (printed on start)")
    parser.add_argument("--dataset", action="append", default=[], metavar="ARN", help="register a dataset (repeat)")
    parser.add_argument(
        "--schema",
        action="append",
        default=[],
        metavar="FILE",
        help="Avro schema (or connector mapping document) for the --dataset at the same position",
    )
    parser.add_argument("--tps", type=float, default=10, help="PutItems calls/s per dataset group; 0: unlimited")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--throttle-rate", type=float, default=0.0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--slow-rate", type=float, default=0.0)
    parser.add_argument("--slow-ms", type=float, default=0.0)
    parser.add_argument("--strict-types", action="store_true", help="reject numbers sent as numeric strings")
    parser.add_argument("--auto-create", action="store_true", help="unknown dataset ARNs are created on first use")
    add_quota_arguments(parser)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--log-items", action="store_true", help="keep the accepted-items log (/_emulator/accepted)")
    parser.add_argument(
        "--s3-endpoint-url", default=None, help="where import jobs read their CSV (default: AWS_ENDPOINT_URL_S3)"
    )
    parser.add_argument("--ready-file", type=Path, help="write the endpoint URL here once listening")
    args = parser.parse_args(argv)
    if len(args.schema) > len(args.dataset):
        parser.error("more --schema than --dataset options")

    emu = PersonalizeEmulator(
        args.host,
        args.port,
        tps=args.tps,
        latency_ms=args.latency_ms,
        jitter_ms=args.jitter_ms,
        throttle_rate=args.throttle_rate,
        error_rate=args.error_rate,
        slow_rate=args.slow_rate,
        slow_ms=args.slow_ms,
        strict_types=args.strict_types,
        auto_create=args.auto_create,
        **quota_kwargs(args),
        seed=args.seed,
        log_items=args.log_items,
        s3_endpoint_url=args.s3_endpoint_url,
    )
    try:
        for i, arn in enumerate(args.dataset):
            schema = json.loads(Path(args.schema[i]).read_text()) if i < len(args.schema) else None
            emu.register_dataset(arn, schema)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    emu.start()
    print(
        f"Personalize Events emulator listening on {emu.endpoint_url} "
        f"(admin: {emu.endpoint_url}{ADMIN_PREFIX}/stats, tps={args.tps} {args.quota_model}, "
        f"latency={args.latency_ms} ms)",
        flush=True,
    )
    if args.ready_file:
        args.ready_file.write_text(emu.endpoint_url + "\n")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        emu.stop()
    print(json.dumps(emu.stats(), indent=2), file=sys.stderr)
    return 0
