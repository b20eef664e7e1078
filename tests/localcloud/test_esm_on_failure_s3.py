"""The local runner's S3 on-failure destination, checked against AWS's documented invocation record.

``tests/fixtures/on_failure_s3_record.json`` is the documented example (its source URL inside); the replay tool
parses the same fixture, so the runner, the fixture and ``ops replay`` agree on one format.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.utilities.parser.models import DynamoDBStreamLambdaOnFailureDestinationModel

from localcloud.esm.batch_policy import build_on_failure_message, build_on_failure_s3_record, on_failure_s3_key
from localcloud.esm.config import FunctionConfig, MappingConfig
from tests.localcloud.test_esm_runner import harness, make_template, moto_url  # noqa: F401 - the fixture

FIXTURE = Path(__file__).parents[1] / "fixtures" / "on_failure_s3_record.json"
#: The documented key convention as a pattern: aws/lambda/<ESM-UUID>/<shardID>/YYYY/MM/DD/YYYY-MM-DDTHH.MM.SS-<UUID>
KEY_PATTERN = re.compile(
    r"aws/lambda/(?P<uuid>[0-9a-f-]{36})/(?P<shard>[^/]+)/(?P<y>\d{4})/(?P<m>\d{2})/(?P<d>\d{2})/"
    r"(?P=y)-(?P=m)-(?P=d)T\d{2}\.\d{2}\.\d{2}-[0-9a-f-]{36}"
)


def _documented() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(FIXTURE.read_text())
    return document


def _shape(value: Any) -> Any:
    """Keys and value types, recursively: what two records must share to be the same format."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    return type(value).__name__


def _mapping(source: str, arn: str) -> MappingConfig:
    function = FunctionConfig(
        logical_id="Fn",
        name="myfunction",
        arn="arn:aws:lambda:us-east-2:123456789012:function:myfunction",
        handler="h.handler",
        asset_dir=Path("."),
        timeout_s=3,
        memory_mb=128,
        environment={},
        role_arn="",
    )
    return MappingConfig(logical_id="Esm", function=function, source=source, source_arn=arn)  # type: ignore[arg-type]


def test_fixture_is_the_documented_example() -> None:
    document = _documented()
    assert document["source"].startswith("https://docs.aws.amazon.com/lambda/")
    assert KEY_PATTERN.fullmatch(document["key"])
    record = document["record"]
    # the SQS/SNS fields, plus payload: an escaped JSON string holding the invocation event
    assert isinstance(record["payload"], str)
    event = json.loads(record["payload"])
    info = record["DDBStreamBatchInfo"]
    assert [r["dynamodb"]["SequenceNumber"] for r in event["Records"]] == [info["startSequenceNumber"]]
    assert len(event["Records"]) == info["batchSize"]
    # Powertools' model of the documented (SQS/SNS) record accepts it
    DynamoDBStreamLambdaOnFailureDestinationModel.model_validate(record)


def test_built_record_has_the_documented_shape() -> None:
    documented = _documented()["record"]
    info = documented["DDBStreamBatchInfo"]
    event = json.loads(documented["payload"])
    arrival = dt.datetime(2019, 11, 14, 0, 13, 19, tzinfo=dt.UTC).timestamp()
    message = build_on_failure_message(
        mapping=_mapping("dynamodb", info["streamArn"]),
        shard_id=info["shardId"],
        sequence_numbers=[info["startSequenceNumber"]],
        arrivals=[arrival],
        condition="RetryAttemptsExhausted",
        request_id=documented["requestContext"]["requestId"],
        invoke_count=1,
        function_error="Unhandled",
        now=dt.datetime(2019, 11, 14, 0, 13, 49, 717000, tzinfo=dt.UTC).timestamp(),
    )
    built = build_on_failure_s3_record(message, event)
    # the same document, field for field, and the payload decodes to the same event
    assert {k: v for k, v in built.items() if k != "payload"} == {k: v for k, v in documented.items() if k != "payload"}
    assert _shape(built) == _shape(documented)
    assert json.loads(built["payload"]) == event


def test_s3_key_follows_the_documented_convention() -> None:
    when = dt.datetime(2019, 11, 14, 0, 13, 49, tzinfo=dt.UTC).timestamp()
    key = on_failure_s3_key("f89f8514-cdd9-4602-9e1f-01a5b77d449b", "shardId-000000000001", now=when)
    match = KEY_PATTERN.fullmatch(key)
    assert match is not None
    assert key.startswith(
        "aws/lambda/f89f8514-cdd9-4602-9e1f-01a5b77d449b/shardId-000000000001/2019/11/14/2019-11-14T00.13.49-"
    )


