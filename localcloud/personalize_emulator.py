"""Amazon Personalize Events emulator: a local, wire-compatible stand-in for ``personalize-events``.

Why this is hand-written
------------------------
Nothing installed here mocks ``personalize-events``: moto 5.2.5 has no backend for it (server mode answers
unknown services with an error), and botocore's ``Stubber`` only works inside one process, so neither the
AWS CLI, nor the event source mapping runner's worker processes, nor a user's own script could reach it.
The local cloud needs a real HTTP endpoint that boto3 and the AWS CLI talk to *unchanged* (``endpoint_url``,
``AWS_ENDPOINT_URL_PERSONALIZE_EVENTS`` or ``--endpoint-url``), that enforces the service's limits and quota,
and that exposes what landed. That is this module: standard library only (``http.server``).

Protocol (from botocore's model ``personalize-events/2018-03-22/service-2.json``)
-------------------------------------------------------------------------------
rest-json, SigV4 with signing name ``personalize``. ``POST /items`` (PutItems), ``POST /users`` (PutUsers) and
``POST /events`` (PutEvents, validated lightly and accepted). Success is an empty ``200``. Errors carry the
``X-Amzn-ErrorType`` header and a ``{"message": ...}`` body, which botocore's ``RestJSONParser`` maps to
``client.exceptions.<Code>``:

======================================  ======  ==========================================================
code                                    status  when
======================================  ======  ==========================================================
MissingAuthenticationTokenException     403     no ``Authorization`` header
IncompleteSignatureException            403     ``Authorization`` is not ``AWS4-HMAC-SHA256 Credential=..``
InvalidSignatureException               403     credential scope is not ``.../personalize/aws4_request``
AccessDeniedException                   403     dataset registered with ``access_denied=True``
SerializationException                  400     body is not a JSON object, or a member has the wrong JSON type
InvalidInputException                   400     a model constraint or the dataset's schema is violated
ThrottlingException                     400     quota exceeded or injected (botocore retries it: it is in
                                                both the standard and legacy throttling code lists)
ResourceNotFoundException               404     the dataset is not registered
ResourceInUseException                  409     the dataset's status is not ``ACTIVE``
InternalServerError / ServiceUnavailable 500/503 injected faults (botocore retries 500/502/503/504)
UnknownOperationException               404     any other path
======================================  ======  ==========================================================

The signature itself is never verified; only its presence and its credential scope are.

Order of checks for PutItems / PutUsers (one bad item fails the whole call; there is no per-item result):

1. route, 2. SigV4 presence and scope, 3. body is a JSON object, 4. ``datasetArn`` present, a string, at most
256 characters and fully matching ``arn:([a-z\\d-]+):personalize:.*:.*:.+``, 5. injected faults (scripted
errors first, then the random throttle / 5xx shares), 6. the quota, 7. the dataset exists, access, status
``ACTIVE`` and the dataset type (ITEMS for PutItems, USERS for PutUsers), 8. list 1..10, each id
1..256 characters, properties 1..32,000 characters (PutUsers: 24,000), a JSON object, then the dataset's
Avro schema, 9. write (full replace per id, latest call wins), 10. latency (plus the slow-response fault)
is applied before the response is written, so a "slow" call has already landed when the client times out.

Lengths are counted in Unicode code points, as Smithy's ``@length`` trait defines them (an emoji counts 1).

Schema checks (when the dataset has an Avro schema): property keys are the camelCase forms of the field names
(``NUMBER_OF_RATINGS`` -> ``numberOfRatings``); the id field (``ITEM_ID`` / ``USER_ID``) is not a property.
Rejected: unknown keys, ``null`` for a field without a ``"null"`` branch, a missing field that is not nullable
(an Avro ``default`` does not make it optional), a wrong JSON type, ints outside 32 bits / longs outside 64 bits,
a categorical string over 1,000 characters (the whole ``|``-joined value), any other non-textual string over
1,000 characters, a textual string over 20,000 characters (7,000 when it holds Chinese or Japanese characters:
the pessimistic reading of "7,000 for Chinese and Japanese"), a boolean spelt other than lower-case ``true`` /
``false``, and a ``CREATION_TIMESTAMP`` of 10^11 or more (milliseconds, where the service wants seconds).
Numbers sent as numeric strings (``{"numberOfRatings": "12"}``, the form used in the API reference's own
example) are accepted unless ``strict_types=True``. Without a schema, any JSON object is accepted.

Quota: per (operation, dataset group), counted by a pluggable model (:mod:`localcloud.emulator.quota`):
``sliding-window`` (the default: a call is admitted when fewer than ``tps`` calls were admitted for that key in
the last 1.0 s, measured on arrival), ``token-bucket`` (``quotaBurst``), ``fixed-window`` or ``strict-spacing``;
throttled calls do not consume quota, calls that fail validation later do. ``requestJitterMs`` delays each
call by a random network delay before it reaches the quota; ``foreignShare`` adds another writer that uses
that share of the dataset group's quota. The dataset group is derived from the ARN
(``arn:aws:personalize:<region>:<acct>:dataset/<group>/ITEMS`` belongs to
``arn:aws:personalize:<region>:<acct>:dataset-group/<group>``), so all datasets of one group share it.
PutEvents has no quota here.

Admin/read API (JSON, under ``/_emulator/``, which no real operation uses; not signed):

=======  =========================================  ==========================================================
GET      /_emulator/health                          ``{"status": "ok", "endpointUrl": ...}``
GET      /_emulator/config                          current knobs
POST     /_emulator/config                          patch knobs (``tps``, ``latencyMs``, ``jitterMs``,
                                                    ``throttleRate``, ``errorRate``, ``errorStatus``,
                                                    ``slowRate``, ``slowMs``, ``strictTypes``, ``autoCreate``,
                                                    ``quotaModel``, ``quotaBurst``, ``foreignShare``,
                                                    ``requestJitterMs``)
GET      /_emulator/datasets                        registered datasets
POST     /_emulator/datasets                        ``{"datasetArn", "schema"?, "status"?, "accessDenied"?}``
GET      /_emulator/items?datasetArn=ARN            ``{"datasetArn", "items": {id: properties}}``
GET      /_emulator/stats                           counters (see ``EmulatorState.stats``)
GET      /_emulator/calls?since=N                   call log entries with ``seq >= N``, and ``next``
GET      /_emulator/accepted?since=N                the accepted-items log (only with ``log_items``): per
                                                    accepted call ``seq``, ``ts`` (when its items were
                                                    written), ``dataset_arn`` and ``items`` ``[[id, props]]``
POST     /_emulator/inject                          ``{"errors": [code, ...], "operation": "PutItems"}``
POST     /_emulator/reset                           ``{"datasets": false}``
=======  =========================================  ==========================================================

The accepted-items log is off by default (``log_items=False``; ``--log-items`` on the command line): it keeps the
properties of every item of every accepted call, which is what a change-to-visible latency measurement needs (when
did an item first become visible in a given version) and what a long chaos run does not want to hold in memory.

Python: :class:`PersonalizeEmulator` (server in a background thread, context manager) and
:class:`EmulatorClient` (the same read/admin methods over HTTP, for another process). Command line::

    python -m localcloud.personalize_emulator --port 4599 --dataset ARN [--schema FILE] \
        --tps 10 --latency-ms 50
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import random
import re
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
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from localcloud.emulator.quota import DEFAULT_MODEL, QUOTA_MODELS, Quotas, QuotaSettings

__all__ = [
    "ADMIN_PREFIX",
    "ERROR_STATUS",
    "EmulatorClient",
    "EmulatorError",
    "EmulatorState",
    "PersonalizeEmulator",
    "Schema",
    "dataset_group_of",
    "main",
    "property_key",
]

ADMIN_PREFIX = "/_emulator"
SIGNING_NAME = "personalize"
ARN_MAX = 256
ARN_PATTERN = r"arn:([a-z\d-]+):personalize:.*:.*:.+"
_ARN_RE = re.compile(ARN_PATTERN)
_DATASET_ARN_RE = re.compile(
    r"arn:(?P<partition>[a-z\d-]+):personalize:(?P<region>[^:]*):(?P<account>[^:]*):"
    r"dataset/(?P<group>[^/]+)/(?P<kind>[^/]+)"
)
_WORD_SEPARATORS = re.compile(r"[^0-9A-Za-z]+")
_LEADING_CAPS = re.compile(r"^[A-Z]+")
_CREDENTIAL_RE = re.compile(r"Credential=([^/,\s]+)/(\d{8})/([^/,\s]+)/([^/,\s]+)/aws4_request")
MAX_RECORDS_PER_CALL = 10
ID_MAX = 256
CATEGORICAL_MAX = 1000
STRING_MAX = 1000  # any other (non-categorical, non-textual) string value
TEXTUAL_MAX = 20000
TEXTUAL_CJK_MAX = 7000  # textual values in Chinese or Japanese
#: CREATION_TIMESTAMP is in epoch *seconds*; from this value on it can only be milliseconds (year 5138 in seconds)
MILLIS_THRESHOLD = 100_000_000_000
# Han ideographs, Hiragana, Katakana (and their half-width forms): text the service reads as Chinese or Japanese
_CJK_RE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f]")
INT_RANGE = (-(2**31), 2**31 - 1)
LONG_RANGE = (-(2**63), 2**63 - 1)
QUOTA_WINDOW_S = 1.0

#: HTTP status of every error code the emulator can answer with (also the codes ``inject`` accepts).
ERROR_STATUS: dict[str, int] = {
    "InvalidInputException": 400,
    "SerializationException": 400,
    "ThrottlingException": 400,
    "MissingAuthenticationTokenException": 403,
    "IncompleteSignatureException": 403,
    "InvalidSignatureException": 403,
    "UnrecognizedClientException": 403,
    "AccessDeniedException": 403,
    "ResourceNotFoundException": 404,
    "UnknownOperationException": 404,
    "ResourceInUseException": 409,
    "InternalServerError": 500,
    "ServiceUnavailable": 503,
}
_FAULT_CODE_BY_STATUS = {500: "InternalServerError", 503: "ServiceUnavailable"}
_DEFAULT_MESSAGES = {
    "ThrottlingException": "Rate exceeded",
    "InternalServerError": "Internal server error (injected)",
    "ServiceUnavailable": "Service unavailable (injected)",
}


class EmulatorError(Exception):
    """An error answered in the rest-json shape; ``code`` must be a key of :data:`ERROR_STATUS`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = ERROR_STATUS[code]


