"""Deployment config: read from cdk.json context, validated before any construct is built.

Each context object is a pydantic model (camelCase keys, unknown keys refused, CLI strings coerced), whose
field types carry the messages; the rules between keys follow each model. Nothing here imports CDK, so the
validation is fast to test and its messages are the whole user interface of a wrong ``cdk.json``. Every
error names the context key (dotted for nested objects) and what is allowed, and is raised as
:class:`ConfigError`, which ``app.py`` prints as one line. :func:`context_json_schema` is the JSON Schema
of the context, published as ``docs/cdk-context.schema.json`` for editors.

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
``onFailure``         the event source mappings' on-failure destination (see :class:`OnFailureConfig`): an S3
                      bucket keeping whole invocation records for replay (default), or an SQS queue of coordinates.
``bulkLoad``          the opt-in bulk-load state machine (see :class:`BulkLoadConfig`).
``filterPatternQuota`` Lambda filter patterns allowed per event source mapping (default 5, Lambda's default
                      quota); raise it only after raising the quota in Service Quotas.
``allowExampleDatasetArn`` ``true`` lets the documentation's example dataset ARN (account 111122223333)
                      deploy; otherwise the template refuses it at deploy time (synth still works).
``account``/``region`` the deployment environment; default: the CLI's (``CDK_DEFAULT_*``) or agnostic.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

from annotated_types import GroupedMetadata
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, WithJsonSchema
from pydantic.alias_generators import to_camel

__all__ = [
    "DATASET_ARN_PATTERN",
    "BulkLoadConfig",
    "ConfigError",
    "ConnectorConfig",
    "CreateDatasetConfig",
    "DynamoDbSourceConfig",
    "EsmSettings",
    "KinesisSourceConfig",
    "LambdaConfig",
    "MonitoringConfig",
    "OnFailureConfig",
    "StateTableConfig",
    "context_json_schema",
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
    "onFailure",
    "bulkLoad",
    "filterPatternQuota",
    "allowExampleDatasetArn",
    "account",
    "region",
)


class ConfigError(ValueError):
    """A user error in the cdk.json context. The message is one line that names the key."""


# --------------------------------------------------------------------------------------------------
# Field types: each validates a context value (CLI strings included) and, on failure, says what is allowed.
# The key is added from pydantic's error location (see _translate), so every message names it.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntIn(GroupedMetadata):
    """An integer from ``low`` to ``high`` (CLI strings coerced, booleans refused)."""

    low: int
    high: int

    def __iter__(self) -> Iterator[Any]:
        low, high = self.low, self.high

        def check(value: Any) -> Any:
            if isinstance(value, str):
                try:
                    value = int(value)
                except ValueError:
                    raise ValueError(f"expected an integer from {low} to {high}, got {value!r}") from None
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"expected an integer from {low} to {high}, got {value!r}")
            return value

        yield Field(ge=low, le=high)
        yield BeforeValidator(check)


@dataclass(frozen=True)
class NumIn(GroupedMetadata):
    """A number greater than ``low`` and at most ``high`` (CLI strings coerced)."""

    low: float
    high: float

    def __iter__(self) -> Iterator[Any]:
        low, high = self.low, self.high

        def check(value: Any) -> Any:
            message = f"expected a number greater than {low} and at most {high}, got {value!r}"
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise ValueError(message) from None
            if isinstance(value, bool) or not isinstance(value, int | float) or not low < value <= high:
                raise ValueError(message)
            return float(value)

        yield Field(gt=low, le=high)
        yield BeforeValidator(check)


class OneOf(GroupedMetadata):
    """One of ``allowed`` (with ``coerce_digits``, a CLI string of digits counts as the integer)."""

    def __init__(self, *allowed: Any, coerce_digits: bool = False) -> None:
        self.allowed = allowed
        self.coerce_digits = coerce_digits

    def __iter__(self) -> Iterator[Any]:
        allowed, coerce_digits = self.allowed, self.coerce_digits

        def check(value: Any) -> Any:
            if coerce_digits and isinstance(value, str) and value.isdigit():
                value = int(value)
            if value not in allowed:
                raise ValueError(f"got {value!r}; allowed values: {', '.join(repr(a) for a in allowed)}")
            return value

        yield Field(json_schema_extra={"enum": list(allowed)})
        yield BeforeValidator(check)


class Text(GroupedMetadata):
    """A non-empty string, matching ``pattern`` in full when given; ``hint`` says what is expected."""

    def __init__(self, pattern: re.Pattern[str] | None = None, hint: str = "") -> None:
        self.pattern = pattern
        self.hint = hint

    def __iter__(self) -> Iterator[Any]:
        pattern, hint = self.pattern, self.hint

        def check(value: Any) -> Any:
            if not isinstance(value, str) or not value:
                raise ValueError(f"expected a non-empty string{hint and ' ' + hint}, got {value!r}")
            if pattern is not None and not pattern.fullmatch(value):
                raise ValueError(f"{value!r} does not match {hint or pattern.pattern}")
            return value

        if pattern is None:
            yield Field(min_length=1)
        else:
            yield Field(min_length=1, pattern=f"^(?:{pattern.pattern})$")
        yield BeforeValidator(check)


def _check_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "false"}:
        return value.lower() == "true"
    raise ValueError(f"expected true or false, got {value!r}")


Bool = Annotated[bool, BeforeValidator(_check_bool)]


def _json_value(kind: str) -> Any:
    """Values given with ``cdk -c key=value`` arrive as strings; accept JSON for objects and lists."""

    def parse(value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"expected a JSON {kind}, got a string that is not JSON ({exc.msg})") from None
        if kind == "object" and not isinstance(value, dict):
            raise ValueError(f"expected an object, got {type(value).__name__}")
        return value

    return BeforeValidator(parse)


def _check_filters(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"expected a JSON list, got a string that is not JSON ({exc.msg})") from None
    if not isinstance(value, list) or not value:
        raise ValueError("expected a non-empty list of Lambda filter patterns (objects)")
    return tuple(value)


def _check_filter_pattern(value: Any) -> Any:
    if not isinstance(value, dict) or not value:
        raise ValueError(f"expected a non-empty filter pattern object, got {value!r}")
    if len(json.dumps(value)) > 4096:
        raise ValueError("a filter pattern is at most 4096 characters")
    return value


FilterPattern = Annotated[dict[str, Any], BeforeValidator(_check_filter_pattern)]
Filters = Annotated[tuple[FilterPattern, ...], BeforeValidator(_check_filters)]

_NAME_CHARS = re.compile(r"[A-Za-z0-9_.-]{3,255}")
_NAME_HINT = "3-255 characters of A-Z a-z 0-9 _ . -"
_LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1827, 3653)
LAYER_ARN_HINT = "arn:aws:lambda:<region>:<account>:layer:<name>:<version>"
LAYER_ARN_PATTERN = re.compile(r"arn:aws[a-z-]*:lambda:[a-z0-9-]+:\d{12}:layer:[A-Za-z0-9_-]{1,140}:\d+")


class _Section(BaseModel):
    """A context object: camelCase keys (snake_case in Python), unknown keys refused, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        validate_default=False,
        use_attribute_docstrings=True,
    )


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


