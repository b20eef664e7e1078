"""``python -m ops status``: one screen for an operator.

What it shows, and where each number comes from (the same calls on AWS and on the local cloud):

* **event source mappings**: the function's ``IteratorAge`` (CloudWatch ``AWS/Lambda``, dimension ``FunctionName``,
  Maximum over the window: how far behind the stream the connector is) and, per mapping, the records Lambda sent
  to the on-failure destination in the window (``OnFailureDestinationDeliveredEventCount``, dimension
  ``EventSourceMappingUUID``). The mappings come from Lambda's ``ListEventSourceMappings``, ``--esm-uuid`` and
  the UUIDs in the S3 on-failure destination's keys;
* **poison DLQ**: ``ApproximateNumberOfMessages`` (+ ``NotVisible``, being redriven), and the newest few
  messages' reasons (``--errors N``);
* **on-failure destination**: an S3 bucket: objects under ``aws/lambda/`` (not yet replayed; the replay tool moves
  each to ``replayed/``), the oldest one's age; an SQS queue: its depth;
* **shared PutItems budget**: the ``budget#<dataset group ARN>`` item of ``STATE_TABLE``, evaluated with the
  runtime's own rate law (:class:`connector.budget.RateLaw`): the shared rate now, the last cut and its base,
  whether the timeline is busy; and the connector's EMF metrics over the window (namespace
  ``StreamToPersonalize``, dimension ``service``): PutItems calls and attempts, throttles (and their share),
  rejections, items per call, poison records, systemic errors, budget fallbacks.

Resource names: flags win; else the stack's outputs (``--stack-name``, CloudFormation ``DescribeStacks``:
``FunctionName``, ``PoisonRecordsQueueUrl``, ``FailedBatchesBucketName`` or ``FailedBatchesQueueUrl``,
``StateTableName``, ``DatasetArn``); else the function's environment variables (``DLQ_URL``, ``STATE_TABLE``,
``DATASET_ARN``) and ``ON_FAILURE_BUCKET`` / ``ON_FAILURE_QUEUE_URL`` (what ``python -m localcloud up``
exports). Every section is read on its own: a denied call (say, no ``sqs:ReceiveMessage``) shows as that
section's one-line error naming the permission, and the rest still shows (exit status 1).

**Peeking at the DLQ without taking messages away.** SQS has no peek: a received message is hidden for the
visibility timeout. ``status`` receives up to 10 messages with a 5 s visibility timeout and immediately sets it
back to 0 (``ChangeMessageVisibilityBatch``), so they are visible again at once; if ``status`` dies in between,
they reappear after 5 s. Receiving increments each message's ``ApproximateReceiveCount`` (harmless here: the
poison DLQ has no redrive policy). ``--errors 0`` skips the peek (then ``sqs:ReceiveMessage`` is not needed).
Hand-written because no library renders this screen; the data calls are plain boto3.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from connector.budget import DEFAULT_QUOTA, HEADROOM, RateLaw
from connector.config import dataset_group_arn
from ops.common import OpsError, client, console, describe_client_error

__all__ = ["Resources", "collect", "register", "render", "resolve_resources", "run"]

ONLINE_METRICS = (
    "PutItemsCalls",
    "PutItemsAttempts",
    "Throttles",
    "PutItemsRejected",
    "ItemsSent",
    "RecordsIn",
    "RecordsPut",
    "RecordsPoison",
    "RecordsRetry",
    "SystemicErrors",
    "BudgetFallbacks",
)
ON_FAILURE_PREFIX = "aws/lambda/"
REPLAYED_PREFIX = "replayed/"
PEEK_VISIBILITY_S = 5
ITERATOR_AGE_WARN_MS = 600_000  # the stack's default alarm threshold (monitoring.iteratorAgeSeconds)
THROTTLED_WARN_PERCENT = 3.0


@dataclass
class Resources:
    """What ``status`` looks at; any may be missing (its section then says so)."""

    function_name: str | None = None
    dlq_url: str | None = None
    on_failure_bucket: str | None = None
    on_failure_queue_url: str | None = None
    state_table: str | None = None
    dataset_arn: str | None = None
    service_name: str = "stream-to-personalize"
    esm_uuids: list[str] = field(default_factory=list)
    quota: float = DEFAULT_QUOTA


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="one screen: iterator age, DLQ and on-failure depths, the shared budget, throttles, last errors",
        description="Show how the connector is doing: per event source mapping the iterator age and records sent "
        "to the on-failure destination, the poison DLQ's depth and newest reasons, the on-failure destination's "
        "depth, the shared PutItems budget and the PutItems metrics. Resource names come from the stack's "
        "outputs (--stack-name), the flags, or the function's environment variables.",
    )
    p.add_argument("--stack-name", help="read the resource names from this CloudFormation stack's outputs")
    p.add_argument("--function-name", help="the connector function (stack output FunctionName)")
    p.add_argument("--dlq-url", help="the poison DLQ (PoisonRecordsQueueUrl; env DLQ_URL)")
    p.add_argument(
        "--on-failure-bucket", help="the S3 on-failure destination (FailedBatchesBucketName; or $ON_FAILURE_BUCKET)"
    )
    p.add_argument(
        "--on-failure-queue-url",
        help="an SQS on-failure destination (FailedBatchesQueueUrl; or $ON_FAILURE_QUEUE_URL)",
    )
    p.add_argument("--state-table", help="the state table (StateTableName; env STATE_TABLE)")
    p.add_argument("--dataset-arn", help="the Items dataset (DatasetArn; env DATASET_ARN)")
    p.add_argument("--service-name", help="the connector's POWERTOOLS_SERVICE_NAME (default stream-to-personalize)")
    p.add_argument("--esm-uuid", action="append", default=[], help="an event source mapping UUID (repeatable)")
    p.add_argument("--quota", type=float, help="PutItems calls/s per dataset group (QUOTA_CALLS_PER_SECOND)")
    p.add_argument("--minutes", type=int, default=5, help="the metrics window (default 5 minutes)")
    p.add_argument("--errors", type=int, default=5, help="newest DLQ reasons to show, 0 to skip the peek")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the screen")
    p.add_argument("--watch", type=float, metavar="N", help="refresh every N seconds until Ctrl-C")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.minutes < 1 or not 0 <= args.errors <= 10:
        raise OpsError("--minutes must be at least 1 and --errors from 0 to 10")
    if args.watch is not None and args.watch < 1:
        raise OpsError("--watch must be at least 1 second")
    resources = resolve_resources(args, outputs=_stack_outputs(args.stack_name) if args.stack_name else None)
    clients = _Clients()

    def snapshot() -> dict[str, Any]:
        return collect(resources, clients, minutes=args.minutes, errors=args.errors)

    if args.json:
        report = snapshot()
        print(json.dumps(report, indent=2, default=str))
        return 1 if report["problems"] else 0
    if args.watch is None:
        report = snapshot()
        console.print(render(report))
        return 1 if report["problems"] else 0
    with Live(render(snapshot()), console=console, auto_refresh=False) as live:
        while True:
            time.sleep(args.watch)
            live.update(render(snapshot()), refresh=True)


def resolve_resources(
    args: argparse.Namespace, *, outputs: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None
) -> Resources:
    """Flags first, then the stack's outputs, then the function's environment variables."""
    env = os.environ if env is None else env
    out = outputs or {}

    def pick(flag: str, output: str, variable: str | None = None) -> str | None:
        value = getattr(args, flag, None)
        if value:
            return str(value)
        if out.get(output):
            return out[output]
        return env.get(variable) if variable else None

    resources = Resources(
        function_name=pick("function_name", "FunctionName", "AWS_LAMBDA_FUNCTION_NAME"),
        dlq_url=pick("dlq_url", "PoisonRecordsQueueUrl", "DLQ_URL"),
        on_failure_bucket=pick("on_failure_bucket", "FailedBatchesBucketName", "ON_FAILURE_BUCKET"),
        on_failure_queue_url=pick("on_failure_queue_url", "FailedBatchesQueueUrl", "ON_FAILURE_QUEUE_URL"),
        state_table=pick("state_table", "StateTableName", "STATE_TABLE"),
        dataset_arn=pick("dataset_arn", "DatasetArn", "DATASET_ARN"),
        service_name=getattr(args, "service_name", None) or env.get("POWERTOOLS_SERVICE_NAME", "stream-to-personalize"),
        esm_uuids=list(getattr(args, "esm_uuid", None) or []),
        quota=float(getattr(args, "quota", None) or env.get("QUOTA_CALLS_PER_SECOND") or DEFAULT_QUOTA),
    )
    named = (resources.function_name, resources.dlq_url, resources.state_table)
    if not any((*named, resources.on_failure_bucket, resources.on_failure_queue_url)):
        raise OpsError(
            "nothing to show: pass --stack-name (the deployed stack), or the resource flags "
            "(--function-name, --dlq-url, --on-failure-bucket, --state-table ...)"
        )
    return resources


def _stack_outputs(stack_name: str) -> dict[str, str]:
    try:
        stacks = client("cloudformation").describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        raise OpsError(f"cannot read the outputs of stack {stack_name!r}: {describe_client_error(exc)}") from None
    if not stacks:
        raise OpsError(f"stack {stack_name!r} not found")
    return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}


# --------------------------------------------------------------------------------------------------------------
# Collecting
# --------------------------------------------------------------------------------------------------------------


class _Clients:
    """One boto3 client per service, built on first use (``AWS_ENDPOINT_URL*`` apply)."""

    def __init__(self, factory: Callable[[str], Any] = client) -> None:
        self._factory = factory
        self._made: dict[str, Any] = {}

    def __call__(self, service: str) -> Any:
        if service not in self._made:
            self._made[service] = self._factory(service)
        return self._made[service]


def collect(
    resources: Resources,
    clients: Callable[[str], Any],
    *,
    minutes: int = 5,
    errors: int = 5,
    now: float | None = None,
) -> dict[str, Any]:
    """Every section as plain data (what ``--json`` prints); a section that failed holds ``{"error": ...}``."""
    moment = time.time() if now is None else now
    at = dt.datetime.fromtimestamp(moment, dt.UTC)
    start = at - dt.timedelta(minutes=minutes)
    # One minute past now: CloudWatch compares at second (and period) granularity, so a data point stamped in
    # the current second would fall outside an end of exactly now.
    end = at + dt.timedelta(minutes=1)
    problems: list[str] = []

    def section(name: str, read: Callable[[], Any]) -> Any:
        try:
            return read()
        except ClientError as exc:
            message = describe_client_error(exc)
        except (BotoCoreError, OpsError) as exc:
            message = str(exc)
        problems.append(f"{name}: {message}")
        return {"error": message}

    report: dict[str, Any] = {
        "at": at.isoformat(timespec="seconds"),
        "windowMinutes": minutes,
        "resources": {k: v for k, v in resources.__dict__.items() if v not in (None, [], "")},
    }
    report["mappings"] = section("event source mappings", lambda: _mappings(resources, clients, start, end))
    report["dlq"] = section("poison DLQ", lambda: _dlq(resources, clients, errors))
    report["onFailure"] = section("on-failure destination", lambda: _on_failure(resources, clients, moment))
    report["budget"] = section("shared budget", lambda: _budget(resources, clients, moment))
    report["putItems"] = section("PutItems metrics", lambda: _put_items(resources, clients, start, end, minutes))
    report["problems"] = problems
    report["attention"] = _attention(report)
    return report


def _mappings(resources: Resources, clients: Callable[[str], Any], start: dt.datetime, end: dt.datetime) -> Any:
    if not resources.function_name:
        return {"error": "no function name (--function-name or the stack's FunctionName output)"}
    cloudwatch = clients("cloudwatch")
    ages = _statistic(
        cloudwatch, "AWS/Lambda", "IteratorAge", {"FunctionName": resources.function_name}, start=start, end=end
    )
    mappings: list[dict[str, Any]] = []
    listed: list[dict[str, Any]] = []
    note = None
    try:
        pages = clients("lambda").get_paginator("list_event_source_mappings")
        for page in pages.paginate(FunctionName=resources.function_name):
            listed.extend(page.get("EventSourceMappings", []))
    except ClientError as exc:
        note = f"ListEventSourceMappings: {describe_client_error(exc)}"
    known = {m["UUID"]: m for m in listed}
    for uuid in [*resources.esm_uuids, *_uuids_in_bucket(resources, clients)]:
        known.setdefault(uuid, {"UUID": uuid})
    for uuid, m in known.items():
        delivered = _statistic(
            cloudwatch,
            "AWS/Lambda",
            "OnFailureDestinationDeliveredEventCount",
            {"EventSourceMappingUUID": uuid},
            start=start,
            end=end,
            statistic="Sum",
        )
        mappings.append(
            {
                "uuid": uuid,
                "source": m.get("EventSourceArn"),
                "state": m.get("State"),
                "onFailureDelivered": delivered["value"] or 0,
            }
        )
    return {
        "function": resources.function_name,
        "iteratorAgeMs": ages["value"],
        "iteratorAgeLatestMs": ages["latest"],
        "mappings": mappings,
        **({"note": note} if note else {}),
    }


def _uuids_in_bucket(resources: Resources, clients: Callable[[str], Any]) -> list[str]:
    """Mapping UUIDs that already wrote to the S3 on-failure destination (``aws/lambda/<UUID>/...``): found even
    where ``ListEventSourceMappings`` lists nothing (the local cloud) or is not allowed."""
    if not resources.on_failure_bucket:
        return []
    try:
        answer = clients("s3").list_objects_v2(
            Bucket=resources.on_failure_bucket, Prefix=ON_FAILURE_PREFIX, Delimiter="/", MaxKeys=100
        )
    except ClientError:
        return []  # the on-failure section reports the error
    return [p["Prefix"][len(ON_FAILURE_PREFIX) :].rstrip("/") for p in answer.get("CommonPrefixes", [])]


def _statistic(
    cloudwatch: Any,
    namespace: str,
    name: str,
    dimensions: Mapping[str, str],
    *,
    start: dt.datetime,
    end: dt.datetime,
    statistic: str = "Maximum",
) -> dict[str, float | None]:
    points = cloudwatch.get_metric_statistics(
        Namespace=namespace,
        MetricName=name,
        Dimensions=[{"Name": k, "Value": v} for k, v in dimensions.items()],
        StartTime=start,
        EndTime=end,
        Period=60,
        Statistics=[statistic],
    )["Datapoints"]
    if not points:
        return {"value": None, "latest": None}
    points.sort(key=lambda p: p["Timestamp"])
    values = [float(p[statistic]) for p in points]
    return {"value": sum(values) if statistic == "Sum" else max(values), "latest": values[-1]}


def _depth(sqs: Any, url: str) -> dict[str, int]:
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return {
        "visible": int(attributes.get("ApproximateNumberOfMessages", 0)),
        "inFlight": int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
    }


def _dlq(resources: Resources, clients: Callable[[str], Any], errors: int) -> Any:
    if not resources.dlq_url:
        return {"error": "no DLQ (--dlq-url, the stack's PoisonRecordsQueueUrl output or DLQ_URL)"}
    sqs = clients("sqs")
    result: dict[str, Any] = {"url": resources.dlq_url, **_depth(sqs, resources.dlq_url)}
    if errors and result["visible"]:
        result["newest"] = _peek(sqs, resources.dlq_url, errors)
    return result


def _peek(sqs: Any, url: str, count: int) -> list[dict[str, Any]]:
    """The newest ``count`` of (up to 10) received messages, made visible again at once (see the module doc)."""
    answer = sqs.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=10,
        VisibilityTimeout=PEEK_VISIBILITY_S,
        WaitTimeSeconds=0,
        MessageSystemAttributeNames=["SentTimestamp"],
    )
    messages = answer.get("Messages", [])
    if messages:
        sqs.change_message_visibility_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                for i, m in enumerate(messages)
            ],
        )
    found: list[tuple[int, dict[str, Any]]] = []
    for m in messages:
        try:
            body = json.loads(m["Body"])
        except json.JSONDecodeError:
            body = {"reason": "(not JSON)"}
        if not isinstance(body, dict):
            body = {"reason": "(not a JSON object)"}
        sent_ms = int(m.get("Attributes", {}).get("SentTimestamp", 0))
        sent = sent_ms / 1000
        found.append(
            (
                sent_ms,
                {
                    "sent": dt.datetime.fromtimestamp(sent, dt.UTC).isoformat(timespec="seconds") if sent else None,
                    "reason": body.get("reason"),
                    "itemId": body.get("itemId"),
                    "source": body.get("eventSourceARN"),
                    "sequenceNumber": body.get("sequenceNumber"),
                },
            )
        )
    found.sort(key=lambda e: e[0], reverse=True)
    return [entry for _, entry in found[:count]]


def _on_failure(resources: Resources, clients: Callable[[str], Any], now: float) -> Any:
    if resources.on_failure_bucket:
        s3 = clients("s3")
        pending, oldest = 0, None
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=resources.on_failure_bucket, Prefix=ON_FAILURE_PREFIX
        ):
            for obj in page.get("Contents", []):
                pending += 1
                modified = obj["LastModified"].timestamp()
                oldest = modified if oldest is None else min(oldest, modified)
        replayed = s3.list_objects_v2(Bucket=resources.on_failure_bucket, Prefix=REPLAYED_PREFIX, MaxKeys=1000)
        return {
            "kind": "s3",
            "bucket": resources.on_failure_bucket,
            "pending": pending,
            "oldestAgeS": round(now - oldest) if oldest is not None else None,
            "replayed": int(replayed.get("KeyCount", 0)),
            "replayedTruncated": bool(replayed.get("IsTruncated")),
        }
    if resources.on_failure_queue_url:
        depth = _depth(clients("sqs"), resources.on_failure_queue_url)
        return {"kind": "sqs", "url": resources.on_failure_queue_url, "pending": depth["visible"], **depth}
    return {"error": "no on-failure destination (--on-failure-bucket or --on-failure-queue-url, or --stack-name)"}


def _budget(resources: Resources, clients: Callable[[str], Any], now: float) -> Any:
    if not resources.state_table:
        return {"error": "no state table (--state-table, the stack's StateTableName output or STATE_TABLE)"}
    if not resources.dataset_arn:
        return {"error": "no dataset ARN (--dataset-arn, the stack's DatasetArn output or DATASET_ARN)"}
    group = dataset_group_arn(resources.dataset_arn)
    item = (
        clients("dynamodb")
        .get_item(TableName=resources.state_table, Key={"pk": {"S": f"budget#{group}"}}, ConsistentRead=True)
        .get("Item")
    )
    ceiling = resources.quota * HEADROOM
    if not item:
        return {"datasetGroup": group, "ceiling": ceiling, "used": False}

    def number(name: str, default: float = 0.0) -> float:
        return float(item[name]["N"]) if name in item and "N" in item[name] else default

    cut_at = number("cut_at")
    law = RateLaw(
        ceiling=ceiling,
        base=number("base", ceiling),
        knee=number("knee", ceiling),
        cut_at=cut_at,
        settle=number("settle"),
    )
    next_slot = number("next_slot")
    return {
        "datasetGroup": group,
        "ceiling": round(ceiling, 3),
        "used": True,
        "rate": round(law.rate(now), 3),
        "lastCutAgoS": round(now - cut_at, 1) if cut_at else None,
        "cutBase": round(law.base, 3) if cut_at else None,
        "knee": round(law.knee, 3) if cut_at else None,
        "reservedAheadS": round(max(0.0, next_slot - now), 2),
    }


def _put_items(
    resources: Resources, clients: Callable[[str], Any], start: dt.datetime, end: dt.datetime, minutes: int
) -> Any:
    answer = clients("cloudwatch").get_metric_data(
        MetricDataQueries=[
            {
                "Id": f"m{i}",
                "Label": name,
                "MetricStat": {
                    "Metric": {
                        "Namespace": "StreamToPersonalize",
                        "MetricName": name,
                        "Dimensions": [{"Name": "service", "Value": resources.service_name}],
                    },
                    "Period": max(60, int((end - start).total_seconds())),
                    "Stat": "Sum",
                },
                "ReturnData": True,
            }
            for i, name in enumerate(ONLINE_METRICS)
        ],
        StartTime=start,
        EndTime=end,
    )
    sums = {r["Label"]: float(sum(r.get("Values", []))) for r in answer.get("MetricDataResults", [])}
    values: dict[str, float | None] = {name: sums.get(name, 0.0) for name in ONLINE_METRICS}
    attempts, calls, items = (
        sums.get("PutItemsAttempts", 0.0),
        sums.get("PutItemsCalls", 0.0),
        sums.get("ItemsSent", 0.0),
    )
    values["throttledPercent"] = round(100 * sums.get("Throttles", 0.0) / attempts, 2) if attempts else None
    values["itemsPerCall"] = round(items / calls, 2) if calls else None
    values["itemsPerSecond"] = round(items / (minutes * 60), 2)
    return values


def _attention(report: Mapping[str, Any]) -> list[str]:
    """What needs a person, in words (empty: all is well)."""
    notes: list[str] = []
    mappings = report.get("mappings") or {}
    age = mappings.get("iteratorAgeMs")
    if age is not None and age >= ITERATOR_AGE_WARN_MS:
        notes.append(f"the connector is {age / 1000:.0f} s behind its streams (iterator age)")
    for m in mappings.get("mappings", []):
        if m.get("onFailureDelivered"):
            notes.append(f"mapping {m['uuid']} sent {m['onFailureDelivered']:g} records to the on-failure destination")
    dlq = report.get("dlq") or {}
    if dlq.get("visible"):
        notes.append(f"{dlq['visible']} poison records in the DLQ: fix the mapping, then python -m ops redrive")
    on_failure = report.get("onFailure") or {}
    if on_failure.get("pending"):
        notes.append(f"{on_failure['pending']} failed batches at the on-failure destination: python -m ops replay")
    put = report.get("putItems") or {}
    share = put.get("throttledPercent")
    if share is not None and share > THROTTLED_WARN_PERCENT and put.get("PutItemsAttempts", 0) >= 100:
        notes.append(f"{share:g} % of PutItems attempts throttled (another writer, or a lower quota)")
    if put.get("SystemicErrors"):
        notes.append("systemic errors: read the function's ERROR log line (dataset, permission or schema)")
    return notes


# --------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        value = f"{value:,.2f}".rstrip("0").rstrip(".")
    return f"{value}{unit}"


def render(report: Mapping[str, Any]) -> Group:
    """The screen (rich renderables)."""
    parts: list[Any] = []
    attention = report.get("attention") or []
    headline = (
        "[bold green]all quiet[/]"
        if not attention and not report.get("problems")
        else "\n".join(f"[yellow]•[/] {a}" for a in attention)
    )
    parts.append(Panel(headline, title=f"stream-to-personalize status · {report['at']}", expand=True))

    mappings = report.get("mappings") or {}
    table = Table(title=f"Event source mappings (last {report['windowMinutes']} min)", expand=True)
    for column in ("mapping", "source", "state", "iterator age (max)", "to on-failure"):
        table.add_column(column)
    if "error" in mappings:
        table.add_row("[red]" + mappings["error"], "", "", "", "")
    else:
        age = _fmt(mappings.get("iteratorAgeMs"), " ms")
        rows = mappings.get("mappings") or [{"uuid": "(none listed)"}]
        for m in rows:
            table.add_row(
                str(m.get("uuid")),
                str(m.get("source") or "-"),
                str(m.get("state") or "-"),
                age,
                _fmt(m.get("onFailureDelivered")),
            )
        if mappings.get("note"):
            table.caption = mappings["note"]
    parts.append(table)

    queues = Table(title="Queues and the on-failure destination", expand=True)
    for column in ("what", "depth", "detail"):
        queues.add_column(column)
    dlq = report.get("dlq") or {}
    if "error" in dlq:
        queues.add_row("poison DLQ", "[red]?", dlq["error"])
    else:
        queues.add_row("poison DLQ", _fmt(dlq.get("visible")), f"in flight {_fmt(dlq.get('inFlight'))}")
    on_failure = report.get("onFailure") or {}
    if "error" in on_failure:
        queues.add_row("on-failure", "[red]?", on_failure["error"])
    elif on_failure.get("kind") == "s3":
        queues.add_row(
            f"on-failure (s3://{on_failure['bucket']})",
            _fmt(on_failure.get("pending")),
            f"oldest {_fmt(on_failure.get('oldestAgeS'), ' s')}, replayed {_fmt(on_failure.get('replayed'))}",
        )
    else:
        queues.add_row(
            "on-failure (SQS)", _fmt(on_failure.get("pending")), f"in flight {_fmt(on_failure.get('inFlight'))}"
        )
    parts.append(queues)

    budget = report.get("budget") or {}
    put = report.get("putItems") or {}
    quota = Table(title="PutItems and the shared budget", expand=True)
    quota.add_column("metric")
    quota.add_column("value")
    if "error" in budget:
        quota.add_row("shared budget", "[red]" + budget["error"])
    elif not budget.get("used"):
        quota.add_row("shared budget", f"not used yet (ceiling {_fmt(budget.get('ceiling'))} calls/s)")
    else:
        quota.add_row("shared rate now", f"{_fmt(budget['rate'])} / {_fmt(budget['ceiling'])} calls/s")
        cut = budget.get("lastCutAgoS")
        quota.add_row("last cut", "never" if cut is None else f"{_fmt(cut)} s ago, to {_fmt(budget.get('cutBase'))}")
        quota.add_row("reserved ahead", _fmt(budget.get("reservedAheadS"), " s"))
    if "error" in put:
        quota.add_row("metrics", "[red]" + put["error"])
    else:
        quota.add_row(
            "PutItems calls / attempts", f"{_fmt(put.get('PutItemsCalls'))} / {_fmt(put.get('PutItemsAttempts'))}"
        )
        quota.add_row("throttled", f"{_fmt(put.get('Throttles'))} ({_fmt(put.get('throttledPercent'), ' %')})")
        quota.add_row("rejected (bad item)", _fmt(put.get("PutItemsRejected")))
        quota.add_row("items/s, items per call", f"{_fmt(put.get('itemsPerSecond'))}, {_fmt(put.get('itemsPerCall'))}")
        quota.add_row(
            "records in / put / poison / retry",
            "{} / {} / {} / {}".format(
                *(_fmt(put.get(k)) for k in ("RecordsIn", "RecordsPut", "RecordsPoison", "RecordsRetry"))
            ),
        )
        quota.add_row(
            "systemic errors, budget fallbacks",
            f"{_fmt(put.get('SystemicErrors'))}, {_fmt(put.get('BudgetFallbacks'))}",
        )
    parts.append(quota)

    newest = dlq.get("newest") if isinstance(dlq, dict) else None
    if newest:
        errors = Table(title="Newest poison records (left in the DLQ)", expand=True)
        for column in ("sent", "item", "reason"):
            errors.add_column(column)
        for e in newest:
            errors.add_row(str(e.get("sent") or "-"), str(e.get("itemId") or "-"), str(e.get("reason") or "-"))
        parts.append(errors)
    for problem in report.get("problems") or []:
        parts.append(f"[red]could not read[/] {problem}")
    return Group(*parts)