def _jlen(text: str) -> int:
    """A string's length for the model's ``min``/``max``: Unicode code points (Smithy's ``@length`` rule).

    botocore counts the minimums the same way (``len``). An emoji counts 1, not 2 UTF-16 code units.
    """
    return len(text)


def property_key(field_name: str) -> str:
    """The PutItems property key of an Avro field: ``NUMBER_OF_RATINGS`` -> ``numberOfRatings``.

    Words are split on anything but ASCII letters and digits; an all-upper-case word is lower-cased; the first
    word starts lower-case (a leading run of capitals is lowered as one acronym: ``HTTPCode`` -> ``httpCode``)
    and the others start upper-case. So ``creationTimestamp`` and ``number_of_ratings`` map as expected.
    This matches ``connector.item.camel_case``; the service documents only the UPPER_SNAKE example.
    """
    words = [w.lower() if w.isupper() else w for w in _WORD_SEPARATORS.split(field_name) if w]
    if not words:
        return field_name
    first = words[0]
    caps = _LEADING_CAPS.match(first)
    if caps:
        run = caps.end() if caps.end() == len(first) else max(caps.end() - 1, 1)
        first = first[:run].lower() + first[run:]
    return first + "".join(w[0].upper() + w[1:] for w in words[1:])


def dataset_group_of(dataset_arn: str) -> str:
    """The dataset-group ARN of a dataset ARN (the ARN itself if it has no ``dataset/<g>/<t>`` form)."""
    m = _DATASET_ARN_RE.fullmatch(dataset_arn)
    if not m:
        return dataset_arn
    return f"arn:{m['partition']}:personalize:{m['region']}:{m['account']}:dataset-group/{m['group']}"


