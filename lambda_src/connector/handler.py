"""Lambda entry point: ``connector.handler.handler`` for DynamoDB Streams and Kinesis alike.

Thin on purpose: it reads the settings and builds the clients once per container, runs the pipeline, and
publishes the outcome counts. Every AWS client is a plain boto3 client, so ``AWS_ENDPOINT_URL`` and
``AWS_ENDPOINT_URL_<SERVICE>`` redirect it (the local cloud and the tests rely on that).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import boto3
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.config import Config

from connector import budget, pipeline
from connector.budget import SharedBudget
from connector.config import ConfigError, Settings, load_settings
from connector.deadline import Deadline, OutageBackoff, worst_call_ms
from connector.putitems import Pacer, PutItemsSink
from connector.response import Outcome
from connector.telemetry import logger, metrics, tracer
from connector.versions import VersionGuard

CONNECT_TIMEOUT_S = 2.0
# The DLQ client: a SendMessageBatch is small, so short timeouts and two attempts; its worst case is reserved
# from the deadline before each send.
SQS_ATTEMPTS, SQS_CONNECT_TIMEOUT_S, SQS_READ_TIMEOUT_S = 2, 1.0, 2.0
# The state-table client (version guard): small requests, short timeouts, a bounded worst case; the deadline must
# leave that worst case before each read or write of the state table.
STATE_ATTEMPTS, STATE_CONNECT_TIMEOUT_S, STATE_READ_TIMEOUT_S = 2, 1.0, 1.0
# The shared budget's counters logged per batch (``budget_<name>``): its cost and where slots went.
BUDGET_LOGGED = (
    "requests",
    "reservations",
    "conflicts",
    "wasted",
    "local",
    "timeouts",
    "cuts",
    "restores",
    "graces",
    "waited_s",
)


@dataclass(slots=True)
class Runtime:
    """What lives as long as the container: settings, clients, the PutItems pacer and the outage backoff."""

    settings: Settings
    sink: PutItemsSink
    sqs: Any
    dlq_worst_ms: float
    guard: VersionGuard | None = None
    budget: SharedBudget | None = None  # the shared PutItems budget (STATE_TABLE), else the sink's own Pacer
    backoff: OutageBackoff = field(default_factory=OutageBackoff)


_runtime: Runtime | None = None


def build_runtime(
    settings: Settings, *, personalize: Any = None, sqs: Any = None, dynamodb: Any = None, max_share: float = 1.0
) -> Runtime:
    """The clients, the sink and the pacing for ``settings``; ``max_share`` < 1 caps this runtime's share of the
    shared PutItems budget while others use it too (the operator tools, beside the stream)."""
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
    state_worst_ms = worst_call_ms(STATE_ATTEMPTS, STATE_CONNECT_TIMEOUT_S, STATE_READ_TIMEOUT_S)
    guard, pacer = None, None
    if settings.state_table:
        if dynamodb is None:
            dynamodb = boto3.client(
                "dynamodb",
                config=Config(
                    retries={"mode": "standard", "total_max_attempts": STATE_ATTEMPTS},
                    connect_timeout=STATE_CONNECT_TIMEOUT_S,
                    read_timeout=STATE_READ_TIMEOUT_S,
                ),
            )
        guard = VersionGuard(dynamodb, settings.state_table, settings.dataset_arn, worst_ms=state_worst_ms)
        pacer = budget.from_settings(settings, dynamodb, max_share=max_share)
    sink = PutItemsSink(
        personalize,
        settings.dataset_arn,
        pacer=pacer or Pacer(settings.max_calls_per_second),
        worst_call_ms=put_items_worst_call_ms(settings),
        # a capped share paces itself between attempts, one at a time (SharedBudget.share_pause)
        in_flight=settings.put_items_in_flight if max_share >= 1 else 1,
    )
    sqs_worst_ms = worst_call_ms(SQS_ATTEMPTS, SQS_CONNECT_TIMEOUT_S, SQS_READ_TIMEOUT_S)
    return Runtime(settings, sink, sqs, sqs_worst_ms, guard, budget=pacer)


def put_items_worst_call_ms(settings: Settings) -> float:
    """What the sink reserves before each PutItems call: every attempt waits for its slot (the shared budget's
    longest wait, or this container's pacing interval) and times out, with the longest backoffs between."""
    return worst_call_ms(
        settings.put_items_max_attempts,
        CONNECT_TIMEOUT_S,
        settings.put_items_timeout_s,
        settings.budget_max_wait_s if settings.state_table else 1 / settings.max_calls_per_second,
        adaptive=settings.put_items_retry_mode == "adaptive",
    )


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
    started = time.monotonic()
    deadline = Deadline.from_context(context, rt.settings.deadline_margin_ms)
    before = replace(rt.budget.stats) if rt.budget else None
    result = pipeline.run(
        event,
        settings=rt.settings,
        sink=rt.sink,
        sqs=rt.sqs,
        dlq_worst_ms=rt.dlq_worst_ms,
        deadline=deadline,
        guard=rt.guard,
    )
    counts, report = result.counts, result.report
    budget_log: dict[str, float] = {}
    if rt.budget is not None and before is not None:
        rt.budget.release()  # hand back the block's unused slots for the next holder
        after = rt.budget.stats
        budget_log = {f"budget_{f}": round(getattr(after, f) - getattr(before, f), 3) for f in BUDGET_LOGGED}
        metrics.add_metric(
            name="BudgetWaitMs", unit=MetricUnit.Milliseconds, value=budget_log["budget_waited_s"] * 1000
        )
        metrics.add_metric(name="BudgetFallbacks", unit=MetricUnit.Count, value=1 if budget_log["budget_local"] else 0)
    # A dependency is broken (not just a near deadline): slow down instead of being invoked again at once.
    failed = (report.stopped not in (None, "deadline")) or result.state_errors > 0
    backoff_s = rt.backoff.after(failed, deadline)
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
    metrics.add_metric(name="PutItemsAttempts", unit=MetricUnit.Count, value=report.attempts)
    metrics.add_metric(name="PutItemsRejected", unit=MetricUnit.Count, value=report.rejected_calls)
    systemic = bool(report.systemic) or result.state_errors > 0
    metrics.add_metric(name="SystemicErrors", unit=MetricUnit.Count, value=1 if systemic else 0)
    metrics.add_metric(name="StateErrors", unit=MetricUnit.Count, value=result.state_errors)
    metrics.add_metric(name="StaleSkipped", unit=MetricUnit.Count, value=result.stale)
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
            "systemic": report.systemic,
            "stale_skipped": result.stale,
            "state_errors": result.state_errors,
            "backoff_s": round(backoff_s, 3),
            # where the invocation's time went: before its first PutItems call, and after its last one
            "first_call_ms": _ms(report.first_call_at, started),
            "after_last_call_ms": _ms(time.monotonic(), report.last_call_done_at),
            **budget_log,
        },
    )
    return result.response


def _ms(end: float | None, start: float | None) -> float | None:
    return None if end is None or start is None else round((end - start) * 1000, 1)
