"""Deployment config: read from cdk.json context, validated before any construct is built.

Everything here is plain Python (no CDK import), so the validation is fast to test and its messages are
the whole user interface of a wrong ``cdk.json``. Every error names the context key (dotted for nested
objects) and what is allowed, and is raised as :class:`ConfigError`, which ``app.py`` prints as one line.

Context keys (all but ``datasetArn``/``createDataset`` optional; see docs/deploy.md for an example):

``datasetArn``        the Personalize Items dataset ARN that PutItems writes to.
``createDataset``     instead of ``datasetArn``: ``{"datasetGroupName", "datasetName"?, "schemaName"?}`` creates
                      the dataset group, schema (from the mapping's schema) and Items dataset.
``mapping``           the mapping document inline (object), or ``mappingFile``: path to it (JSON).
``schemaFile``        path to an Items Avro schema (JSON); becomes the mapping document's ``schema``.
``configDelivery``    ``auto`` (default) | ``env`` | ``file``: CONNECTOR_CONFIG vs a file in the asset.
``dynamodb``          ``{"source": "none" | "new" | "existing", ...}`` (see :class:`DynamoDbSourceConfig`).
``kinesis``           ``{"source": "none" | "new" | "existing", ...}`` (see :class:`KinesisSourceConfig`).
``esm``               event source mapping defaults for both sources (see :class:`EsmSettings`).
``lambda``            function sizing and pacing (see :class:`LambdaConfig`).
``monitoring``        alarm thresholds and notifications (see :class:`MonitoringConfig`).
``stateTable``        the connector's state table (shared PutItems budget, CDC version guard; see
                      :class:`StateTableConfig`): created by default, ``{"enabled": false}`` to opt out.
``filterPatternQuota`` Lambda filter patterns allowed per event source mapping (default 5, Lambda's default
                      quota); raise it only after raising the quota in Service Quotas.
``allowExampleDatasetArn`` ``true`` lets the documentation's example dataset ARN (account 111122223333)
                      deploy; otherwise the template refuses it at deploy time (synth still works).
``account``/``region`` the deployment environment; default: the CLI's (``CDK_DEFAULT_*``) or agnostic.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "DATASET_ARN_PATTERN",
    "ConfigError",
    "ConnectorConfig",
    "CreateDatasetConfig",
    "DynamoDbSourceConfig",
    "EsmSettings",
    "KinesisSourceConfig",
    "LambdaConfig",
    "MonitoringConfig",
    "StateTableConfig",
    "is_example_dataset_arn",
    "load_config",
]

#: The PutItems ``datasetArn`` constraint (service model), plus its 256-character maximum.
DATASET_ARN_PATTERN = re.compile(r"arn:([a-z\d-]+):personalize:.*:.*:.+")
DATASET_ARN_MAX = 256
#: PutItems writes to an Items dataset only: ``arn:<partition>:personalize:<region>:<account>:dataset/<group>/ITEMS``.
ITEMS_DATASET_ARN_PATTERN = re.compile(
    r"arn:aws[a-z-]*:personalize:[a-z0-9-]+:\d{12}:dataset/[A-Za-z0-9_-]{1,63}/ITEMS"
)
DYNAMODB_STREAM_ARN_PATTERN = re.compile(
    r"arn:aws[a-z-]*:dynamodb:[a-z0-9-]+:\d{12}:table/[A-Za-z0-9_.-]{3,255}/stream/.+"
)
KINESIS_STREAM_ARN_PATTERN = re.compile(r"arn:aws[a-z-]*:kinesis:[a-z0-9-]+:\d{12}:stream/[A-Za-z0-9_.-]{1,128}")
SNS_TOPIC_ARN_PATTERN = re.compile(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}")
ATTRIBUTE_NAME_PATTERN = re.compile(r".{1,255}")
PERSONALIZE_NAME_PATTERN = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9\-_]{0,62}")
ACCOUNT_PATTERN = re.compile(r"\d{12}")
REGION_PATTERN = re.compile(r"[a-z]{2}(-[a-z]+)+-\d")

#: Compact mapping documents up to this size go inline in CONNECTOR_CONFIG (Lambda allows 4 KB for the
#: whole environment); larger ones are shipped as a file in the asset (``configDelivery: auto``).
INLINE_CONFIG_MAX_BYTES = 3072

#: Top-level context keys this app reads (CDK feature flags and other keys are ignored).
CONTEXT_KEYS = (
    "datasetArn",
    "createDataset",
    "mapping",
    "mappingFile",
    "schemaFile",
    "configDelivery",
    "dynamodb",
    "kinesis",
    "esm",
    "lambda",
    "monitoring",
    "stateTable",
    "filterPatternQuota",
    "allowExampleDatasetArn",
    "account",
    "region",
)


class ConfigError(ValueError):
    """A user error in the cdk.json context. The message is one line that names the key."""


# --------------------------------------------------------------------------------------------------
# Value objects
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class EsmSettings:
    """Event source mapping settings, shared by the DynamoDB and Kinesis sources.

    The defaults favour "nothing lost": start at the oldest record, bisect a failing batch, retry without a
    count limit (``retry_attempts = -1``) until the records are ``max_record_age_seconds`` old, and only then
    hand the batch coordinates to the on-failure queue. The record age is the single knob: a Personalize or IAM
    outage shorter than it loses nothing.
    """

    batch_size: int = 1000
    """Records per invocation (1-10000). 1000 records is about 10 s of PutItems at the 100 items/s quota."""
    max_batching_window_seconds: int = 5
    """How long Lambda gathers records before invoking (0-300). Fuller batches mean fuller PutItems calls."""
    starting_position: Literal["TRIM_HORIZON", "LATEST"] = "TRIM_HORIZON"
    retry_attempts: int = -1
    """Retries of a failing batch before it goes to the on-failure destination: -1 (default) retries until the
    records reach ``max_record_age_seconds``; 0-10000 also stops after that many retries."""
    max_record_age_seconds: int = 86400
    """Records older than this go to the on-failure destination (60-604800). Must not exceed the stream's
    retention (DynamoDB Streams: 24 h; a new Kinesis stream: ``kinesis.retentionHours``)."""
    bisect_batch_on_error: bool = True
    parallelization_factor: int = 1
    """Concurrent batches per shard (1-10). Item order per id is only kept with 1."""
    enabled: bool = True


@dataclass(frozen=True, kw_only=True)
class DynamoDbSourceConfig:
    """The DynamoDB source: ``none``, a ``new`` table (stream NEW_AND_OLD_IMAGES) or an ``existing`` stream."""

    source: Literal["none", "new", "existing"] = "none"
    partition_key: str | None = None
    partition_key_type: Literal["S", "N", "B"] = "S"
    sort_key: str | None = None
    sort_key_type: Literal["S", "N", "B"] = "S"
    table_name: str | None = None
    time_to_live_attribute: str | None = None
    stream_arn: str | None = None
    skip_ttl_deletes: bool = False
    """Skip the REMOVE events made by DynamoDB TTL in the handler (``SKIP_TTL_DELETES=true``; counted as skipped)."""
    filters: tuple[Mapping[str, Any], ...] = ()
    """Lambda event filter patterns (ORed), exactly as Lambda expects them (values are lists)."""
    esm: EsmSettings = field(default_factory=EsmSettings)

    @property
    def enabled(self) -> bool:
        """True when this source is wired to the connector."""
        return self.source != "none"


@dataclass(frozen=True, kw_only=True)
class KinesisSourceConfig:
    """The Kinesis source: ``none``, a ``new`` encrypted stream, or an ``existing`` stream ARN."""

    source: Literal["none", "new", "existing"] = "none"
    capacity: Literal["onDemand", "provisioned"] = "onDemand"
    shards: int = 1
    stream_name: str | None = None
    retention_hours: int = 24
    stream_arn: str | None = None
    filters: tuple[Mapping[str, Any], ...] = ()
    esm: EsmSettings = field(default_factory=EsmSettings)

    @property
    def enabled(self) -> bool:
        """True when this source is wired to the connector."""
        return self.source != "none"


# The runtime reserves one PutItems call's worst case before each call (connector.deadline.worst_call_ms with
# its defaults: 3 attempts × (2 s connect + 5 s read) + 3 s backoff, about 24 s); the function's timeout must
# leave room for that, the margin, and some sending.
PUT_ITEMS_WORST_CALL_MS = 24_000
MIN_SENDING_WINDOW_MS = 10_000

PACING_HEADROOM = 0.97
"""The share of the PutItems quota the derived pacing uses (see :class:`LambdaConfig`)."""


@dataclass(frozen=True, kw_only=True)
class LambdaConfig:
    """Function sizing and PutItems pacing.

    Sized for a 10,000-record batch: at the 100 items/s quota that is about 100 s of PutItems, so the
    default timeout is 300 s. ``max_calls_per_second`` is per invocation; all concurrent invocations
    share the dataset group's 10 calls/s, so ``reserved_concurrency * max_calls_per_second`` should stay
    within ``put_items_quota_per_second`` (synth warns otherwise). When ``max_calls_per_second`` is not
    set it is derived as ``PACING_HEADROOM * put_items_quota_per_second / reserved_concurrency``: a few per
    cent under the quota, because calls paced at exactly 10/s reach the service with network jitter, and
    whenever an eleventh lands inside one second it is throttled (bench/results/localcloud.md measured
    about 7 % throttled calls at exactly 10/s, none at 9.7/s).
    """

    memory_mb: int = 1024
    timeout_seconds: int = 300
    reserved_concurrency: int | None = None
    """Unset by default: an account can reserve at most its concurrency limit minus 100 (a new account with a
    limit of 10 cannot reserve any, and the deploy would fail). The state table's shared budget paces instead."""
    max_calls_per_second: float | None = None
    put_items_quota_per_second: float = 10.0
    deadline_margin_ms: int = 5000
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    service_name: str = "stream-to-personalize"
    log_retention_days: int = 30
    powertools_layer_arn: str | None = None
    """Overrides the Powertools layer resolved from the public SSM parameter (not published in every region)."""

    @property
    def effective_max_calls_per_second(self) -> float:
        """The MAX_CALLS_PER_SECOND the function gets."""
        if self.max_calls_per_second is not None:
            return self.max_calls_per_second
        return round(PACING_HEADROOM * self.put_items_quota_per_second / (self.reserved_concurrency or 1), 3)


