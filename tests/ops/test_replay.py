"""``ops replay``: the S3 on-failure destination's invocation records and SQS coordinates re-read from the stream."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from ops.common import OpsError
from ops.replay import (
    REPLAYED_PREFIX,
    Replay,
    _dynamodb_event_record,
    on_failure_source,
    parse_invocation_record,
)
from tests.factories import cdc_payload
from tests.ops.conftest import TABLE, Cloud

# The documented example (AWS Lambda Developer Guide, "Example Amazon S3 invocation record"), shared with the local
# ESM runner's tests: one copy of AWS's format for the writer and the reader. The page shows "payload": "<Whole
# Event>"; the fixture puts a real one-record event there.
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "on_failure_s3_record.json"
DOCUMENTED_S3_RECORD: dict[str, Any] = json.loads(FIXTURE.read_text())["record"]
BUCKET = "on-failure"


def replay(cloud: Cloud, **kwargs: Any) -> Replay:
    return Replay(
        cloud.settings(),
        dynamodb=cloud.ddb,
        sqs=cloud.sqs,
        personalize=cloud.personalize.client,
        s3=boto3.client("s3", region_name="us-east-1"),
        streams=boto3.client("dynamodbstreams", region_name="us-east-1"),
        show_progress=False,
        **kwargs,
    )


def stream_batch(cloud: Cloud) -> tuple[str, str, list[dict[str, Any]]]:
    """The table's stream: its ARN, its shard and every record so far (as the event source mapping reads them)."""
    streams = boto3.client("dynamodbstreams", region_name="us-east-1")
    arn = cloud.ddb.describe_table(TableName=TABLE)["Table"]["LatestStreamArn"]
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    it = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    records = streams.get_records(ShardIterator=it, Limit=1000)["Records"]
    return arn, shard, [_dynamodb_event_record(r, arn) for r in records]


def batch_info(arn: str, shard: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    info = copy.deepcopy(DOCUMENTED_S3_RECORD["DDBStreamBatchInfo"])
    info.update(
        streamArn=arn,
        shardId=shard,
        startSequenceNumber=records[0]["dynamodb"]["SequenceNumber"],
        endSequenceNumber=records[-1]["dynamodb"]["SequenceNumber"],
        batchSize=len(records),
    )
    return info


def test_the_documented_example_parses() -> None:
    doc = copy.deepcopy(DOCUMENTED_S3_RECORD)
    event = {"Records": [{"eventSource": "aws:dynamodb", "dynamodb": {"SequenceNumber": "1"}}]}
    doc["payload"] = json.dumps(event)  # "an escaped JSON string"
    info, records = parse_invocation_record(json.dumps(doc))
    assert info["startSequenceNumber"] == "800000000003126276362" and records == event["Records"]
    del doc["payload"]  # an SQS or SNS destination: coordinates only
    assert parse_invocation_record(json.dumps(doc)) == (doc["DDBStreamBatchInfo"], None)


def test_replay_from_an_s3_object_feeds_the_current_items_and_moves_the_object(cloud: Cloud) -> None:
    for i in range(12):
        cloud.put(f"s{i:02d}", title=f"v1 {i}")
    arn, shard, records = stream_batch(cloud)
    cloud.put("s03", title="v2 since the failure")  # the payload's image is older than the table's
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    doc = copy.deepcopy(DOCUMENTED_S3_RECORD)
    doc["DDBStreamBatchInfo"] = batch_info(arn, shard, records)
    doc["payload"] = json.dumps({"Records": records})
    key = f"aws/lambda/esm-uuid/{shard}/2026/11/30/2026-11-30T10.00.00-abc"
    s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(doc).encode())

    dry = replay(cloud, bucket=BUCKET, dry_run=True).run()
    assert dry.would == {"put": 12} and cloud.personalize.calls == []

    report = replay(cloud, bucket=BUCKET).run()
    assert (report.batches, report.replayed, report.tally.put) == (1, 1, 12)
    assert cloud.personalize.items == cloud.table_as_items()
    assert cloud.personalize.items["s03"] == {"title": "v2 since the failure"}
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert keys == [REPLAYED_PREFIX + key]
    again = replay(cloud, bucket=BUCKET).run()  # a replayed object is not replayed twice
    assert again.batches == 0


def test_replay_from_sqs_coordinates_rereads_the_shard_range(cloud: Cloud) -> None:
    for i in range(8):
        cloud.put(f"s{i:02d}", title=f"v1 {i}")
    arn, shard, records = stream_batch(cloud)
    queue = cloud.sqs.create_queue(QueueName="on-failure")["QueueUrl"]
    doc = copy.deepcopy(DOCUMENTED_S3_RECORD)
    del doc["payload"]
    doc["DDBStreamBatchInfo"] = batch_info(arn, shard, records[2:6])  # a batch in the middle of the shard
    cloud.sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(doc))

    report = replay(cloud, queue_url=queue).run()
    assert (report.batches, report.replayed, report.records, report.tally.put) == (1, 1, 4, 4)
    assert set(cloud.personalize.items) == {f"s{i:02d}" for i in range(2, 6)}
    assert cloud.sqs.receive_message(QueueUrl=queue).get("Messages") is None


class TrimmedStreams:
    """DynamoDB Streams after the range was trimmed: GetShardIterator answers TrimmedDataAccessException, as AWS
    does for a sequence number older than the 24-hour retention (moto never trims)."""

    def get_shard_iterator(self, **_: Any) -> Any:
        from botocore.exceptions import ClientError

        error = {"Code": "TrimmedDataAccessException", "Message": "the sequence number is beyond the trim horizon"}
        raise ClientError({"Error": error}, "GetShardIterator")