class EsmSettings(_Section):
    """Event source mapping settings, shared by the DynamoDB and Kinesis sources (``esm``, ``<source>.esm``).

    The defaults favour "nothing lost": start at the oldest record, bisect a failing batch, retry without a
    count limit (``retry_attempts = -1``) until the records are ``max_record_age_seconds`` old, and only then
    hand the batch coordinates to the on-failure queue. The record age is the single knob: a Personalize or IAM
    outage shorter than it loses nothing.
    """

    batch_size: Annotated[int, IntIn(1, 10000)] = 1000
    """Records per invocation (1-10000). 1000 records is about 10 s of PutItems at the 100 items/s quota."""
    max_batching_window_seconds: Annotated[int, IntIn(0, 300)] = 5
    """How long Lambda gathers records before invoking (0-300). Fuller batches mean fuller PutItems calls."""
    starting_position: Annotated[Literal["TRIM_HORIZON", "LATEST"], OneOf("TRIM_HORIZON", "LATEST")] = "TRIM_HORIZON"
    retry_attempts: Annotated[int, IntIn(-1, 10000)] = -1
    """Retries of a failing batch before it goes to the on-failure destination: -1 (default) retries until the
    records reach ``max_record_age_seconds``; 0-10000 also stops after that many retries."""
    max_record_age_seconds: Annotated[int, IntIn(60, 604800)] = 86400
    """Records older than this go to the on-failure destination (60-604800). Must not exceed the stream's
    retention (DynamoDB Streams: 24 h; a new Kinesis stream: ``kinesis.retentionHours``)."""
    bisect_batch_on_error: Bool = True
    parallelization_factor: Annotated[int, IntIn(1, 10)] = 1
    """Concurrent batches per shard (1-10). Item order per id is only kept with 1."""
    enabled: Bool = True


