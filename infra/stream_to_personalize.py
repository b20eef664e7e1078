"""The reusable ``StreamToPersonalize`` construct: the connector Lambda, its event sources, queues and IAM.

Import it into any CDK app::

    from infra import EsmSettings, StreamToPersonalize

    connector = StreamToPersonalize(self, "Catalog", dataset_arn=dataset_arn, mapping={"itemId": "sku"})
    connector.use_state_table(StateTable(self, "State"))   # shared PutItems budget + CDC version guard
    connector.add_dynamodb_source(table, settings=EsmSettings(batch_size=500), skip_ttl_deletes=True)
    connector.add_kinesis_source(stream)

It owns:

* the function (python3.13, arm64, code from ``lambda_src/`` without Docker, Powertools from the public
  layer pinned to requirements.txt, X-Ray active tracing only with ``tracing=True``) and its log group;
* ``dlq``: the poison-record queue (``DLQ_URL``), JSON messages ``{reason, source, eventSourceARN,
  sequenceNumber, itemId, record}`` written by the connector;
* the event source mappings' on-failure destination, written by Lambda: ``failure_bucket`` (default, S3: whole
  invocation records, the records included, for ``python -m ops replay``; see :mod:`infra.failed_batches`) or
  ``failure_queue`` (``on_failure="sqs"``: batch coordinates only);
* a role with ``personalize:PutItems`` on the dataset ARN only, send on its own queues, and stream read as
  the L2 grants give it; with :meth:`StreamToPersonalize.use_state_table`, GetItem/BatchGetItem/PutItem/
  UpdateItem on that table only.

Event source mappings retry a failing batch without a count limit (``retry_attempts=-1``) until its records
reach the maximum age, the single knob; they publish Lambda's event-count metrics (``MetricsConfig``
``EventCount``: polled, filtered out, invoked, failed, dropped), so records a filter or an expiry removes are
visible.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kinesis as kinesis
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from infra import asset_wheels
from infra.config import INLINE_CONFIG_MAX_BYTES, EsmSettings, compact_json
from infra.failed_batches import FailedBatchesBucket, S3OnFailureDestination
from infra.nag import acknowledge
from infra.powertools import REPO_ROOT, layer_parameter_name, powertools_version
from infra.state_table import StateTable

__all__ = [
    "CONFIG_FILE_NAME",
    "DEFAULT_CODE_PATH",
    "EMF_METRICS",
    "HANDLER",
    "METRICS_NAMESPACE",
    "StreamToPersonalize",
    "tracing_env",
    "tracing_mode",
]

DEFAULT_CODE_PATH = REPO_ROOT / "lambda_src"
HANDLER = "connector.handler.handler"
CONFIG_FILE_NAME = "connector_config.json"
METRICS_NAMESPACE = "StreamToPersonalize"
#: The EMF metrics the runtime emits (namespace ``StreamToPersonalize``, dimension ``service``).
EMF_METRICS = (
    "RecordsIn",
    "RecordsPut",
    "RecordsPoison",
    "RecordsRetry",
    "RecordsSkipped",
    "PutItemsCalls",
    "ItemsSent",
    "Throttles",
    "ItemsPerCall",
    "PutItemsAttempts",
    "PutItemsRejected",
    "SystemicErrors",
    "StaleSkipped",
    "BudgetWaitMs",
    "BudgetFallbacks",
)


def tracing_mode(tracing: bool) -> lambda_.Tracing:
    """``ACTIVE`` (``TracingConfig`` ``Active``; CDK grants xray:PutTraceSegments/PutTelemetryRecords on ``*``) or
    ``DISABLED`` (CDK emits no ``TracingConfig``, so Lambda's default PassThrough, and no X-Ray grant)."""
    return lambda_.Tracing.ACTIVE if tracing else lambda_.Tracing.DISABLED


def tracing_env(tracing: bool) -> dict[str, str]:
    """Powertools' own switch for the runtime: with ``true``, ``connector.telemetry`` never imports the X-Ray SDK."""
    return {"POWERTOOLS_TRACE_DISABLED": "false" if tracing else "true"}


_ASSET_EXCLUDES = ["**/__pycache__", "__pycache__", "**/*.pyc", "**/.pytest_cache", "**/.mypy_cache"]


class StreamToPersonalize(Construct):
    """The connector: a Lambda that turns DynamoDB/Kinesis change records into PutItems calls.

    Add sources with :meth:`add_dynamodb_source` and :meth:`add_kinesis_source`; read the connector's
    EMF metrics with :meth:`metric`.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        dataset_arn: str,
        mapping: Mapping[str, Any] | None = None,
        config_delivery: Literal["auto", "env", "file"] = "auto",
        code_path: str | Path = DEFAULT_CODE_PATH,
        memory_mb: int = 256,
        timeout: cdk.Duration | None = None,
        reserved_concurrency: int | None = None,
        max_calls_per_second: float = 9.7,
        quota_calls_per_second: float = 10.0,
        skip_ttl_deletes: bool = False,
        deadline_margin_ms: int = 5000,
        log_level: str = "INFO",
        service_name: str = "stream-to-personalize",
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH,
        powertools_layer_version: str | None = None,
        powertools_layer_arn: str | None = None,
        queue_retention: cdk.Duration | None = None,
        on_failure: Literal["s3", "sqs"] = "s3",
        on_failure_expire_days: int = 30,
        on_failure_removal_policy: cdk.RemovalPolicy = cdk.RemovalPolicy.RETAIN,
        tracing: bool = False,
    ) -> None:
        """Create the function, its queues and its role.

        :param dataset_arn: the Items dataset PutItems writes to (the only resource PutItems is allowed on).
        :param mapping: the mapping document (see DESIGN.md "Runtime contract"); ``{}`` when omitted.
        :param config_delivery: ``env`` puts it in ``CONNECTOR_CONFIG``; ``file`` ships it in the asset as
            ``connector_config.json`` and sets ``CONNECTOR_CONFIG_FILE``; ``auto`` picks ``file`` when the
            compact JSON exceeds the inline limit (Lambda's whole environment is limited to 4 KB).
        :param code_path: the runtime source directory (the asset root; holds the ``connector`` package).
        :param timeout: default 300 s, enough for a 10,000-record batch at the 100 items/s quota.
        :param reserved_concurrency: caps concurrent invocations; ``None`` (default) leaves it unreserved. An
            account can reserve at most its concurrency limit minus 100, so a new account (limit 10) can't
            reserve any: the deploy fails.
        :param max_calls_per_second: ``MAX_CALLS_PER_SECOND``, PutItems pacing per invocation when there is no
            state table (or the runtime falls back from it). Without a state table all invocations share the
            dataset group's 10 calls/s, so keep ``concurrency * max_calls_per_second <= 9.7``.
        :param quota_calls_per_second: ``QUOTA_CALLS_PER_SECOND``, the dataset group's PutItems quota: the
            shared budget's ceiling (see :meth:`use_state_table`).
        :param skip_ttl_deletes: ``SKIP_TTL_DELETES=true``: the handler counts REMOVE records made by DynamoDB
            TTL (``userIdentity.principalId == dynamodb.amazonaws.com``) as skipped.
        :param powertools_layer_version: default: the ``aws-lambda-powertools`` pin in requirements.txt.
        :param powertools_layer_arn: use this layer ARN instead of the public SSM parameter (which AWS does not
            publish in every region).
        :param queue_retention: retention of the queues; default 14 days (the SQS maximum).
        :param on_failure: the event source mappings' on-failure destination: ``s3`` (a bucket of whole invocation
            records, kept ``on_failure_expire_days`` days) or ``sqs`` (a queue of batch coordinates).
        :param tracing: X-Ray active tracing (``TracingConfig`` ``Active``, CDK's X-Ray write grant on the role,
            ``POWERTOOLS_TRACE_DISABLED=false``). Off (default): no ``TracingConfig`` (Lambda's PassThrough), no
            X-Ray grant, ``POWERTOOLS_TRACE_DISABLED=true``, and the handler never imports the X-Ray SDK (a shorter
            cold start).
        """
        super().__init__(scope, construct_id)
        self.dataset_arn = dataset_arn
        self.service_name = service_name
        #: Whether the function traces with X-Ray (other functions of the same runtime follow it: the bulk converter).
        self.tracing = tracing
        self.mapping: Mapping[str, Any] = dict(mapping or {})
        code_dir = Path(code_path)
        if not (code_dir / "connector").is_dir():
            raise ValueError(f"code_path {code_dir} has no 'connector' package (expected the lambda_src/ layout)")
        retention = queue_retention or cdk.Duration.days(14)
        timeout = timeout or cdk.Duration.seconds(300)

        self.dlq = sqs.Queue(
            self,
            "PoisonRecords",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=retention,
        )
        self.failure_queue: sqs.Queue | None = None
        self.failure_bucket: FailedBatchesBucket | None = None
        if on_failure == "sqs":
            self.failure_queue = sqs.Queue(
                self,
                "FailedBatches",
                encryption=sqs.QueueEncryption.SQS_MANAGED,
                enforce_ssl=True,
                retention_period=retention,
            )
        elif on_failure == "s3":
            self.failure_bucket = FailedBatchesBucket(
                self,
                "FailedBatchesBucket",
                expire_days=on_failure_expire_days,
                removal_policy=on_failure_removal_policy,
            )
        else:
            raise ValueError(f"on_failure must be 's3' or 'sqs', got {on_failure!r}")
        queues = [(self.dlq, "poison records")]
        if self.failure_queue is not None:
            queues.append((self.failure_queue, "failed batch coordinates"))
        for queue, what in queues:
            acknowledge(
                queue,
                "AwsSolutions-SQS3",
                f"This queue is itself the terminal dead-letter store for {what}; operators inspect and "
                "redrive it by hand, alarmed on its depth.",
            )

        self.log_group = logs.LogGroup(self, "Logs", retention=log_retention)
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="stream-to-personalize connector: PutItems on one dataset, send to its own queues.",
        )
        self.log_group.grant_write(self.role)
        self.role.add_to_principal_policy(
            iam.PolicyStatement(sid="PutItemsOnDataset", actions=["personalize:PutItems"], resources=[dataset_arn])
        )
        self.dlq.grant_send_messages(self.role)

        code, config_env = self._code(code_dir, config_delivery)
        #: The asset and the mapping's variables, for other functions of the same runtime (the bulk converter).
        self.code: lambda_.Code = code
        self.config_env: dict[str, str] = dict(config_env)
        if powertools_layer_arn is not None:
            layer_arn = powertools_layer_arn
        else:
            layer_version = powertools_layer_version or powertools_version()
            layer_arn = ssm.StringParameter.value_for_string_parameter(
                self, layer_parameter_name(version=layer_version, architecture="arm64", runtime="python3.13")
            )
        self.powertools_layer = lambda_.LayerVersion.from_layer_version_arn(self, "PowertoolsLayer", layer_arn)

        self.function = lambda_.Function(
            self,
            "Function",
            description="Streams DynamoDB/Kinesis item changes into Amazon Personalize (PutItems).",
            runtime=lambda_.Runtime.PYTHON_3_13,
            architecture=lambda_.Architecture.ARM_64,
            handler=HANDLER,
            code=code,
            layers=[self.powertools_layer],
            role=self.role,
            log_group=self.log_group,
            memory_size=memory_mb,
            timeout=timeout,
            reserved_concurrent_executions=reserved_concurrency,
            tracing=tracing_mode(tracing),
            environment={
                "DATASET_ARN": dataset_arn,
                "DLQ_URL": self.dlq.queue_url,
                **config_env,
                "MAX_CALLS_PER_SECOND": f"{max_calls_per_second:g}",
                "QUOTA_CALLS_PER_SECOND": f"{quota_calls_per_second:g}",
                "SKIP_TTL_DELETES": "true" if skip_ttl_deletes else "false",
                "DEADLINE_MARGIN_MS": str(deadline_margin_ms),
                "POWERTOOLS_SERVICE_NAME": service_name,
                "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
                "POWERTOOLS_LOG_LEVEL": log_level,
                **tracing_env(tracing),
            },
        )
        self.event_sources: list[sources.DynamoEventSource | sources.KinesisEventSource] = []
        self.state_table: StateTable | None = None

        acknowledge(
            self.function,
            "AwsSolutions-L1",
            "Pinned to python3.13: the Powertools public layer this project pins (requirements.txt) and tests "
            "against is published for python3.13/arm64.",
        )
        policy = self.role.node.find_child("DefaultPolicy")
        acknowledge(
            policy,
            "AwsSolutions-IAM5[Resource::*]",
            "X-Ray PutTraceSegments/PutTelemetryRecords (active tracing, when on) and dynamodb:ListStreams "
            "(stream read) do not support resource-level permissions.",
        )
        if self.failure_bucket is not None:
            stack = cdk.Stack.of(self)
            cfn_bucket = self.failure_bucket.bucket.node.default_child
            assert isinstance(cfn_bucket, cdk.CfnElement)
            bucket_id = stack.resolve(stack.get_logical_id(cfn_bucket))
            acknowledge(
                policy,
                f"AwsSolutions-IAM5[Resource::<{bucket_id}.Arn>/*]",
                "s3:PutObject on the on-failure bucket's objects: Lambda names each object itself "
                "(aws/lambda/<ESM UUID>/<shard>/<date>/...), so the key cannot be narrowed; limited to this bucket "
                "and to buckets of this account (s3:ResourceAccount), as the Lambda guide recommends.",
            )

    # ------------------------------------------------------------------------------------------------
    # State
    # ------------------------------------------------------------------------------------------------

    def use_state_table(self, state_table: StateTable) -> None:
        """Share the PutItems budget (and, for CDC over Kinesis, the version guard) through ``state_table``.

        Sets ``STATE_TABLE`` and grants exactly GetItem, BatchGetItem, PutItem and UpdateItem on the table ARN.
        """
        if self.state_table is not None:
            raise ValueError("the connector already has a state table")
        self.state_table = state_table
        self.function.add_environment("STATE_TABLE", state_table.table_name)
        state_table.grant_connector(self.role)

    # ------------------------------------------------------------------------------------------------
    # Sources
    # ------------------------------------------------------------------------------------------------

    def add_dynamodb_source(
        self,
        table: dynamodb.ITable,
        *,
        settings: EsmSettings | None = None,
        filters: Sequence[Mapping[str, Any]] = (),
        skip_ttl_deletes: bool = False,
    ) -> sources.DynamoEventSource:
        """Subscribe the connector to ``table``'s stream (the table must have a stream, NEW_AND_OLD_IMAGES).

        :param filters: Lambda filter patterns (ORed), as plain dicts; each goes through
            ``FilterCriteria.filter`` (a raw dict would synthesize ``{}``).
        :param skip_ttl_deletes: set ``SKIP_TTL_DELETES=true`` on the function: the handler skips TTL deletes
            (from ``userIdentity``) and counts them. No event filter: Lambda's DynamoDB filtering only looks at
            the ``dynamodb`` key, and a filter that drops everything raises no alarm.
        """
        if skip_ttl_deletes:
            self.function.add_environment("SKIP_TTL_DELETES", "true")
        criteria = [lambda_.FilterCriteria.filter(f) for f in filters]
        s = settings or EsmSettings()
        source = sources.DynamoEventSource(table, **self._esm_kwargs(s, criteria))
        self._add_event_source(source, s)
        return source

    def add_kinesis_source(
        self,
        stream: kinesis.IStream,
        *,
        settings: EsmSettings | None = None,
        filters: Sequence[Mapping[str, Any]] = (),
    ) -> sources.KinesisEventSource:
        """Subscribe the connector to ``stream`` (JSON documents, or DynamoDB CDC delivered via Kinesis).

        :param filters: Lambda filter patterns (ORed) on the record, e.g. ``{"data": {"type": ["product"]}}``.
        """
        s = settings or EsmSettings()
        criteria = [lambda_.FilterCriteria.filter(f) for f in filters]
        source = sources.KinesisEventSource(stream, **self._esm_kwargs(s, criteria))
        self._add_event_source(source, s)
        return source

    def _add_event_source(self, source: sources.DynamoEventSource | sources.KinesisEventSource, s: EsmSettings) -> None:
        before = {c.node.id for c in self.function.node.children}
        self.function.add_event_source(source)
        self.event_sources.append(source)
        if s.retry_attempts < 0:
            # The L2 only takes 0-10000 (leaving it out means -1); say -1 explicitly so the template states it.
            (mapping,) = (c for c in self.function.node.children if c.node.id not in before)
            cfn = mapping.node.default_child
            assert isinstance(cfn, lambda_.CfnEventSourceMapping)
            cfn.add_property_override("MaximumRetryAttempts", -1)

    def _esm_kwargs(self, s: EsmSettings, criteria: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return {
            "starting_position": lambda_.StartingPosition[s.starting_position],
            "batch_size": s.batch_size,
            "max_batching_window": cdk.Duration.seconds(s.max_batching_window_seconds),
            "retry_attempts": s.retry_attempts if s.retry_attempts >= 0 else None,
            "max_record_age": cdk.Duration.seconds(s.max_record_age_seconds),
            "bisect_batch_on_error": s.bisect_batch_on_error,
            "parallelization_factor": s.parallelization_factor,
            "report_batch_item_failures": True,
            "on_failure": self._on_failure_destination(),
            "filters": list(criteria) or None,
            "metrics_config": lambda_.MetricsConfig(metrics=[lambda_.MetricType.EVENT_COUNT]),
            "enabled": s.enabled,
        }

    def _on_failure_destination(self) -> lambda_.IEventSourceDlq:
        if self.failure_bucket is not None:
            return S3OnFailureDestination(self.failure_bucket)
        assert self.failure_queue is not None
        return sources.SqsDlq(self.failure_queue)

    # ------------------------------------------------------------------------------------------------
    # Metrics
    # ------------------------------------------------------------------------------------------------

    def metric(
        self, metric_name: str, *, statistic: str = "Sum", period: cdk.Duration | None = None
    ) -> cloudwatch.Metric:
        """One of the connector's EMF metrics (:data:`EMF_METRICS`)."""
        if metric_name not in EMF_METRICS:
            raise ValueError(f"unknown connector metric {metric_name!r}; known: {', '.join(EMF_METRICS)}")
        return cloudwatch.Metric(
            namespace=METRICS_NAMESPACE,
            metric_name=metric_name,
            dimensions_map={"service": self.service_name},
            statistic=statistic,
            period=period or cdk.Duration.minutes(5),
        )

    def metric_items_per_call(self, *, period: cdk.Duration | None = None) -> cloudwatch.MathExpression:
        """Items per PutItems call (ItemsSent / PutItemsCalls); 10 is the best possible."""
        return cloudwatch.MathExpression(
            expression="IF(calls > 0, items / calls, 0)",
            using_metrics={
                "items": self.metric("ItemsSent", period=period),
                "calls": self.metric("PutItemsCalls", period=period),
            },
            label="Items per PutItems call",
            period=period or cdk.Duration.minutes(5),
        )

    def metric_throttled_percent(
        self, *, period: cdk.Duration | None = None, min_attempts: int = 100
    ) -> cloudwatch.MathExpression:
        """Percentage of PutItems attempts throttled (100 x Throttles / PutItemsAttempts); 0 below ``min_attempts``
        attempts in the period, so a single throttled call among a few can't look like 10 %."""
        return cloudwatch.MathExpression(
            expression=f"IF(attempts >= {min_attempts}, 100 * throttles / attempts, 0)",
            using_metrics={
                "throttles": self.metric("Throttles", period=period),
                "attempts": self.metric("PutItemsAttempts", period=period),
            },
            label="PutItems attempts throttled (%)",
            period=period or cdk.Duration.minutes(5),
        )

    def metric_event_count(
        self,
        source: sources.DynamoEventSource | sources.KinesisEventSource,
        metric_name: str,
        *,
        period: cdk.Duration | None = None,
    ) -> cloudwatch.Metric:
        """One of an event source mapping's event-count metrics (``MetricsConfig`` ``EventCount``): e.g.
        ``PolledEventCount``, ``FilteredOutEventCount``, ``InvokedEventCount``, ``FailedInvokeEventCount``,
        ``DroppedEventCount``, ``OnFailureDestinationDeliveredEventCount``."""
        return cloudwatch.Metric(
            namespace="AWS/Lambda",
            metric_name=metric_name,
            dimensions_map={"EventSourceMappingUUID": source.event_source_mapping_id},
            statistic="Sum",
            period=period or cdk.Duration.minutes(5),
        )

    def metric_iterator_age(self, *, period: cdk.Duration | None = None) -> cloudwatch.Metric:
        """The age of the last record of each batch when it reached the function (ms, Maximum)."""
        return self.function.metric("IteratorAge", statistic="Maximum", period=period or cdk.Duration.minutes(5))

    # ------------------------------------------------------------------------------------------------
    # Code and config
    # ------------------------------------------------------------------------------------------------

    def _code(self, code_dir: Path, delivery: str) -> tuple[lambda_.Code, dict[str, str]]:
        """The asset and the config variables: inline JSON, or the document as a file inside the asset.

        The asset is staged: the runtime source, the arm64 wheels of ``infra.asset_wheels`` (orjson) and, for
        ``file`` delivery, ``connector_config.json``.
        """
        document = compact_json(self.mapping)
        if delivery == "auto":
            delivery = "env" if len(document.encode()) <= INLINE_CONFIG_MAX_BYTES else "file"
        if delivery not in ("env", "file"):
            raise ValueError(f"config_delivery must be 'auto', 'env' or 'file', got {delivery!r}")
        staging = self._staging_dir(document)
        shutil.copytree(code_dir, staging, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*_cache"))
        missing = asset_wheels.install_into(staging)
        if missing:
            cdk.Annotations.of(self).add_warning_v2(
                "stream-to-personalize:asset-wheels",
                f"arm64 wheels not in the asset ({'; '.join(missing)}); the function falls back to the standard "
                "json module",
            )
        if delivery == "env":
            config_env = {"CONNECTOR_CONFIG": document}
        else:
            (staging / CONFIG_FILE_NAME).write_text(document, encoding="utf-8")
            config_env = {"CONNECTOR_CONFIG_FILE": CONFIG_FILE_NAME}
        return lambda_.Code.from_asset(str(staging), exclude=_ASSET_EXCLUDES), config_env

    def _staging_dir(self, document: str) -> Path:
        """A fresh directory under the assembly's outdir (cdk.out/.staging/…) to build the asset in."""
        stage = cdk.Stage.of(self)
        outdir = Path(stage.outdir) if stage is not None else Path(tempfile.mkdtemp())
        digest = hashlib.sha256(f"{self.node.path}\n{document}".encode()).hexdigest()[:16]
        staging = outdir / ".staging" / f"connector-{digest}"
        if staging.exists():
            shutil.rmtree(staging)
        staging.parent.mkdir(parents=True, exist_ok=True)
        return staging
