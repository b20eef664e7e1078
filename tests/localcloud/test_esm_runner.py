"""The local event source mapping runner against moto server, with deliberately misbehaving handlers.

Each test writes a small hand-written template (it does not depend on the CDK app), provisions it in moto
server, runs the runner with a handler from ``tests/localcloud/handlers`` and checks what the handler saw
(it records every event to a file), the runner's ledger and counters, and the on-failure queue.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.parser.models import (
    DynamoDBStreamLambdaOnFailureDestinationModel,
    DynamoDBStreamModel,
    KinesisDataStreamModel,
)
from moto.server import ThreadedMotoServer

from localcloud.esm_runner import EsmRunner, evaluate_batch_response
from localcloud.provision import ProvisionedResource, Resolver, Unresolvable, provision

HANDLERS = Path(__file__).parent / "handlers"
PERSONALIZE_URL = "http://127.0.0.1:9"  # not called by these handlers
IDLE_TIMEOUT = 20.0

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    saved = dict(os.environ)
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ACCOUNT_ID_ENDPOINT_MODE="disabled",
    )
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        os.environ.clear()
        os.environ.update(saved)


# ---------------------------------------------------------------------------------------------------------------
# A small template, written by hand
# ---------------------------------------------------------------------------------------------------------------


def make_template(
    handler: str,
    *,
    kinesis: dict[str, Any] | None = None,
    dynamodb: dict[str, Any] | None = None,
    timeout: int = 10,
    env: dict[str, Any] | None = None,
    asset_path: str | None = None,
) -> dict[str, Any]:
    """A Kinesis stream, a table with a stream, two queues, a function and one ESM per given source."""
    resources: dict[str, Any] = {
        "Stream": {"Type": "AWS::Kinesis::Stream", "Properties": {"ShardCount": 1}},
        "Table": {
            "Type": "AWS::DynamoDB::Table",
            "Properties": {
                "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
                "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
                "BillingMode": "PAY_PER_REQUEST",
                "StreamSpecification": {"StreamViewType": "NEW_AND_OLD_IMAGES"},
            },
        },
        "OnFailureQueue": {"Type": "AWS::SQS::Queue", "Properties": {}},
        "RecordDlq": {"Type": "AWS::SQS::Queue", "Properties": {"MessageRetentionPeriod": 1209600}},
        "Role": {"Type": "AWS::IAM::Role", "Properties": {}},  # not provisioned: ignored
        "Fn": {
            "Type": "AWS::Lambda::Function",
            "Properties": {
                "Handler": handler,
                "Runtime": "python3.13",
                "Timeout": timeout,
                "MemorySize": 256,
                "Role": {"Fn::GetAtt": ["Role", "Arn"]},
                "Code": {"S3Bucket": "cdk-assets", "S3Key": "asset.zip"},
                "Layers": [{"Ref": "PowertoolsLayerParameter"}],
                "Environment": {"Variables": {"DLQ_URL": {"Ref": "RecordDlq"}, **(env or {})}},
            },
            "Metadata": {"aws:asset:path": asset_path} if asset_path else {},
        },
    }
    common = {
        "FunctionName": {"Ref": "Fn"},
        "StartingPosition": "TRIM_HORIZON",
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
        "DestinationConfig": {"OnFailure": {"Destination": {"Fn::GetAtt": ["OnFailureQueue", "Arn"]}}},
    }
    if kinesis is not None:
        resources["KinesisEsm"] = {
            "Type": "AWS::Lambda::EventSourceMapping",
            "Properties": {"EventSourceArn": {"Fn::GetAtt": ["Stream", "Arn"]}, **common, **kinesis},
        }
    if dynamodb is not None:
        resources["TableEsm"] = {
            "Type": "AWS::Lambda::EventSourceMapping",
            "Properties": {"EventSourceArn": {"Fn::GetAtt": ["Table", "StreamArn"]}, **common, **dynamodb},
        }
    return {
        "Parameters": {"PowertoolsLayerParameter": {"Type": "AWS::SSM::Parameter::Value<String>"}},
        "Resources": resources,
    }


@dataclass
class Harness:
    runner: EsmRunner
    resources: dict[str, ProvisionedResource]
    moto_url: str
    record_file: Path

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.moto_url, region_name="us-east-1")

    @property
    def stream_name(self) -> str:
        return self.resources["Stream"].ref

    @property
    def table_name(self) -> str:
        return self.resources["Table"].ref

    def put_docs(self, *docs: Any) -> list[str]:
        kinesis = self.client("kinesis")
        sequence_numbers = []
        for doc in docs:
            data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
            out = kinesis.put_record(StreamName=self.stream_name, Data=data, PartitionKey="p")
            sequence_numbers.append(out["SequenceNumber"])
        return sequence_numbers

    def put_items(self, *items: dict[str, Any]) -> None:
        ddb = self.client("dynamodb")
        for item in items:
            ddb.put_item(TableName=self.table_name, Item=item)

    def calls(self) -> list[dict[str, Any]]:
        if not self.record_file.exists():
            return []
        return [json.loads(line) for line in self.record_file.read_text().splitlines()]

    def delivered(self) -> list[list[str]]:
        """Sequence numbers of each batch the handler saw, in order."""
        return [[_seq(r) for r in call["event"]["Records"]] for call in self.calls()]

    def on_failure_messages(self) -> list[dict[str, Any]]:
        sqs = self.client("sqs")
        url = self.resources["OnFailureQueue"].ref
        out = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        return [json.loads(m["Body"]) for m in out.get("Messages", [])]

    def wait_idle(self) -> None:
        assert self.runner.wait_idle(IDLE_TIMEOUT), f"runner not idle: {self.runner.stats()}"


def _seq(record: dict[str, Any]) -> str:
    return record["kinesis"]["sequenceNumber"] if "kinesis" in record else record["dynamodb"]["SequenceNumber"]


@contextmanager
def harness(
    moto_url: str,
    tmp_path: Path,
    template: dict[str, Any],
    *,
    env: dict[str, str] | None = None,
    before_start: Any = None,
    template_on_disk: bool = False,
    **runner_kwargs: Any,
) -> Iterator[Harness]:
    stack = f"T{uuid.uuid4().hex[:8]}"
    state = tmp_path / "state"
    state.mkdir()
    record_file = tmp_path / "calls.jsonl"
    source: dict[str, Any] | Path = template
    if template_on_disk:
        source = tmp_path / "cdk.out" / f"{stack}.template.json"
        source.parent.mkdir(exist_ok=True)
        source.write_text(json.dumps(template))
    resources = provision(source, endpoint_url=moto_url, stack_name=stack)
    overrides = {"RECORD_FILE": str(record_file), "STATE_DIR": str(state), **(env or {})}
    if not template_on_disk:
        runner_kwargs.setdefault("asset_dir", HANDLERS)
    runner = EsmRunner(
        source,
        resources,
        moto_endpoint=moto_url,
        personalize_endpoint=PERSONALIZE_URL,
        env_overrides=overrides,
        stack_name=stack,
        log_dir=tmp_path / "logs",
        **runner_kwargs,
    )
    h = Harness(runner, resources, moto_url, record_file)
    if before_start is not None:
        before_start(h)
    runner.start()
    try:
        yield h
    finally:
        runner.stop()


def ddb_item(pk: str, **attrs: dict[str, Any]) -> dict[str, Any]:
    return {"pk": {"S": pk}, **attrs}


# ---------------------------------------------------------------------------------------------------------------
# Events shaped like Lambda's, environment, context, warm workers
# ---------------------------------------------------------------------------------------------------------------


def test_events_context_and_environment_look_like_lambda(moto_url: str, tmp_path: Path) -> None:
    # GIVEN a template on disk whose function code is a CDK-style asset directory next to it
    template = make_template(
        "recorder.handler",
        kinesis={"BatchSize": 10},
        dynamodb={"BatchSize": 10},
        asset_path="asset.0123abcd",
        env={
            "TABLE_NAME": {"Ref": "Table"},
            "STREAM_ARN": {"Fn::Join": ["", [{"Fn::GetAtt": ["Stream", "Arn"]}]]},
            "LAYER_VERSION": {"Ref": "PowertoolsLayerParameter"},  # unresolvable: left out
            "PLAIN": "plain-value",
        },
    )
    shutil.copytree(HANDLERS, tmp_path / "cdk.out" / "asset.0123abcd")
    with harness(moto_url, tmp_path, template, template_on_disk=True) as h:
        # WHEN documents and item changes arrive, in two waves
        docs = [{"itemId": f"k{i}", "n": i} for i in range(3)]
        kinesis_seqs = h.put_docs(*docs)
        h.put_items(ddb_item("a", n={"N": "1"}, blob={"B": b"\x00\x01"}))
        h.wait_idle()
        h.put_docs({"itemId": "k3"})
        h.client("dynamodb").update_item(
            TableName=h.table_name,
            Key={"pk": {"S": "a"}},
            UpdateExpression="SET n = :n",
            ExpressionAttributeValues={":n": {"N": "2"}},
        )
        h.client("dynamodb").delete_item(TableName=h.table_name, Key={"pk": {"S": "a"}})
        h.wait_idle()
        stats = h.runner.stats()
        ledger = h.runner.ledger()

    calls = h.calls()
    kinesis_calls = [c for c in calls if "kinesis" in c["event"]["Records"][0]]
    ddb_calls = [c for c in calls if "dynamodb" in c["event"]["Records"][0]]

    # THEN Kinesis records have exactly Lambda's shape, with base64 data and shardId:sequence event ids
    kinesis_records = [r for c in kinesis_calls for r in c["event"]["Records"]]
    assert [r["kinesis"]["sequenceNumber"] for r in kinesis_records][:3] == kinesis_seqs
    for call in kinesis_calls:
        KinesisDataStreamModel.model_validate(call["event"])
    stream_arn = h.resources["Stream"].arn
    for record, doc in zip(kinesis_records, [*docs, {"itemId": "k3"}], strict=True):
        assert set(record) == {
            "kinesis",
            "eventSource",
            "eventVersion",
            "eventID",
            "eventName",
            "invokeIdentityArn",
            "awsRegion",
            "eventSourceARN",
        }
        assert set(record["kinesis"]) == {
            "kinesisSchemaVersion",
            "partitionKey",
            "sequenceNumber",
            "data",
            "approximateArrivalTimestamp",
        }
        assert json.loads(base64.b64decode(record["kinesis"]["data"])) == doc
        assert record["eventID"] == f"shardId-000000000000:{record['kinesis']['sequenceNumber']}"
        assert record["eventSource"] == "aws:kinesis"
        assert record["eventName"] == "aws:kinesis:record"
        assert record["eventSourceARN"] == stream_arn
        assert record["invokeIdentityArn"].startswith("arn:aws:iam::123456789012:role/")
        assert isinstance(record["kinesis"]["approximateArrivalTimestamp"], float)

    # AND DynamoDB records too: INSERT, MODIFY, REMOVE with images as the stream view type implies
    ddb_records = [r for c in ddb_calls for r in c["event"]["Records"]]
    for call in ddb_calls:
        DynamoDBStreamModel.model_validate(call["event"])
    assert [r["eventName"] for r in ddb_records] == ["INSERT", "MODIFY", "REMOVE"]
    table_stream_arn = h.resources["Table"].get_att("StreamArn")
    for record in ddb_records:
        assert set(record) == {
            "eventID",
            "eventName",
            "eventVersion",
            "eventSource",
            "awsRegion",
            "dynamodb",
            "eventSourceARN",
        }
        assert record["eventSource"] == "aws:dynamodb"
        assert record["eventSourceARN"] == table_stream_arn
        assert record["dynamodb"]["StreamViewType"] == "NEW_AND_OLD_IMAGES"
        assert record["dynamodb"]["Keys"] == {"pk": {"S": "a"}}
        assert isinstance(record["dynamodb"]["ApproximateCreationDateTime"], float)
        assert isinstance(record["dynamodb"]["SizeBytes"], int)
    insert, modify, remove = (r["dynamodb"] for r in ddb_records)
    assert set(insert) == {
        "ApproximateCreationDateTime",
        "Keys",
        "NewImage",
        "SequenceNumber",
        "SizeBytes",
        "StreamViewType",
    }
    assert insert["NewImage"]["blob"] == {"B": "AAE="}  # binary stays base64, as Lambda sends it
    assert modify["OldImage"]["n"] == {"N": "1"} and modify["NewImage"]["n"] == {"N": "2"}
    assert "NewImage" not in remove and remove["OldImage"]["pk"] == {"S": "a"}
    seqs = [int(r["dynamodb"]["SequenceNumber"]) for r in ddb_records]
    assert seqs == sorted(seqs)

    # AND the context carries the function's identity and a deadline from its Timeout
    function = h.runner.functions["Fn"]
    for call in calls:
        ctx = call["context"]
        assert ctx["function_name"] == function.name
        assert ctx["invoked_function_arn"] == function.arn
        assert ctx["memory_limit_in_mb"] == "256"
        assert ctx["function_version"] == "$LATEST"
        assert 0 < ctx["remaining_ms"] <= 10_000
    assert {c["context"]["aws_request_id"] for c in calls} == {e.request_id for e in ledger}

    # AND the environment is the template's, resolved to the local resources, plus the local endpoints
    env = calls[0]["env"]
    assert env["DLQ_URL"] == h.resources["RecordDlq"].ref
    assert env["DLQ_URL"].startswith(moto_url)
    assert env["TABLE_NAME"] == h.table_name
    assert env["STREAM_ARN"] == stream_arn
    assert env["PLAIN"] == "plain-value"
    assert "LAYER_VERSION" not in env
    assert env["AWS_ENDPOINT_URL"] == moto_url
    assert env["AWS_ENDPOINT_URL_PERSONALIZE_EVENTS"] == PERSONALIZE_URL
    assert env["AWS_ACCOUNT_ID_ENDPOINT_MODE"] == "disabled"
    assert env["POWERTOOLS_TRACE_DISABLED"] == "true"
    assert Path(env["LAMBDA_TASK_ROOT"]) == (tmp_path / "cdk.out" / "asset.0123abcd").resolve()
    assert any("LAYER_VERSION" in w for w in h.runner.warnings)

    # AND workers stay warm: the handler module was imported once per worker, not once per invocation
    assert stats.invocations == len(calls) >= 4
    assert len({c["init_id"] for c in calls}) == stats.cold_starts <= 2
    assert stats.records_delivered == stats.records_succeeded == 7
    assert stats.function_errors == 0 and stats.on_failure_messages == 0
    assert (tmp_path / "logs" / f"{function.name}.log").read_text().count("recorder got") == len(calls)


# ---------------------------------------------------------------------------------------------------------------
# ReportBatchItemFailures
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "verdict"),
    [
        (None, ("success", None, None)),
        ("", ("success", None, None)),  # a bare falsy answer is success
        ([], ("success", None, None)),
        ({}, ("success", None, None)),
        ({"batchItemFailures": None}, ("success", None, None)),
        ({"batchItemFailures": []}, ("success", None, None)),
        ({"batchItemFailures": [{"itemIdentifier": "30"}, {"itemIdentifier": "20"}]}, ("partial", 1, None)),
        ({"batchItemFailures": [{"itemIdentifier": ""}]}, "invalid"),
        ({"batchItemFailures": [{"itemIdentifier": None}]}, "invalid"),
        ({"batchItemFailures": [{"itemIdentifier": "99"}]}, "invalid"),
        ({"batchItemFailures": [{"sequenceNumber": "10"}]}, "invalid"),
        ({"batchItemFailures": "10"}, "invalid"),
        ("10", "invalid"),
    ],
)
def test_evaluate_batch_response(response: Any, verdict: Any) -> None:
    result = evaluate_batch_response(response, ["10", "20", "30"])
    if verdict == "invalid":
        assert result[0] == "invalid" and result[2]
    else:
        assert result == verdict


def test_partial_failure_checkpoints_at_the_lowest_reported_sequence_number(moto_url: str, tmp_path: Path) -> None:
    # GIVEN ten documents, and a handler that reports positions 8 and 6 as failed once
    template = make_template("partial_once.handler", kinesis={"BatchSize": 10})
    with harness(
        moto_url,
        tmp_path,
        template,
        env={"FAIL_POSITIONS": "8,6"},
        before_start=lambda h: h.put_docs(*({"itemId": f"i{i}"} for i in range(10))),
    ) as h:
        # WHEN the runner delivers them
        h.wait_idle()
        stats = h.runner.stats()
        ledger = h.runner.ledger()

    batches = h.delivered()
    first = batches[0]
    # THEN the redelivery starts at the lowest reported record (6), not at 8 and not at the start
    assert len(first) == 10
    assert batches == [first, first[6:]]
    assert [e.outcome for e in ledger] == ["partial", "success"]
    assert ledger[0].detail == first[6]
    # AND the records before the checkpoint were delivered exactly once
    delivered = [s for batch in batches for s in batch]
    assert all(delivered.count(s) == 1 for s in first[:6])
    assert all(delivered.count(s) == 2 for s in first[6:])
    assert stats.partial_failures == 1 and stats.retries == 1 and stats.function_errors == 0
    assert stats.records_succeeded == 10 and stats.records_delivered == 14
    assert h.on_failure_messages() == []


@pytest.mark.parametrize("kind", ["empty", "null", "unknown", "badkey", "string"])
def test_invalid_response_fails_the_whole_batch(moto_url: str, tmp_path: Path, kind: str) -> None:
    # GIVEN a handler whose first response is invalid, then null (success)
    template = make_template("invalid_once.handler", kinesis={"BatchSize": 10})
    with harness(
        moto_url,
        tmp_path,
        template,
        env={"INVALID_KIND": kind},
        before_start=lambda h: h.put_docs(*({"itemId": f"i{i}"} for i in range(5))),
    ) as h:
        h.wait_idle()
        stats = h.runner.stats()
        ledger = h.runner.ledger()

    # THEN the whole batch is delivered again, not a part of it
    batches = h.delivered()
    assert len(batches) == 2 and len(batches[0]) == 5
    assert batches[1] == batches[0]
    assert [e.outcome for e in ledger] == ["invalid_response", "success"]
    assert stats.invalid_responses == 1 and stats.function_errors == 1 and stats.retries == 1
    assert stats.records_succeeded == 5


# ---------------------------------------------------------------------------------------------------------------
# Function errors: bisect, retries, record age, on-failure destination
# ---------------------------------------------------------------------------------------------------------------


def test_bisect_isolates_the_poison_record(moto_url: str, tmp_path: Path) -> None:
    # GIVEN eight items, the sixth poisoned, bisect on, no retries
    template = make_template(
        "poison.handler",
        dynamodb={"BatchSize": 8, "BisectBatchOnFunctionError": True, "MaximumRetryAttempts": 0},
    )

    def write(h: Harness) -> None:
        h.put_items(*(ddb_item(f"i{i}", poison={"BOOL": i == 5}) for i in range(8)))

    with harness(moto_url, tmp_path, template, before_start=write) as h:
        h.wait_idle()
        stats = h.runner.stats()
        ledger = h.runner.ledger()
        messages = h.on_failure_messages()

    seqs = list(ledger[0].sequence_numbers)
    poison = seqs[5]
    # THEN the batch is split in halves until the poison record is alone
    assert [e.batch_size for e in ledger] == [8, 4, 4, 2, 1, 1, 2]
    assert [e.outcome for e in ledger] == ["error", "success", "error", "error", "success", "error", "success"]
    assert ledger[0].error is not None and ledger[0].error["errorType"] == "PoisonError"
    # AND every good record got through, the poison one never did
    succeeded = {s for e in ledger if e.outcome == "success" for s in e.sequence_numbers}
    assert succeeded == set(seqs) - {poison}
    assert stats.bisects == 3 and stats.retries == 0
    assert stats.records_succeeded == 7 and stats.records_to_on_failure == 1
    # AND the on-failure destination got the coordinates of the poison record only
    assert len(messages) == 1
    message = messages[0]
    DynamoDBStreamLambdaOnFailureDestinationModel.model_validate(message)
    info = message["DDBStreamBatchInfo"]
    assert info["startSequenceNumber"] == info["endSequenceNumber"] == poison
    assert info["batchSize"] == 1
    assert info["streamArn"] == h.resources["Table"].get_att("StreamArn")
    assert info["shardId"] == ledger[0].shard_id
    assert message["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert message["requestContext"]["approximateInvokeCount"] == 1
    assert message["requestContext"]["functionArn"] == h.runner.functions["Fn"].arn
    assert message["requestContext"]["requestId"] == ledger[5].request_id
    assert message["responseContext"]["functionError"] == "Unhandled"
    assert "Records" not in json.dumps(message)


def test_retries_then_on_failure_destination_then_moves_on(moto_url: str, tmp_path: Path) -> None:
    # GIVEN a batch that always fails, two retries, no bisect
    template = make_template("poison.handler", kinesis={"BatchSize": 10, "MaximumRetryAttempts": 2})
    with harness(
        moto_url,
        tmp_path,
        template,
        before_start=lambda h: h.put_docs(*({"itemId": f"p{i}", "poison": True} for i in range(3))),
    ) as h:
        h.wait_idle()
        messages = h.on_failure_messages()
        # WHEN good documents follow
        good = h.put_docs({"itemId": "g1"}, {"itemId": "g2"})
        h.wait_idle()
        stats = h.runner.stats()
        ledger = h.runner.ledger()

    bad = list(ledger[0].sequence_numbers)
    # THEN the batch was invoked once and retried twice, unchanged
    assert [list(e.sequence_numbers) for e in ledger[:3]] == [bad, bad, bad]
    assert [e.attempt for e in ledger[:3]] == [0, 1, 2]
    assert stats.retries == 2 and stats.function_errors == 3
    # AND then its coordinates went to the on-failure queue
    assert len(messages) == 1
    info = messages[0]["KinesisBatchInfo"]
    assert (info["startSequenceNumber"], info["endSequenceNumber"], info["batchSize"]) == (bad[0], bad[-1], 3)
    assert info["shardId"] == "shardId-000000000000"
    assert info["streamArn"] == h.resources["Stream"].arn
    assert info["approximateArrivalOfFirstRecord"].endswith("Z")
    assert messages[0]["requestContext"]["approximateInvokeCount"] == 3
    assert messages[0]["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert messages[0]["version"] == "1.0"
    # AND the shard moved on: the good documents were delivered in one successful batch
    assert list(ledger[3].sequence_numbers) == good and ledger[3].outcome == "success"
    assert stats.on_failure_messages == 1 and stats.records_to_on_failure == 3


def test_maximum_record_age_sends_record_age_exceeded(moto_url: str, tmp_path: Path) -> None:
    # GIVEN a batch that always fails, unlimited retries but a 3 s maximum record age, and a function with a whole
    # core (1,769 MB): at the template's 256 MB the sandboxed cold start alone can take seconds on a busy machine
    template = make_template("poison.handler", kinesis={"MaximumRecordAgeInSeconds": 3})
    with harness(moto_url, tmp_path, template, max_retry_backoff_s=0.2, function_overrides={"memory_mb": 1769}) as h:
        h.put_docs({"itemId": "p", "poison": True})
        h.wait_idle()
        stats = h.runner.stats()
        messages = h.on_failure_messages()

    assert stats.function_errors >= 2  # retried until the record was too old
    assert stats.records_expired == 1 and stats.on_failure_messages == 1
    assert messages[0]["requestContext"]["condition"] == "RecordAgeExceeded"
    assert messages[0]["KinesisBatchInfo"]["batchSize"] == 1


# ---------------------------------------------------------------------------------------------------------------
# Timeouts and killed workers
# ---------------------------------------------------------------------------------------------------------------


def test_worker_that_overruns_its_timeout_is_killed_and_the_batch_retried(moto_url: str, tmp_path: Path) -> None:
    # GIVEN a 2 s function timeout and a handler that sleeps 30 s on its first call
    template = make_template("sleepy_once.handler", kinesis={}, timeout=2)
    write = lambda h: h.put_docs({"itemId": "a"}, {"itemId": "b"})  # noqa: E731
    with harness(moto_url, tmp_path, template, before_start=write) as h:
        h.wait_idle()
        stats = h.runner.stats()
        ledger = h.runner.ledger()

    # THEN the first invocation timed out after about 2 s and its worker process is gone
    timed_out, retried = ledger
    assert timed_out.outcome == "timeout"
    assert timed_out.error is not None and timed_out.error["errorType"] == "Sandbox.Timedout"
    assert 1900 <= timed_out.duration_ms < 4000
    assert timed_out.worker_pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(timed_out.worker_pid, 0)
    # AND the batch was retried in a fresh (cold) worker and succeeded
    assert retried.outcome == "success" and retried.cold_start
    assert retried.worker_pid != timed_out.worker_pid
    assert retried.sequence_numbers == timed_out.sequence_numbers
    assert stats.timeouts == 1 and stats.function_errors == 1 and stats.cold_starts == 2
    assert stats.records_succeeded == 2


def test_kill_worker_fault_hook_counts_as_a_function_error(moto_url: str, tmp_path: Path) -> None:
    template = make_template("recorder.handler", kinesis={})
    with harness(moto_url, tmp_path, template, kill_worker_probability=1.0, seed=7) as h:
        h.put_docs({"itemId": "a"})
        for _ in range(200):
            if h.runner.stats().kills >= 2:
                break
            h.runner._stop.wait(0.02)
        h.runner.set_faults(kill_worker_probability=0.0)
        h.wait_idle()
        stats = h.runner.stats()
        ledger = h.runner.ledger()

    assert stats.kills >= 2 and ledger[-1].outcome == "success"
    assert all(e.outcome == "killed" for e in ledger[:-1])
    assert stats.cold_starts == len(ledger)  # every kill costs a cold start
    assert stats.records_succeeded == 1


# ---------------------------------------------------------------------------------------------------------------
# Filters and starting position
# ---------------------------------------------------------------------------------------------------------------


def test_filter_criteria_deliver_only_matching_records(moto_url: str, tmp_path: Path) -> None:
    ddb_pattern = {"eventName": ["INSERT", "MODIFY"], "dynamodb": {"NewImage": {"kind": {"S": ["book"]}}}}
    template = make_template(
        "recorder.handler",
        dynamodb={"FilterCriteria": {"Filters": [{"Pattern": json.dumps(ddb_pattern)}]}},
        kinesis={
            "FilterCriteria": {
                "Filters": [
                    {"Pattern": json.dumps({"data": {"type": ["buy"]}})},
                    {"Pattern": json.dumps({"data": {"qty": [{"numeric": [">", 100]}]}})},
                ]
            }
        },
    )

    def write(h: Harness) -> None:
        h.put_items(
            ddb_item("b1", kind={"S": "book"}), ddb_item("t1", kind={"S": "toy"}), ddb_item("b2", kind={"S": "book"})
        )
        h.client("dynamodb").delete_item(TableName=h.table_name, Key={"pk": {"S": "b1"}})
        h.put_docs(
            {"id": 1, "type": "buy"},
            {"id": 2, "type": "sell", "qty": 5},
            {"id": 3, "type": "sell", "qty": 500},
            b"not json at all",
        )

    with harness(moto_url, tmp_path, template, before_start=write) as h:
        h.wait_idle()
        stats = h.runner.stats()

    records = [r for call in h.calls() for r in call["event"]["Records"]]
    ddb_keys = [r["dynamodb"]["Keys"]["pk"]["S"] for r in records if "dynamodb" in r]
    kinesis_ids = [json.loads(base64.b64decode(r["kinesis"]["data"]))["id"] for r in records if "kinesis" in r]
    assert sorted(ddb_keys) == ["b1", "b2"]  # the toy and the REMOVE are filtered out
    assert kinesis_ids == [1, 3]  # filters are ORed; non-JSON data never matches a data pattern
    assert stats.records_filtered == 4
    assert stats.by_mapping["TableEsm"]["records_filtered"] == 2
    assert stats.by_mapping["KinesisEsm"]["records_filtered"] == 2


def test_starting_position_latest_skips_earlier_records(moto_url: str, tmp_path: Path) -> None:
    template = make_template("recorder.handler", kinesis={"StartingPosition": "LATEST"})
    with harness(moto_url, tmp_path, template, before_start=lambda h: h.put_docs({"itemId": "before"})) as h:
        after = h.put_docs({"itemId": "after"})
        h.wait_idle()
    assert h.delivered() == [after]


def test_batching_window_gathers_records_into_one_batch(moto_url: str, tmp_path: Path) -> None:
    template = make_template("recorder.handler", kinesis={"BatchSize": 4, "MaximumBatchingWindowInSeconds": 1})
    with harness(moto_url, tmp_path, template) as h:
        seqs = []
        for i in range(6):
            seqs += h.put_docs({"itemId": f"w{i}"})
        h.wait_idle()
    # four records fill a batch; the last two wait for the window, then go together
    assert h.delivered() == [seqs[:4], seqs[4:]]


# ---------------------------------------------------------------------------------------------------------------
# Provisioning
# ---------------------------------------------------------------------------------------------------------------


def test_provision_resolves_refs_and_is_idempotent(moto_url: str) -> None:
    template = make_template("recorder.handler", kinesis={})
    template["Resources"]["Redriven"] = {
        "Type": "AWS::SQS::Queue",
        "Properties": {
            "RedrivePolicy": {"deadLetterTargetArn": {"Fn::GetAtt": ["RecordDlq", "Arn"]}, "maxReceiveCount": 3}
        },
    }
    template["Resources"]["Topic"] = {"Type": "AWS::SNS::Topic", "Properties": {}}
    resources = provision(template, endpoint_url=moto_url, stack_name="Prov")
    assert set(resources) == {"Stream", "Table", "OnFailureQueue", "RecordDlq", "Redriven"}
    again = provision(template, endpoint_url=moto_url, stack_name="Prov")
    assert again == resources

    table = resources["Table"]
    assert table.ref.startswith("Prov-Table-")
    assert table.get_att("StreamArn").startswith(f"arn:aws:dynamodb:us-east-1:123456789012:table/{table.ref}/stream/")
    queue = resources["RecordDlq"]
    assert queue.ref == queue.get_att("QueueUrl") and queue.ref.startswith(moto_url)
    assert queue.arn == f"arn:aws:sqs:us-east-1:123456789012:{queue.get_att('QueueName')}"
    assert resources["Stream"].arn == f"arn:aws:kinesis:us-east-1:123456789012:stream/{resources['Stream'].ref}"

    sqs = boto3.client("sqs", endpoint_url=moto_url, region_name="us-east-1")
    policy = sqs.get_queue_attributes(QueueUrl=resources["Redriven"].ref, AttributeNames=["RedrivePolicy"])
    assert json.loads(policy["Attributes"]["RedrivePolicy"])["deadLetterTargetArn"] == queue.arn

    resolver = Resolver(resources, stack_name="Prov")
    assert resolver.resolve({"Fn::Sub": "${Table}|${Stream.Arn}|${AWS::Region}|${!Literal}"}) == (
        f"{table.ref}|{resources['Stream'].arn}|us-east-1|${{Literal}}"
    )
    assert resolver.resolve({"Fn::Select": [1, {"Fn::Split": [",", "a,b"]}]}) == "b"
    with pytest.raises(Unresolvable):
        resolver.resolve({"Ref": "Topic"})
    with pytest.raises(Unresolvable):
        resolver.resolve({"Fn::GetAtt": ["Stream", "NoSuchAttribute"]})
