"""The naive baseline of the local-cloud benchmark: Powertools' per-record pattern, deployed like the connector.

What a first version of this connector usually looks like, following the Powertools batch-processing docs:
``BatchProcessor`` hands each record to a record handler, which reads it through the data class
(``DynamoDBRecord.dynamodb.new_image`` / ``KinesisStreamRecord.kinesis.data_as_json()``), drops the id attribute,
``json.dumps`` the rest and sends it in its **own** PutItems call with a default boto3 client (botocore's default
retries, **no pacing**). A record whose call fails is reported in ``batchItemFailures``, so Lambda redelivers the
batch from it. No coalescing, no schema coercion, no dead-letter queue.

The benchmark (``bench/bench_localcloud.py``) runs it with the synthesized template's event source mappings and
environment, pointing the runner at this directory (``asset_dir``) and setting ``_HANDLER`` to ``naive.handler``.
The source images are written in the schema's property names, so that this handler's output is valid as is.
"""

from __future__ import annotations

import json
import os
from decimal import Decimal
from typing import Any

import boto3
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import KinesisStreamRecord

DATASET_ARN = os.environ["DATASET_ARN"]
ITEM_ID_ATTRIBUTE = os.environ.get("NAIVE_ITEM_ID_ATTRIBUTE", "sku")

personalize = boto3.client("personalize-events")
ddb_processor = BatchProcessor(event_type=EventType.DynamoDBStreams)
kinesis_processor = BatchProcessor(event_type=EventType.KinesisDataStreams)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, set | frozenset):
        return "|".join(sorted(str(v) for v in value))
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _put(image: dict[str, Any]) -> None:
    item_id = str(image.pop(ITEM_ID_ATTRIBUTE))
    properties = json.dumps(image, default=_jsonable)
    personalize.put_items(datasetArn=DATASET_ARN, items=[{"itemId": item_id, "properties": properties}])


def dynamodb_record(record: DynamoDBRecord) -> None:
    assert record.dynamodb is not None
    _put(dict(record.dynamodb.new_image))


def kinesis_record(record: KinesisStreamRecord) -> None:
    _put(dict(record.kinesis.data_as_json()))


def handler(event: dict[str, Any], context: Any) -> PartialItemFailureResponse:
    records = event.get("Records") or [{}]
    if records[0].get("eventSource") == "aws:kinesis":
        return process_partial_response(
            event=event, record_handler=kinesis_record, processor=kinesis_processor, context=context
        )
    return process_partial_response(
        event=event, record_handler=dynamodb_record, processor=ddb_processor, context=context
    )
