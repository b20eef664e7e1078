"""Adversarial tests of ``ops replay`` (S3 on-failure destination): corrupted objects, poison records and a crash
between the copy and the delete must neither lose a batch nor block the others.

Each test is an attack. The ones named after a defect failed when the attack was written and were fixed
(``ops/feed.py`` retries by outcome, not by sequence number; a missing table leaves its messages with the
reason; a truncated payload is one unreadable object, not the end of the run); the others held.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import boto3
import pytest

from ops.replay import REPLAYED_PREFIX, Replay
from tests.ops.conftest import Cloud
from tests.ops.test_replay import DOCUMENTED_S3_RECORD, batch_info, stream_batch
from tests.ops.test_replay import replay as replay_from

BUCKET = "on-failure"


def replay(cloud: Cloud, **kwargs: Any) -> Replay:
    return replay_from(cloud, bucket=BUCKET, **kwargs)


def put_object(key: str, doc: dict[str, Any] | bytes) -> None:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    boto3.client("s3", region_name="us-east-1").put_object(Bucket=BUCKET, Key=key, Body=body)


def keys() -> list[str]:
    got = boto3.client("s3", region_name="us-east-1").list_objects_v2(Bucket=BUCKET)
    return sorted(o["Key"] for o in got.get("Contents", []))


def good_object(cloud: Cloud, n: int = 3) -> dict[str, Any]:
    for i in range(n):
        cloud.put(f"s{i}", title=f"t{i}")
    arn, shard, records = stream_batch(cloud)
    doc = copy.deepcopy(DOCUMENTED_S3_RECORD)
    doc["DDBStreamBatchInfo"] = batch_info(arn, shard, records)
    doc["payload"] = json.dumps({"Records": records})
    return doc


@pytest.fixture
def bucket(cloud: Cloud) -> Cloud:
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    return cloud


def test_an_object_that_is_not_json_is_left_and_the_others_are_replayed(bucket: Cloud) -> None:
    cloud = bucket
    put_object("aws/lambda/u/shard/2026/11/30/a-broken", b"\x00\xffnot json")
    put_object("aws/lambda/u/shard/2026/11/30/b-good", good_object(cloud))
    report = replay(cloud).run()
    assert report.replayed == 1 and sum(report.left.values()) == 1
    assert cloud.personalize.items == cloud.table_as_items()
    assert keys() == [
        "aws/lambda/u/shard/2026/11/30/a-broken",
        REPLAYED_PREFIX + "aws/lambda/u/shard/2026/11/30/b-good",
    ]


def test_an_object_whose_payload_is_truncated_json_does_not_block_the_others(bucket: Cloud) -> None:
    cloud = bucket
    broken = good_object(cloud)
    broken["payload"] = broken["payload"][: len(broken["payload"]) // 2]
    put_object("aws/lambda/u/shard/2026/11/30/a-truncated", broken)
    put_object("aws/lambda/u/shard/2026/11/30/b-good", good_object(cloud))
    report = replay(cloud).run()
    assert report.replayed == 1
    assert cloud.personalize.items == cloud.table_as_items()


def test_a_poison_record_in_a_batch_is_dead_lettered_and_the_batch_is_done(bucket: Cloud) -> None:
    cloud = bucket
    doc = good_object(cloud, 2)
    records = json.loads(doc["payload"])["Records"]
    junk = copy.deepcopy(records[0])
    junk["dynamodb"]["SequenceNumber"] = "9" * 30
    del junk["dynamodb"]["Keys"]  # no key: the pipeline must dead-letter it with its reason
    records.append(junk)
    doc["payload"] = json.dumps({"Records": records})
    put_object("aws/lambda/u/shard/2026/11/30/a", doc)
    report = replay(cloud).run()
    assert report.replayed == 1 and report.tally.put == 2 and report.tally.poison == 1
    [dead] = cloud.dlq()
    assert dead["reason"]
    assert cloud.personalize.items == cloud.table_as_items()


def test_a_crash_between_the_copy_and_the_delete_replays_the_batch_again_harmlessly(
    bucket: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    cloud = bucket
    put_object("aws/lambda/u/shard/2026/11/30/a", good_object(cloud))
    s3 = boto3.client("s3", region_name="us-east-1")

    def crash(**_: Any) -> None:
        raise RuntimeError("the machine died")

    job = replay(cloud)
    monkeypatch.setattr(job.s3, "delete_object", crash)
    with pytest.raises(RuntimeError):
        job.run()
    assert "aws/lambda/u/shard/2026/11/30/a" in keys()  # not lost: still to replay
    cloud.put("s1", title="changed after the crash")
    report = replay(cloud).run()
    assert report.replayed == 1
    assert cloud.personalize.items == cloud.table_as_items()
    assert keys() == [REPLAYED_PREFIX + "aws/lambda/u/shard/2026/11/30/a"]
    assert s3.head_object(Bucket=BUCKET, Key=REPLAYED_PREFIX + "aws/lambda/u/shard/2026/11/30/a")