@dataclass(frozen=True, kw_only=True)
class MonitoringConfig:
    """Alarm thresholds and where alarms notify (an existing SNS topic, or a new one with an email)."""

    iterator_age_seconds: int = 600
    errors: int = 1
    throttled_percent: float = 3.0
    """Alarm when more than this share of PutItems attempts is throttled (once at least ``throttled_min_attempts``
    attempts were made in the period, so a handful of calls can't page anyone)."""
    throttled_min_attempts: int = 100
    systemic_errors: int = 1
    dlq_depth: int = 1
    period_minutes: int = 5
    alarm_topic_arn: str | None = None
    alarm_email: str | None = None
    notify_on_ok: bool = False
    """Also notify when an alarm returns to OK. Off by default: every flap would send two messages."""
    dashboard: bool = True


@dataclass(frozen=True, kw_only=True)
class StateTableConfig:
    """The connector's state table (``STATE_TABLE``): the shared PutItems budget and the CDC version guard."""

    enabled: bool = True
    table_name: str | None = None
    removal_policy: Literal["destroy", "retain"] = "destroy"
    """``destroy`` (default): the table holds only state the connector rebuilds (budget tokens, and the last
    version written per item, which the guard re-learns); ``retain`` keeps it when the stack is deleted."""


@dataclass(frozen=True, kw_only=True)
class CreateDatasetConfig:
    """Create the Personalize dataset group, schema and Items dataset (when no ``datasetArn`` is given)."""

    dataset_group_name: str
    dataset_name: str
    schema_name: str