def _s3_template(handler: str, **kinesis: Any) -> dict[str, Any]:
    template = make_template(handler, kinesis=kinesis)
    resources = template["Resources"]
    del resources["OnFailureQueue"]
    resources["FailedBatches"] = {"Type": "AWS::S3::Bucket", "Properties": {}}
    resources["KinesisEsm"]["Properties"]["DestinationConfig"] = {
        "OnFailure": {"Destination": {"Fn::GetAtt": ["FailedBatches", "Arn"]}}
    }
    return template


@pytest.mark.integration
def test_runner_writes_the_whole_batch_to_the_s3_destination(moto_url: str, tmp_path: Path) -> None:  # noqa: F811
    # GIVEN a Kinesis mapping whose on-failure destination is a bucket, and a batch that always fails (no retries)
    template = _s3_template("poison.handler", BatchSize=10, MaximumRetryAttempts=0)
    docs = [{"itemId": f"p{i}", "poison": True} for i in range(3)]
    with harness(moto_url, tmp_path, template, before_start=lambda h: h.put_docs(*docs)) as h:
        h.wait_idle()
        stats = h.runner.stats()
        ledger = h.runner.ledger()
        mapping = h.runner.mappings[0]
        s3 = h.client("s3")
        bucket = h.resources["FailedBatches"].ref
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
        bodies = [json.loads(s3.get_object(Bucket=bucket, Key=k)["Body"].read()) for k in keys]

    # THEN one object per failed batch, named as AWS names it
    assert stats.on_failure_messages == 1 and stats.records_to_on_failure == 3
    (key,) = keys
    match = KEY_PATTERN.fullmatch(key)
    assert match is not None and match["uuid"] == mapping.uuid and match["shard"] == "shardId-000000000000"
    # AND its body has the documented format: the coordinates and the original invocation event in payload
    (body,) = bodies
    assert _shape({k: v for k, v in body.items() if k != "KinesisBatchInfo"}) == _shape(
        {k: v for k, v in _documented()["record"].items() if k != "DDBStreamBatchInfo"}
    )
    info = body["KinesisBatchInfo"]
    assert info["batchSize"] == 3 and info["streamArn"] == h.resources["Stream"].arn
    event = json.loads(body["payload"])
    sequence_numbers = [r["kinesis"]["sequenceNumber"] for r in event["Records"]]
    assert sequence_numbers == list(ledger[0].sequence_numbers)
    assert (info["startSequenceNumber"], info["endSequenceNumber"]) == (sequence_numbers[0], sequence_numbers[-1])
    assert [json.loads(base64.b64decode(r["kinesis"]["data"])) for r in event["Records"]] == docs
    # AND the calls the handler saw carried exactly those records
    assert h.calls()[0]["event"]["Records"] == event["Records"]


@pytest.mark.integration
def test_runner_publishes_iterator_age_and_on_failure_count_to_cloudwatch(
    moto_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    # GIVEN the same failing mapping
    template = _s3_template("poison.handler", BatchSize=10, MaximumRetryAttempts=0)
    with harness(moto_url, tmp_path, template, before_start=lambda h: h.put_docs({"itemId": "p", "poison": True})) as h:
        h.wait_idle()
        function, mapping = h.runner.functions["Fn"], h.runner.mappings[0]
    # WHEN the runner has stopped (its metrics flushed)
    cloudwatch = h.client("cloudwatch")
    end = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    start = end - dt.timedelta(minutes=10)

    def stat(name: str, dimensions: dict[str, str], statistic: str) -> list[float]:
        points = cloudwatch.get_metric_statistics(
            Namespace="AWS/Lambda",
            MetricName=name,
            Dimensions=[{"Name": k, "Value": v} for k, v in dimensions.items()],
            StartTime=start,
            EndTime=end,
            Period=60,
            Statistics=[statistic],
        )["Datapoints"]
        return [p[statistic] for p in points]

    # THEN Lambda's metrics are in CloudWatch with Lambda's dimensions
    ages = stat("IteratorAge", {"FunctionName": function.name}, "Maximum")
    assert ages and max(ages) > 0
    assert sum(stat("OnFailureDestinationDeliveredEventCount", {"EventSourceMappingUUID": mapping.uuid}, "Sum")) == 1