def _dataset_kind(dataset_arn: str) -> str | None:
    m = _DATASET_ARN_RE.fullmatch(dataset_arn)
    return m["kind"].upper() if m else None


# --------------------------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class FieldSpec:
    """One Avro field as PutItems sees it."""

    name: str
    key: str
    types: tuple[str, ...]
    nullable: bool
    has_default: bool
    categorical: bool
    textual: bool


_SCALARS = frozenset({"string", "int", "long", "float", "double", "boolean"})
_INT_STR_RE = re.compile(r"[+-]?\d+")
_FLOAT_STR_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


class Schema:
    """A flat Avro record schema of a Personalize dataset, compiled for property validation."""

    def __init__(self, avro: Mapping[str, Any], *, id_field: str = "ITEM_ID") -> None:
        fields = avro.get("fields")
        if avro.get("type", "record") != "record" or not isinstance(fields, list):
            raise ValueError("schema must be an Avro record with a 'fields' list")
        self.avro = dict(avro)
        self.id_field = id_field
        self.fields: dict[str, FieldSpec] = {}
        for f in fields:
            if not isinstance(f, Mapping) or not isinstance(f.get("name"), str):
                raise ValueError(f"schema field must be an object with a name: {f!r}")
            if f["name"] in (id_field, "ITEM_ID", "USER_ID"):
                continue
            types, nullable = _parse_avro_type(f["name"], f.get("type"))
            spec = FieldSpec(
                name=f["name"],
                key=property_key(f["name"]),
                types=types,
                nullable=nullable,
                has_default="default" in f,
                categorical=bool(f.get("categorical")),
                textual=bool(f.get("textual")),
            )
            self.fields[spec.key] = spec

    @classmethod
    def load(cls, document: Mapping[str, Any] | str | None, *, id_field: str = "ITEM_ID") -> Schema | None:
        """Accept an Avro schema (dict or JSON text), a connector mapping document, or None."""
        if document is None:
            return None
        if isinstance(document, str):
            document = json.loads(document)
        if not isinstance(document, Mapping):
            raise ValueError("schema must be a JSON object")
        if not isinstance(document.get("fields"), list) and "schema" in document:
            return cls.load(document["schema"], id_field=id_field)
        return cls(document, id_field=id_field)

    def validate(self, props: Mapping[str, Any], where: str, *, strict_types: bool = False) -> str | None:
        """Return why ``props`` breaks the schema (never quoting a value), or None if it conforms."""
        for key in props:
            if key not in self.fields:
                return f"{where}: property '{key}' is not a field of the dataset schema"
        for key, spec in self.fields.items():
            if key not in props:
                if spec.nullable:  # an Avro default does not make a field optional in PutItems
                    continue
                return f"{where}: required property '{key}' ({spec.name}) is missing"
            problem = _check_value(spec, props[key], strict_types)
            if problem:
                return f"{where}: property '{key}' ({spec.name}) {problem}"
        return None


