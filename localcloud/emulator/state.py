"""The dataset state and the API's request handling: datasets, items, the quota, faults, the call log and
counters (everything but the HTTP server). Thread-safe."""

from __future__ import annotations

import collections
import json
import random
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from localcloud.emulator.errors import (
    _DEFAULT_MESSAGES,
    _FAULT_CODE_BY_STATUS,
    ERROR_STATUS,
    EmulatorError,
    _outcome_of,
    _validation,
)
from localcloud.emulator.imports import FULL_MAX_BYTES, INCREMENTAL_MAX_BYTES, TARGET_PREFIX, ImportJobs
from localcloud.emulator.quota import DEFAULT_MODEL, QUOTA_MODELS, Quotas, QuotaSettings
from localcloud.emulator.schema import Schema, _jlen

SIGNING_NAME = "personalize"
ARN_MAX = 256
ARN_PATTERN = r"arn:([a-z\d-]+):personalize:.*:.*:.+"
_ARN_RE = re.compile(ARN_PATTERN)
_DATASET_ARN_RE = re.compile(
    r"arn:(?P<partition>[a-z\d-]+):personalize:(?P<region>[^:]*):(?P<account>[^:]*):"
    r"dataset/(?P<group>[^/]+)/(?P<kind>[^/]+)"
)

_CREDENTIAL_RE = re.compile(r"Credential=([^/,\s]+)/(\d{8})/([^/,\s]+)/([^/,\s]+)/aws4_request")
MAX_RECORDS_PER_CALL = 10
ID_MAX = 256
QUOTA_WINDOW_S = 1.0


def dataset_group_of(dataset_arn: str) -> str:
    """The dataset-group ARN of a dataset ARN (the ARN itself if it has no ``dataset/<g>/<t>`` form)."""
    m = _DATASET_ARN_RE.fullmatch(dataset_arn)
    if not m:
        return dataset_arn
    return f"arn:{m['partition']}:personalize:{m['region']}:{m['account']}:dataset-group/{m['group']}"


def _dataset_kind(dataset_arn: str) -> str | None:
    m = _DATASET_ARN_RE.fullmatch(dataset_arn)
    return m["kind"].upper() if m else None


# ---------------------------------------------------------------------------------------------- state


@dataclass
class Dataset:
    arn: str
    group: str
    kind: str | None
    schema: Schema | None = None
    status: str = "ACTIVE"
    access_denied: bool = False
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # the PutItems layer
    writes: int = 0
    bulk: dict[str, dict[str, Any]] = field(default_factory=dict)  # the bulk layer (import jobs)

    def visible(self) -> dict[str, dict[str, Any]]:
        """What the dataset exposes: an item's PutItems version if it has one, else its bulk version."""
        if not self.bulk:
            return self.records
        return {**self.bulk, **self.records}

    def describe(self) -> dict[str, Any]:
        return {
            "datasetArn": self.arn,
            "datasetGroupArn": self.group,
            "type": self.kind,
            "status": self.status,
            "accessDenied": self.access_denied,
            "schema": self.schema.avro if self.schema else None,
            "records": len(self.visible()),
            "writes": self.writes,
            "bulkRecords": len(self.bulk),
        }


@dataclass
class CallRecord:
    """One API call as the emulator answered it (``ts`` is ``time.time()`` on arrival)."""

    seq: int
    ts: float
    operation: str
    dataset_arn: str | None
    dataset_group: str | None
    records: int
    outcome: str  # ok | throttled | invalid | not_found | in_use | access_denied | fault | auth | malformed
    status: int
    error: str | None
    injected: bool
    delay_ms: float


@dataclass
class AcceptedCall:
    """One accepted PutItems / PutUsers call in the accepted-items log (``ts``: ``time.time()`` at the write)."""

    seq: int  # the call's ``seq`` in the call log
    ts: float
    operation: str
    dataset_arn: str
    items: list[tuple[str, dict[str, Any]]]  # (id, properties) in call order


