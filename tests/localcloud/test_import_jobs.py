"""Import jobs on the emulator (CSV read from moto's S3 over HTTP), moto's export completed into AWS's layout,
and the ordering rule: with the stream flowing before the export's point in time, a FULL import of that older
export leaves the stream's newer versions in place; started after it, a change is lost."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from connector import bulk, pipeline
from connector.config import load_settings
from connector.deadline import Deadline
from connector.putitems import Pacer, PutItemsSink
from localcloud import export
from localcloud.personalize_emulator import PersonalizeEmulator
from tests.factories import DATASET_ARN
from tests.fakes import FakeSQS

SCHEMA = {
    "type": "record",
    "name": "Items",
    "fields": [
        {"name": "ITEM_ID", "type": "string"},
        {"name": "TITLE", "type": "string"},
        {"name": "VERSION", "type": "int"},
    ],
}
DOC = {"schema": SCHEMA}
ROLE = "arn:aws:iam::111122223333:role/PersonalizeS3"
BUCKET = "bulk-imports"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    port = _port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def cloud(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv("DATASET_ARN", DATASET_ARN)
    monkeypatch.setenv("CONNECTOR_CONFIG", json.dumps(DOC))
    bulk._converter_cache.clear()
    with PersonalizeEmulator(tps=None, s3_endpoint_url=moto_url) as emu:
        emu.configure(import_step_ms=5)
        emu.register_dataset(DATASET_ARN, SCHEMA)
        kw = {"endpoint_url": moto_url, "region_name": "us-east-1"}
        s3 = boto3.client("s3", **kw)
        ddb = boto3.client("dynamodb", **kw)
        name = f"catalog{time.monotonic_ns()}"
        table = ddb.create_table(
            TableName=name,
            KeySchema=[{"AttributeName": "sku", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "sku", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )["TableDescription"]
        ddb.update_continuous_backups(
            TableName=name, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True}
        )
        if BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
            s3.create_bucket(Bucket=BUCKET)
        yield {
            "emu": emu,
            "s3": s3,
            "ddb": ddb,
            "streams": boto3.client("dynamodbstreams", **kw),
            "personalize": boto3.client("personalize", endpoint_url=emu.endpoint_url, region_name="us-east-1"),
            "events": boto3.client("personalize-events", endpoint_url=emu.endpoint_url, region_name="us-east-1"),
            "table": name,
            "table_arn": table["TableArn"],
            "stream_arn": table["LatestStreamArn"],
        }


def put(c: dict[str, Any], sku: str, version: int) -> None:
    item = {"sku": {"S": sku}, "title": {"S": f"{sku} v{version}"}, "version": {"N": str(version)}}
    c["ddb"].put_item(TableName=c["table"], Item=item)


def table_state(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    items = c["ddb"].scan(TableName=c["table"])["Items"]
    return {i["sku"]["S"]: {"title": i["title"]["S"], "version": int(i["version"]["N"])} for i in items}


def stream_position(c: dict[str, Any]) -> str:
    """Where an event source mapping enabled now starts reading (LATEST)."""
    shard = c["streams"].describe_stream(StreamArn=c["stream_arn"])["StreamDescription"]["Shards"][0]["ShardId"]
    return str(
        c["streams"].get_shard_iterator(StreamArn=c["stream_arn"], ShardId=shard, ShardIteratorType="LATEST")[
            "ShardIterator"
        ]
    )


def deliver(c: dict[str, Any], iterator: str) -> int:
    """What the mapping does: read the stream from ``iterator`` and run the connector's pipeline on it."""
    records = c["streams"].get_records(ShardIterator=iterator)["Records"]
    for r in records:
        ts = r["dynamodb"].get("ApproximateCreationDateTime")
        if isinstance(ts, datetime):
            r["dynamodb"]["ApproximateCreationDateTime"] = int(ts.timestamp())
        r["eventSourceARN"] = c["stream_arn"]
    if records:
        sink = PutItemsSink(c["events"], DATASET_ARN, worst_call_ms=1_000, pacer=Pacer(1_000))
        result = pipeline.run(
            {"Records": records}, settings=load_settings(), sink=sink, sqs=FakeSQS(), deadline=Deadline.unbounded()
        )
        assert result.response == {"batchItemFailures": []}
    return len(records)


