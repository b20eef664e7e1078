"""The deployable stack: sources + the StreamToPersonalize connector + monitoring, wired from the config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_kinesis as kinesis
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from constructs import Construct

from infra.config import ConnectorConfig
from infra.monitoring import AlarmTopic, ConnectorMonitoring
from infra.personalize import PersonalizeItemsDataset
from infra.sources import DynamoDbSource, KinesisSource
from infra.stream_to_personalize import DEFAULT_CODE_PATH, StreamToPersonalize

__all__ = ["STACK_NAME", "StreamToPersonalizeStack"]

STACK_NAME = "StreamToPersonalize"


class StreamToPersonalizeStack(cdk.Stack):
    """Composes the connector with its sources (new or imported), optional dataset, alarms and dashboard.

    Attributes for callers and tests: ``connector``, ``dynamodb_source``, ``kinesis_source``, ``monitoring``,
    ``dataset`` (only with ``createDataset``).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str = STACK_NAME,
        *,
        config: ConnectorConfig,
        code_path: str | Path = DEFAULT_CODE_PATH,
        **stack_kwargs: Any,
    ) -> None:
        """Build every resource from the validated ``config``."""
        super().__init__(scope, construct_id, **stack_kwargs)
        lam = config.lambda_

        self.dataset: PersonalizeItemsDataset | None = None
        if config.dataset_arn is not None:
            dataset_arn = config.dataset_arn
        else:
            assert config.create_dataset is not None
            self.dataset = PersonalizeItemsDataset(
                self,
                "Personalize",
                dataset_group_name=config.create_dataset.dataset_group_name,
                dataset_name=config.create_dataset.dataset_name,
                schema_name=config.create_dataset.schema_name,
                schema=config.mapping["schema"],
            )
            dataset_arn = self.dataset.dataset_arn

        if lam.reserved_concurrency is not None:
            budget = lam.reserved_concurrency * lam.effective_max_calls_per_second
            if budget > lam.put_items_quota_per_second:
                cdk.Annotations.of(self).add_warning_v2(
                    "stream-to-personalize:pacing",
                    f"lambda.reservedConcurrency ({lam.reserved_concurrency}) x lambda.maxCallsPerSecond "
                    f"({lam.effective_max_calls_per_second:g}) = {budget:g} PutItems calls/s exceeds the dataset "
                    f"group quota ({lam.put_items_quota_per_second:g}/s): expect throttling and retries.",
                )
        else:
            cdk.Annotations.of(self).add_warning_v2(
                "stream-to-personalize:unreserved",
                "lambda.reservedConcurrency is unset: concurrent invocations (shards x parallelization factor) "
                "share the 10 PutItems calls/s and may be throttled.",
            )

        self.connector = StreamToPersonalize(
            self,
            "Connector",
            dataset_arn=dataset_arn,
            mapping=config.mapping,
            config_delivery=config.config_delivery,
            code_path=code_path,
            memory_mb=lam.memory_mb,
            timeout=cdk.Duration.seconds(lam.timeout_seconds),
            reserved_concurrency=lam.reserved_concurrency,
            max_calls_per_second=lam.effective_max_calls_per_second,
            deadline_margin_ms=lam.deadline_margin_ms,
            log_level=lam.log_level,
            service_name=lam.service_name,
            log_retention=_retention(lam.log_retention_days),
        )

        self.dynamodb_source: DynamoDbSource | None = None
        if config.dynamodb.enabled:
            self.dynamodb_source = DynamoDbSource(self, "DynamoDbSource", config=config.dynamodb)
            self.connector.add_dynamodb_source(
                self.dynamodb_source.table,
                settings=config.dynamodb.esm,
                filters=config.dynamodb.filters,
                skip_ttl_deletes=config.dynamodb.skip_ttl_deletes,
            )
            cdk.CfnOutput(self, "DynamoDbTableName", value=self.dynamodb_source.table_name)
            cdk.CfnOutput(self, "DynamoDbStreamArn", value=self.dynamodb_source.stream_arn)

        self.kinesis_source: KinesisSource | None = None
        if config.kinesis.enabled:
            self.kinesis_source = KinesisSource(self, "KinesisSource", config=config.kinesis)
            self.connector.add_kinesis_source(
                self.kinesis_source.stream, settings=config.kinesis.esm, filters=config.kinesis.filters
            )
            cdk.CfnOutput(self, "KinesisStreamName", value=self.kinesis_source.stream.stream_name)

        mon = config.monitoring
        topic: sns.ITopic | None = None
        if mon.alarm_topic_arn:
            topic = sns.Topic.from_topic_arn(self, "AlarmTopic", mon.alarm_topic_arn)
        elif mon.alarm_email:
            topic = AlarmTopic(self, "AlarmTopic", email=mon.alarm_email).topic
        streams: list[kinesis.IStream] = [self.kinesis_source.stream] if self.kinesis_source else []
        self.monitoring = ConnectorMonitoring(
            self,
            "Monitoring",
            connector=self.connector,
            tables=[self.dynamodb_source] if self.dynamodb_source else [],
            streams=streams,
            settings=mon,
            alarm_topic=topic,
        )

        cdk.CfnOutput(self, "FunctionName", value=self.connector.function.function_name)
        cdk.CfnOutput(self, "PoisonRecordsQueueUrl", value=self.connector.dlq.queue_url)
        cdk.CfnOutput(self, "FailedBatchesQueueUrl", value=self.connector.failure_queue.queue_url)
        cdk.CfnOutput(self, "DatasetArn", value=dataset_arn)
        if self.monitoring.dashboard is not None:
            cdk.CfnOutput(self, "DashboardName", value=self.monitoring.dashboard.dashboard_name)


def _retention(days: int) -> logs.RetentionDays:
    by_days = {
        1: logs.RetentionDays.ONE_DAY,
        3: logs.RetentionDays.THREE_DAYS,
        5: logs.RetentionDays.FIVE_DAYS,
        7: logs.RetentionDays.ONE_WEEK,
        14: logs.RetentionDays.TWO_WEEKS,
        30: logs.RetentionDays.ONE_MONTH,
        60: logs.RetentionDays.TWO_MONTHS,
        90: logs.RetentionDays.THREE_MONTHS,
        120: logs.RetentionDays.FOUR_MONTHS,
        150: logs.RetentionDays.FIVE_MONTHS,
        180: logs.RetentionDays.SIX_MONTHS,
        365: logs.RetentionDays.ONE_YEAR,
        400: logs.RetentionDays.THIRTEEN_MONTHS,
        545: logs.RetentionDays.EIGHTEEN_MONTHS,
        731: logs.RetentionDays.TWO_YEARS,
        1827: logs.RetentionDays.FIVE_YEARS,
        3653: logs.RetentionDays.TEN_YEARS,
    }
    return by_days[days]