def test_coordinates_beyond_retention_are_reported_and_left_unless_discarded(cloud: Cloud) -> None:
    cloud.put("s00", title="v1")
    arn, shard, records = stream_batch(cloud)
    queue = cloud.sqs.create_queue(QueueName="on-failure")["QueueUrl"]
    doc = copy.deepcopy(DOCUMENTED_S3_RECORD)
    del doc["payload"]
    doc["DDBStreamBatchInfo"] = batch_info(arn, shard, records)
    cloud.sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(doc))

    trimmed = replay(cloud, queue_url=queue)
    trimmed._streams = TrimmedStreams()
    report = trimmed.run()
    assert (report.batches, report.expired, report.replayed, report.discarded) == (1, 1, 0, 0)
    assert cloud.personalize.items == {}
    assert len(cloud.sqs.receive_message(QueueUrl=queue, VisibilityTimeout=0).get("Messages", [])) == 1

    discarding = replay(cloud, queue_url=queue, discard_expired=True)
    discarding._streams = TrimmedStreams()
    discarded = discarding.run()
    assert (discarded.expired, discarded.discarded) == (1, 1)
    assert cloud.sqs.receive_message(QueueUrl=queue).get("Messages") is None


def test_the_documented_record_as_the_local_runner_writes_it_parses_to_its_batch_and_records() -> None:
    info, records = parse_invocation_record(json.dumps(DOCUMENTED_S3_RECORD))
    assert info["streamArn"] == DOCUMENTED_S3_RECORD["DDBStreamBatchInfo"]["streamArn"]
    assert records is not None and len(records) == DOCUMENTED_S3_RECORD["DDBStreamBatchInfo"]["batchSize"]
    assert records[0]["dynamodb"]["SequenceNumber"] == info["startSequenceNumber"]


def test_the_on_failure_destination_comes_from_a_flag_or_the_environment() -> None:
    def args(bucket: str | None = None, queue_url: str | None = None) -> argparse.Namespace:
        return argparse.Namespace(bucket=bucket, queue_url=queue_url)

    exported = {"ON_FAILURE_BUCKET": "failed-batches"}
    assert on_failure_source(args(), exported) == ("failed-batches", None)
    assert on_failure_source(args(queue_url="https://q"), exported) == (None, "https://q")  # a flag wins
    assert on_failure_source(args(), {"ON_FAILURE_QUEUE_URL": "https://q"}) == (None, "https://q")
    with pytest.raises(OpsError, match="--bucket"):
        on_failure_source(args(), {})
    with pytest.raises(OpsError, match="both"):
        on_failure_source(args(), {**exported, "ON_FAILURE_QUEUE_URL": "https://q"})


def test_replay_without_a_destination_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    from ops.cli import main

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("ON_FAILURE_BUCKET", raising=False)
        mp.delenv("ON_FAILURE_QUEUE_URL", raising=False)
        code = main(["replay", "--state-table", "state", "--dry-run"])
    assert code == 2
    assert "no on-failure destination" in capsys.readouterr().err


def test_replay_from_sqs_coordinates_rereads_a_kinesis_shard_range(cloud: Cloud) -> None:
    """CDC over Kinesis (Kinesis Data Streams for DynamoDB): the SQS destination's ``KinesisBatchInfo`` names the
    range, replay reads it again with ``AT_SEQUENCE_NUMBER`` and feeds the original records, stopping at the end
    of the range; a change newer than the range, later in the shard, is not fed."""
    kinesis = boto3.client("kinesis", region_name="us-east-1")
    kinesis.create_stream(StreamName="cdc", ShardCount=1)
    arn = kinesis.describe_stream(StreamName="cdc")["StreamDescription"]["StreamARN"]
    seqs, shard = [], ""
    for i in range(8):
        doc = cdc_payload(
            "INSERT", {"sku": f"k{i:02d}"}, {"sku": f"k{i:02d}", "title": f"v1 {i}"}, ts=1_764_000_000_000 + i
        )
        put = kinesis.put_record(StreamName="cdc", Data=json.dumps(doc).encode(), PartitionKey=f"k{i:02d}")
        seqs.append(put["SequenceNumber"])
        shard = put["ShardId"]
    queue = cloud.sqs.create_queue(QueueName="on-failure-kinesis")["QueueUrl"]
    info = {
        "shardId": shard,
        "startSequenceNumber": seqs[2],
        "endSequenceNumber": seqs[5],
        "approximateArrivalOfFirstRecord": "2026-11-30T10:00:00.000Z",
        "approximateArrivalOfLastRecord": "2026-11-30T10:00:01.000Z",
        "batchSize": 4,
        "streamArn": arn,
    }
    doc = copy.deepcopy(DOCUMENTED_S3_RECORD)
    del doc["payload"], doc["DDBStreamBatchInfo"]
    doc["KinesisBatchInfo"] = info
    cloud.sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(doc))

    report = replay(cloud, queue_url=queue, kinesis=kinesis).run()
    assert (report.batches, report.replayed, report.records, report.tally.put) == (1, 1, 4, 4)
    assert cloud.personalize.items == {f"k{i:02d}": {"title": f"v1 {i}"} for i in range(2, 6)}
    assert cloud.sqs.receive_message(QueueUrl=queue).get("Messages") is None
