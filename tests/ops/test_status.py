"""``python -m ops status`` against moto: every section from the real calls, the DLQ left as it was, and one-line
errors for a denied section while the rest still shows."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from connector.budget import HEADROOM, RateLaw
from ops import status
from ops.cli import main
from tests.fakes import create_state_table

DATASET_ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/catalog/ITEMS"
GROUP_ARN = "arn:aws:personalize:us-east-1:123456789012:dataset-group/catalog"
FUNCTION = "StreamToPersonalize-ConnectorFunction"
ESM_UUID = "f89f8514-cdd9-4602-9e1f-01a5b77d449b"
BUCKET = "failed-batches"


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A DLQ with three poison records, an on-failure bucket, the state table with a cut budget, and metrics."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("DLQ_URL", "STATE_TABLE", "DATASET_ARN", "AWS_LAMBDA_FUNCTION_NAME", "POWERTOOLS_SERVICE_NAME"):
        monkeypatch.delenv(name, raising=False)
    with mock_aws():
        sqs = boto3.client("sqs")
        dlq = sqs.create_queue(QueueName="poison")["QueueUrl"]
        for i in range(3):
            body = {"reason": f"schema: PRICE is not a number ({i})", "itemId": f"sku-{i}", "sequenceNumber": str(i)}
            sqs.send_message(QueueUrl=dlq, MessageBody=json.dumps(body))
            time.sleep(0.01)
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        for i in range(2):
            s3.put_object(Bucket=BUCKET, Key=f"aws/lambda/{ESM_UUID}/shardId-0/2025/01/01/x-{i}", Body=b"{}")
        s3.put_object(Bucket=BUCKET, Key=f"replayed/aws/lambda/{ESM_UUID}/shardId-0/old", Body=b"{}")
        ddb = boto3.client("dynamodb")
        table = "state"
        create_state_table(ddb, table)
        now = round(time.time(), 3)
        ddb.put_item(
            TableName=table,
            Item={
                "pk": {"S": f"budget#{GROUP_ARN}"},
                "next_slot": {"N": f"{now + 2:.3f}"},
                "base": {"N": "4"},
                "knee": {"N": "6"},
                "cut_at": {"N": f"{now - 5:.3f}"},
                "settle": {"N": f"{now - 4:.3f}"},
            },
        )
        cloudwatch = boto3.client("cloudwatch")
        stamp = dt.datetime.now(dt.UTC)
        cloudwatch.put_metric_data(
            Namespace="AWS/Lambda",
            MetricData=[
                {
                    "MetricName": "IteratorAge",
                    "Dimensions": [{"Name": "FunctionName", "Value": FUNCTION}],
                    "Value": v,
                    "Unit": "Milliseconds",
                    "Timestamp": stamp,
                }
                for v in (1200.0, 750_000.0)
            ]
            + [
                {
                    "MetricName": "OnFailureDestinationDeliveredEventCount",
                    "Dimensions": [{"Name": "EventSourceMappingUUID", "Value": ESM_UUID}],
                    "Value": 7,
                    "Unit": "Count",
                    "Timestamp": stamp,
                }
            ],
        )
        emf = {"PutItemsCalls": 100, "PutItemsAttempts": 200, "Throttles": 10, "ItemsSent": 950, "RecordsPoison": 3}
        cloudwatch.put_metric_data(
            Namespace="StreamToPersonalize",
            MetricData=[
                {
                    "MetricName": name,
                    "Dimensions": [{"Name": "service", "Value": "stream-to-personalize"}],
                    "Value": value,
                    "Timestamp": stamp,
                }
                for name, value in emf.items()
            ],
        )
        yield {"dlq": dlq, "table": table, "cut_at": f"{now - 5:.3f}"}


def _args(**kwargs: Any) -> argparse.Namespace:
    defaults: dict[str, Any] = dict.fromkeys(("function_name", "dlq_url", "on_failure_bucket"))
    defaults.update(on_failure_queue_url=None, state_table=None, dataset_arn=None, service_name=None, quota=None)
    defaults["esm_uuid"] = []
    defaults.update(kwargs)
    return argparse.Namespace(**defaults)


def _resources(cloud: dict[str, str]) -> status.Resources:
    return status.resolve_resources(
        _args(
            function_name=FUNCTION,
            dlq_url=cloud["dlq"],
            on_failure_bucket=BUCKET,
            state_table=cloud["table"],
            dataset_arn=DATASET_ARN,
            esm_uuid=[ESM_UUID],
        ),
        env={},
    )


def test_every_section_from_the_real_calls(cloud: dict[str, str]) -> None:
    # WHEN status collects
    now = time.time()
    report = status.collect(_resources(cloud), boto3.client, minutes=5, errors=2, now=now)

    # THEN the iterator age is the maximum, and each mapping shows what went to the on-failure destination
    assert report["mappings"]["iteratorAgeMs"] == 750_000
    assert [(m["uuid"], m["onFailureDelivered"]) for m in report["mappings"]["mappings"]] == [(ESM_UUID, 7)]
    # AND the DLQ depth and its two newest reasons
    assert report["dlq"]["visible"] == 3
    assert [e["itemId"] for e in report["dlq"]["newest"]] == ["sku-2", "sku-1"]
    assert report["dlq"]["newest"][0]["reason"] == "schema: PRICE is not a number (2)"
    # AND the objects not yet replayed (the replayed one is counted apart)
    assert report["onFailure"]["kind"] == "s3"
    assert (report["onFailure"]["pending"], report["onFailure"]["replayed"]) == (2, 1)
    # AND the shared rate by the runtime's own rate law, five seconds after a cut to 4 calls/s
    cut_at = float(cloud["cut_at"])
    law = RateLaw(ceiling=10 * HEADROOM, base=4, knee=6, cut_at=cut_at)
    assert report["budget"]["rate"] == pytest.approx(law.rate(now), abs=0.01)
    assert 4 < law.rate(now) < 9.7  # recovering: above the cut, below the ceiling
    assert report["budget"]["lastCutAgoS"] == pytest.approx(now - cut_at, abs=0.1)
    assert report["budget"]["datasetGroup"] == GROUP_ARN
    # AND the connector's PutItems metrics with the throttled share and items per call
    put = report["putItems"]
    assert (put["PutItemsAttempts"], put["Throttles"], put["throttledPercent"]) == (200, 10, 5.0)
    assert put["itemsPerCall"] == 9.5
    # AND what needs a person, in words
    attention = " | ".join(report["attention"])
    assert "750 s behind" in attention and "3 poison records" in attention and "2 failed batches" in attention
    assert "5 % of PutItems attempts throttled" in attention
    assert report["problems"] == []


def test_peeking_leaves_every_message_in_the_dlq(cloud: dict[str, str]) -> None:
    status.collect(_resources(cloud), boto3.client, errors=5)
    # every message is immediately receivable again: nothing was hidden or deleted
    sqs = boto3.client("sqs")
    got = sqs.receive_message(QueueUrl=cloud["dlq"], MaxNumberOfMessages=10, VisibilityTimeout=30)["Messages"]
    assert len(got) == 3


def test_no_peek_with_errors_zero(cloud: dict[str, str]) -> None:
    calls: list[str] = []
    real = boto3.client("sqs")

    class Spy:
        def __getattr__(self, name: str) -> Any:
            calls.append(name)
            return getattr(real, name)

    report = status.collect(_resources(cloud), lambda s: Spy() if s == "sqs" else boto3.client(s), errors=0)
    assert "receive_message" not in calls and "newest" not in report["dlq"]


def test_a_denied_section_is_one_line_and_the_rest_still_shows(cloud: dict[str, str]) -> None:
    real = boto3.client("sqs")

    class Denied:
        def __getattr__(self, name: str) -> Any:
            if name == "get_queue_attributes":

                def deny(**_: Any) -> Any:
                    raise ClientError(
                        {"Error": {"Code": "AccessDenied", "Message": "not authorized"}}, "GetQueueAttributes"
                    )

                return deny
            return getattr(real, name)

    report = status.collect(_resources(cloud), lambda s: Denied() if s == "sqs" else boto3.client(s))
    assert report["dlq"]["error"].startswith("GetQueueAttributes was denied (AccessDenied): grant")
    assert report["problems"] == [f"poison DLQ: {report['dlq']['error']}"]
    assert report["onFailure"]["pending"] == 2 and report["budget"]["used"] is True


def test_cli_json_and_screen(cloud: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--function-name", FUNCTION, "--dlq-url", cloud["dlq"], "--on-failure-bucket", BUCKET]
    flags += ["--state-table", cloud["table"], "--dataset-arn", DATASET_ARN, "--esm-uuid", ESM_UUID]
    assert main(["status", "--json", *flags]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["onFailure"]["pending"] == 2 and report["dlq"]["visible"] == 3
    assert main(["status", *flags]) == 0
    screen = capsys.readouterr().err
    assert "Event source mappings" in screen and "schema: PRICE is not a number" in screen


def test_names_from_the_stack_outputs(cloud: dict[str, str]) -> None:
    template = {
        "Resources": {"Q": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": "dummy"}}},
        "Outputs": {
            "FunctionName": {"Value": FUNCTION},
            "PoisonRecordsQueueUrl": {"Value": cloud["dlq"]},
            "FailedBatchesBucketName": {"Value": BUCKET},
            "StateTableName": {"Value": cloud["table"]},
            "DatasetArn": {"Value": DATASET_ARN},
        },
    }
    boto3.client("cloudformation").create_stack(StackName="S2P", TemplateBody=json.dumps(template))
    outputs = status._stack_outputs("S2P")
    resources = status.resolve_resources(_args(dlq_url="https://flag-wins"), outputs=outputs, env={})
    assert (resources.function_name, resources.on_failure_bucket) == (FUNCTION, BUCKET)
    assert resources.dlq_url == "https://flag-wins" and resources.state_table == cloud["table"]


def test_nothing_to_show_is_a_clear_error() -> None:
    with pytest.raises(status.OpsError, match="--stack-name"):
        status.resolve_resources(_args(), env={})


def test_mapping_uuids_found_in_the_on_failure_keys(cloud: dict[str, str]) -> None:
    # no --esm-uuid, and moto's Lambda lists no mapping: the UUID comes from aws/lambda/<UUID>/... in the bucket
    resources = status.resolve_resources(
        _args(function_name=FUNCTION, on_failure_bucket=BUCKET, dlq_url=cloud["dlq"]), env={}
    )
    report = status.collect(resources, boto3.client, errors=0)
    assert [(m["uuid"], m["onFailureDelivered"]) for m in report["mappings"]["mappings"]] == [(ESM_UUID, 7)]


def test_the_on_failure_destination_from_the_environment_localcloud_up_exports() -> None:
    env = {"ON_FAILURE_BUCKET": "failed-batches", "STATE_TABLE": "state"}
    resources = status.resolve_resources(_args(), env=env)
    assert (resources.on_failure_bucket, resources.on_failure_queue_url) == ("failed-batches", None)
    flagged = status.resolve_resources(_args(on_failure_bucket="flag-wins"), env=env)
    assert flagged.on_failure_bucket == "flag-wins"
    queue = status.resolve_resources(_args(), env={"ON_FAILURE_QUEUE_URL": "https://q"})
    assert (queue.on_failure_bucket, queue.on_failure_queue_url) == (None, "https://q")
