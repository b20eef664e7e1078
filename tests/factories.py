"""Event factories: Lambda stream events shaped like the real ones, for DynamoDB Streams and Kinesis; and the
Items dataset's Avro schema around a test's own fields."""

from __future__ import annotations

import base64
import itertools
import json
from dataclasses import dataclass
from typing import Any

from boto3.dynamodb.types import TypeSerializer

TABLE_STREAM_ARN = "arn:aws:dynamodb:us-east-1:111122223333:table/catalog/stream/2026-01-01T00:00:00.000"
KINESIS_ARN = "arn:aws:kinesis:us-east-1:111122223333:stream/catalog"
DATASET_ARN = "arn:aws:personalize:us-east-1:111122223333:dataset/catalog/ITEMS"

_serializer = TypeSerializer()
_seq = itertools.count(100_000_000_000_000_000_000)


def ddb(image: dict[str, Any]) -> dict[str, Any]:
    """Python values → DynamoDB JSON as streams carry it (numbers are int or Decimal; binary is base64 text)."""
    return {k: _wire(_serializer.serialize(v)) for k, v in image.items()}


def _wire(attr: Any) -> Any:
    if isinstance(attr, bytes):
        return base64.b64encode(attr).decode()
    if isinstance(attr, dict):
        return {k: _wire(v) for k, v in attr.items()}
    if isinstance(attr, list):
        return [_wire(v) for v in attr]
    if isinstance(attr, set):
        return [_wire(v) for v in attr]
    return attr


def next_seq() -> str:
    return str(next(_seq))


def dynamodb_record(
    event_name: str,
    keys: dict[str, Any],
    new: dict[str, Any] | None = None,
    old: dict[str, Any] | None = None,
    *,
    seq: str | None = None,
    raw_images: bool = False,
) -> dict[str, Any]:
    """A DynamoDB Streams record; images are Python values unless ``raw_images``."""
    conv = (lambda x: x) if raw_images else ddb
    body: dict[str, Any] = {
        "ApproximateCreationDateTime": 1_764_000_000,
        "Keys": conv(keys),
        "SequenceNumber": seq or next_seq(),
        "SizeBytes": 100,
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    }
    if new is not None:
        body["NewImage"] = conv(new)
    if old is not None:
        body["OldImage"] = conv(old)
    return {
        "eventID": "e" + body["SequenceNumber"][-8:],
        "eventName": event_name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": body,
        "eventSourceARN": TABLE_STREAM_ARN,
    }


def kinesis_record(data: bytes | str | dict[str, Any] | list[Any], *, seq: str | None = None) -> dict[str, Any]:
    """A Kinesis record; a dict or list is JSON-encoded, str is taken as the already-encoded data field."""
    if isinstance(data, dict | list):
        encoded = base64.b64encode(json.dumps(data).encode()).decode()
    elif isinstance(data, bytes):
        encoded = base64.b64encode(data).decode()
    else:
        encoded = data
    seq = seq or next_seq()
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": "pk",
            "sequenceNumber": seq,
            "data": encoded,
            "approximateArrivalTimestamp": 1_764_000_000.5,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"shardId-000000000000:{seq}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": "arn:aws:iam::111122223333:role/connector",
        "awsRegion": "us-east-1",
        "eventSourceARN": KINESIS_ARN,
    }


def cdc_payload(
    event_name: str,
    keys: dict[str, Any],
    new: dict[str, Any] | None = None,
    old: dict[str, Any] | None = None,
    *,
    ts: int = 1_764_000_000_000,
) -> dict[str, Any]:
    """What Kinesis Data Streams for DynamoDB puts in a record's data."""
    body: dict[str, Any] = {"ApproximateCreationDateTime": ts, "Keys": ddb(keys), "SizeBytes": 100}
    if new is not None:
        body["NewImage"] = ddb(new)
    if old is not None:
        body["OldImage"] = ddb(old)
    return {
        "awsRegion": "us-east-1",
        "eventID": "cdc-" + str(ts),
        "eventName": event_name,
        "userIdentity": None,
        "recordFormat": "application/json",
        "tableName": "catalog",
        "dynamodb": body,
        "eventSource": "aws:dynamodb",
    }


def event(*records: dict[str, Any]) -> dict[str, Any]:
    return {"Records": list(records)}


@dataclass
class FakeContext:
    """A Lambda context whose remaining time runs down with a real clock (or stays fixed)."""

    remaining_ms: float = 300_000
    function_name: str = "connector"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:111122223333:function:connector"
    aws_request_id: str = "req-1"
    function_version: str = "$LATEST"
    log_group_name: str = "/aws/lambda/connector"
    log_stream_name: str = "stream"

    def get_remaining_time_in_millis(self) -> int:
        return int(self.remaining_ms)


def items_schema(*fields: dict[str, Any]) -> dict[str, Any]:
    """An Items dataset's Avro schema: ``ITEM_ID`` first, then ``fields``."""
    return {
        "type": "record",
        "name": "Items",
        "namespace": "com.amazonaws.personalize.schema",
        "fields": [{"name": "ITEM_ID", "type": "string"}, *fields],
        "version": "1.0",
    }
