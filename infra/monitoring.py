"""Monitoring: alarms that mean something, an alarm topic CloudWatch can publish to, and a dashboard.

Alarms (none fires in normal operation; each one means a person has something to do):

* iterator age: the function's ``IteratorAge`` (every source; the only lag metric a DynamoDB stream has) and,
  per Kinesis stream, ``GetRecords.IteratorAgeMilliseconds``;
* the share of PutItems attempts throttled (``Throttles / PutItemsAttempts``, EMF), above 3 % once enough
  attempts were made in the period: the shared budget is meant to stay under it;
* ``SystemicErrors`` (EMF): an invocation stopped on an error that is not about one record (dataset missing,
  access denied, every item rejected); the records wait in the stream for the fix;
* function errors (raised or timed out), and the depth of both queues (poison records, failed batches).

Lambda's ``Throttles`` is on the dashboard, not an alarm: with reserved concurrency, busy periods produce
throttled stream invocations by design, retried by the poller.

The dashboard puts the connector's EMF metrics (records in / put / poison / retry / skipped, PutItems calls and
attempts, items per call, throttles, the shared budget) beside the Lambda metrics, the event source mappings'
event counts and the source streams' metrics.
"""

from __future__ import annotations

from collections.abc import Sequence

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kinesis as kinesis
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.config import MonitoringConfig
from infra.sources import DynamoDbSource
from infra.stream_to_personalize import StreamToPersonalize

__all__ = ["AlarmTopic", "ConnectorMonitoring"]


class AlarmTopic(Construct):
    """An SNS topic for alarm notifications, encrypted with its own key that CloudWatch may use, SSL-only,
    with an optional email subscription.
    """

    def __init__(self, scope: Construct, construct_id: str, *, email: str | None = None) -> None:
        """Create the key and the topic; subscribe ``email`` when given (confirm it from the inbox)."""
        super().__init__(scope, construct_id)
        self.key = kms.Key(
            self,
            "Key",
            description="Encrypts the stream-to-personalize alarm topic",
            enable_key_rotation=True,
        )
        account = cdk.Stack.of(self).account
        # CloudWatch alarms publish to encrypted topics only when the key lets the service use it; only alarms
        # of this account (confused-deputy guard).
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AllowCloudWatchAlarmsOfThisAccount",
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                resources=["*"],
                conditions={"StringEquals": {"aws:SourceAccount": account}},
            )
        )
        self.topic = sns.Topic(self, "Topic", master_key=self.key, enforce_ssl=True)
        # enforce_ssl writes a topic policy (a deny on plain HTTP) that replaces SNS's default policy, so nothing
        # would allow CloudWatch to publish and alarm emails would never arrive: allow it explicitly.
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AllowCloudWatchAlarmsToPublish",
                actions=["sns:Publish"],
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                resources=[self.topic.topic_arn],
                conditions={"StringEquals": {"aws:SourceAccount": account}},
            )
        )
        if email:
            self.topic.add_subscription(subscriptions.EmailSubscription(email))