@dataclass(frozen=True, kw_only=True)
class ConnectorConfig:
    """The whole validated deployment config."""

    dataset_arn: str | None
    create_dataset: CreateDatasetConfig | None
    mapping: Mapping[str, Any]
    config_delivery: Literal["env", "file"]
    dynamodb: DynamoDbSourceConfig
    kinesis: KinesisSourceConfig
    lambda_: LambdaConfig
    monitoring: MonitoringConfig
    state_table: StateTableConfig = field(default_factory=StateTableConfig)
    allow_example_dataset_arn: bool = False
    filter_pattern_quota: int = 5
    account: str | None = None
    region: str | None = None

    @property
    def uses_example_dataset_arn(self) -> bool:
        """True when ``datasetArn`` is the documentation's placeholder (it deploys, then fails every record)."""
        return self.dataset_arn is not None and is_example_dataset_arn(self.dataset_arn)

    @property
    def mapping_json(self) -> str:
        """The mapping document as compact JSON (what CONNECTOR_CONFIG or the asset file holds)."""
        return compact_json(self.mapping)


EXAMPLE_ACCOUNT = "111122223333"
"""The account AWS documentation uses in examples; cdk.json ships a dataset ARN in it as a placeholder."""


def is_example_dataset_arn(arn: str) -> bool:
    """True for a dataset ARN in the documentation's example account."""
    parts = arn.split(":")
    return len(parts) > 4 and parts[4] == EXAMPLE_ACCOUNT


def compact_json(document: Mapping[str, Any]) -> str:
    """Serialise a mapping document the way the connector receives it: compact, keys in order."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False)


PERSONALIZE_SCHEMA_MAX_CHARS = 10_000
"""``CreateSchema``'s ``schema`` is at most 10,000 characters."""


def schema_json(schema: Mapping[str, Any]) -> str:
    """The Avro schema exactly as the stack sends it to Personalize (compact JSON)."""
    return compact_json(schema)


# --------------------------------------------------------------------------------------------------
# Parsing helpers: each takes the dotted key for its messages.
# --------------------------------------------------------------------------------------------------


def _fail(key: str, message: str) -> ConfigError:
    return ConfigError(f"context key '{key}': {message}")


def _maybe_json(key: str, value: Any, kind: str) -> Any:
    """Values given with ``cdk -c key=value`` arrive as strings; accept JSON for objects and lists."""
    if isinstance(value, str) and kind in {"object", "list"}:
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise _fail(key, f"expected a JSON {kind}, got a string that is not JSON ({exc.msg})") from None
    return value


def _object(key: str, value: Any) -> dict[str, Any]:
    value = _maybe_json(key, value, "object")
    if not isinstance(value, dict):
        raise _fail(key, f"expected an object, got {type(value).__name__}")
    return value


