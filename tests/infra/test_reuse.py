"""The construct as an outside user imports it, and app.py's behaviour on a user error."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import aws_cdk as cdk
import pytest
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_kinesis as kinesis
from aws_cdk.assertions import Match, Template

from infra.synth import REPO_ROOT

pytestmark = pytest.mark.infra

OTHER_DATASET = "arn:aws:personalize:eu-west-1:444455556666:dataset/shop/ITEMS"


def test_outside_user_composes_the_construct() -> None:
    from infra import EsmSettings, StateTable, StreamToPersonalize

    app = cdk.App()
    stack = cdk.Stack(app, "TheirStack", env=cdk.Environment(account="444455556666", region="eu-west-1"))
    table = dynamodb.Table(
        stack,
        "Products",
        partition_key=dynamodb.Attribute(name="productId", type=dynamodb.AttributeType.STRING),
        stream=dynamodb.StreamViewType.NEW_AND_OLD_IMAGES,
    )
    stream = kinesis.Stream(stack, "Events", encryption=kinesis.StreamEncryption.MANAGED)
    connector = StreamToPersonalize(
        stack, "Sync", dataset_arn=OTHER_DATASET, mapping={"itemId": "productId"}, reserved_concurrency=None
    )
    connector.use_state_table(StateTable(stack, "State"))
    connector.add_dynamodb_source(table, settings=EsmSettings(batch_size=100), skip_ttl_deletes=True)
    connector.add_kinesis_source(stream, filters=[{"data": {"kind": ["product"]}}])

    template = Template.from_stack(stack)
    template.resource_count_is("AWS::Lambda::EventSourceMapping", 2)
    template.has_resource_properties(
        "AWS::Lambda::EventSourceMapping",
        {"BatchSize": 100, "FunctionResponseTypes": ["ReportBatchItemFailures"], "MaximumRetryAttempts": -1},
    )
    template.has_resource_properties(
        "AWS::Lambda::Function",
        {
            "Handler": "connector.handler.handler",
            "Environment": {
                "Variables": Match.object_like(
                    {
                        "DATASET_ARN": OTHER_DATASET,
                        "CONNECTOR_CONFIG": json.dumps({"itemId": "productId"}, separators=(",", ":")),
                        "SKIP_TTL_DELETES": "true",
                        "STATE_TABLE": {"Ref": Match.string_like_regexp("^State")},
                    }
                )
            },
        },
    )
    template.has_resource_properties(
        "AWS::IAM::Policy",
        {
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [Match.object_like({"Action": "personalize:PutItems", "Resource": OTHER_DATASET})]
                )
            }
        },
    )
    assert connector.metric("RecordsPut").namespace == "StreamToPersonalize"
    with pytest.raises(ValueError, match="unknown connector metric"):
        connector.metric("Nope")


SIX_FILTERS = [{"dynamodb": {"NewImage": {"kind": {"S": [str(i)]}}}} for i in range(6)]


@pytest.mark.parametrize(
    ("context", "line"),
    [
        (
            {"esm": {"batchSize": 0}},
            "context key 'esm.batchSize': expected an integer from 1 to 10000, got 0",
        ),
        (
            {"dynamodb": {"source": "new", "partitionKey": "sku", "filters": SIX_FILTERS}},
            "context key 'dynamodb.filters': 6 filter patterns exceed the quota of 5 per event source mapping "
            "(Lambda's default is 5); if your account's quota was raised, set context key 'filterPatternQuota'",
        ),
    ],
    ids=["batch size", "six filters"],
)
def test_app_py_reports_a_config_error_in_one_line(context: dict[str, object], line: str) -> None:
    env = {**os.environ, "CDK_CONTEXT_JSON": json.dumps(context), "CDK_OUTDIR": "/nonexistent"}
    result = subprocess.run(
        [sys.executable, "app.py"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"stream-to-personalize: config error: {line}"]