def import_export(c: dict[str, Any], export_arn: str, job: str, mode: str = "FULL") -> dict[str, Any]:
    """Convert every data file with the bulk Lambda's handler, then run an import job over the folder."""
    summary = export.complete_export(c["ddb"], c["s3"], export_arn, items_per_file=3)
    manifest = c["s3"].get_object(Bucket=BUCKET, Key=summary["manifestFilesS3Key"])["Body"].read().decode()
    for line in manifest.splitlines():
        event = {
            "bucket": BUCKET,
            "key": json.loads(line)["dataFileS3Key"],
            "keys": ["sku"],
            "outputBucket": BUCKET,
            "outputPrefix": f"csv/{job}",
        }
        assert bulk.handler(event, None, s3=c["s3"])["rejects"] == 0
    arn = c["personalize"].create_dataset_import_job(
        jobName=job,
        datasetArn=DATASET_ARN,
        dataSource={"dataLocation": f"s3://{BUCKET}/csv/{job}/"},
        roleArn=ROLE,
        importMode=mode,
    )["datasetImportJobArn"]
    return wait(c, arn)


def wait(c: dict[str, Any], arn: str) -> dict[str, Any]:
    seen: list[str] = []
    for _ in range(400):
        job: dict[str, Any] = c["personalize"].describe_dataset_import_job(datasetImportJobArn=arn)["datasetImportJob"]
        if not seen or seen[-1] != job["status"]:
            seen.append(job["status"])
        if job["status"] in ("ACTIVE", "CREATE FAILED"):
            job["seen"] = seen
            return job
        time.sleep(0.01)
    raise AssertionError(f"import job stuck in {seen}")