EsmOverride = Annotated[EsmSettings, _json_value("object")]
SourceKind = Annotated[Literal["none", "new", "existing"], OneOf("none", "new", "existing")]


class DynamoDbSourceConfig(_Section):
    """The DynamoDB source (``dynamodb``): ``none``, a ``new`` table (stream NEW_AND_OLD_IMAGES) or an
    ``existing`` stream."""

    source: SourceKind = "none"
    partition_key: Annotated[str, Text(re.compile(r".{1,255}"))] | None = None
    partition_key_type: Annotated[Literal["S", "N", "B"], OneOf("S", "N", "B")] = "S"
    sort_key: Annotated[str, Text(re.compile(r".{1,255}"))] | None = None
    sort_key_type: Annotated[Literal["S", "N", "B"], OneOf("S", "N", "B")] = "S"
    table_name: Annotated[str, Text(_NAME_CHARS, _NAME_HINT)] | None = None
    time_to_live_attribute: Annotated[str, Text()] | None = None
    stream_arn: Annotated[str, Text()] | None = None
    skip_ttl_deletes: Bool = False
    """Skip the REMOVE events made by DynamoDB TTL in the handler (``SKIP_TTL_DELETES=true``; counted as skipped)."""
    filters: Filters = ()
    """Lambda event filter patterns (ORed), exactly as Lambda expects them (values are lists)."""
    esm: EsmOverride = Field(default_factory=EsmSettings)

    @property
    def enabled(self) -> bool:
        """True when this source is wired to the connector."""
        return self.source != "none"


class KinesisSourceConfig(_Section):
    """The Kinesis source (``kinesis``): ``none``, a ``new`` encrypted stream, or an ``existing`` stream ARN."""

    source: SourceKind = "none"
    capacity: Annotated[Literal["onDemand", "provisioned"], OneOf("onDemand", "provisioned")] = "onDemand"
    shards: Annotated[int, IntIn(1, 500)] = 1
    stream_name: (
        Annotated[str, Text(re.compile(r"[A-Za-z0-9_.-]{1,128}"), "1-128 characters of A-Z a-z 0-9 _ . -")] | None
    ) = None
    retention_hours: Annotated[int, IntIn(24, 8760)] = 24
    stream_arn: Annotated[str, Text()] | None = None
    filters: Filters = ()
    esm: EsmOverride = Field(default_factory=EsmSettings)

    @property
    def enabled(self) -> bool:
        """True when this source is wired to the connector."""
        return self.source != "none"


# The runtime reserves one PutItems call's worst case before each call (connector.handler.put_items_worst_call_ms
# with its defaults and the state table: 3 attempts × (5 s for a shared-budget slot + 2 s connect + 5 s read) +
# backoffs of 1 s and 2 s, each raised by up to 5 s by x-amz-retry-after: 49 s; tests/infra/test_config.py
# checks it against the runtime); the function's timeout must leave room for that, the margin, and some sending.
PUT_ITEMS_WORST_CALL_MS = 50_000
MIN_SENDING_WINDOW_MS = 10_000

PACING_HEADROOM = 0.97
"""The share of the PutItems quota the derived pacing uses (see :class:`LambdaConfig`)."""


def _reserved_concurrency(value: Any) -> Any:
    return None if value in (None, "none", "null") else value