def _parse_avro_type(name: str, avro_type: Any) -> tuple[tuple[str, ...], bool]:
    branches = avro_type if isinstance(avro_type, list) else [avro_type]
    types: list[str] = []
    nullable = False
    for b in branches:
        t = b.get("type") if isinstance(b, Mapping) else b
        if t == "null":
            nullable = True
        elif t in _SCALARS:
            types.append(t)
        else:
            raise ValueError(f"field {name}: unsupported Avro type {b!r} (flat scalar schemas only)")
    if not types:
        raise ValueError(f"field {name}: needs a non-null type")
    return tuple(types), nullable


def _check_value(spec: FieldSpec, value: Any, strict: bool) -> str | None:
    if value is None:
        return None if spec.nullable else "must not be null"
    for t in spec.types:
        if _matches(t, value, strict):
            if t == "string":
                return _check_string(spec, value)
            if spec.name == "CREATION_TIMESTAMP" and abs(float(value)) >= MILLIS_THRESHOLD:
                return "must be in epoch seconds; the value is in milliseconds"
            return None
    return f"must be of type {' or '.join(spec.types)}, got {type(value).__name__}"


def _check_string(spec: FieldSpec, value: str) -> str | None:
    length = _jlen(value)
    if spec.categorical:
        if length > CATEGORICAL_MAX:
            return f"is a categorical value longer than {CATEGORICAL_MAX} characters"
    elif spec.textual:
        if length > TEXTUAL_MAX:
            return f"is a textual value longer than {TEXTUAL_MAX} characters"
        if length > TEXTUAL_CJK_MAX and _CJK_RE.search(value):
            return f"is Chinese or Japanese textual value longer than {TEXTUAL_CJK_MAX} characters"
    elif length > STRING_MAX:
        return f"is a non-categorical string longer than {STRING_MAX} characters"
    return None


