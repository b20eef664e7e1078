"""The example stack (cdk.json as shipped): what matters in the synthesized template."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk.assertions import Match

from infra.asset_wheels import pinned_version
from infra.powertools import powertools_version
from infra.stream_to_personalize import EMF_METRICS
from tests.infra.conftest import Synthesized

pytestmark = pytest.mark.infra

DATASET_ARN = "arn:aws:personalize:us-east-1:111122223333:dataset/catalog/ITEMS"
QUEUE_ARN = {"Fn::GetAtt": [Match.any_value(), "Arn"]}


def _resources(app: Synthesized, cfn_type: str) -> dict[str, Any]:
    return dict(app.template.find_resources(cfn_type))


def _only(app: Synthesized, cfn_type: str, props: dict[str, Any] | None = None) -> tuple[str, Any]:
    found = app.template.find_resources(cfn_type, {"Properties": props} if props else None)
    assert len(found) == 1, f"expected one {cfn_type} matching {props}, found {sorted(found)}"
    return next(iter(found.items()))


# ---------------------------------------------------------------------------------------------------
# Function
# ---------------------------------------------------------------------------------------------------


def test_function_runtime_contract(default_app: Synthesized) -> None:
    default_app.template.has_resource_properties(
        "AWS::Lambda::Function",
        {
            "Runtime": "python3.13",
            "Architectures": ["arm64"],
            "Handler": "connector.handler.handler",
            "TracingConfig": Match.absent(),  # lambda.tracing is off by default (tests/infra/test_tracing.py)
            "Timeout": 300,
            "MemorySize": 256,
            "Layers": [Match.any_value()],
            "Environment": {
                "Variables": {
                    "DATASET_ARN": DATASET_ARN,
                    "DLQ_URL": {"Ref": Match.any_value()},
                    "CONNECTOR_CONFIG": Match.any_value(),
                    "MAX_CALLS_PER_SECOND": "9.7",
                    "QUOTA_CALLS_PER_SECOND": "10",
                    "STATE_TABLE": {"Ref": Match.any_value()},
                    "SKIP_TTL_DELETES": "true",
                    "DEADLINE_MARGIN_MS": "5000",
                    "POWERTOOLS_SERVICE_NAME": "stream-to-personalize",
                    "POWERTOOLS_METRICS_NAMESPACE": "StreamToPersonalize",
                    "POWERTOOLS_LOG_LEVEL": "INFO",
                    "POWERTOOLS_TRACE_DISABLED": "true",
                }
            },
        },
    )


def test_no_reserved_concurrency_by_default(default_app: Synthesized) -> None:
    # An account can reserve at most its concurrency limit minus 100: a new account (limit 10) can't reserve 1.
    _, fn = _only(default_app, "AWS::Lambda::Function")
    assert "ReservedConcurrentExecutions" not in fn["Properties"]


def test_inline_config_is_the_example_mapping_with_its_schema(default_app: Synthesized) -> None:
    _, fn = _only(default_app, "AWS::Lambda::Function")
    variables = fn["Properties"]["Environment"]["Variables"]
    assert "CONNECTOR_CONFIG_FILE" not in variables
    document = json.loads(variables["CONNECTOR_CONFIG"])
    assert document["itemId"] == "sku"
    assert document["schema"]["fields"][0] == {"name": "ITEM_ID", "type": "string"}
    assert len(json.dumps(variables)) < 4096  # Lambda's environment limit


def test_asset_is_lambda_src_without_pycache(default_app: Synthesized) -> None:
    _, fn = _only(default_app, "AWS::Lambda::Function")
    asset = default_app.outdir / fn["Metadata"]["aws:asset:path"]
    assert (asset / "connector" / "handler.py").is_file()
    assert not list(asset.rglob("__pycache__"))


def test_asset_ships_orjson_built_for_the_function_platform(default_app: Synthesized) -> None:
    _, fn = _only(default_app, "AWS::Lambda::Function")
    assert fn["Properties"]["Architectures"] == ["arm64"] and fn["Properties"]["Runtime"] == "python3.13"
    asset = default_app.outdir / fn["Metadata"]["aws:asset:path"]
    if not (asset / "orjson").exists():
        metadata = (default_app.outdir / "StreamToPersonalize.metadata.json").read_text()
        assert "arm64 wheels not in the asset" in metadata  # the synth says so, and the runtime uses json
        pytest.skip("orjson could not be fetched (offline?): the json fallback is tested in test_asset_wheels.py")
    assert [p.name for p in (asset / "orjson").glob("*.so")] == ["orjson.cpython-313-aarch64-linux-gnu.so"]
    assert (asset / f"orjson-{pinned_version('orjson')}.dist-info").is_dir()  # the version requirements.txt pins


def test_powertools_layer_is_pinned_to_requirements(default_app: Synthesized) -> None:
    import aws_lambda_powertools.shared.version as installed

    version = powertools_version()
    assert version == installed.VERSION, "requirements.txt and the installed Powertools drifted"
    _, fn = _only(default_app, "AWS::Lambda::Function")
    layer_param = fn["Properties"]["Layers"][0]["Ref"]
    assert default_app.raw["Parameters"][layer_param] == {
        "Type": "AWS::SSM::Parameter::Value<String>",
        "Default": f"/aws/service/powertools/python/arm64/python3.13/{version}",
    }


# ---------------------------------------------------------------------------------------------------
# Event source mappings, queues
# ---------------------------------------------------------------------------------------------------

ESM_SAFETY = {
    "FunctionResponseTypes": ["ReportBatchItemFailures"],
    "BisectBatchOnFunctionError": True,
    "MaximumRetryAttempts": -1,  # bounded by record age, not by count: an outage loses nothing
    "MaximumRecordAgeInSeconds": 86400,
    "StartingPosition": "TRIM_HORIZON",
    "BatchSize": 1000,
    "MaximumBatchingWindowInSeconds": 5,
    "ParallelizationFactor": 1,
    "DestinationConfig": {"OnFailure": {"Destination": QUEUE_ARN}},
    "MetricsConfig": {"Metrics": ["EventCount"]},
}


def _source_table(app: Synthesized) -> tuple[str, Any]:
    return _only(app, "AWS::DynamoDB::Table", {"StreamSpecification": Match.any_value()})


def test_dynamodb_esm(default_app: Synthesized) -> None:
    table_id, table = _source_table(default_app)
    assert table["Properties"]["StreamSpecification"] == {"StreamViewType": "NEW_AND_OLD_IMAGES"}
    default_app.template.has_resource_properties(
        "AWS::Lambda::EventSourceMapping",
        {**ESM_SAFETY, "EventSourceArn": {"Fn::GetAtt": [table_id, "StreamArn"]}},
    )


def test_ttl_deletes_are_skipped_in_the_handler_not_filtered(default_app: Synthesized) -> None:
    # skipTtlDeletes sets SKIP_TTL_DELETES; no filter (Lambda's DynamoDB filtering only sees the `dynamodb` key, and
    # a filter that drops every record raises no alarm).
    for esm in _resources(default_app, "AWS::Lambda::EventSourceMapping").values():
        assert "FilterCriteria" not in esm["Properties"]
    _, fn = _only(default_app, "AWS::Lambda::Function")
    assert fn["Properties"]["Environment"]["Variables"]["SKIP_TTL_DELETES"] == "true"


def test_kinesis_esm_and_stream(default_app: Synthesized) -> None:
    (stream_id,) = _resources(default_app, "AWS::Kinesis::Stream")
    default_app.template.has_resource_properties(
        "AWS::Lambda::EventSourceMapping", {**ESM_SAFETY, "EventSourceArn": {"Fn::GetAtt": [stream_id, "Arn"]}}
    )
    default_app.template.has_resource_properties(
        "AWS::Kinesis::Stream",
        {
            "StreamEncryption": {"EncryptionType": "KMS", "KeyId": "alias/aws/kinesis"},
            "StreamModeDetails": {"StreamMode": "PROVISIONED"},
            "ShardCount": 1,
        },
    )


def test_on_failure_destination_is_one_s3_bucket(default_app: Synthesized) -> None:
    esms = _resources(default_app, "AWS::Lambda::EventSourceMapping")
    assert len(esms) == 2
    destinations = {json.dumps(e["Properties"]["DestinationConfig"]["OnFailure"]["Destination"]) for e in esms.values()}
    (bucket_id,) = _resources(default_app, "AWS::S3::Bucket")
    assert destinations == {json.dumps({"Fn::GetAtt": [bucket_id, "Arn"]})}
    _, fn = _only(default_app, "AWS::Lambda::Function")
    (queue_id,) = _resources(default_app, "AWS::SQS::Queue")  # only the poison DLQ: no on-failure queue
    assert fn["Properties"]["Environment"]["Variables"]["DLQ_URL"] == {"Ref": queue_id}


def test_on_failure_bucket_is_private_encrypted_ssl_only_and_expires(default_app: Synthesized) -> None:
    (bucket_id, bucket) = _only(default_app, "AWS::S3::Bucket")
    props = bucket["Properties"]
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "AES256"
    }
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert "VersioningConfiguration" not in props
    (rule,) = props["LifecycleConfiguration"]["Rules"]
    assert rule["ExpirationInDays"] == 30 and rule["Status"] == "Enabled"
    assert bucket["DeletionPolicy"] == "Retain"  # it holds records that did not land
    default_app.template.has_resource_properties(
        "AWS::S3::BucketPolicy",
        {
            "Bucket": {"Ref": bucket_id},
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [Match.object_like({"Effect": "Deny", "Condition": {"Bool": {"aws:SecureTransport": "false"}}})]
                )
            },
        },
    )


def test_on_failure_grant_is_exactly_what_lambda_documents(default_app: Synthesized) -> None:
    (bucket_id,) = _resources(default_app, "AWS::S3::Bucket")
    s3 = [s for s in _statements(default_app) if any(a.startswith("s3:") for a in _actions(s))]
    assert len(s3) == 1
    assert sorted(_actions(s3[0])) == ["s3:ListBucket", "s3:PutObject"]
    arn = {"Fn::GetAtt": [bucket_id, "Arn"]}
    assert s3[0]["Resource"] == [arn, {"Fn::Join": ["", [arn, "/*"]]}]
    assert s3[0]["Condition"] == {"StringEquals": {"s3:ResourceAccount": {"Ref": "AWS::AccountId"}}}


def test_queues_encrypted_ssl_only_14_days(default_app: Synthesized) -> None:
    queues = _resources(default_app, "AWS::SQS::Queue")
    assert len(queues) == 1
    for queue_id, queue in queues.items():
        assert queue["Properties"]["MessageRetentionPeriod"] == 14 * 24 * 3600
        assert queue["Properties"].get("SqsManagedSseEnabled") or queue["Properties"].get("KmsMasterKeyId")
        default_app.template.has_resource_properties(
            "AWS::SQS::QueuePolicy",
            {
                "Queues": [{"Ref": queue_id}],
                "PolicyDocument": {
                    "Statement": Match.array_with(
                        [
                            Match.object_like(
                                {
                                    "Effect": "Deny",
                                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                                    "Resource": {"Fn::GetAtt": [queue_id, "Arn"]},
                                }
                            )
                        ]
                    )
                },
            },
        )


def test_new_table_is_encrypted_with_pitr(default_app: Synthesized) -> None:
    default_app.template.has_resource_properties(
        "AWS::DynamoDB::Table",
        {
            "KeySchema": [{"AttributeName": "sku", "KeyType": "HASH"}],
            "SSESpecification": {"SSEEnabled": True},
            "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
            "BillingMode": "PAY_PER_REQUEST",
        },
    )


# ---------------------------------------------------------------------------------------------------
# State table
# ---------------------------------------------------------------------------------------------------


def _state_table(app: Synthesized) -> tuple[str, Any]:
    return _only(app, "AWS::DynamoDB::Table", {"KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}]})


def test_state_table_layout(default_app: Synthesized) -> None:
    table_id, table = _state_table(default_app)
    props = table["Properties"]
    assert props["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]  # no sort key
    assert props["AttributeDefinitions"] == [{"AttributeName": "pk", "AttributeType": "S"}]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["SSESpecification"] == {"SSEEnabled": True}
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expiresAt", "Enabled": True}
    assert "StreamSpecification" not in props
    # Ephemeral state (budget tokens, last CDC version per item): deleted with the stack (docs/deploy.md).
    assert table["DeletionPolicy"] == "Delete" and table["UpdateReplacePolicy"] == "Delete"
    _, fn = _only(default_app, "AWS::Lambda::Function")
    assert fn["Properties"]["Environment"]["Variables"]["STATE_TABLE"] == {"Ref": table_id}


def test_source_table_comes_before_the_state_table(default_app: Synthesized) -> None:
    # The local cloud (and people reading the template) take the first table as the source.
    tables = [k for k, r in default_app.raw["Resources"].items() if r["Type"] == "AWS::DynamoDB::Table"]
    assert tables == [_source_table(default_app)[0], _state_table(default_app)[0]]


def test_state_table_grants_exactly_the_contract(default_app: Synthesized) -> None:
    table_id, _ = _state_table(default_app)
    on_table = [
        s
        for s in _statements(default_app)
        if table_id in json.dumps(s["Resource"]) and any(a.startswith("dynamodb:") for a in _actions(s))
    ]
    assert len(on_table) == 1
    assert sorted(_actions(on_table[0])) == [
        "dynamodb:BatchGetItem",
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
    ]
    assert on_table[0]["Resource"] == {"Fn::GetAtt": [table_id, "Arn"]}  # the table only: no index, no stream


def test_state_table_output(default_app: Synthesized) -> None:
    table_id, _ = _state_table(default_app)
    assert default_app.raw["Outputs"]["StateTableName"]["Value"] == {"Ref": table_id}


# ---------------------------------------------------------------------------------------------------
# IAM
# ---------------------------------------------------------------------------------------------------


def _statements(app: Synthesized) -> list[dict[str, Any]]:
    return [
        statement
        for policy in _resources(app, "AWS::IAM::Policy").values()
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else action


def test_put_items_only_on_the_dataset(default_app: Synthesized) -> None:
    personalize = [s for s in _statements(default_app) if any(a.startswith("personalize:") for a in _actions(s))]
    assert len(personalize) == 1
    assert personalize[0]["Effect"] == "Allow"
    assert _actions(personalize[0]) == ["personalize:PutItems"]
    assert personalize[0]["Resource"] == DATASET_ARN


def test_sqs_send_only_to_own_queues(default_app: Synthesized) -> None:
    queue_ids = set(_resources(default_app, "AWS::SQS::Queue"))
    for statement in _statements(default_app):
        if any(a.startswith("sqs:") for a in _actions(statement)):
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            assert {r["Fn::GetAtt"][0] for r in resources} <= queue_ids


def test_wildcard_resources_are_only_for_actions_without_resource_scoping(default_app: Synthesized) -> None:
    for statement in _statements(default_app):
        if statement["Resource"] == "*":
            assert set(_actions(statement)) <= {
                "xray:PutTraceSegments",
                "xray:PutTelemetryRecords",
                "dynamodb:ListStreams",
            }


# ---------------------------------------------------------------------------------------------------
# Monitoring
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("namespace", "metric", "threshold"),
    [
        ("AWS/Lambda", "IteratorAge", 600_000),
        ("AWS/Kinesis", "GetRecords.IteratorAgeMilliseconds", 600_000),
        ("AWS/Lambda", "Errors", 1),
        ("StreamToPersonalize", "SystemicErrors", 1),
        ("AWS/Lambda", "OnFailureDestinationDeliveredEventCount", 1),
    ],
)
def test_alarms(default_app: Synthesized, namespace: str, metric: str, threshold: int) -> None:
    default_app.template.has_resource_properties(
        "AWS::CloudWatch::Alarm",
        {
            "Namespace": namespace,
            "MetricName": metric,
            "Threshold": threshold,
            "ComparisonOperator": "GreaterThanOrEqualToThreshold",
            "TreatMissingData": "notBreaching",
        },
    )


def test_lambda_throttles_are_on_the_dashboard_not_an_alarm(default_app: Synthesized) -> None:
    # With reserved concurrency, throttled stream invocations are normal in busy periods: never page on them.
    for alarm in _resources(default_app, "AWS::CloudWatch::Alarm").values():
        assert alarm["Properties"].get("MetricName") != "Throttles"
        for query in alarm["Properties"].get("Metrics", []):
            stat = query.get("MetricStat")
            if stat:
                assert (stat["Metric"]["Namespace"], stat["Metric"]["MetricName"]) != ("AWS/Lambda", "Throttles")
    assert '"AWS/Lambda","Throttles"' in _dashboard_body(default_app)


def test_throttled_share_alarm_is_metric_math_over_attempts(default_app: Synthesized) -> None:
    (alarm,) = [a for a in _resources(default_app, "AWS::CloudWatch::Alarm").values() if "Metrics" in a["Properties"]]
    props = alarm["Properties"]
    assert props["Threshold"] == 3 and props["ComparisonOperator"] == "GreaterThanThreshold"
    assert props["TreatMissingData"] == "notBreaching"
    queries = {q["Id"]: q for q in props["Metrics"]}
    (expression,) = [q for q in queries.values() if "Expression" in q]
    assert expression["Expression"] == "IF(attempts >= 100, 100 * throttles / attempts, 0)"
    assert expression["ReturnData"] is True
    metrics = {i: q["MetricStat"]["Metric"] for i, q in queries.items() if "MetricStat" in q}
    assert {i: (m["Namespace"], m["MetricName"]) for i, m in metrics.items()} == {
        "throttles": ("StreamToPersonalize", "Throttles"),
        "attempts": ("StreamToPersonalize", "PutItemsAttempts"),
    }


def test_only_meaningful_alarms(default_app: Synthesized) -> None:
    names = sorted(
        a["Properties"].get("MetricName", "math") for a in _resources(default_app, "AWS::CloudWatch::Alarm").values()
    )
    assert names == sorted(
        [
            "IteratorAge",
            "GetRecords.IteratorAgeMilliseconds",
            "Errors",
            "SystemicErrors",
            "math",
            "ApproximateNumberOfMessagesVisible",
            "OnFailureDestinationDeliveredEventCount",
            "OnFailureDestinationDeliveredEventCount",
        ]
    )


def test_on_failure_delivered_alarm_per_event_source_mapping(default_app: Synthesized) -> None:
    alarms = default_app.template.find_resources(
        "AWS::CloudWatch::Alarm", {"Properties": {"MetricName": "OnFailureDestinationDeliveredEventCount"}}
    )
    watched = {a["Properties"]["Dimensions"][0]["Value"]["Ref"] for a in alarms.values()}
    assert watched == set(_resources(default_app, "AWS::Lambda::EventSourceMapping"))
    for alarm in alarms.values():
        assert alarm["Properties"]["Dimensions"][0]["Name"] == "EventSourceMappingUUID"
        assert alarm["Properties"]["Statistic"] == "Sum"
        assert "replay" in alarm["Properties"]["AlarmDescription"]


def test_dlq_depth_alarms_on_both_queues(default_app: Synthesized) -> None:
    alarms = default_app.template.find_resources(
        "AWS::CloudWatch::Alarm", {"Properties": {"MetricName": "ApproximateNumberOfMessagesVisible"}}
    )
    watched = {a["Properties"]["Dimensions"][0]["Value"]["Fn::GetAtt"][0] for a in alarms.values()}
    assert watched == set(_resources(default_app, "AWS::SQS::Queue"))


def _dashboard_body(app: Synthesized) -> str:
    _, dashboard = _only(app, "AWS::CloudWatch::Dashboard")
    body = dashboard["Properties"]["DashboardBody"]
    parts = body["Fn::Join"][1] if isinstance(body, dict) else [body]
    return "".join(p if isinstance(p, str) else json.dumps(p) for p in parts)


def test_dashboard_shows_emf_lambda_and_stream_metrics(default_app: Synthesized) -> None:
    body = _dashboard_body(default_app)
    for metric in EMF_METRICS:
        assert f'"StreamToPersonalize","{metric}","service","stream-to-personalize"' in body, metric
    assert "items / calls" in body  # items per call, metric math
    for lambda_metric in ("Invocations", "Errors", "Throttles", "Duration", "IteratorAge"):
        assert f'"AWS/Lambda","{lambda_metric}"' in body, lambda_metric
    for esm_metric in ("PolledEventCount", "FilteredOutEventCount", "DroppedEventCount"):
        assert f'"AWS/Lambda","{esm_metric}","EventSourceMappingUUID"' in body, esm_metric
    assert '"AWS/Kinesis","IncomingRecords"' in body
    assert '"AWS/Kinesis","GetRecords.IteratorAgeMilliseconds"' in body
    assert '"AWS/DynamoDB","ReturnedRecordsCount"' in body
    assert '"AWS/SQS","ApproximateNumberOfMessagesVisible"' in body


def test_emf_metrics_cover_the_contract() -> None:
    assert set(EMF_METRICS) >= {
        "PutItemsAttempts",
        "PutItemsRejected",
        "SystemicErrors",
        "StaleSkipped",
        "BudgetWaitMs",
        "BudgetFallbacks",
        "ItemsPerCall",
    }


# ---------------------------------------------------------------------------------------------------
# Deploy-time traps (issue 11)
# ---------------------------------------------------------------------------------------------------


def test_example_dataset_arn_is_refused_at_deploy(default_app: Synthesized) -> None:
    # The shipped cdk.json's placeholder synthesizes (tests, make demo) but CloudFormation refuses the deploy.
    rule = default_app.raw["Rules"]["RefuseExampleDatasetArn"]
    (assertion,) = rule["Assertions"]
    assert assertion["Assert"] == {"Fn::Equals": [{"Ref": "ExampleDatasetArnAcknowledged"}, "yes"]}
    assert "datasetArn" in assertion["AssertDescription"]
    assert default_app.raw["Parameters"]["ExampleDatasetArnAcknowledged"]["Default"] == "no"


def test_what_cdk_destroy_removes_and_keeps(default_app: Synthesized) -> None:
    """docs/deploy.md's table: the source table, the stream and the logs are kept; queues and state go."""
    policies = {(r["Type"], k): r.get("DeletionPolicy", "Delete") for k, r in default_app.raw["Resources"].items()}
    source_id, _ = _source_table(default_app)
    state_id, _ = _state_table(default_app)
    assert policies[("AWS::DynamoDB::Table", source_id)] == "Retain"
    assert policies[("AWS::DynamoDB::Table", state_id)] == "Delete"
    by_type: dict[str, set[str]] = {}
    for (kind, _), policy in policies.items():
        by_type.setdefault(kind, set()).add(policy)
    assert by_type["AWS::Kinesis::Stream"] == {"Retain"}
    assert by_type["AWS::Logs::LogGroup"] == {"Retain"}
    assert by_type["AWS::SQS::Queue"] == {"Delete"}
    assert by_type["AWS::S3::Bucket"] == {"Retain"}


def test_outputs_a_user_needs(default_app: Synthesized) -> None:
    assert set(default_app.raw["Outputs"]) >= {
        "FunctionName",
        "PoisonRecordsQueueUrl",
        "FailedBatchesBucketName",
        "StateTableName",
        "DashboardName",
        "DashboardUrl",
        "DynamoDbStreamArn",
        "KinesisStreamArn",
        "DatasetArn",
    }


def test_no_alarm_actions_without_a_topic(default_app: Synthesized) -> None:
    for alarm in _resources(default_app, "AWS::CloudWatch::Alarm").values():
        assert "AlarmActions" not in alarm["Properties"]
    assert not _resources(default_app, "AWS::SNS::Topic")
