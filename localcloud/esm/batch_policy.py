"""The batch policy: Lambda's ReportBatchItemFailures rules and the on-failure destination's message.

The on-failure message is the documented invocation record of a stream event source mapping
(https://docs.aws.amazon.com/lambda/latest/dg/services-dynamodb-errors.html,
https://docs.aws.amazon.com/lambda/latest/dg/kinesis-on-failure-destination.html): ``requestContext``,
``responseContext``, ``version``, ``timestamp`` and ``DDBStreamBatchInfo`` / ``KinesisBatchInfo``. An SQS or SNS
destination gets only that; an S3 destination also gets ``payload``, "the original invocation record as an escaped
JSON string" (the event the function was invoked with, ``{"Records": [...]}``), in an object named
``aws/lambda/<ESM-UUID>/<shardID>/YYYY/MM/DD/YYYY-MM-DDTHH.MM.SS-<Random UUID>``
(:func:`on_failure_s3_key`). ``tests/fixtures/on_failure_s3_record.json`` holds AWS's documented example.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any, Literal

from localcloud.esm.config import MappingConfig

Outcome = Literal["success", "partial", "invalid_response", "error", "timeout", "killed"]


# --------------------------------------------------------------------------------------------------------------
# Pure pieces: response evaluation and the on-failure message
# --------------------------------------------------------------------------------------------------------------


def evaluate_batch_response(response: Any, sequence_numbers: list[str]) -> tuple[str, int | None, str | None]:
    """Apply Lambda's ``ReportBatchItemFailures`` rules to a handler response.

    Returns ``("success", None, None)``, ``("partial", index_of_lowest_failure, None)`` or
    ``("invalid", None, reason)``; an invalid response fails the whole batch.
    """
    if response is None or response in ("", []):  # a bare falsy answer: nothing failed
        return "success", None, None
    if not isinstance(response, dict):
        return "invalid", None, f"response is a {type(response).__name__}, not a JSON object"
    failures = response.get("batchItemFailures")
    if failures is None:
        return "success", None, None
    if not isinstance(failures, list):
        return "invalid", None, "batchItemFailures is not a list"
    if not failures:
        return "success", None, None
    position = {seq: i for i, seq in enumerate(sequence_numbers)}
    lowest: int | None = None
    for item in failures:
        if not isinstance(item, dict) or "itemIdentifier" not in item:
            return "invalid", None, f"batch item failure {item!r} has no itemIdentifier"
        identifier = item["itemIdentifier"]
        if identifier is None or identifier == "":
            return "invalid", None, "itemIdentifier is empty or null"
        if not isinstance(identifier, str) or identifier not in position:
            return "invalid", None, f"itemIdentifier {identifier!r} is not a sequence number of the batch"
        index = position[identifier]
        lowest = index if lowest is None else min(lowest, index)
    return "partial", lowest, None


def _iso(epoch: float, *, millis: bool) -> str:
    moment = dt.datetime.fromtimestamp(epoch, tz=dt.UTC)
    if millis:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def build_on_failure_message(
    *,
    mapping: MappingConfig,
    shard_id: str,
    sequence_numbers: list[str],
    arrivals: list[float],
    condition: Literal["RetryAttemptsExhausted", "RecordAgeExceeded"],
    request_id: str,
    invoke_count: int,
    function_error: str | None,
    now: float | None = None,
) -> dict[str, Any]:
    """The JSON document Lambda sends to a stream ESM's on-failure destination: coordinates, not records."""
    kinesis = mapping.source == "kinesis"
    message: dict[str, Any] = {
        "requestContext": {
            "requestId": request_id,
            "functionArn": mapping.function.arn,
            "condition": condition,
            "approximateInvokeCount": invoke_count,
        },
    }
    if invoke_count:  # a batch that expired before any invoke (throttled, or behind a stuck one) has no response
        response_context: dict[str, Any] = {"statusCode": 200, "executedVersion": "$LATEST"}
        if function_error:
            response_context["functionError"] = function_error
        message["responseContext"] = response_context
    return message | {
        "version": "1.0",
        "timestamp": _iso(time.time() if now is None else now, millis=True),
        ("KinesisBatchInfo" if kinesis else "DDBStreamBatchInfo"): {
            "shardId": shard_id,
            "startSequenceNumber": sequence_numbers[0],
            "endSequenceNumber": sequence_numbers[-1],
            "approximateArrivalOfFirstRecord": _iso(arrivals[0], millis=kinesis),
            "approximateArrivalOfLastRecord": _iso(arrivals[-1], millis=kinesis),
            "batchSize": len(sequence_numbers),
            "streamArn": mapping.source_arn,
        },
    }


def build_on_failure_s3_record(message: Mapping[str, Any], event: Mapping[str, Any]) -> dict[str, Any]:
    """The object Lambda writes to an S3 on-failure destination: the message plus ``payload``, the invocation
    event as an escaped JSON string."""
    return {**message, "payload": json.dumps(event, separators=(",", ":"))}


def on_failure_s3_key(esm_uuid: str, shard_id: str, *, now: float | None = None, random_id: str | None = None) -> str:
    """``aws/lambda/<ESM-UUID>/<shardID>/YYYY/MM/DD/YYYY-MM-DDTHH.MM.SS-<Random UUID>`` (UTC)."""
    moment = dt.datetime.fromtimestamp(time.time() if now is None else now, tz=dt.UTC)
    return f"aws/lambda/{esm_uuid}/{shard_id}/{moment:%Y/%m/%d}/{moment:%Y-%m-%dT%H.%M.%S}-{random_id or uuid.uuid4()}"