class ConnectorMonitoring(Construct):
    """Alarms and a dashboard for one :class:`StreamToPersonalize` and its sources."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        connector: StreamToPersonalize,
        tables: Sequence[DynamoDbSource] = (),
        streams: Sequence[kinesis.IStream] = (),
        settings: MonitoringConfig | None = None,
        alarm_topic: sns.ITopic | None = None,
        dashboard_name: str | None = None,
        notify_on_ok: bool = False,
    ) -> None:
        """Create the alarms (notifying ``alarm_topic`` when given) and, unless disabled, the dashboard.

        :param notify_on_ok: also notify when an alarm returns to OK (off: each flap would send two messages).
        """
        super().__init__(scope, construct_id)
        cfg = settings or MonitoringConfig()
        period = cdk.Duration.minutes(cfg.period_minutes)
        fn = connector.function
        self.alarms: list[cloudwatch.Alarm] = []

        def alarm(
            alarm_id: str,
            metric: cloudwatch.IMetric,
            *,
            threshold: float,
            description: str,
            evaluation_periods: int = 1,
            comparison: cloudwatch.ComparisonOperator = (
                cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD
            ),
        ) -> cloudwatch.Alarm:
            created = cloudwatch.Alarm(
                self,
                alarm_id,
                metric=metric,
                threshold=threshold,
                evaluation_periods=evaluation_periods,
                comparison_operator=comparison,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                alarm_description=description,
            )
            if alarm_topic is not None:
                created.add_alarm_action(cw_actions.SnsAction(alarm_topic))
                if notify_on_ok:
                    created.add_ok_action(cw_actions.SnsAction(alarm_topic))
            self.alarms.append(created)
            return created

        self.iterator_age_alarm = alarm(
            "IteratorAge",
            connector.metric_iterator_age(period=period),
            threshold=cfg.iterator_age_seconds * 1000,
            evaluation_periods=2,
            description=(
                f"The connector is more than {cfg.iterator_age_seconds} s behind one of its streams (the function's "
                "IteratorAge covers every source, including the DynamoDB stream): the PutItems quota (100 items/s) "
                "or retries cannot keep up. Check Throttles, SystemicErrors and RecordsRetry."
            ),
        )
        self.stream_iterator_age_alarms: list[cloudwatch.Alarm] = []
        for index, stream in enumerate(streams):
            self.stream_iterator_age_alarms.append(
                alarm(
                    "KinesisIteratorAge" if index == 0 else f"KinesisIteratorAge{index + 1}",
                    stream.metric_get_records_iterator_age_milliseconds(period=period, statistic="Maximum"),
                    threshold=cfg.iterator_age_seconds * 1000,
                    evaluation_periods=2,
                    description=(
                        f"The oldest unread record of a Kinesis source is more than {cfg.iterator_age_seconds} s old "
                        "(GetRecords.IteratorAgeMilliseconds; another consumer of an existing stream counts too)."
                    ),
                )
            )
        self.errors_alarm = alarm(
            "Errors",
            fn.metric_errors(period=period, statistic="Sum"),
            threshold=cfg.errors,
            description="The connector function failed (raised or timed out); Lambda retries and bisects the batch.",
        )
        self.throttled_share_alarm = alarm(
            "PutItemsThrottledShare",
            connector.metric_throttled_percent(period=period, min_attempts=cfg.throttled_min_attempts),
            threshold=cfg.throttled_percent,
            evaluation_periods=2,
            comparison=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            description=(
                f"More than {cfg.throttled_percent:g} % of PutItems attempts were throttled (Throttles / "
                "PutItemsAttempts, with at least "
                f"{cfg.throttled_min_attempts} attempts per period): another writer uses the dataset group's quota, "
                "the quota is lower than QUOTA_CALLS_PER_SECOND, or invocations pace alone (no state table)."
            ),
        )
        self.systemic_errors_alarm = alarm(
            "SystemicErrors",
            connector.metric("SystemicErrors", period=period),
            threshold=cfg.systemic_errors,
            description=(
                "The connector stopped on a systemic error (dataset missing, access denied, or every item rejected: "
                "the dataset's schema differs from the mapping). Nothing is lost: the records wait in the stream "
                "until their maximum age. Read the function's ERROR log line and fix the cause."
            ),
        )
        self.dlq_alarm = alarm(
            "PoisonRecordsQueueDepth",
            connector.dlq.metric_approximate_number_of_messages_visible(period=period, statistic="Maximum"),
            threshold=cfg.dlq_depth,
            description="Records that can never land are waiting in the poison-record DLQ (see 'reason').",
        )
        self.failed_batches_alarm: cloudwatch.Alarm | None = None
        if connector.failure_queue is not None:
            self.failed_batches_alarm = alarm(
                "FailedBatchesQueueDepth",
                connector.failure_queue.metric_approximate_number_of_messages_visible(
                    period=period, statistic="Maximum"
                ),
                threshold=cfg.dlq_depth,
                description="Batches exhausted their retries or record age; the on-failure queue holds their "
                "coordinates. Replay them (python -m ops replay) while the stream still retains the records.",
            )
        # Whatever the destination: a batch that reached it needs replay (an S3 bucket has no depth metric).
        self.on_failure_delivered_alarms: list[cloudwatch.Alarm] = []
        where = (
            "the on-failure bucket holds its whole invocation record"
            if connector.failure_bucket is not None
            else "the on-failure queue holds its coordinates"
        )
        for index, source in enumerate(connector.event_sources):
            self.on_failure_delivered_alarms.append(
                alarm(
                    "OnFailureDelivered" if index == 0 else f"OnFailureDelivered{index + 1}",
                    connector.metric_event_count(source, "OnFailureDestinationDeliveredEventCount", period=period),
                    threshold=1,
                    description=(
                        "An event source mapping gave up on a batch (retries or maximum record age exhausted) and "
                        f"sent it to the on-failure destination: {where}. Those records did not land: replay them "
                        "(python -m ops replay) once the cause is fixed."
                    ),
                )
            )

        self.dashboard: cloudwatch.Dashboard | None = None
        if cfg.dashboard:
            self.dashboard = self._dashboard(
                connector=connector,
                tables=tables,
                streams=streams,
                period=period,
                name=dashboard_name,
                iterator_age_threshold_ms=cfg.iterator_age_seconds * 1000,
                throttled_percent=cfg.throttled_percent,
            )

    def _dashboard(
        self,
        *,
        connector: StreamToPersonalize,
        tables: Sequence[DynamoDbSource],
        streams: Sequence[kinesis.IStream],
        period: cdk.Duration,
        name: str | None,
        iterator_age_threshold_ms: float,
        throttled_percent: float,
    ) -> cloudwatch.Dashboard:
        fn = connector.function
        m = connector.metric
        dashboard = cloudwatch.Dashboard(self, "Dashboard", dashboard_name=name)
        dashboard.add_widgets(
            cloudwatch.TextWidget(
                markdown=(
                    "# stream-to-personalize\nRecords in = put + poison + retry + skipped. "
                    "PutItems quota: 10 calls/s x 10 items per dataset group."
                ),
                width=24,
                height=2,
            )
        )
        dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Records (connector)",
                left=[
                    m(n, period=period)
                    for n in ("RecordsIn", "RecordsPut", "RecordsPoison", "RecordsRetry", "RecordsSkipped")
                ],
                width=8,
            ),
            cloudwatch.GraphWidget(
                title="PutItems calls, attempts, items sent, throttles",
                left=[
                    m("PutItemsCalls", period=period),
                    m("PutItemsAttempts", period=period),
                    m("ItemsSent", period=period),
                ],
                right=[m("Throttles", period=period), m("PutItemsRejected", period=period)],
                width=8,
            ),
            cloudwatch.GraphWidget(
                title="Items per PutItems call (max 10)",
                left=[
                    connector.metric_items_per_call(period=period),
                    m("ItemsPerCall", statistic="Average", period=period),
                ],
                left_y_axis=cloudwatch.YAxisProps(min=0, max=10),
                width=8,
            ),
        )
        dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Lambda invocations, errors, throttles (not an alarm: see the module doc)",
                left=[
                    fn.metric_invocations(period=period, statistic="Sum"),
                    fn.metric_errors(period=period, statistic="Sum"),
                    fn.metric_throttles(period=period, statistic="Sum"),
                ],
                width=8,
            ),
            cloudwatch.GraphWidget(
                title="Lambda duration",
                left=[
                    fn.metric_duration(period=period, statistic="p99"),
                    fn.metric_duration(period=period, statistic="Maximum"),
                ],
                width=8,
            ),
            cloudwatch.GraphWidget(
                title="Iterator age (ms)",
                left=[connector.metric_iterator_age(period=period)],
                left_annotations=[cloudwatch.HorizontalAnnotation(value=iterator_age_threshold_ms, label="alarm")],
                width=8,
            ),
        )
        dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="PutItems attempts throttled (%)",
                left=[connector.metric_throttled_percent(period=period, min_attempts=1)],
                left_annotations=[cloudwatch.HorizontalAnnotation(value=throttled_percent, label="alarm")],
                width=8,
            ),
            cloudwatch.GraphWidget(
                title="Shared budget, version guard, systemic errors",
                left=[m("BudgetWaitMs", period=period)],
                right=[
                    m("BudgetFallbacks", period=period),
                    m("StaleSkipped", period=period),
                    m("SystemicErrors", period=period),
                ],
                width=8,
            ),
            cloudwatch.GraphWidget(
                title="Event source mappings: events polled, filtered out, dropped",
                left=[
                    connector.metric_event_count(source, name, period=period)
                    for source in connector.event_sources
                    for name in ("PolledEventCount", "FilteredOutEventCount", "DroppedEventCount")
                ],
                width=8,
            ),
        )
        stream_metrics: list[cloudwatch.IWidget] = []
        for stream in streams:
            stream_metrics.append(
                cloudwatch.GraphWidget(
                    title="Kinesis stream: incoming records, GetRecords iterator age (ms)",
                    left=[stream.metric_incoming_records(period=period, statistic="Sum")],
                    right=[stream.metric_get_records_iterator_age_milliseconds(period=period, statistic="Maximum")],
                    width=8,
                )
            )
        for table in tables:
            stream_metrics.append(
                cloudwatch.GraphWidget(
                    title="DynamoDB stream: records returned to the connector",
                    left=[
                        cloudwatch.Metric(
                            namespace="AWS/DynamoDB",
                            metric_name="ReturnedRecordsCount",
                            dimensions_map={
                                "TableName": table.table_name,
                                "StreamLabel": table.stream_label,
                                "Operation": "GetRecords",
                            },
                            statistic="Sum",
                            period=period,
                        )
                    ],
                    width=8,
                )
            )
        queue_depths = [_queue_depth(connector.dlq, "Poison records", period)]
        if connector.failure_queue is not None:
            queue_depths.append(_queue_depth(connector.failure_queue, "Failed batches", period))
        stream_metrics.append(
            cloudwatch.GraphWidget(
                title="Poison records (DLQ depth), batches sent to the on-failure destination",
                left=queue_depths,
                right=[
                    connector.metric_event_count(source, "OnFailureDestinationDeliveredEventCount", period=period)
                    for source in connector.event_sources
                ],
                width=8,
            )
        )
        dashboard.add_widgets(*stream_metrics)
        return dashboard


def _queue_depth(queue: sqs.IQueue, label: str, period: cdk.Duration) -> cloudwatch.Metric:
    return queue.metric_approximate_number_of_messages_visible(period=period, statistic="Maximum", label=label)
