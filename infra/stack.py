"""The deployable stack: sources + the StreamToPersonalize connector + monitoring, wired from the config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_kinesis as kinesis
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from constructs import Construct

from infra.bulk_load import BulkLoad
from infra.config import EXAMPLE_ACCOUNT, ConnectorConfig, LambdaConfig
from infra.monitoring import AlarmTopic, ConnectorMonitoring
from infra.personalize import PersonalizeItemsDataset
from infra.sources import DynamoDbSource, KinesisSource
from infra.state_table import StateTable
from infra.stream_to_personalize import DEFAULT_CODE_PATH, StreamToPersonalize

__all__ = ["STACK_NAME", "StreamToPersonalizeStack"]

STACK_NAME = "StreamToPersonalize"


class StreamToPersonalizeStack(cdk.Stack):
    """Composes the connector with its sources (new or imported), optional dataset, alarms and dashboard.

    Attributes for callers and tests: ``connector``, ``dynamodb_source``, ``kinesis_source``, ``monitoring``,
    ``state_table`` (unless ``stateTable.enabled`` is false), ``dataset`` (only with ``createDataset``).
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

        if config.uses_example_dataset_arn and not config.allow_example_dataset_arn:
            self._refuse_example_dataset_arn(dataset_arn)
        self._concurrency_warnings(lam, shared_budget=config.state_table.enabled)

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
            quota_calls_per_second=lam.put_items_quota_per_second,
            skip_ttl_deletes=config.dynamodb.enabled and config.dynamodb.skip_ttl_deletes,
            powertools_layer_arn=lam.powertools_layer_arn,
            deadline_margin_ms=lam.deadline_margin_ms,
            log_level=lam.log_level,
            service_name=lam.service_name,
            log_retention=_retention(lam.log_retention_days),
            on_failure=config.on_failure.destination,
            on_failure_expire_days=config.on_failure.expire_days,
            on_failure_removal_policy=(
                cdk.RemovalPolicy.RETAIN if config.on_failure.removal_policy == "retain" else cdk.RemovalPolicy.DESTROY
            ),
            tracing=lam.tracing,
        )

        self.dynamodb_source: DynamoDbSource | None = None
        if config.dynamodb.enabled:
            self.dynamodb_source = DynamoDbSource(self, "DynamoDbSource", config=config.dynamodb)
            self.connector.add_dynamodb_source(
                self.dynamodb_source.table, settings=config.dynamodb.esm, filters=config.dynamodb.filters
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
            cdk.CfnOutput(self, "KinesisStreamArn", value=self.kinesis_source.stream.stream_arn)

        # After the sources, so the source table stays the template's first AWS::DynamoDB::Table.
        self.state_table: StateTable | None = None
        if config.state_table.enabled:
            self.state_table = StateTable(
                self,
                "State",
                table_name=config.state_table.table_name,
                removal_policy=(
                    cdk.RemovalPolicy.RETAIN
                    if config.state_table.removal_policy == "retain"
                    else cdk.RemovalPolicy.DESTROY
                ),
            )
            self.connector.use_state_table(self.state_table)
            cdk.CfnOutput(self, "StateTableName", value=self.state_table.table_name)

        self.bulk_load: BulkLoad | None = None
        if config.bulk_load.enabled:
            bulk = config.bulk_load
            assert bulk.export_bucket_name is not None  # validated by load_config
            keys = (
                [k for k in (config.dynamodb.partition_key, config.dynamodb.sort_key) if k]
                if config.dynamodb.source == "new"
                else []
            )
            self.bulk_load = BulkLoad(
                self,
                "BulkLoad",
                dataset_arn=dataset_arn,
                code=self.connector.code,
                environment={
                    "DATASET_ARN": dataset_arn,
                    **self.connector.config_env,
                    "POWERTOOLS_SERVICE_NAME": f"{lam.service_name}-bulk",
                    "POWERTOOLS_METRICS_NAMESPACE": "StreamToPersonalize",
                    "POWERTOOLS_LOG_LEVEL": lam.log_level,
                },
                layers=[self.connector.powertools_layer],
                export_bucket_name=bulk.export_bucket_name,
                default_keys=keys,
                max_concurrency=bulk.max_concurrency,
                memory_mb=bulk.converter_memory_mb,
                timeout=cdk.Duration.seconds(bulk.converter_timeout_seconds),
                csv_expire_days=bulk.csv_expire_days,
                log_retention=_retention(lam.log_retention_days),
                tracing=self.connector.tracing,
            )
            cdk.CfnOutput(self, "BulkLoadStateMachineArn", value=self.bulk_load.state_machine.state_machine_arn)
            cdk.CfnOutput(self, "BulkLoadStagingBucketName", value=self.bulk_load.staging_bucket.bucket_name)
            cdk.CfnOutput(self, "BulkLoadImportRoleArn", value=self.bulk_load.import_role.role_arn)

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
            notify_on_ok=mon.notify_on_ok,
        )

        cdk.CfnOutput(self, "FunctionName", value=self.connector.function.function_name)
        cdk.CfnOutput(self, "PoisonRecordsQueueUrl", value=self.connector.dlq.queue_url)
        if self.connector.failure_queue is not None:
            cdk.CfnOutput(self, "FailedBatchesQueueUrl", value=self.connector.failure_queue.queue_url)
        if self.connector.failure_bucket is not None:
            cdk.CfnOutput(self, "FailedBatchesBucketName", value=self.connector.failure_bucket.bucket_name)
        cdk.CfnOutput(self, "DatasetArn", value=dataset_arn)
        if self.monitoring.dashboard is not None:
            name = self.monitoring.dashboard.dashboard_name
            cdk.CfnOutput(self, "DashboardName", value=name)
            cdk.CfnOutput(
                self,
                "DashboardUrl",
                value=f"https://{self.region}.console.aws.amazon.com/cloudwatch/home?region={self.region}"
                f"#dashboards:name={name}",
            )

    def _refuse_example_dataset_arn(self, dataset_arn: str) -> None:
        """Let the example ARN synthesize (tests, the local cloud) but make CloudFormation refuse to deploy it.

        A template rule is evaluated by CloudFormation when a stack or change set is created or updated, before
        any resource is touched; the synth itself, and anything that only reads the template, is unaffected. The
        rule passes only with the parameter ``ExampleDatasetArnAcknowledged=yes`` (``cdk deploy --parameters``).
        """
        cdk.Annotations.of(self).add_warning_v2(
            "stream-to-personalize:example-dataset",
            f"datasetArn is the example placeholder ({dataset_arn}, account {EXAMPLE_ACCOUNT}): the deploy will be "
            "refused; set your Items dataset ARN, or -c createDataset=..., or -c allowExampleDatasetArn=true.",
        )
        acknowledged = cdk.CfnParameter(
            self,
            "ExampleDatasetArnAcknowledged",
            type="String",
            default="no",
            allowed_values=["no", "yes"],
            description="'yes' deploys although datasetArn is the documentation's example placeholder.",
        )
        cdk.CfnRule(
            self,
            "RefuseExampleDatasetArn",
            assertions=[
                cdk.CfnRuleAssertion(
                    assert_=cdk.Fn.condition_equals(acknowledged.value_as_string, "yes"),
                    assert_description=(
                        f"datasetArn is the example placeholder {dataset_arn}: set context key 'datasetArn' to your "
                        "Items dataset ARN (or 'createDataset'); -c allowExampleDatasetArn=true skips this check."
                    ),
                )
            ],
        )

    def _concurrency_warnings(self, lam: LambdaConfig, *, shared_budget: bool) -> None:
        """Synth-time warnings: the real reserved-concurrency rule, and pacing without the shared budget."""
        warn = cdk.Annotations.of(self).add_warning_v2
        if lam.reserved_concurrency is not None:
            warn(
                "stream-to-personalize:reserved-concurrency",
                f"lambda.reservedConcurrency is {lam.reserved_concurrency}: an account can reserve at most its "
                "concurrency limit minus 100 (a new account with a limit of 10 cannot reserve any), else the "
                "deploy fails and rolls back; stream invocations refused for lack of concurrency are Lambda "
                "Throttles, retried until the records reach their maximum age.",
            )
        if shared_budget:
            return  # the shared budget in the state table paces every invocation together
        if lam.reserved_concurrency is not None:
            budget = lam.reserved_concurrency * lam.effective_max_calls_per_second
            if budget > lam.put_items_quota_per_second:
                warn(
                    "stream-to-personalize:pacing",
                    f"lambda.reservedConcurrency ({lam.reserved_concurrency}) x lambda.maxCallsPerSecond "
                    f"({lam.effective_max_calls_per_second:g}) = {budget:g} PutItems calls/s exceeds the dataset "
                    f"group quota ({lam.put_items_quota_per_second:g}/s): expect throttling and retries.",
                )
        else:
            warn(
                "stream-to-personalize:unreserved",
                "stateTable is disabled and lambda.reservedConcurrency is unset: concurrent invocations (shards x "
                "parallelization factor) each pace alone and share the PutItems quota, so expect throttling.",
            )


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