@dataclass
class Config:
    tps: float | None = 10
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    throttle_rate: float = 0.0
    error_rate: float = 0.0
    error_status: int | None = None  # None: 500 or 503 at random
    slow_rate: float = 0.0
    slow_ms: float = 0.0
    strict_types: bool = False
    auto_create: bool = False
    quota_model: str = DEFAULT_MODEL  # see localcloud.emulator.quota
    quota_burst: float | None = None  # token bucket's burst; None: tps
    foreign_share: float = 0.0  # share of the quota another writer to the dataset group attempts
    request_jitter_ms: float = 0.0  # network delay before a call reaches the quota: uniform in [0, this]
    # Import jobs (localcloud.emulator.imports): the time per state, the size limits, and the assumption that an
    # INCREMENTAL import replaces items written with PutItems (AWS does not say; the pessimistic case).
    import_step_ms: float = 50.0
    import_full_max_bytes: int = FULL_MAX_BYTES
    import_incremental_max_bytes: int = INCREMENTAL_MAX_BYTES
    incremental_replaces_put_items: bool = True

    _CAMEL = {
        "tps": "tps",
        "latencyMs": "latency_ms",
        "jitterMs": "jitter_ms",
        "throttleRate": "throttle_rate",
        "errorRate": "error_rate",
        "errorStatus": "error_status",
        "slowRate": "slow_rate",
        "slowMs": "slow_ms",
        "strictTypes": "strict_types",
        "autoCreate": "auto_create",
        "quotaModel": "quota_model",
        "quotaBurst": "quota_burst",
        "foreignShare": "foreign_share",
        "requestJitterMs": "request_jitter_ms",
        "importStepMs": "import_step_ms",
        "importFullMaxBytes": "import_full_max_bytes",
        "importIncrementalMaxBytes": "import_incremental_max_bytes",
        "incrementalReplacesPutItems": "incremental_replaces_put_items",
    }

    def quota_settings(self) -> QuotaSettings:
        return QuotaSettings(self.tps, self.quota_model, self.quota_burst, self.foreign_share)

    def to_json(self) -> dict[str, Any]:
        return {camel: getattr(self, snake) for camel, snake in self._CAMEL.items()}


@dataclass(frozen=True)
class _Op:
    name: str
    list_key: str
    id_key: str
    props_max: int
    kind: str
    id_field: str


_OPS = {
    "/items": _Op("PutItems", "items", "itemId", 32000, "ITEMS", "ITEM_ID"),
    "/users": _Op("PutUsers", "users", "userId", 24000, "USERS", "USER_ID"),
}

_OPERATION_NAMES = frozenset({"PutItems", "PutUsers", "PutEvents"})


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


_COUNTERS = (
    "calls",
    "accepted",
    "records_written",
    "throttled",
    "throttled_quota",
    "throttled_injected",
    "invalid",
    "not_found",
    "in_use",
    "access_denied",
    "auth_failures",
    "malformed",
    "server_errors",
    "faults_injected",
    "slow_responses",
)


def _new_counters() -> dict[str, int]:
    return dict.fromkeys(_COUNTERS, 0)