class LambdaConfig(_Section):
    """Function sizing and PutItems pacing (``lambda``).

    Sized for a 10,000-record batch: at the 100 items/s quota that is about 100 s of PutItems, so the
    default timeout is 300 s. ``put_items_quota_per_second`` is the dataset group's quota
    (``QUOTA_CALLS_PER_SECOND``), the ceiling of the budget the state table shares between all invocations.
    ``max_calls_per_second`` (``MAX_CALLS_PER_SECOND``) is the pacing of one invocation when there is no state
    table; when not set it is derived as ``PACING_HEADROOM * put_items_quota_per_second / reserved_concurrency``:
    a few per cent under the quota, because calls paced at exactly 10/s reach the service with network jitter,
    and whenever an eleventh lands inside one second it is throttled (bench/results/localcloud.md measured
    about 7 % throttled calls at exactly 10/s, none at 9.7/s).
    """

    memory_mb: Annotated[int, IntIn(128, 10240)] = 256
    timeout_seconds: Annotated[int, IntIn(30, 900)] = 300
    reserved_concurrency: Annotated[
        Annotated[int, IntIn(1, 1000)] | None,
        BeforeValidator(_reserved_concurrency),
        WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1, "maximum": 1000}, {"enum": ["none", None]}]}),
    ] = None
    """Unset by default: an account can reserve at most its concurrency limit minus 100 (a new account with a
    limit of 10 cannot reserve any, and the deploy would fail). The state table's shared budget paces instead."""
    max_calls_per_second: Annotated[float, NumIn(0, 1000)] | None = None
    put_items_quota_per_second: Annotated[float, NumIn(0, 10000)] = 10.0
    deadline_margin_ms: Annotated[int, IntIn(0, 60000)] = 5000
    log_level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], OneOf("DEBUG", "INFO", "WARNING", "ERROR")] = (
        "INFO"
    )
    service_name: Annotated[
        str, Text(re.compile(r"[A-Za-z0-9_.-]{1,100}"), "1-100 characters of A-Z a-z 0-9 _ . -")
    ] = "stream-to-personalize"
    log_retention_days: Annotated[int, OneOf(*_LOG_RETENTION_DAYS, coerce_digits=True)] = 30
    powertools_layer_arn: Annotated[str, Text(LAYER_ARN_PATTERN, LAYER_ARN_HINT)] | None = None
    """Overrides the Powertools layer resolved from the public SSM parameter (not published in every region)."""
    tracing: Bool = False
    """X-Ray active tracing of the connector and the bulk-load converter (``true``/``false``). Off by default: the
    function then has no TracingConfig (Lambda's PassThrough), no X-Ray grant, and ``POWERTOOLS_TRACE_DISABLED=true``,
    so the handler never imports the X-Ray SDK (0.05-0.1 s less CPU per cold start at one core, an estimated
    0.3-0.7 s of billed init at 256 MB; see docs/deploy.md). ``true``: ``Mode: Active``, the X-Ray write grant, a
    segment per sampled invocation and a subsegment per AWS call."""

    @property
    def effective_max_calls_per_second(self) -> float:
        """The MAX_CALLS_PER_SECOND the function gets."""
        if self.max_calls_per_second is not None:
            return self.max_calls_per_second
        return round(PACING_HEADROOM * self.put_items_quota_per_second / (self.reserved_concurrency or 1), 3)


