"""Lambda entry point: ``connector.handler.handler`` for DynamoDB Streams and Kinesis alike.

Thin on purpose: it reads the settings and builds the clients once per container, runs the pipeline, and
publishes the outcome counts. Every AWS client is a plain boto3 client, so ``AWS_ENDPOINT_URL`` and
``AWS_ENDPOINT_URL_<SERVICE>`` redirect it (the local cloud and the tests rely on that).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import boto3
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.config import Config

from connector import pipeline
from connector.config import ConfigError, Settings, load_settings
from connector.deadline import Deadline, worst_call_ms
from connector.putitems import Pacer, PutItemsSink
from connector.response import Outcome
from connector.telemetry import logger, metrics, tracer

CONNECT_TIMEOUT_S = 2.0
# The DLQ client: a SendMessageBatch is small, so short timeouts and two attempts; its worst case is reserved
# from the deadline before each send.
SQS_ATTEMPTS, SQS_CONNECT_TIMEOUT_S, SQS_READ_TIMEOUT_S = 2, 1.0, 2.0


@dataclass(slots=True)
class Runtime:
    """What lives as long as the container: settings, clients and the PutItems pacer."""

    settings: Settings
    sink: PutItemsSink
    sqs: Any
    dlq_worst_ms: float


_runtime: Runtime | None = None


def build_runtime(settings: Settings, *, personalize: Any = None, sqs: Any = None) -> Runtime:
    if personalize is None:
        personalize = boto3.client(
            "personalize-events",
            config=Config(
                retries={"mode": settings.put_items_retry_mode, "total_max_attempts": settings.put_items_max_attempts},
                connect_timeout=CONNECT_TIMEOUT_S,
                read_timeout=settings.put_items_timeout_s,
            ),
        )
    if sqs is None:
        sqs = boto3.client(
            "sqs",
            config=Config(
                retries={"mode": "standard", "total_max_attempts": SQS_ATTEMPTS},
                connect_timeout=SQS_CONNECT_TIMEOUT_S,
                read_timeout=SQS_READ_TIMEOUT_S,
            ),
        )
    sink = PutItemsSink(
        personalize,
        settings.dataset_arn,
        pacer=Pacer(settings.max_calls_per_second),
        worst_call_ms=worst_call_ms(
            settings.put_items_max_attempts,
            CONNECT_TIMEOUT_S,
            settings.put_items_timeout_s,
            1 / settings.max_calls_per_second,
        ),
    )
    return Runtime(settings, sink, sqs, worst_call_ms(SQS_ATTEMPTS, SQS_CONNECT_TIMEOUT_S, SQS_READ_TIMEOUT_S))


def runtime() -> Runtime:
    """The container's runtime, built on first use (a configuration error surfaces on every invocation)."""
    global _runtime  # noqa: PLW0603 - one runtime per Lambda container, by design
    if _runtime is None:
        _runtime = build_runtime(load_settings())
    return _runtime


def reset(new: Runtime | None = None) -> None:
    """Replace the container's runtime (tests), or drop it so the next invocation rebuilds it."""
    global _runtime  # noqa: PLW0603
    _runtime = new


@logger.inject_lambda_context(log_event=False)
@metrics.log_metrics
@tracer.capture_lambda_handler(capture_response=False)
def handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    try:
        rt = runtime()
    except ConfigError:
        logger.exception("The connector is misconfigured; every invocation fails until it is fixed")
        raise
    result = pipeline.run(
        event,
        settings=rt.settings,
        sink=rt.sink,
        sqs=rt.sqs,
        dlq_worst_ms=rt.dlq_worst_ms,
        deadline=Deadline.from_context(context, rt.settings.deadline_margin_ms),
    )
    counts, report = result.counts, result.report
    for outcome, name in (
        (Outcome.PUT, "RecordsPut"),
        (Outcome.POISON, "RecordsPoison"),
        (Outcome.RETRY, "RecordsRetry"),
        (Outcome.SKIPPED, "RecordsSkipped"),
    ):
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=counts[outcome])
    metrics.add_metric(name="RecordsIn", unit=MetricUnit.Count, value=result.records_in)
    metrics.add_metric(name="PutItemsCalls", unit=MetricUnit.Count, value=report.calls)
    metrics.add_metric(name="ItemsSent", unit=MetricUnit.Count, value=report.items_sent)
    metrics.add_metric(name="Throttles", unit=MetricUnit.Count, value=report.throttles)
    if report.calls:  # an average per invocation; across invocations use ItemsSent / PutItemsCalls
        metrics.add_metric(name="ItemsPerCall", unit=MetricUnit.Count, value=report.items_sent / report.calls)
    logger.info(
        "Batch done",
        extra={
            "records": result.records_in,
            **{f"records_{o.value}": n for o, n in counts.items()},
            "put_items_calls": report.calls,
            "put_items_attempts": report.attempts,
            "items_per_call": round(report.items_sent / report.calls, 2) if report.calls else 0,
            "rejected_calls": report.rejected_calls,
            "throttles": report.throttles,
            "dead_lettered": result.dead_lettered,
            "stopped": report.stopped,
        },
    )
    return result.response