class EmulatorState:
    """Datasets, items, quota, faults and counters: everything but the HTTP server. Thread-safe."""

    def __init__(
        self,
        config: Config | None = None,
        *,
        seed: int | None = None,
        call_log_limit: int = 1_000_000,
        log_items: bool = False,
    ):
        self._lock = threading.RLock()
        #: ``None`` unless ``log_items``: every accepted call's items, with the time they were written.
        self._item_log: collections.deque[AcceptedCall] | None = (
            collections.deque(maxlen=call_log_limit) if log_items else None
        )
        self.config = config or Config()
        self._validate_config(self.config)
        self._rng = random.Random(seed)
        self._datasets: dict[str, Dataset] = {}
        self._quota = Quotas(self.config.quota_settings(), random.Random(self._rng.random()))
        self._scripted: dict[str, collections.deque[str]] = collections.defaultdict(collections.deque)
        self._call_log: collections.deque[CallRecord] = collections.deque(maxlen=call_log_limit)
        self._seq = 0
        self._counters: dict[str, dict[str, int]] = collections.defaultdict(_new_counters)
        self._items_per_call: collections.Counter[int] = collections.Counter()
        self.endpoint_url = ""
        self.imports = ImportJobs(self)

    # ---- admin ---------------------------------------------------------------------------------------
    def register_dataset(
        self,
        dataset_arn: str,
        schema: Mapping[str, Any] | str | None = None,
        *,
        status: str = "ACTIVE",
        access_denied: bool = False,
    ) -> dict[str, Any]:
        if not isinstance(dataset_arn, str) or _jlen(dataset_arn) > ARN_MAX or not _ARN_RE.fullmatch(dataset_arn):
            raise ValueError(f"not a valid Personalize dataset ARN: {dataset_arn!r}")
        kind = _dataset_kind(dataset_arn)
        compiled = Schema.load(schema, id_field="USER_ID" if kind == "USERS" else "ITEM_ID")
        with self._lock:
            ds = self._datasets.get(dataset_arn)
            if ds is None:
                ds = self._datasets[dataset_arn] = Dataset(dataset_arn, dataset_group_of(dataset_arn), kind)
            ds.schema, ds.status, ds.access_denied = compiled, status, access_denied
            return ds.describe()

    def datasets(self) -> list[dict[str, Any]]:
        with self._lock:
            return [ds.describe() for ds in self._datasets.values()]

    def items(self, dataset_arn: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            ds = self._datasets.get(dataset_arn)
            if ds is None:
                raise KeyError(f"dataset not registered: {dataset_arn}")
            return json.loads(json.dumps(ds.visible()))  # a deep copy

    def bulk_items(self, dataset_arn: str) -> dict[str, dict[str, Any]]:
        """The dataset's bulk layer (what import jobs wrote), for checks."""
        with self._lock:
            ds = self._datasets.get(dataset_arn)
            if ds is None:
                raise KeyError(f"dataset not registered: {dataset_arn}")
            return json.loads(json.dumps(ds.bulk))

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change knobs at runtime; keys are Config field names (snake_case) or their camelCase forms."""
        with self._lock:
            new = Config(**asdict(self.config))
            for key, value in changes.items():
                snake = Config._CAMEL.get(key, key)
                if snake not in Config._CAMEL.values():
                    raise ValueError(f"unknown setting: {key}")
                setattr(new, snake, value)
            self._validate_config(new)
            self.config = new
            if new.quota_settings() != self._quota.settings:  # a new model starts from a fresh count
                self._quota = Quotas(new.quota_settings(), random.Random(self._rng.random()))
            return new.to_json()

    @staticmethod
    def _validate_config(c: Config) -> None:
        for name in ("throttle_rate", "error_rate", "slow_rate"):
            v = getattr(c, name)
            if not isinstance(v, int | float) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        for name in ("latency_ms", "jitter_ms", "slow_ms", "request_jitter_ms", "import_step_ms"):
            v = getattr(c, name)
            if not isinstance(v, int | float) or v < 0:
                raise ValueError(f"{name} must be >= 0")
        if c.tps is not None and (not isinstance(c.tps, int | float) or c.tps < 0):
            raise ValueError("tps must be >= 0 (0 or None: unlimited)")
        if c.quota_model not in QUOTA_MODELS:
            raise ValueError(f"quota_model must be one of {', '.join(QUOTA_MODELS)}")
        if c.quota_burst is not None and (not isinstance(c.quota_burst, int | float) or c.quota_burst < 1):
            raise ValueError("quota_burst must be >= 1 (None: tps)")
        if not isinstance(c.foreign_share, int | float) or not 0.0 <= c.foreign_share < 1.0:
            raise ValueError("foreign_share must be in [0, 1)")
        if c.error_status is not None and c.error_status not in _FAULT_CODE_BY_STATUS:
            raise ValueError(f"error_status must be one of {sorted(_FAULT_CODE_BY_STATUS)} or None")

    def inject(self, *errors: str, operation: str = "PutItems") -> None:
        """Answer the next ``len(errors)`` calls of ``operation`` with these codes, in order."""
        if operation not in _OPERATION_NAMES:
            raise ValueError(f"unknown operation: {operation}")
        for code in errors:
            if code not in ERROR_STATUS:
                raise ValueError(f"unknown error code: {code} (known: {sorted(ERROR_STATUS)})")
        with self._lock:
            self._scripted[operation].extend(errors)

    def reset(self, *, datasets: bool = False) -> None:
        """Forget items, counters, the call log, quota windows and scripted errors (and datasets if asked).

        Knobs (tps, latency, fault rates) are kept; use :meth:`configure` to change them.
        """
        with self._lock:
            if datasets:
                self._datasets.clear()
            for ds in self._datasets.values():
                ds.records.clear()
                ds.bulk.clear()
                ds.writes = 0
            self.imports.reset()
            self._quota.clear()
            self._scripted.clear()
            self._call_log.clear()
            if self._item_log is not None:
                self._item_log.clear()
            self._counters.clear()
            self._items_per_call.clear()

    def calls(self, since: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(r) for r in self._call_log if r.seq >= since]

    @property
    def logs_items(self) -> bool:
        return self._item_log is not None

    def accepted(self, since: int = 0) -> list[dict[str, Any]]:
        """The accepted-items log (entries with ``seq >= since``); raises ``RuntimeError`` without ``log_items``."""
        if self._item_log is None:
            raise RuntimeError("the accepted-items log is off: start the emulator with log_items=True")
        with self._lock:
            return [
                {
                    "seq": e.seq,
                    "ts": e.ts,
                    "operation": e.operation,
                    "dataset_arn": e.dataset_arn,
                    "items": [[rid, dict(props)] for rid, props in e.items],
                }
                for e in self._item_log
                if e.seq >= since
            ]

    def stats(self) -> dict[str, Any]:
        """Counters summed over all operations, ``by_operation``, and PutItems rates from the call log.

        ``items_per_call`` is records written / accepted calls of PutItems; ``calls_per_second`` gives, for
        PutItems, the mean arrival rate over the logged span and the most calls (all, and accepted only)
        that arrived for one dataset group within any 1-second window.
        """
        with self._lock:
            total = _new_counters()
            for counters in self._counters.values():
                for k, v in counters.items():
                    total[k] += v
            put_items = self._counters.get("PutItems", _new_counters())
            log = [r for r in self._call_log if r.operation == "PutItems"]
            out: dict[str, Any] = dict(total)
            out["items_written"] = put_items["records_written"]
            out["items_per_call"] = (
                put_items["records_written"] / put_items["accepted"] if put_items["accepted"] else 0.0
            )
            out["items_per_call_histogram"] = {str(k): v for k, v in sorted(self._items_per_call.items())}
            out["throttled_share"] = put_items["throttled"] / put_items["calls"] if put_items["calls"] else 0.0
            out["by_operation"] = {op: dict(c) for op, c in self._counters.items()}
            out["calls_per_second"] = _rate_stats(log)
            out["datasets"] = {arn: len(ds.records) for arn, ds in self._datasets.items()}
            out["quota"] = self._quota.describe()
            out["call_log_size"] = len(self._call_log)
            return out

    # ---- the API -------------------------------------------------------------------------------------
    def handle_api(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Response:
        """Answer one real-API request (everything outside ``/_emulator``)."""
        jitter_ms = self.config.request_jitter_ms
        if jitter_ms:  # the network between the client and the service: the call reaches the quota later
            with self._lock:
                wait = self._rng.uniform(0.0, jitter_ms) / 1000.0
            time.sleep(wait)
        arrival_wall, arrival = time.time(), time.monotonic()
        target = _header(headers, "x-amz-target") or ""
        if method == "POST" and target.startswith(TARGET_PREFIX):  # the control plane (JSON 1.1): import jobs
            try:
                _check_sigv4(headers)
            except EmulatorError as err:
                return _json_error(err.status, err.code, err.message)
            status, payload = self.imports.handle(target, body)
            return Response(status, json.dumps(payload).encode(), {"Content-Type": "application/x-amz-json-1.1"})
        route = path.split("?", 1)[0].rstrip("/") or "/"
        op = _OPS.get(route)
        name = op.name if op else ("PutEvents" if route == "/events" else None)
        if method != "POST" or name is None:
            return self._error(EmulatorError("UnknownOperationException", f"Unknown operation {method} {route}"))
        ctx = _CallCtx(name, arrival_wall)
        try:
            _check_sigv4(headers)
            doc = _parse_body(body)
            if op is None:
                self._put_events(doc, ctx)
                self._maybe_fault(ctx)
                return self._success(ctx)
            return self._put_records(op, doc, ctx, arrival)
        except EmulatorError as err:
            return self._error(err, ctx)

    def _put_records(self, op: _Op, doc: dict[str, Any], ctx: _CallCtx, arrival: float) -> Response:
        arn = doc.get("datasetArn")
        records = doc.get(op.list_key)
        ctx.records = len(records) if isinstance(records, list) else 0
        if arn is None:
            raise _validation(["Value null at 'datasetArn' failed to satisfy constraint: Member must not be null"])
        if not isinstance(arn, str):
            raise EmulatorError("SerializationException", "datasetArn must be a string")
        ctx.dataset_arn = arn
        arn_problems = []
        if _jlen(arn) > ARN_MAX:
            arn_problems.append(
                f"Value '{arn}' at 'datasetArn' failed to satisfy constraint: "
                f"Member must have length less than or equal to {ARN_MAX}"
            )
        if not _ARN_RE.fullmatch(arn):
            arn_problems.append(
                f"Value '{arn}' at 'datasetArn' failed to satisfy constraint: "
                f"Member must satisfy regular expression pattern: {ARN_PATTERN}"
            )
        if arn_problems:
            raise _validation(arn_problems)
        group = dataset_group_of(arn)
        ctx.dataset_group = group
        self._maybe_fault(ctx)
        with self._lock:
            if not self._quota.try_acquire((op.name, group), arrival):
                ctx.quota_throttled = True
                raise EmulatorError("ThrottlingException", "Rate exceeded")
            ds = self._datasets.get(arn)
            if ds is None and self.config.auto_create:
                ds = self._datasets[arn] = Dataset(arn, group, _dataset_kind(arn))
        if ds is None:
            raise EmulatorError("ResourceNotFoundException", f"Could not find the dataset: {arn}")
        if ds.access_denied:
            raise EmulatorError(
                "AccessDeniedException",
                f"User is not authorized to perform: personalize:{op.name} on resource: {arn}",
            )
        if ds.status != "ACTIVE":
            raise EmulatorError("ResourceInUseException", f"The dataset {arn} is in status {ds.status}")
        if ds.kind in ("ITEMS", "USERS", "INTERACTIONS", "ACTIONS") and ds.kind != op.kind:
            raise EmulatorError(
                "InvalidInputException", f"{op.name} requires a dataset of type {op.kind}; {arn} is {ds.kind}"
            )
        parsed = self._validate_records(op, records, ds)
        with self._lock:
            for record_id, props in parsed:
                ds.records[record_id] = props  # full replace: latest call wins
            ds.writes += len(parsed)
            ctx.written = len(parsed)
            if self._item_log is not None:
                ctx.accepted_items, ctx.accepted_at = parsed, time.time()
        return self._success(ctx)

    def _validate_records(self, op: _Op, records: Any, ds: Dataset) -> list[tuple[str, dict[str, Any]]]:
        if records is None:
            raise _validation([f"Value null at '{op.list_key}' failed to satisfy constraint: Member must not be null"])
        if not isinstance(records, list):
            raise EmulatorError("SerializationException", f"{op.list_key} must be a list")
        if not 1 <= len(records) <= MAX_RECORDS_PER_CALL:
            bound = "greater than or equal to 1" if not records else f"less than or equal to {MAX_RECORDS_PER_CALL}"
            raise _validation(
                [f"Value at '{op.list_key}' failed to satisfy constraint: Member must have length {bound}"]
            )
        problems: list[str] = []
        typed: list[tuple[str, str | None, str]] = []
        for i, rec in enumerate(records, start=1):
            where = f"{op.list_key}.{i}.member"
            if not isinstance(rec, dict):
                raise EmulatorError("SerializationException", f"{where} must be an object")
            rid, props = rec.get(op.id_key), rec.get("properties")
            if rid is None:
                problems.append(
                    f"Value null at '{where}.{op.id_key}' failed to satisfy constraint: Member must not be null"
                )
                continue
            if not isinstance(rid, str) or not (props is None or isinstance(props, str)):
                raise EmulatorError("SerializationException", f"{where}: {op.id_key} and properties must be strings")
            if not 1 <= _jlen(rid) <= ID_MAX:
                problems.append(
                    f"Value at '{where}.{op.id_key}' failed to satisfy constraint: "
                    f"Member must have length between 1 and {ID_MAX}"
                )
            if props is not None and not 1 <= _jlen(props) <= op.props_max:
                problems.append(
                    f"Value at '{where}.properties' failed to satisfy constraint: "
                    f"Member must have length between 1 and {op.props_max}"
                )
            typed.append((rid, props, where))
        if problems:
            raise _validation(problems)
        out: list[tuple[str, dict[str, Any]]] = []
        for rid, props, where in typed:
            parsed = _parse_properties(props, where)
            if ds.schema is not None:
                problem = ds.schema.validate(parsed, where, strict_types=self.config.strict_types)
                if problem:
                    raise EmulatorError("InvalidInputException", problem)
            out.append((rid, parsed))
        return out

    def _put_events(self, doc: dict[str, Any], ctx: _CallCtx) -> None:
        problems = []
        for key in ("trackingId", "sessionId"):
            v = doc.get(key)
            if not isinstance(v, str) or not 1 <= _jlen(v) <= ID_MAX:
                problems.append(
                    f"Value at '{key}' failed to satisfy constraint: Member must have length between 1 and {ID_MAX}"
                )
        events = doc.get("eventList")
        if not isinstance(events, list) or not 1 <= len(events) <= MAX_RECORDS_PER_CALL:
            problems.append(
                "Value at 'eventList' failed to satisfy constraint: "
                f"Member must have length between 1 and {MAX_RECORDS_PER_CALL}"
            )
        else:
            ctx.records = len(events)
            for i, ev in enumerate(events, start=1):
                if not isinstance(ev, dict) or not ev.get("eventType") or ev.get("sentAt") is None:
                    problems.append(f"Value at 'eventList.{i}.member' must have eventType and sentAt")
        if problems:
            raise _validation(problems)
        ctx.written = ctx.records

    def _maybe_fault(self, ctx: _CallCtx) -> None:
        with self._lock:
            scripted = self._scripted.get(ctx.operation)
            code = scripted.popleft() if scripted else None
            c = self.config
            if code is None and c.throttle_rate and self._rng.random() < c.throttle_rate:
                code = "ThrottlingException"
            if code is None and c.error_rate and self._rng.random() < c.error_rate:
                code = _FAULT_CODE_BY_STATUS[c.error_status or self._rng.choice((500, 503))]
        if code is not None:
            ctx.injected = True
            raise EmulatorError(code, _DEFAULT_MESSAGES.get(code, f"{code} (injected)"))

    # ---- responses and bookkeeping -------------------------------------------------------------------
    def _delay_s(self, ctx: _CallCtx) -> float:
        c = self.config
        delay = c.latency_ms + (self._rng.uniform(0, c.jitter_ms) if c.jitter_ms else 0.0)
        if c.slow_rate and self._rng.random() < c.slow_rate:
            delay += c.slow_ms
            ctx.slow = True
        return delay / 1000.0

    def _success(self, ctx: _CallCtx) -> Response:
        with self._lock:
            delay = self._delay_s(ctx)
            self._log(ctx, "ok", 200, None, delay)
        return Response(200, b"", {"Content-Type": "application/json"}, delay)

    def _error(self, err: EmulatorError, ctx: _CallCtx | None = None) -> Response:
        body = json.dumps({"message": err.message}).encode()
        headers = {"Content-Type": "application/json", "X-Amzn-ErrorType": err.code}
        if ctx is None:
            return Response(err.status, body, headers)
        with self._lock:
            delay = self._delay_s(ctx)
            self._log(ctx, _outcome_of(err.code), err.status, err.code, delay)
        return Response(err.status, body, headers, delay)

    def _log(self, ctx: _CallCtx, outcome: str, status: int, error: str | None, delay_s: float) -> None:
        self._seq += 1
        rec = CallRecord(
            seq=self._seq,
            ts=ctx.ts,
            operation=ctx.operation,
            dataset_arn=ctx.dataset_arn,
            dataset_group=ctx.dataset_group,
            records=ctx.records,
            outcome=outcome,
            status=status,
            error=error,
            injected=ctx.injected,
            delay_ms=round(delay_s * 1000.0, 3),
        )
        self._call_log.append(rec)
        if self._item_log is not None and outcome == "ok" and ctx.accepted_items is not None and ctx.dataset_arn:
            self._item_log.append(
                AcceptedCall(rec.seq, ctx.accepted_at, ctx.operation, ctx.dataset_arn, ctx.accepted_items)
            )
        c = self._counters[ctx.operation]
        c["calls"] += 1
        if outcome == "ok":
            c["accepted"] += 1
            c["records_written"] += ctx.written
            if ctx.operation == "PutItems":
                self._items_per_call[ctx.written] += 1
        elif outcome == "throttled":
            c["throttled"] += 1
            c["throttled_quota" if ctx.quota_throttled else "throttled_injected"] += 1
        elif outcome in ("invalid", "not_found", "in_use", "access_denied", "malformed"):
            c[outcome] += 1
        elif outcome == "auth":
            c["auth_failures"] += 1
        if status >= 500:
            c["server_errors"] += 1
        if ctx.injected:
            c["faults_injected"] += 1
        if ctx.slow:
            c["slow_responses"] += 1
            c["faults_injected"] += 1


@dataclass
class _CallCtx:
    operation: str
    ts: float
    dataset_arn: str | None = None
    dataset_group: str | None = None
    records: int = 0
    written: int = 0
    injected: bool = False
    quota_throttled: bool = False
    slow: bool = False
    accepted_items: list[tuple[str, dict[str, Any]]] | None = None  # only with log_items
    accepted_at: float = 0.0


def _check_sigv4(headers: Mapping[str, str]) -> None:
    auth = _header(headers, "authorization")
    if not auth:
        raise EmulatorError("MissingAuthenticationTokenException", "Missing Authentication Token")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        raise EmulatorError(
            "IncompleteSignatureException", "Authorization header requires the AWS4-HMAC-SHA256 algorithm"
        )
    m = _CREDENTIAL_RE.search(auth)
    if not m or "Signature=" not in auth or "SignedHeaders=" not in auth:
        raise EmulatorError(
            "IncompleteSignatureException",
            "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters",
        )
    if m.group(4) != SIGNING_NAME:
        raise EmulatorError(
            "InvalidSignatureException", f"Credential should be scoped to correct service: '{SIGNING_NAME}'."
        )


def _json_error(status: int, code: str, message: str) -> Response:
    body = json.dumps({"__type": code, "message": message}).encode()
    return Response(status, body, {"Content-Type": "application/x-amz-json-1.1"})


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for k, v in headers.items():
        if k.lower() == name:
            return v
    return None


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON")


def _parse_body(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body.decode("utf-8") or "{}", parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise EmulatorError("SerializationException", f"Request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise EmulatorError("SerializationException", "Request body must be a JSON object")
    return doc


def _parse_properties(props: str | None, where: str) -> dict[str, Any]:
    if props is None:
        return {}
    try:
        parsed = json.loads(props, parse_constant=_reject_constant)
    except ValueError:
        raise EmulatorError("InvalidInputException", f"{where}.properties is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise EmulatorError("InvalidInputException", f"{where}.properties must be a JSON object")
    return parsed


def _rate_stats(log: Sequence[CallRecord]) -> dict[str, Any]:
    if not log:
        return {"mean": 0.0, "max_in_1s": 0, "max_accepted_in_1s": 0}
    span = log[-1].ts - log[0].ts
    by_group: dict[str | None, list[CallRecord]] = collections.defaultdict(list)
    for r in log:
        by_group[r.dataset_group].append(r)
    max_all = max(_max_in_window([r.ts for r in rs]) for rs in by_group.values())
    max_ok = max(_max_in_window([r.ts for r in rs if r.outcome == "ok"]) for rs in by_group.values())
    return {
        "mean": len(log) / span if span > 0 else float(len(log)),
        "max_in_1s": max_all,
        "max_accepted_in_1s": max_ok,
    }


def _max_in_window(ts: list[float], window: float = QUOTA_WINDOW_S) -> int:
    ts = sorted(ts)
    best, lo = 0, 0
    for hi, t in enumerate(ts):
        while ts[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best