def visible(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return c["emu"].items(DATASET_ARN)


def test_the_export_is_completed_into_aws_layout(cloud: dict[str, Any]) -> None:
    for n in range(7):
        put(cloud, f"i{n}", 1)
    arn, summary = export.export_table(cloud["ddb"], cloud["s3"], cloud["table_arn"], BUCKET, items_per_file=3)
    folder = export.export_folder("exports", arn)
    assert summary["manifestFilesS3Key"] == folder + "manifest-files.json"
    assert summary["itemCount"] == 7 and summary["tableArn"] == cloud["table_arn"]
    keys = {o["Key"] for o in cloud["s3"].list_objects_v2(Bucket=BUCKET, Prefix="exports/")["Contents"]}
    manifest = cloud["s3"].get_object(Bucket=BUCKET, Key=summary["manifestFilesS3Key"])["Body"].read().decode()
    entries = [json.loads(line) for line in manifest.splitlines()]
    assert [e["itemCount"] for e in entries] == [3, 3, 1]
    assert all(
        e["dataFileS3Key"].startswith(folder + "data/") and e["dataFileS3Key"].endswith(".json.gz") for e in entries
    )
    assert {folder + n for n in ("_started", "manifest-summary.json", "manifest-files.json")} <= keys
    assert not [k for k in keys if k.endswith(".gz") and not k.endswith(".json.gz")]  # moto's own file is gone
    items = [i for e in entries for i in export.read_data_file(cloud["s3"], BUCKET, e["dataFileS3Key"])]
    assert sorted(i["sku"]["S"] for i in items) == [f"i{n}" for n in range(7)]
    assert export.complete_export(cloud["ddb"], cloud["s3"], arn) == summary  # idempotent


def test_full_rule_stream_before_the_export_time_keeps_newer_versions(cloud: dict[str, Any]) -> None:
    for n in range(8):
        put(cloud, f"i{n}", 1)
    position = stream_position(cloud)  # the mappings are enabled: records flow from here on
    arn, _ = export.export_table(cloud["ddb"], cloud["s3"], cloud["table_arn"], BUCKET)
    for n in (0, 1, 2):
        put(cloud, f"i{n}", 2)  # after the export's point in time
    assert deliver(cloud, position) == 3
    job = import_export(cloud, arn, "full-after-stream")  # the older export lands after the stream's writes
    assert job["status"] == "ACTIVE" and job["seen"][-2:] == ["CREATE IN_PROGRESS", "ACTIVE"]
    assert job["importMode"] == "FULL"
    assert visible(cloud) == table_state(cloud)  # in sync: v2 for i0..i2, v1 for the rest
    assert cloud["emu"].bulk_items(DATASET_ARN)["i0"]["version"] == 1  # the bulk layer holds the old version


def test_full_rule_converse_stream_started_after_the_export_loses_a_change(cloud: dict[str, Any]) -> None:
    for n in range(4):
        put(cloud, f"i{n}", 1)
    arn, _ = export.export_table(cloud["ddb"], cloud["s3"], cloud["table_arn"], BUCKET)
    put(cloud, "i3", 2)  # between the export's point in time and the mappings' start
    position = stream_position(cloud)  # enabled too late
    put(cloud, "i0", 2)
    assert deliver(cloud, position) == 1
    assert import_export(cloud, arn, "full-stream-late")["status"] == "ACTIVE"
    state, shown = table_state(cloud), visible(cloud)
    assert shown["i0"] == state["i0"]
    assert shown["i3"] != state["i3"] and shown["i3"]["version"] == 1  # the rule broken: i3 is stale


@pytest.mark.parametrize("replaces", [True, False])
def test_incremental_may_roll_back_stream_writes(cloud: dict[str, Any], replaces: bool) -> None:
    cloud["emu"].configure(incremental_replaces_put_items=replaces)
    put(cloud, "i0", 1)
    put(cloud, "i1", 1)
    first, _ = export.export_table(cloud["ddb"], cloud["s3"], cloud["table_arn"], BUCKET)
    assert import_export(cloud, first, f"f{replaces}")["status"] == "ACTIVE"
    position = stream_position(cloud)
    older, _ = export.export_table(cloud["ddb"], cloud["s3"], cloud["table_arn"], BUCKET)
    put(cloud, "i0", 2)
    deliver(cloud, position)
    assert visible(cloud)["i0"]["version"] == 2
    assert import_export(cloud, older, f"inc{replaces}", mode="INCREMENTAL")["status"] == "ACTIVE"
    # pessimistic (default): the INCREMENTAL import of the older export rolls i0 back; hence --streams-paused
    assert visible(cloud)["i0"]["version"] == (1 if replaces else 2)


def _upload(c: dict[str, Any], key: str, text: str) -> str:
    c["s3"].put_object(Bucket=BUCKET, Key=key, Body=text.encode())
    return f"s3://{BUCKET}/{key}"


def _job(c: dict[str, Any], name: str, location: str, mode: str = "FULL") -> dict[str, Any]:
    arn = c["personalize"].create_dataset_import_job(
        jobName=name, datasetArn=DATASET_ARN, dataSource={"dataLocation": location}, roleArn=ROLE, importMode=mode
    )["datasetImportJobArn"]
    return wait(c, arn)


def test_validation_failures_and_refusals(cloud: dict[str, Any]) -> None:
    p = cloud["personalize"]
    good = _upload(cloud, "v/good.csv", "ITEM_ID,TITLE,VERSION\r\na,x,1\r\n")
    with pytest.raises(p.exceptions.InvalidInputException, match="FULL first"):
        _job(cloud, "inc-first", good, "INCREMENTAL")
    cases = {
        "bad-header": ("ITEM_ID,TITLE,COLOR\na,x,1\n", "header"),
        "bad-int": ("ITEM_ID,TITLE,VERSION\na,x,1.5\n", "not an integer"),
        "missing-required": ("ITEM_ID,TITLE,VERSION\na,,1\n", "required property 'title'"),
        "long-string": ("ITEM_ID,TITLE,VERSION\na," + "t" * 1001 + ",1\n", "longer than 1000"),
    }
    for name, (text, reason) in cases.items():
        job = _job(cloud, name, _upload(cloud, f"v/{name}.csv", text))
        assert job["status"] == "CREATE FAILED" and reason in job["failureReason"], (name, job)
    _upload(cloud, "mixed/part.csv", "ITEM_ID,TITLE,VERSION\na,x,1\n")
    _upload(cloud, "mixed/rejects.jsonl", '{"line": 1}\n')
    assert _job(cloud, "folder-with-jsonl", f"s3://{BUCKET}/mixed/")["status"] == "CREATE FAILED"
    assert _job(cloud, "good", good)["status"] == "ACTIVE"
    with pytest.raises(p.exceptions.ResourceAlreadyExistsException):
        _job(cloud, "good", good)
    cloud["emu"].configure(import_incremental_max_bytes=10)
    job = _job(cloud, "too-big", good, "INCREMENTAL")
    assert job["status"] == "CREATE FAILED" and "at most 10 bytes" in job["failureReason"]
    with pytest.raises(p.exceptions.ResourceNotFoundException):
        p.create_dataset_import_job(
            jobName="nods", datasetArn=DATASET_ARN + "x", dataSource={"dataLocation": good}, roleArn=ROLE
        )
    listed = p.list_dataset_import_jobs(datasetArn=DATASET_ARN, maxResults=2)
    assert len(listed["datasetImportJobs"]) == 2 and listed["nextToken"]
    assert visible(cloud) == {"a": {"title": "x", "version": 1}}