def _matches(avro_type: str, value: Any, strict: bool) -> bool:
    if avro_type == "string":
        return isinstance(value, str)
    if avro_type == "boolean":
        # JSON true/false, or (not strict) the strings "true"/"false": booleans are lower-case only
        return isinstance(value, bool) or (not strict and value in ("true", "false"))
    if isinstance(value, bool):
        return False
    if avro_type in ("int", "long"):
        lo, hi = INT_RANGE if avro_type == "int" else LONG_RANGE
        if isinstance(value, float) and value.is_integer() and not strict:
            value = int(value)
        if not strict and isinstance(value, str) and _INT_STR_RE.fullmatch(value.strip()):
            value = int(value)
        return isinstance(value, int) and lo <= value <= hi
    # float / double
    if isinstance(value, int | float):
        return math.isfinite(value)
    if not strict and isinstance(value, str) and _FLOAT_STR_RE.fullmatch(value.strip()):
        return math.isfinite(float(value))
    return False


# ---------------------------------------------------------------------------------------------- state


@dataclass
class Dataset:
    arn: str
    group: str
    kind: str | None
    schema: Schema | None = None
    status: str = "ACTIVE"
    access_denied: bool = False
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    writes: int = 0

    def describe(self) -> dict[str, Any]:
        return {
            "datasetArn": self.arn,
            "datasetGroupArn": self.group,
            "type": self.kind,
            "status": self.status,
            "accessDenied": self.access_denied,
            "schema": self.schema.avro if self.schema else None,
            "records": len(self.records),
            "writes": self.writes,
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
            return json.loads(json.dumps(ds.records))  # a deep copy

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
        for name in ("latency_ms", "jitter_ms", "slow_ms", "request_jitter_ms"):
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
                ds.writes = 0
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


def _outcome_of(code: str) -> str:
    return {
        "ThrottlingException": "throttled",
        "InvalidInputException": "invalid",
        "SerializationException": "malformed",
        "ResourceNotFoundException": "not_found",
        "ResourceInUseException": "in_use",
        "AccessDeniedException": "access_denied",
        "MissingAuthenticationTokenException": "auth",
        "IncompleteSignatureException": "auth",
        "InvalidSignatureException": "auth",
        "UnrecognizedClientException": "auth",
    }.get(code, "fault")


def _validation(problems: Sequence[str]) -> EmulatorError:
    n = len(problems)
    return EmulatorError(
        "InvalidInputException",
        f"{n} validation error{'s' if n > 1 else ''} detected: " + "; ".join(problems),
    )


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
        return _json_response(404 if route == "/items" else 400, {"error": str(exc.args[0] if exc.args else exc)})
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


if __name__ == "__main__":
    sys.exit(main())