class MonitoringConfig(_Section):
    """Alarm thresholds and where alarms notify (``monitoring``: an existing SNS topic, or a new one with an
    email)."""

    iterator_age_seconds: Annotated[int, IntIn(1, 604800)] = 600
    errors: Annotated[int, IntIn(1, 1_000_000)] = 1
    throttled_percent: Annotated[float, NumIn(0, 100)] = 3.0
    """Alarm when more than this share of PutItems attempts is throttled (once at least ``throttled_min_attempts``
    attempts were made in the period, so a handful of calls can't page anyone)."""
    throttled_min_attempts: Annotated[int, IntIn(1, 1_000_000)] = 100
    systemic_errors: Annotated[int, IntIn(1, 1_000_000)] = 1
    dlq_depth: Annotated[int, IntIn(1, 1_000_000)] = 1
    period_minutes: Annotated[int, IntIn(1, 1440)] = 5
    alarm_topic_arn: Annotated[str, Text(SNS_TOPIC_ARN_PATTERN, "arn:aws:sns:<region>:<account>:<topic>")] | None = None
    alarm_email: Annotated[str, Text(re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+"), "an email")] | None = None
    notify_on_ok: Bool = False
    """Also notify when an alarm returns to OK. Off by default: every flap would send two messages."""
    dashboard: Bool = True


class StateTableConfig(_Section):
    """The connector's state table (``stateTable``, ``STATE_TABLE``): the shared PutItems budget and the CDC
    version guard."""

    enabled: Bool = True
    table_name: Annotated[str, Text(_NAME_CHARS, _NAME_HINT)] | None = None
    removal_policy: Annotated[Literal["destroy", "retain"], OneOf("destroy", "retain")] = "destroy"
    """``destroy`` (default): the table holds only state the connector rebuilds (budget tokens, and the last
    version written per item, which the guard re-learns); ``retain`` keeps it when the stack is deleted."""


class OnFailureConfig(_Section):
    """Where the event source mappings send a batch that exhausted its retries or its record age (``onFailure``).

    ``s3`` (default): a bucket; for stream sources Lambda writes one object per failed batch with the batch's
    coordinates **and the whole invocation record** (the records themselves, ``payload``), so ``python -m ops
    replay`` can replay it after the stream has dropped the records. ``sqs``: a queue that only gets the batch
    coordinates (shard and sequence range); replaying it needs the records to still be in the stream.
    """

    destination: Annotated[Literal["s3", "sqs"], OneOf("s3", "sqs")] = "s3"
    expire_days: Annotated[int, IntIn(1, 3650)] = 30
    """Days an object stays in the bucket (an S3 lifecycle expiry; ``s3`` only). Replay, or copy, within it."""
    removal_policy: Annotated[Literal["destroy", "retain"], OneOf("destroy", "retain")] = "retain"
    """``retain`` (default): the bucket (records of failed batches) outlives the stack; ``destroy`` deletes it
    with the stack, which CloudFormation can only do once it is empty (``s3`` only)."""


class BulkLoadConfig(_Section):
    """The opt-in bulk load on AWS (``bulkLoad``): a Step Functions state machine that converts a DynamoDB
    export to the Items CSV (a Distributed Map, one Lambda per data file, the runtime's converter
    ``connector.bulk.handler``) and imports it with ``CreateDatasetImportJob``."""

    enabled: Bool = False
    export_bucket_name: (
        Annotated[str, Text(re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"), "an S3 bucket name")] | None
    ) = None
    """The bucket the DynamoDB exports are written to (the state machine reads only that bucket). Required."""
    max_concurrency: Annotated[int, IntIn(1, 1000)] = 20
    """Data files converted at once (the Distributed Map's MaxConcurrency)."""
    converter_memory_mb: Annotated[int, IntIn(128, 10240)] = 1769
    """Memory of the converter Lambda (1,769 MB is one full vCPU)."""
    converter_timeout_seconds: Annotated[int, IntIn(30, 900)] = 900
    csv_expire_days: Annotated[int, IntIn(1, 3650)] = 7
    """Days the converted CSV and rejects reports stay in the staging bucket."""


class CreateDatasetConfig(_Section):
    """Create the Personalize dataset group, schema and Items dataset (``createDataset``, when no ``datasetArn``
    is given). The schema's name gets a hash of its content appended."""

    dataset_group_name: Annotated[str, Text(PERSONALIZE_NAME_PATTERN, "[a-zA-Z0-9-_]{1,63}")] = ""
    """Required."""
    dataset_name: Annotated[str, Text(PERSONALIZE_NAME_PATTERN)] = ""
    """Default ``<datasetGroupName>-items``."""
    schema_name: Annotated[str, Text(PERSONALIZE_NAME_PATTERN)] = ""
    """The schema name's prefix; default ``<datasetGroupName>-items-schema``."""


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
    on_failure: OnFailureConfig = field(default_factory=OnFailureConfig)
    bulk_load: BulkLoadConfig = field(default_factory=BulkLoadConfig)
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


class CdkContext(BaseModel):
    """The cdk.json ``context`` this app reads, for its JSON Schema (:func:`context_json_schema`).

    Validation goes section by section (:func:`load_config`), so that the first error is the one a user
    expects and the cross-key rules run in order; this model gathers the sections for editors.
    """

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="allow", use_attribute_docstrings=True
    )

    dataset_arn: Annotated[str, Text(DATASET_ARN_PATTERN)] | None = Field(
        default=None,
        description="The Items dataset ARN, arn:aws:personalize:<region>:<account>:dataset/<group>/ITEMS "
        "(or createDataset).",
    )
    create_dataset: CreateDatasetConfig | None = None
    mapping: dict[str, Any] | None = Field(default=None, description="The mapping document, inline.")
    mapping_file: str | None = Field(default=None, description="Path of the mapping document (JSON).")
    schema_file: str | None = Field(default=None, description="Path of the Items Avro schema (JSON).")
    config_delivery: Annotated[Literal["auto", "env", "file"], OneOf("auto", "env", "file")] = "auto"
    dynamodb: DynamoDbSourceConfig | None = None
    kinesis: KinesisSourceConfig | None = None
    esm: EsmSettings | None = None
    lambda_: LambdaConfig | None = Field(default=None, alias="lambda")
    monitoring: MonitoringConfig | None = None
    state_table: StateTableConfig | None = None
    on_failure: OnFailureConfig | None = None
    bulk_load: BulkLoadConfig | None = None
    filter_pattern_quota: Annotated[int, IntIn(1, 1000)] = 5
    allow_example_dataset_arn: Bool = False
    account: Annotated[str, Text(ACCOUNT_PATTERN, "12 digits")] | None = None
    region: Annotated[str, Text(REGION_PATTERN, "a region such as us-east-1")] | None = None


def context_json_schema() -> dict[str, Any]:
    """The JSON Schema of cdk.json (its ``context``), as published in ``docs/cdk-context.schema.json``."""
    context = CdkContext.model_json_schema(by_alias=True, mode="validation")
    definitions = context.pop("$defs", {})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "stream-to-personalize cdk.json",
        "type": "object",
        "properties": {"app": {"type": "string"}, "watch": {"type": "object"}, "context": context},
        "$defs": definitions,
    }


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
# Validation: pydantic errors -> one line naming the key.
# --------------------------------------------------------------------------------------------------


def _fail(key: str, message: str) -> ConfigError:
    return ConfigError(f"context key '{key}': {message}")


def _dotted(prefix: str, loc: tuple[int | str, ...]) -> str:
    key = prefix
    for part in loc:
        key = f"{key}[{part}]" if isinstance(part, int) else f"{key}.{part}"
    return key


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel]:
    """The model class that holds the field at ``loc`` (by alias)."""
    for part in loc:
        if isinstance(part, int):
            continue
        for name, info in model.model_fields.items():
            if part in (info.alias, name):
                inner = [a for a in _flatten_args(info.annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
                if inner:
                    model = inner[0]
                break
    return model


def _flatten_args(annotation: Any) -> list[Any]:
    found = [annotation]
    for arg in get_args(annotation):
        found.extend(_flatten_args(arg))
    return found


def _aliases(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _validate(model: type[_S], key: str, raw: Mapping[str, Any]) -> _S:
    """``model`` from the context object ``raw`` at ``key``; the first error as a :class:`ConfigError`."""
    try:
        return model.model_validate(raw, by_alias=True, by_name=False)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        loc = tuple(error["loc"])
        if error["type"] == "extra_forbidden":
            holder = _model_at(model, loc[:-1])
            parent = _dotted(key, loc[:-1])
            allowed = ", ".join(_aliases(holder))
            raise _fail(_dotted(key, loc), f"unknown key; allowed keys of '{parent}': {allowed}") from None
        cause = (error.get("ctx") or {}).get("error")
        message = str(cause) if cause is not None else error["msg"]
        raise _fail(_dotted(key, loc), message) from None


_S = TypeVar("_S", bound=BaseModel)


def _object(key: str, value: Any) -> dict[str, Any]:
    try:
        parsed: dict[str, Any] = TypeAdapter(Annotated[dict[str, Any], _json_value("object")]).validate_python(value)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        cause = (error.get("ctx") or {}).get("error")
        raise _fail(key, str(cause) if cause is not None else error["msg"]) from None
    return parsed


def _str(key: str, value: Any, *, pattern: re.Pattern[str] | None = None, hint: str = "") -> str:
    return _single(key, Annotated[str, Text(pattern, hint)], value)


def _bool(key: str, value: Any) -> bool:
    return _single(key, Bool, value)


def _int(key: str, value: Any, *, low: int, high: int) -> int:
    return _single(key, Annotated[int, IntIn(low, high)], value)


def _choice(key: str, value: Any, allowed: Sequence[Any]) -> Any:
    return _single(key, Annotated[Any, OneOf(*allowed)], value)


def _single(key: str, annotation: Any, value: Any) -> Any:
    try:
        return TypeAdapter(annotation).validate_python(value)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        cause = (error.get("ctx") or {}).get("error")
        raise _fail(key, str(cause) if cause is not None else error["msg"]) from None


def _set(model: BaseModel) -> list[str]:
    """The keys (aliases) the user gave, in declaration order."""
    return [info.alias or name for name, info in type(model).model_fields.items() if name in model.model_fields_set]


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
# Sections: the model validates each value; the rules between keys follow.
# --------------------------------------------------------------------------------------------------


def _esm(key: str, value: Any, base: EsmSettings) -> EsmSettings:
    parsed = _validate(EsmSettings, key, _object(key, value))
    return _merge_esm(base, parsed)


def _merge_esm(base: EsmSettings, override: EsmSettings) -> EsmSettings:
    return base.model_copy(update={name: getattr(override, name) for name in override.model_fields_set})


DEFAULT_FILTER_PATTERN_QUOTA = 5
"""Lambda's default quota of filter patterns per event source mapping (adjustable in Service Quotas)."""


def _check_filter_quota(key: str, filters: tuple[Any, ...], quota: int) -> None:
    if len(filters) > quota:
        raise _fail(
            key,
            f"{len(filters)} filter patterns exceed the quota of {quota} per event source mapping "
            f"(Lambda's default is {DEFAULT_FILTER_PATTERN_QUOTA}); if your account's quota was raised, "
            "set context key 'filterPatternQuota'",
        )


DYNAMODB_STREAM_RETENTION_S = 86400
"""DynamoDB Streams keep records for 24 hours (fixed)."""

_DYNAMODB_NEW_ONLY = ("partitionKey", "partitionKeyType", "sortKey", "sortKeyType", "tableName", "timeToLiveAttribute")


def _require_source(key: str, cfg: BaseModel) -> None:
    if "source" not in cfg.model_fields_set:
        raise _fail(f"{key}.source", "got None; allowed values: 'none', 'new', 'existing'")


def _none_source(key: str, cfg: BaseModel) -> None:
    extra = sorted(set(_set(cfg)) - {"source"})
    if extra:
        raise _fail(f"{key}.{extra[0]}", f"not allowed when {key}.source is 'none'")


def _existing_source(key: str, cfg: BaseModel, new_only: Sequence[str], pattern: re.Pattern[str], hint: str) -> str:
    """``<key>.streamArn`` for ``source: existing``, refusing the keys that only a new source takes."""
    present = [k for k in new_only if k in _set(cfg)]
    if present:
        raise _fail(f"{key}.{present[0]}", f"only allowed when {key}.source is 'new'")
    arn = getattr(cfg, "stream_arn", None)
    if arn is None:
        raise _fail(f"{key}.streamArn", f"required when {key}.source is 'existing'")
    return _str(f"{key}.streamArn", arn, pattern=pattern, hint=hint)


def _dynamodb(value: Any, esm: EsmSettings, filter_quota: int) -> DynamoDbSourceConfig:
    key = "dynamodb"
    cfg = _validate(DynamoDbSourceConfig, key, _object(key, value))
    _require_source(key, cfg)
    if cfg.source == "none":
        _none_source(key, cfg)
        return DynamoDbSourceConfig(source="none")
    given = _set(cfg)
    if cfg.source == "new":
        if "streamArn" in given:
            raise _fail(f"{key}.streamArn", "only allowed when dynamodb.source is 'existing'")
        if cfg.partition_key is None:
            raise _fail(f"{key}.partitionKey", "required when dynamodb.source is 'new' (the partition key name)")
        if "sortKeyType" in given and cfg.sort_key is None:
            raise _fail(f"{key}.sortKeyType", "only allowed together with dynamodb.sortKey")
    else:
        _existing_source(
            key,
            cfg,
            _DYNAMODB_NEW_ONLY,
            DYNAMODB_STREAM_ARN_PATTERN,
            "arn:aws:dynamodb:<region>:<account>:table/<table>/stream/<label>",
        )
    if cfg.filters:
        _check_filter_quota(f"{key}.filters", cfg.filters, filter_quota)
    merged = _merge_esm(esm, cfg.esm) if "esm" in given else esm
    cfg = cfg.model_copy(update={"esm": merged})
    if merged.max_record_age_seconds > DYNAMODB_STREAM_RETENTION_S:
        own = "esm" in given and "max_record_age_seconds" in _own_esm_fields(value)
        raise _fail(
            f"{key}.esm.maxRecordAgeSeconds" if own else "esm.maxRecordAgeSeconds",
            f"{merged.max_record_age_seconds} s exceeds the DynamoDB stream's fixed 24 h retention "
            f"({DYNAMODB_STREAM_RETENTION_S} s): records would expire before Lambda stops retrying them",
        )
    return cfg


def _own_esm_fields(value: Any) -> set[str]:
    """The snake_case ESM fields a source section sets itself."""
    raw = _object("dynamodb", value).get("esm")
    if raw is None:
        return set()
    return set(EsmSettings.model_validate(_object("esm", raw)).model_fields_set)


def _kinesis(value: Any, esm: EsmSettings, filter_quota: int) -> KinesisSourceConfig:
    key = "kinesis"
    cfg = _validate(KinesisSourceConfig, key, _object(key, value))
    _require_source(key, cfg)
    if cfg.source == "none":
        _none_source(key, cfg)
        return KinesisSourceConfig(source="none")
    given = _set(cfg)
    if cfg.source == "new":
        if "streamArn" in given:
            raise _fail(f"{key}.streamArn", "only allowed when kinesis.source is 'existing'")
        if "shards" in given and cfg.capacity != "provisioned":
            raise _fail(f"{key}.shards", "only allowed when kinesis.capacity is 'provisioned'")
    else:
        _existing_source(
            key,
            cfg,
            ("capacity", "shards", "streamName", "retentionHours"),
            KINESIS_STREAM_ARN_PATTERN,
            "arn:aws:kinesis:<region>:<account>:stream/<name>",
        )
    if cfg.filters:
        _check_filter_quota(f"{key}.filters", cfg.filters, filter_quota)
    cfg = cfg.model_copy(update={"esm": _merge_esm(esm, cfg.esm) if "esm" in given else esm})
    retention_s = cfg.retention_hours * 3600
    if cfg.source == "new" and cfg.esm.max_record_age_seconds > retention_s:
        raise _fail(
            f"{key}.retentionHours",
            f"the new stream keeps records {cfg.retention_hours} h ({retention_s} s) but the Kinesis mapping's "
            f"esm.maxRecordAgeSeconds is {cfg.esm.max_record_age_seconds} s: records would expire from the stream "
            "before Lambda stops retrying them; raise kinesis.retentionHours or lower maxRecordAgeSeconds",
        )
    return cfg


def _lambda(value: Any) -> LambdaConfig:
    key = "lambda"
    cfg = _validate(LambdaConfig, key, _object(key, value))
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


def _monitoring(value: Any) -> MonitoringConfig:
    key = "monitoring"
    raw = _object(key, value)
    if "alarmTopicArn" in raw and "alarmEmail" in raw:
        raise _fail(f"{key}.alarmEmail", "give either monitoring.alarmTopicArn or monitoring.alarmEmail, not both")
    return _validate(MonitoringConfig, key, raw)


def _state_table(value: Any) -> StateTableConfig:
    key = "stateTable"
    cfg = _validate(StateTableConfig, key, _object(key, value))
    if not cfg.enabled:
        extra = sorted(set(_set(cfg)) - {"enabled"})
        if extra:
            raise _fail(f"{key}.{extra[0]}", "not allowed when stateTable.enabled is false")
    return cfg


def _on_failure(value: Any) -> OnFailureConfig:
    key = "onFailure"
    cfg = _validate(OnFailureConfig, key, _object(key, value))
    if cfg.destination == "sqs":
        extra = sorted(set(_set(cfg)) - {"destination"})
        if extra:
            raise _fail(f"{key}.{extra[0]}", "only allowed when onFailure.destination is 's3'")
    return cfg


def _bulk_load(value: Any) -> BulkLoadConfig:
    key = "bulkLoad"
    cfg = _validate(BulkLoadConfig, key, _object(key, value))
    if not cfg.enabled:
        extra = sorted(set(_set(cfg)) - {"enabled"})
        if extra:
            raise _fail(f"{key}.{extra[0]}", "not allowed when bulkLoad.enabled is false")
    elif cfg.export_bucket_name is None:
        raise _fail(
            f"{key}.exportBucketName",
            "required when bulkLoad.enabled is true: the bucket your DynamoDB exports go to",
        )
    return cfg


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
    cfg = _validate(CreateDatasetConfig, key, _object(key, value))
    if "dataset_group_name" not in cfg.model_fields_set:
        raise _fail(f"{key}.datasetGroupName", "required (the name of the dataset group to create)")
    if "schema" not in mapping:
        raise _fail(key, "needs an Items schema: set 'schemaFile' or put a 'schema' in the mapping document")
    group = cfg.dataset_group_name
    return cfg.model_copy(
        update={
            "dataset_name": cfg.dataset_name or f"{group}-items",
            "schema_name": cfg.schema_name or f"{group}-items-schema",
        }
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
    on_failure = _on_failure(ctx["onFailure"]) if "onFailure" in ctx else OnFailureConfig()
    bulk_load = _bulk_load(ctx["bulkLoad"]) if "bulkLoad" in ctx else BulkLoadConfig()
    if bulk_load.enabled and "schema" not in mapping:
        raise _fail(
            "bulkLoad.enabled",
            "a bulk import needs an Items schema (the CSV header is the schema's fields): set 'schemaFile' or "
            "put a 'schema' in the mapping document",
        )
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
        on_failure=on_failure,
        bulk_load=bulk_load,
        allow_example_dataset_arn=allow_example,
        filter_pattern_quota=filter_quota,
        account=account,
        region=region,
    )