def _check_keys(key: str, value: Mapping[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise _fail(f"{key}.{unknown[0]}", f"unknown key; allowed keys of '{key}': {', '.join(allowed)}")


def _str(key: str, value: Any, *, pattern: re.Pattern[str] | None = None, hint: str = "") -> str:
    if not isinstance(value, str) or not value:
        raise _fail(key, f"expected a non-empty string{hint and ' ' + hint}, got {value!r}")
    if pattern is not None and not pattern.fullmatch(value):
        raise _fail(key, f"{value!r} does not match {hint or pattern.pattern}")
    return value


def _choice(key: str, value: Any, allowed: Sequence[Any]) -> Any:
    if value not in allowed:
        raise _fail(key, f"got {value!r}; allowed values: {', '.join(repr(a) for a in allowed)}")
    return value


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "false"}:
        return value.lower() == "true"
    raise _fail(key, f"expected true or false, got {value!r}")


def _int(key: str, value: Any, *, low: int, high: int) -> int:
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise _fail(key, f"expected an integer from {low} to {high}, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(key, f"expected an integer from {low} to {high}, got {value!r}")
    return value


def _float(key: str, value: Any, *, low: float, high: float) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _fail(key, f"expected a number greater than {low} and at most {high}, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low < value <= high:
        raise _fail(key, f"expected a number greater than {low} and at most {high}, got {value!r}")
    return float(value)


def _json_file(key: str, value: Any, base_dir: Path) -> Any:
    path = Path(_str(key, value, hint="(a path to a JSON file)"))
    if not path.is_absolute():
        path = base_dir / path
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _fail(key, f"file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(key, f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise _fail(key, f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------

_ESM_KEYS = (
    "batchSize",
    "maxBatchingWindowSeconds",
    "startingPosition",
    "retryAttempts",
    "maxRecordAgeSeconds",
    "bisectBatchOnError",
    "parallelizationFactor",
    "enabled",
)


def _esm(key: str, value: Any, base: EsmSettings) -> EsmSettings:
    raw = _object(key, value)
    _check_keys(key, raw, _ESM_KEYS)
    parsed: dict[str, Any] = {}
    if "batchSize" in raw:
        parsed["batch_size"] = _int(f"{key}.batchSize", raw["batchSize"], low=1, high=10000)
    if "maxBatchingWindowSeconds" in raw:
        parsed["max_batching_window_seconds"] = _int(
            f"{key}.maxBatchingWindowSeconds", raw["maxBatchingWindowSeconds"], low=0, high=300
        )
    if "startingPosition" in raw:
        parsed["starting_position"] = _choice(
            f"{key}.startingPosition", raw["startingPosition"], ("TRIM_HORIZON", "LATEST")
        )
    if "retryAttempts" in raw:
        parsed["retry_attempts"] = _int(f"{key}.retryAttempts", raw["retryAttempts"], low=-1, high=10000)
    if "maxRecordAgeSeconds" in raw:
        parsed["max_record_age_seconds"] = _int(
            f"{key}.maxRecordAgeSeconds", raw["maxRecordAgeSeconds"], low=60, high=604800
        )
    if "bisectBatchOnError" in raw:
        parsed["bisect_batch_on_error"] = _bool(f"{key}.bisectBatchOnError", raw["bisectBatchOnError"])
    if "parallelizationFactor" in raw:
        parsed["parallelization_factor"] = _int(
            f"{key}.parallelizationFactor", raw["parallelizationFactor"], low=1, high=10
        )
    if "enabled" in raw:
        parsed["enabled"] = _bool(f"{key}.enabled", raw["enabled"])
    return replace(base, **parsed)


DEFAULT_FILTER_PATTERN_QUOTA = 5
"""Lambda's default quota of filter patterns per event source mapping (adjustable in Service Quotas)."""


def _filters(key: str, value: Any, quota: int) -> tuple[Mapping[str, Any], ...]:
    value = _maybe_json(key, value, "list")
    if not isinstance(value, list) or not value:
        raise _fail(key, "expected a non-empty list of Lambda filter patterns (objects)")
    if len(value) > quota:
        raise _fail(
            key,
            f"{len(value)} filter patterns exceed the quota of {quota} per event source mapping "
            f"(Lambda's default is {DEFAULT_FILTER_PATTERN_QUOTA}); if your account's quota was raised, "
            "set context key 'filterPatternQuota'",
        )
    for i, pattern in enumerate(value):
        if not isinstance(pattern, dict) or not pattern:
            raise _fail(f"{key}[{i}]", f"expected a non-empty filter pattern object, got {pattern!r}")
        if len(json.dumps(pattern)) > 4096:
            raise _fail(f"{key}[{i}]", "a filter pattern is at most 4096 characters")
    return tuple(value)


_DYNAMODB_KEYS = (
    "source",
    "partitionKey",
    "partitionKeyType",
    "sortKey",
    "sortKeyType",
    "tableName",
    "timeToLiveAttribute",
    "streamArn",
    "skipTtlDeletes",
    "filters",
    "esm",
)


def _dynamodb(value: Any, esm: EsmSettings, filter_quota: int) -> DynamoDbSourceConfig:
    key = "dynamodb"
    raw = _object(key, value)
    _check_keys(key, raw, _DYNAMODB_KEYS)
    source = _choice(f"{key}.source", raw.get("source"), ("none", "new", "existing"))
    if source == "none":
        extra = sorted(set(raw) - {"source"})
        if extra:
            raise _fail(f"{key}.{extra[0]}", "not allowed when dynamodb.source is 'none'")
        return DynamoDbSourceConfig()
    new_only = ("partitionKey", "partitionKeyType", "sortKey", "sortKeyType", "tableName", "timeToLiveAttribute")
    kwargs: dict[str, Any] = {"source": source}
    if source == "new":
        if "streamArn" in raw:
            raise _fail(f"{key}.streamArn", "only allowed when dynamodb.source is 'existing'")
        if "partitionKey" not in raw:
            raise _fail(f"{key}.partitionKey", "required when dynamodb.source is 'new' (the partition key name)")
        kwargs["partition_key"] = _str(f"{key}.partitionKey", raw["partitionKey"], pattern=ATTRIBUTE_NAME_PATTERN)
        kwargs["partition_key_type"] = _choice(
            f"{key}.partitionKeyType", raw.get("partitionKeyType", "S"), ("S", "N", "B")
        )
        if "sortKey" in raw:
            kwargs["sort_key"] = _str(f"{key}.sortKey", raw["sortKey"], pattern=ATTRIBUTE_NAME_PATTERN)
            kwargs["sort_key_type"] = _choice(f"{key}.sortKeyType", raw.get("sortKeyType", "S"), ("S", "N", "B"))
        elif "sortKeyType" in raw:
            raise _fail(f"{key}.sortKeyType", "only allowed together with dynamodb.sortKey")
        if "tableName" in raw:
            kwargs["table_name"] = _str(
                f"{key}.tableName",
                raw["tableName"],
                pattern=re.compile(r"[A-Za-z0-9_.-]{3,255}"),
                hint="3-255 characters of A-Z a-z 0-9 _ . -",
            )
        if "timeToLiveAttribute" in raw:
            kwargs["time_to_live_attribute"] = _str(f"{key}.timeToLiveAttribute", raw["timeToLiveAttribute"])
    else:
        kwargs["stream_arn"] = _existing_stream_arn(
            key,
            raw,
            new_only,
            DYNAMODB_STREAM_ARN_PATTERN,
            "arn:aws:dynamodb:<region>:<account>:table/<table>/stream/<label>",
        )
    if "skipTtlDeletes" in raw:
        kwargs["skip_ttl_deletes"] = _bool(f"{key}.skipTtlDeletes", raw["skipTtlDeletes"])
    if "filters" in raw:
        kwargs["filters"] = _filters(f"{key}.filters", raw["filters"], filter_quota)
    kwargs["esm"] = _esm(f"{key}.esm", raw["esm"], esm) if "esm" in raw else esm
    cfg = DynamoDbSourceConfig(**kwargs)
    if cfg.esm.max_record_age_seconds > DYNAMODB_STREAM_RETENTION_S:
        own = "esm" in raw and "maxRecordAgeSeconds" in _object(f"{key}.esm", raw["esm"])
        raise _fail(
            f"{key}.esm.maxRecordAgeSeconds" if own else "esm.maxRecordAgeSeconds",
            f"{cfg.esm.max_record_age_seconds} s exceeds the DynamoDB stream's fixed 24 h retention "
            f"({DYNAMODB_STREAM_RETENTION_S} s): records would expire before Lambda stops retrying them",
        )
    return cfg


DYNAMODB_STREAM_RETENTION_S = 86400
"""DynamoDB Streams keep records for 24 hours (fixed)."""


_KINESIS_KEYS = ("source", "capacity", "shards", "streamName", "retentionHours", "streamArn", "filters", "esm")


def _existing_stream_arn(
    key: str, raw: Mapping[str, Any], new_only: tuple[str, ...], pattern: re.Pattern[str], hint: str
) -> str:
    """``<key>.streamArn`` for ``source: existing``, refusing the keys that only a new source takes."""
    present = [k for k in new_only if k in raw]
    if present:
        raise _fail(f"{key}.{present[0]}", f"only allowed when {key}.source is 'new'")
    if "streamArn" not in raw:
        raise _fail(f"{key}.streamArn", f"required when {key}.source is 'existing'")
    return _str(f"{key}.streamArn", raw["streamArn"], pattern=pattern, hint=hint)


def _kinesis(value: Any, esm: EsmSettings, filter_quota: int) -> KinesisSourceConfig:
    key = "kinesis"
    raw = _object(key, value)
    _check_keys(key, raw, _KINESIS_KEYS)
    source = _choice(f"{key}.source", raw.get("source"), ("none", "new", "existing"))
    if source == "none":
        extra = sorted(set(raw) - {"source"})
        if extra:
            raise _fail(f"{key}.{extra[0]}", "not allowed when kinesis.source is 'none'")
        return KinesisSourceConfig()
    kwargs: dict[str, Any] = {"source": source}
    if source == "new":
        if "streamArn" in raw:
            raise _fail(f"{key}.streamArn", "only allowed when kinesis.source is 'existing'")
        capacity = _choice(f"{key}.capacity", raw.get("capacity", "onDemand"), ("onDemand", "provisioned"))
        kwargs["capacity"] = capacity
        if "shards" in raw:
            if capacity != "provisioned":
                raise _fail(f"{key}.shards", "only allowed when kinesis.capacity is 'provisioned'")
            kwargs["shards"] = _int(f"{key}.shards", raw["shards"], low=1, high=500)
        if "streamName" in raw:
            kwargs["stream_name"] = _str(
                f"{key}.streamName",
                raw["streamName"],
                pattern=re.compile(r"[A-Za-z0-9_.-]{1,128}"),
                hint="1-128 characters of A-Z a-z 0-9 _ . -",
            )
        if "retentionHours" in raw:
            kwargs["retention_hours"] = _int(f"{key}.retentionHours", raw["retentionHours"], low=24, high=8760)
    else:
        kwargs["stream_arn"] = _existing_stream_arn(
            key,
            raw,
            ("capacity", "shards", "streamName", "retentionHours"),
            KINESIS_STREAM_ARN_PATTERN,
            "arn:aws:kinesis:<region>:<account>:stream/<name>",
        )
    if "filters" in raw:
        kwargs["filters"] = _filters(f"{key}.filters", raw["filters"], filter_quota)
    kwargs["esm"] = _esm(f"{key}.esm", raw["esm"], esm) if "esm" in raw else esm
    cfg = KinesisSourceConfig(**kwargs)
    retention_s = cfg.retention_hours * 3600
    if cfg.source == "new" and cfg.esm.max_record_age_seconds > retention_s:
        raise _fail(
            f"{key}.retentionHours",
            f"the new stream keeps records {cfg.retention_hours} h ({retention_s} s) but the Kinesis mapping's "
            f"esm.maxRecordAgeSeconds is {cfg.esm.max_record_age_seconds} s: records would expire from the stream "
            "before Lambda stops retrying them; raise kinesis.retentionHours or lower maxRecordAgeSeconds",
        )
    return cfg


_LAMBDA_KEYS = (
    "memoryMb",
    "timeoutSeconds",
    "reservedConcurrency",
    "maxCallsPerSecond",
    "putItemsQuotaPerSecond",
    "deadlineMarginMs",
    "logLevel",
    "serviceName",
    "logRetentionDays",
    "powertoolsLayerArn",
)
LAYER_ARN_PATTERN = re.compile(r"arn:aws[a-z-]*:lambda:[a-z0-9-]+:\d{12}:layer:[A-Za-z0-9_-]{1,140}:\d+")
_LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1827, 3653)


def _lambda(value: Any) -> LambdaConfig:
    key = "lambda"
    raw = _object(key, value)
    _check_keys(key, raw, _LAMBDA_KEYS)
    kwargs: dict[str, Any] = {}
    if "memoryMb" in raw:
        kwargs["memory_mb"] = _int(f"{key}.memoryMb", raw["memoryMb"], low=128, high=10240)
    if "timeoutSeconds" in raw:
        kwargs["timeout_seconds"] = _int(f"{key}.timeoutSeconds", raw["timeoutSeconds"], low=30, high=900)
    if "reservedConcurrency" in raw:
        rc = raw["reservedConcurrency"]
        kwargs["reserved_concurrency"] = (
            None if rc in (None, "none", "null") else _int(f"{key}.reservedConcurrency", rc, low=1, high=1000)
        )
    if "maxCallsPerSecond" in raw:
        kwargs["max_calls_per_second"] = _float(f"{key}.maxCallsPerSecond", raw["maxCallsPerSecond"], low=0, high=1000)
    if "putItemsQuotaPerSecond" in raw:
        kwargs["put_items_quota_per_second"] = _float(
            f"{key}.putItemsQuotaPerSecond", raw["putItemsQuotaPerSecond"], low=0, high=10000
        )
    if "deadlineMarginMs" in raw:
        kwargs["deadline_margin_ms"] = _int(f"{key}.deadlineMarginMs", raw["deadlineMarginMs"], low=0, high=60000)
    if "logLevel" in raw:
        kwargs["log_level"] = _choice(f"{key}.logLevel", raw["logLevel"], ("DEBUG", "INFO", "WARNING", "ERROR"))
    if "serviceName" in raw:
        kwargs["service_name"] = _str(
            f"{key}.serviceName",
            raw["serviceName"],
            pattern=re.compile(r"[A-Za-z0-9_.-]{1,100}"),
            hint="1-100 characters of A-Z a-z 0-9 _ . -",
        )
    if "logRetentionDays" in raw:
        days = raw["logRetentionDays"]
        if isinstance(days, str) and days.isdigit():
            days = int(days)
        kwargs["log_retention_days"] = _choice(f"{key}.logRetentionDays", days, _LOG_RETENTION_DAYS)
    if "powertoolsLayerArn" in raw:
        kwargs["powertools_layer_arn"] = _str(
            f"{key}.powertoolsLayerArn",
            raw["powertoolsLayerArn"],
            pattern=LAYER_ARN_PATTERN,
            hint="arn:aws:lambda:<region>:<account>:layer:<name>:<version>",
        )
    cfg = LambdaConfig(**kwargs)
    window_ms = cfg.timeout_seconds * 1000 - cfg.deadline_margin_ms - PUT_ITEMS_WORST_CALL_MS
    if window_ms < MIN_SENDING_WINDOW_MS:
        raise _fail(
            f"{key}.deadlineMarginMs",
            f"lambda.timeoutSeconds ({cfg.timeout_seconds} s) minus the margin ({cfg.deadline_margin_ms} ms) "
            f"must leave at least {(PUT_ITEMS_WORST_CALL_MS + MIN_SENDING_WINDOW_MS) / 1000:g} s: "
            "before each PutItems call the function reserves that call's worst case "
            f"(about {PUT_ITEMS_WORST_CALL_MS / 1000:g} s), and it needs time left to send",
        )
    return cfg


_MONITORING_KEYS = (
    "iteratorAgeSeconds",
    "errors",
    "throttledPercent",
    "throttledMinAttempts",
    "systemicErrors",
    "dlqDepth",
    "periodMinutes",
    "alarmTopicArn",
    "alarmEmail",
    "notifyOnOk",
    "dashboard",
)


def _monitoring(value: Any) -> MonitoringConfig:
    key = "monitoring"
    raw = _object(key, value)
    _check_keys(key, raw, _MONITORING_KEYS)
    kwargs: dict[str, Any] = {}
    for name, attr, high in (
        ("iteratorAgeSeconds", "iterator_age_seconds", 604800),
        ("errors", "errors", 1_000_000),
        ("throttledMinAttempts", "throttled_min_attempts", 1_000_000),
        ("systemicErrors", "systemic_errors", 1_000_000),
        ("dlqDepth", "dlq_depth", 1_000_000),
        ("periodMinutes", "period_minutes", 1440),
    ):
        if name in raw:
            kwargs[attr] = _int(f"{key}.{name}", raw[name], low=1, high=high)
    if "alarmTopicArn" in raw and "alarmEmail" in raw:
        raise _fail(f"{key}.alarmEmail", "give either monitoring.alarmTopicArn or monitoring.alarmEmail, not both")
    if "alarmTopicArn" in raw:
        kwargs["alarm_topic_arn"] = _str(
            f"{key}.alarmTopicArn",
            raw["alarmTopicArn"],
            pattern=SNS_TOPIC_ARN_PATTERN,
            hint="arn:aws:sns:<region>:<account>:<topic>",
        )
    if "alarmEmail" in raw:
        kwargs["alarm_email"] = _str(
            f"{key}.alarmEmail", raw["alarmEmail"], pattern=re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+"), hint="an email"
        )
    if "throttledPercent" in raw:
        kwargs["throttled_percent"] = _float(f"{key}.throttledPercent", raw["throttledPercent"], low=0, high=100)
    if "notifyOnOk" in raw:
        kwargs["notify_on_ok"] = _bool(f"{key}.notifyOnOk", raw["notifyOnOk"])
    if "dashboard" in raw:
        kwargs["dashboard"] = _bool(f"{key}.dashboard", raw["dashboard"])
    return MonitoringConfig(**kwargs)


def _state_table(value: Any) -> StateTableConfig:
    key = "stateTable"
    raw = _object(key, value)
    _check_keys(key, raw, ("enabled", "tableName", "removalPolicy"))
    kwargs: dict[str, Any] = {}
    if "enabled" in raw:
        kwargs["enabled"] = _bool(f"{key}.enabled", raw["enabled"])
    if "tableName" in raw:
        kwargs["table_name"] = _str(
            f"{key}.tableName",
            raw["tableName"],
            pattern=re.compile(r"[A-Za-z0-9_.-]{3,255}"),
            hint="3-255 characters of A-Z a-z 0-9 _ . -",
        )
    if "removalPolicy" in raw:
        kwargs["removal_policy"] = _choice(f"{key}.removalPolicy", raw["removalPolicy"], ("destroy", "retain"))
    if not kwargs.get("enabled", True) and len(kwargs) > 1:
        extra = sorted(set(raw) - {"enabled"})
        raise _fail(f"{key}.{extra[0]}", "not allowed when stateTable.enabled is false")
    return StateTableConfig(**kwargs)


def _mapping(context: Mapping[str, Any], base_dir: Path) -> dict[str, Any]:
    if "mapping" in context and "mappingFile" in context:
        raise _fail("mappingFile", "give either 'mapping' (inline object) or 'mappingFile' (a path), not both")
    if "mapping" in context:
        mapping = _object("mapping", context["mapping"])
        key = "mapping"
    elif "mappingFile" in context:
        mapping = _json_file("mappingFile", context["mappingFile"], base_dir)
        key = "mappingFile"
        if not isinstance(mapping, dict):
            raise _fail(key, "the mapping document must be a JSON object")
    else:
        mapping, key = {}, "mapping"
    allowed = ("itemId", "schema", "fields", "exclude", "onRemove")
    unknown = sorted(set(mapping) - set(allowed))
    if unknown:
        raise _fail(key, f"unknown mapping document key {unknown[0]!r}; allowed: {', '.join(allowed)}")
    if "itemId" in mapping:
        _str(f"{key}.itemId", mapping["itemId"])
    if "fields" in mapping and not (
        isinstance(mapping["fields"], dict) and all(isinstance(v, str) for v in mapping["fields"].values())
    ):
        raise _fail(f"{key}.fields", "expected an object of schema field name -> attribute name (strings)")
    if "exclude" in mapping and not (
        isinstance(mapping["exclude"], list) and all(isinstance(v, str) for v in mapping["exclude"])
    ):
        raise _fail(f"{key}.exclude", "expected a list of attribute names (strings)")
    if (
        "onRemove" in mapping
        and mapping["onRemove"] != "ignore"
        and not (isinstance(mapping["onRemove"], dict) and mapping["onRemove"])
    ):
        raise _fail(f"{key}.onRemove", "expected 'ignore' or a non-empty object of properties to write")
    if "schemaFile" in context:
        if "schema" in mapping:
            raise _fail("schemaFile", f"the mapping document ({key}) already has a 'schema'; keep only one")
        mapping = {**mapping, "schema": _json_file("schemaFile", context["schemaFile"], base_dir)}
        schema_key = "schemaFile"
    else:
        schema_key = f"{key}.schema"
    if "schema" in mapping:
        _check_schema(schema_key, mapping["schema"])
    return mapping


_AVRO_SCALARS = ("string", "int", "long", "float", "double", "boolean")


def _check_schema(key: str, schema: Any) -> None:
    """A flat Avro record of scalar (or null-union) fields with an ITEM_ID string, as Personalize needs."""
    if not isinstance(schema, dict) or schema.get("type") != "record":
        raise _fail(key, 'an Items schema must be an Avro object with "type": "record"')
    fields = schema.get("fields")
    if not isinstance(fields, list) or not fields:
        raise _fail(key, "an Items schema needs a non-empty 'fields' list")
    names = set()
    for i, f in enumerate(fields):
        if not isinstance(f, dict) or not isinstance(f.get("name"), str):
            raise _fail(f"{key}.fields[{i}]", "each field needs a 'name'")
        types = f.get("type")
        types = types if isinstance(types, list) else [types]
        scalars = [t for t in types if t != "null"]
        if len(scalars) != 1 or scalars[0] not in _AVRO_SCALARS:
            raise _fail(
                f"{key}.fields[{i}]",
                f"field {f['name']!r} has type {f.get('type')!r}; allowed: one of {', '.join(_AVRO_SCALARS)}, "
                'optionally in a union with "null"',
            )
        names.add(f["name"])
    if "ITEM_ID" not in names:
        raise _fail(key, "an Items schema needs an ITEM_ID field")
    size = len(schema_json(schema))
    if size > PERSONALIZE_SCHEMA_MAX_CHARS:
        raise _fail(
            key,
            f"the schema is {size} characters as compact JSON; Personalize accepts at most "
            f"{PERSONALIZE_SCHEMA_MAX_CHARS}",
        )


def _create_dataset(value: Any, mapping: Mapping[str, Any]) -> CreateDatasetConfig:
    key = "createDataset"
    raw = _object(key, value)
    _check_keys(key, raw, ("datasetGroupName", "datasetName", "schemaName"))
    if "datasetGroupName" not in raw:
        raise _fail(f"{key}.datasetGroupName", "required (the name of the dataset group to create)")
    if "schema" not in mapping:
        raise _fail(key, "needs an Items schema: set 'schemaFile' or put a 'schema' in the mapping document")
    group = _str(
        f"{key}.datasetGroupName", raw["datasetGroupName"], pattern=PERSONALIZE_NAME_PATTERN, hint="[a-zA-Z0-9-_]{1,63}"
    )
    return CreateDatasetConfig(
        dataset_group_name=group,
        dataset_name=_str(
            f"{key}.datasetName", raw.get("datasetName", f"{group}-items"), pattern=PERSONALIZE_NAME_PATTERN
        ),
        schema_name=_str(
            f"{key}.schemaName", raw.get("schemaName", f"{group}-items-schema"), pattern=PERSONALIZE_NAME_PATTERN
        ),
    )


def load_config(context: Mapping[str, Any], *, base_dir: Path) -> ConnectorConfig:
    """Validate the cdk.json context and return the config; raise :class:`ConfigError` on a user error.

    ``context`` is the app's context (only :data:`CONTEXT_KEYS` are read). ``base_dir`` resolves relative
    ``mappingFile``/``schemaFile`` paths (the directory of cdk.json).
    """
    ctx = {k: context[k] for k in CONTEXT_KEYS if k in context and context[k] is not None}
    if ctx.get("datasetArn") in ("", "none", "null"):
        del ctx["datasetArn"]  # `-c datasetArn=none` unsets the cdk.json value
    if ctx.get("createDataset") in ("", "none", "null", False, "false"):
        del ctx["createDataset"]

    mapping = _mapping(ctx, base_dir)

    dataset_arn: str | None = None
    create: CreateDatasetConfig | None = None
    if (
        "datasetArn" in ctx
        and "createDataset" in ctx
        and isinstance(ctx["datasetArn"], str)
        and is_example_dataset_arn(ctx["datasetArn"])
    ):
        # `cdk deploy -c createDataset='{"datasetGroupName": "catalog"}'` with the shipped cdk.json: the example
        # placeholder ARN gives way to the dataset the stack creates.
        del ctx["datasetArn"]
    if "datasetArn" in ctx and "createDataset" in ctx:
        raise _fail("createDataset", "give either 'datasetArn' or 'createDataset', not both")
    if "datasetArn" in ctx:
        dataset_arn = _str("datasetArn", ctx["datasetArn"])
        if len(dataset_arn) > DATASET_ARN_MAX or not DATASET_ARN_PATTERN.fullmatch(dataset_arn):
            raise _fail(
                "datasetArn",
                f"{dataset_arn!r} is not a Personalize dataset ARN (pattern {DATASET_ARN_PATTERN.pattern}, "
                f"at most {DATASET_ARN_MAX} characters), e.g. arn:aws:personalize:us-east-1:111122223333:"
                "dataset/<group>/ITEMS",
            )
        if not ITEMS_DATASET_ARN_PATTERN.fullmatch(dataset_arn):
            raise _fail(
                "datasetArn",
                f"{dataset_arn!r} is not an Items dataset ARN (arn:aws:personalize:<region>:<account>:dataset/"
                "<group>/ITEMS): PutItems writes only to a dataset group's Items dataset",
            )
    elif "createDataset" in ctx:
        create = _create_dataset(ctx["createDataset"], mapping)
    else:
        raise _fail(
            "datasetArn",
            "required: the Items dataset ARN (arn:aws:personalize:<region>:<account>:dataset/<group>/ITEMS), "
            "or set 'createDataset' to create one",
        )

    delivery = _choice("configDelivery", ctx.get("configDelivery", "auto"), ("auto", "env", "file"))
    mapping_bytes = len(compact_json(mapping).encode())
    if delivery == "auto":
        delivery = "env" if mapping_bytes <= INLINE_CONFIG_MAX_BYTES else "file"
    elif delivery == "env" and mapping_bytes > INLINE_CONFIG_MAX_BYTES:
        raise _fail(
            "configDelivery",
            f"the mapping document is {mapping_bytes} bytes as compact JSON, too large for CONNECTOR_CONFIG "
            f"(Lambda's environment is limited to 4 KB; inline limit here {INLINE_CONFIG_MAX_BYTES}); "
            "use 'auto' or 'file'",
        )

    filter_quota = (
        _int("filterPatternQuota", ctx["filterPatternQuota"], low=1, high=1000)
        if "filterPatternQuota" in ctx
        else DEFAULT_FILTER_PATTERN_QUOTA
    )
    esm = _esm("esm", ctx["esm"], EsmSettings()) if "esm" in ctx else EsmSettings()
    dynamodb = _dynamodb(ctx["dynamodb"], esm, filter_quota) if "dynamodb" in ctx else DynamoDbSourceConfig()
    kinesis = _kinesis(ctx["kinesis"], esm, filter_quota) if "kinesis" in ctx else KinesisSourceConfig()
    if not dynamodb.enabled and not kinesis.enabled:
        raise _fail(
            "dynamodb",
            "no source configured: set dynamodb.source and/or kinesis.source to 'new' or 'existing'",
        )
    lambda_cfg = _lambda(ctx["lambda"]) if "lambda" in ctx else LambdaConfig()
    monitoring = _monitoring(ctx["monitoring"]) if "monitoring" in ctx else MonitoringConfig()
    state_table = _state_table(ctx["stateTable"]) if "stateTable" in ctx else StateTableConfig()
    allow_example = (
        _bool("allowExampleDatasetArn", ctx["allowExampleDatasetArn"]) if "allowExampleDatasetArn" in ctx else False
    )

    account = _str("account", ctx["account"], pattern=ACCOUNT_PATTERN, hint="12 digits") if "account" in ctx else None
    region = (
        _str("region", ctx["region"], pattern=REGION_PATTERN, hint="a region such as us-east-1")
        if "region" in ctx
        else None
    )
    if dataset_arn is not None and region is not None:
        arn_region = dataset_arn.split(":")[3]
        if arn_region and arn_region != region:
            raise _fail(
                "datasetArn",
                f"the dataset is in {arn_region} but the stack deploys to {region} (context 'region'); "
                "PutItems must be called in the dataset's region",
            )

    return ConnectorConfig(
        dataset_arn=dataset_arn,
        create_dataset=create,
        mapping=mapping,
        config_delivery=delivery,
        dynamodb=dynamodb,
        kinesis=kinesis,
        lambda_=lambda_cfg,
        monitoring=monitoring,
        state_table=state_table,
        allow_example_dataset_arn=allow_example,
        filter_pattern_quota=filter_quota,
        account=account,
        region=region,
    )
