"""Config validation: each user error names its key and what is allowed (no synth needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from infra.config import (
    INLINE_CONFIG_MAX_BYTES,
    ConfigError,
    ConnectorConfig,
    EsmSettings,
    LambdaConfig,
    load_config,
)
from infra.synth import CDK_JSON, cdk_json_context

pytestmark = pytest.mark.infra

DATASET_ARN = "arn:aws:personalize:us-east-1:111122223333:dataset/catalog/ITEMS"
REPO = CDK_JSON.parent
MINIMAL: dict[str, Any] = {"datasetArn": DATASET_ARN, "dynamodb": {"source": "new", "partitionKey": "id"}}


def load(overrides: dict[str, Any], *, base: dict[str, Any] | None = None, base_dir: Path = REPO) -> ConnectorConfig:
    context = {**(MINIMAL if base is None else base), **overrides}
    return load_config({k: v for k, v in context.items() if v is not None}, base_dir=base_dir)


def test_example_cdk_json_is_valid_and_runs_both_sources() -> None:
    config = load_config(cdk_json_context(), base_dir=REPO)
    assert config.dynamodb.source == "new"
    assert config.dynamodb.skip_ttl_deletes
    assert config.kinesis.source == "new"
    assert config.mapping["itemId"] == "sku"
    assert config.mapping["schema"]["fields"][0]["name"] == "ITEM_ID"
    assert config.config_delivery == "env"
    assert config.lambda_.reserved_concurrency is None  # a new account (limit 10) can't reserve any
    assert config.state_table.enabled  # the shared budget paces every invocation together
    assert config.dynamodb.esm.retry_attempts == -1 and config.kinesis.esm.retry_attempts == -1
    assert config.uses_example_dataset_arn and not config.allow_example_dataset_arn


def test_safe_defaults() -> None:
    config = load({})
    assert config.dynamodb.esm == EsmSettings()
    assert config.kinesis.source == "none"
    esm = config.dynamodb.esm
    assert (esm.starting_position, esm.bisect_batch_on_error, esm.retry_attempts) == ("TRIM_HORIZON", True, -1)
    assert esm.max_record_age_seconds == 86400  # the single knob: retries end when records are this old
    assert config.state_table.enabled and config.state_table.removal_policy == "destroy"
    assert config.lambda_.reserved_concurrency is None
    assert config.filter_pattern_quota == 5
    assert config.lambda_ == LambdaConfig()
    assert config.lambda_.timeout_seconds == 300 and config.lambda_.memory_mb == 256
    assert config.lambda_.effective_max_calls_per_second == 9.7  # 3 % under the quota, for network jitter


def test_source_esm_overrides_the_shared_esm() -> None:
    config = load(
        {
            "esm": {"batchSize": 500, "retryAttempts": 3},
            "kinesis": {"source": "new", "esm": {"batchSize": 100}},
        }
    )
    assert config.dynamodb.esm.batch_size == 500
    assert (config.kinesis.esm.batch_size, config.kinesis.esm.retry_attempts) == (100, 3)


def test_cli_strings_are_coerced() -> None:
    config = load(
        {
            "kinesis": json.dumps(
                {"source": "existing", "streamArn": "arn:aws:kinesis:us-east-1:111122223333:stream/s"}
            ),
            "esm": {"batchSize": "250", "bisectBatchOnError": "false"},
            "lambda": {"reservedConcurrency": "none", "maxCallsPerSecond": "2.5"},
        }
    )
    assert config.kinesis.stream_arn == "arn:aws:kinesis:us-east-1:111122223333:stream/s"
    assert config.dynamodb.esm.batch_size == 250
    assert config.dynamodb.esm.bisect_batch_on_error is False
    assert config.lambda_.reserved_concurrency is None
    assert config.lambda_.effective_max_calls_per_second == 2.5


def test_max_calls_per_second_derived_from_reserved_concurrency() -> None:
    assert load({"lambda": {"reservedConcurrency": 4}}).lambda_.effective_max_calls_per_second == 2.425


def test_large_mapping_goes_to_a_file(tmp_path: Path) -> None:
    fields = [{"name": "ITEM_ID", "type": "string"}] + [
        {"name": f"FIELD_WITH_A_RATHER_LONG_NAME_{i}", "type": ["null", "string"], "categorical": True}
        for i in range(60)
    ]
    schema = {"type": "record", "name": "Items", "fields": fields, "version": "1.0"}
    assert len(json.dumps(schema)) > INLINE_CONFIG_MAX_BYTES
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    assert load({"schemaFile": "schema.json"}, base_dir=tmp_path).config_delivery == "file"
    with pytest.raises(ConfigError, match=r"context key 'configDelivery': .*4 KB"):
        load({"schemaFile": "schema.json", "configDelivery": "env"}, base_dir=tmp_path)


ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("missing dataset", {"datasetArn": None}, r"'datasetArn': required"),
    ("bad dataset arn", {"datasetArn": "arn:aws:s3:::bucket"}, r"'datasetArn': .*not a Personalize dataset ARN"),
    ("dataset arn too long", {"datasetArn": "arn:aws:personalize:us-east-1:1:" + "x" * 250}, r"'datasetArn': .*256"),
    (
        "users dataset",
        {"datasetArn": "arn:aws:personalize:us-east-1:111122223333:dataset/catalog/USERS"},
        r"'datasetArn': .*is not an Items dataset ARN",
    ),
    ("dataset region", {"region": "eu-west-1"}, r"'datasetArn': the dataset is in us-east-1 but .* eu-west-1"),
    (
        "both dataset keys",
        {
            "datasetArn": "arn:aws:personalize:us-east-1:444455556666:dataset/g/ITEMS",
            "createDataset": {"datasetGroupName": "g"},
        },
        r"'createDataset': give either",
    ),
    (
        "createDataset without schema",
        {"datasetArn": None, "createDataset": {"datasetGroupName": "g"}},
        r"'createDataset': needs an Items schema",
    ),
    ("no source", {"dynamodb": {"source": "none"}}, r"'dynamodb': no source configured"),
    (
        "dynamodb source value",
        {"dynamodb": {"source": "table"}},
        r"'dynamodb.source': got 'table'; allowed values: 'none', 'new', 'existing'",
    ),
    (
        "dynamodb unknown key",
        {"dynamodb": {"source": "new", "partitonKey": "id"}},
        r"'dynamodb.partitonKey': unknown key; allowed keys",
    ),
    (
        "dynamodb new without key",
        {"dynamodb": {"source": "new"}},
        r"'dynamodb.partitionKey': required when dynamodb.source is 'new'",
    ),
    (
        "dynamodb key type",
        {"dynamodb": {"source": "new", "partitionKey": "id", "partitionKeyType": "X"}},
        r"'dynamodb.partitionKeyType': got 'X'; allowed values: 'S', 'N', 'B'",
    ),
    ("dynamodb existing without arn", {"dynamodb": {"source": "existing"}}, r"'dynamodb.streamArn': required"),
    (
        "dynamodb bad stream arn",
        {"dynamodb": {"source": "existing", "streamArn": "arn:aws:dynamodb:us-east-1:111122223333:table/t"}},
        r"'dynamodb.streamArn': .*table/<table>/stream/<label>",
    ),
    (
        "dynamodb new with arn",
        {"dynamodb": {"source": "new", "partitionKey": "id", "streamArn": "x"}},
        r"'dynamodb.streamArn': only allowed when dynamodb.source is 'existing'",
    ),
    (
        "dynamodb existing with key",
        {"dynamodb": {"source": "existing", "partitionKey": "id"}},
        r"'dynamodb.partitionKey': only allowed when dynamodb.source is 'new'",
    ),
    (
        "six filters",
        {"dynamodb": {"source": "new", "partitionKey": "id", "filters": [{"a": [str(i)]} for i in range(6)]}},
        r"'dynamodb.filters': 6 filter patterns exceed the quota of 5 .*set context key 'filterPatternQuota'",
    ),
    (
        "filters over a raised quota",
        {
            "filterPatternQuota": 7,
            "kinesis": {"source": "new", "filters": [{"a": [str(i)]} for i in range(8)]},
        },
        r"'kinesis.filters': 8 filter patterns exceed the quota of 7",
    ),
    ("filter quota", {"filterPatternQuota": 0}, r"'filterPatternQuota': expected an integer from 1"),
    (
        "record age beyond kinesis retention",
        {"kinesis": {"source": "new", "esm": {"maxRecordAgeSeconds": 172800}}},
        r"'kinesis.retentionHours': the new stream keeps records 24 h \(86400 s\) but .*172800 s",
    ),
    (
        "record age beyond dynamodb retention",
        {"esm": {"maxRecordAgeSeconds": 90000}},
        r"'esm.maxRecordAgeSeconds': 90000 s exceeds the DynamoDB stream's fixed 24 h retention",
    ),
    (
        "record age beyond dynamodb retention, per source",
        {"dynamodb": {"source": "new", "partitionKey": "id", "esm": {"maxRecordAgeSeconds": 90000}}},
        r"'dynamodb.esm.maxRecordAgeSeconds': 90000 s exceeds",
    ),
    (
        "layer arn",
        {"lambda": {"powertoolsLayerArn": "AWSLambdaPowertoolsPythonV3"}},
        r"'lambda.powertoolsLayerArn': .*arn:aws:lambda:<region>:<account>:layer:<name>:<version>",
    ),
    ("state table key", {"stateTable": {"enable": False}}, r"'stateTable.enable': unknown key"),
    (
        "state table removal",
        {"stateTable": {"removalPolicy": "snapshot"}},
        r"'stateTable.removalPolicy': got 'snapshot'; allowed values: 'destroy', 'retain'",
    ),
    (
        "state table disabled with a name",
        {"stateTable": {"enabled": False, "tableName": "state"}},
        r"'stateTable.tableName': not allowed when stateTable.enabled is false",
    ),
    (
        "old throttles key",
        {"monitoring": {"throttles": 5}},
        r"'monitoring.throttles': unknown key",
    ),
    ("throttled percent", {"monitoring": {"throttledPercent": 0}}, r"'monitoring.throttledPercent': expected a number"),
    ("allow example", {"allowExampleDatasetArn": "maybe"}, r"'allowExampleDatasetArn': expected true or false"),
    (
        "filters not a list",
        {"dynamodb": {"source": "new", "partitionKey": "id", "filters": {"a": ["b"]}}},
        r"'dynamodb.filters': expected a non-empty list",
    ),
    (
        "empty filter",
        {"dynamodb": {"source": "new", "partitionKey": "id", "filters": [{}]}},
        r"'dynamodb.filters\[0\]': expected a non-empty filter pattern",
    ),
    ("kinesis source", {"kinesis": {"source": "stream"}}, r"'kinesis.source': got 'stream'; allowed values"),
    (
        "kinesis capacity",
        {"kinesis": {"source": "new", "capacity": "auto"}},
        r"'kinesis.capacity': got 'auto'; allowed values: 'onDemand', 'provisioned'",
    ),
    (
        "kinesis shards on demand",
        {"kinesis": {"source": "new", "shards": 2}},
        r"'kinesis.shards': only allowed when kinesis.capacity is 'provisioned'",
    ),
    (
        "kinesis shards range",
        {"kinesis": {"source": "new", "capacity": "provisioned", "shards": 0}},
        r"'kinesis.shards': expected an integer from 1 to 500",
    ),
    (
        "kinesis bad arn",
        {"kinesis": {"source": "existing", "streamArn": "my-stream"}},
        r"'kinesis.streamArn': .*arn:aws:kinesis:<region>:<account>:stream/<name>",
    ),
    (
        "kinesis none with keys",
        {"kinesis": {"source": "none", "shards": 1}},
        r"'kinesis.shards': not allowed when kinesis.source is 'none'",
    ),
    ("batch size", {"esm": {"batchSize": 20000}}, r"'esm.batchSize': expected an integer from 1 to 10000, got 20000"),
    ("batch size string", {"esm": {"batchSize": "many"}}, r"'esm.batchSize': expected an integer"),
    (
        "window",
        {"esm": {"maxBatchingWindowSeconds": 301}},
        r"'esm.maxBatchingWindowSeconds': expected an integer from 0 to 300",
    ),
    (
        "starting position",
        {"esm": {"startingPosition": "AT_TIMESTAMP"}},
        r"'esm.startingPosition': got 'AT_TIMESTAMP'; allowed values: 'TRIM_HORIZON', 'LATEST'",
    ),
    ("retries", {"esm": {"retryAttempts": -2}}, r"'esm.retryAttempts': expected an integer from -1 to 10000"),
    (
        "record age",
        {"esm": {"maxRecordAgeSeconds": -1}},
        r"'esm.maxRecordAgeSeconds': expected an integer from 60 to 604800",
    ),
    ("bisect", {"esm": {"bisectBatchOnError": "yes"}}, r"'esm.bisectBatchOnError': expected true or false"),
    (
        "parallelization",
        {"esm": {"parallelizationFactor": 11}},
        r"'esm.parallelizationFactor': expected an integer from 1 to 10",
    ),
    ("esm unknown", {"esm": {"batch_size": 10}}, r"'esm.batch_size': unknown key"),
    (
        "per-source esm",
        {"dynamodb": {"source": "new", "partitionKey": "id", "esm": {"batchSize": 0}}},
        r"'dynamodb.esm.batchSize': expected an integer from 1 to 10000",
    ),
    ("timeout", {"lambda": {"timeoutSeconds": 901}}, r"'lambda.timeoutSeconds': expected an integer from 30 to 900"),
    ("memory", {"lambda": {"memoryMb": 64}}, r"'lambda.memoryMb': expected an integer from 128 to 10240"),
    (
        "reserved concurrency",
        {"lambda": {"reservedConcurrency": 0}},
        r"'lambda.reservedConcurrency': expected an integer from 1 to 1000",
    ),
    (
        "calls per second",
        {"lambda": {"maxCallsPerSecond": 0}},
        r"'lambda.maxCallsPerSecond': expected a number greater than 0",
    ),
    (
        "log level",
        {"lambda": {"logLevel": "TRACE"}},
        r"'lambda.logLevel': got 'TRACE'; allowed values: 'DEBUG', 'INFO', 'WARNING', 'ERROR'",
    ),
    (
        "margin vs timeout",
        {"lambda": {"timeoutSeconds": 30, "deadlineMarginMs": 30000}},
        r"'lambda.deadlineMarginMs': lambda.timeoutSeconds \(30 s\) minus the margin \(30000 ms\) must leave "
        r"at least 60 s",
    ),
    (
        "no time left to send",
        {"lambda": {"timeoutSeconds": 35, "deadlineMarginMs": 5000}},
        r"reserves that call's worst case \(about 50 s\)",
    ),
    (
        "log retention",
        {"lambda": {"logRetentionDays": 2}},
        r"'lambda.logRetentionDays': got 2; allowed values: 1, 3, 5",
    ),
    (
        "topic arn",
        {"monitoring": {"alarmTopicArn": "ops"}},
        r"'monitoring.alarmTopicArn': 'ops' does not match arn:aws:sns",
    ),
    (
        "email and topic",
        {"monitoring": {"alarmEmail": "a@b.c", "alarmTopicArn": "arn:aws:sns:us-east-1:111122223333:t"}},
        r"'monitoring.alarmEmail': give either",
    ),
    (
        "iterator age",
        {"monitoring": {"iteratorAgeSeconds": 0}},
        r"'monitoring.iteratorAgeSeconds': expected an integer from 1",
    ),
    (
        "mapping and file",
        {"mapping": {}, "mappingFile": "examples/mapping.json"},
        r"'mappingFile': give either 'mapping'",
    ),
    ("mapping not object", {"mapping": "sku"}, r"'mapping': expected a JSON object"),
    ("mapping unknown key", {"mapping": {"itemID": "sku"}}, r"'mapping': unknown mapping document key 'itemID'"),
    (
        "mapping onRemove",
        {"mapping": {"onRemove": "delete"}},
        r"'mapping.onRemove': expected 'ignore' or a non-empty object",
    ),
    ("mapping file missing", {"mappingFile": "nope.json"}, r"'mappingFile': file not found: .*nope.json"),
    (
        "schema twice",
        {"mapping": {"schema": {}}, "schemaFile": "examples/items-schema.json"},
        r"'schemaFile': the mapping document \(mapping\) already has a 'schema'",
    ),
    (
        "schema not record",
        {"mapping": {"schema": {"type": "enum"}}},
        r"'mapping.schema': an Items schema must be an Avro object",
    ),
    (
        "schema nested type",
        {
            "mapping": {
                "schema": {
                    "type": "record",
                    "fields": [{"name": "ITEM_ID", "type": "string"}, {"name": "TAGS", "type": {"type": "array"}}],
                }
            }
        },
        r"'mapping.schema.fields\[1\]': field 'TAGS' has type .*allowed: one of string, int",
    ),
    (
        "schema without item id",
        {"mapping": {"schema": {"type": "record", "fields": [{"name": "X", "type": "string"}]}}},
        r"'mapping.schema': an Items schema needs an ITEM_ID field",
    ),
    (
        "on-failure destination",
        {"onFailure": {"destination": "sns"}},
        r"'onFailure.destination': got 'sns'; allowed values: 's3', 'sqs'",
    ),
    (
        "on-failure expiry with sqs",
        {"onFailure": {"destination": "sqs", "expireDays": 7}},
        r"'onFailure.expireDays': only allowed when onFailure.destination is 's3'",
    ),
    ("on-failure expiry range", {"onFailure": {"expireDays": 0}}, r"'onFailure.expireDays': expected an integer"),
    (
        "bulk load without bucket",
        {"bulkLoad": {"enabled": True}},
        r"'bulkLoad.exportBucketName': required when bulkLoad.enabled is true",
    ),
    (
        "bulk load disabled with settings",
        {"bulkLoad": {"maxConcurrency": 5}},
        r"'bulkLoad.maxConcurrency': not allowed when bulkLoad.enabled is false",
    ),
    (
        "bulk load bucket name",
        {"bulkLoad": {"enabled": True, "exportBucketName": "Not_A_Bucket"}},
        r"'bulkLoad.exportBucketName': 'Not_A_Bucket' does not match an S3 bucket name",
    ),
    (
        "bulk load without schema",
        {"schemaFile": None, "bulkLoad": {"enabled": True, "exportBucketName": "exports"}},
        r"'bulkLoad.enabled': a bulk import needs an Items schema",
    ),
    ("config delivery", {"configDelivery": "s3"}, r"'configDelivery': got 's3'; allowed values: 'auto', 'env', 'file'"),
    ("account", {"account": "123"}, r"'account': '123' does not match 12 digits"),
    (
        "object from cli",
        {"dynamodb": "{not json"},
        r"'dynamodb': expected a JSON object, got a string that is not JSON",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), [(o, m) for _, o, m in ERRORS], ids=[i for i, _, _ in ERRORS])
def test_config_error_names_the_key(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as excinfo:
        load(overrides)
    text = str(excinfo.value)
    assert text.startswith("context key '")
    assert "\n" not in text


def test_schema_file_relative_to_base_dir(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"'schemaFile': .*bad.json is not valid JSON \(line 1"):
        load({"schemaFile": "bad.json"}, base_dir=tmp_path)


def test_schema_over_personalizes_limit(tmp_path: Path) -> None:
    fields = [{"name": "ITEM_ID", "type": "string"}] + [
        {"name": f"FIELD_{i:04d}_WITH_A_LONG_NAME", "type": ["null", "string"], "categorical": True} for i in range(160)
    ]
    (tmp_path / "schema.json").write_text(json.dumps({"type": "record", "name": "Items", "fields": fields}))
    with pytest.raises(ConfigError, match=r"^context key 'schemaFile': the schema is \d+ characters .*at most 10000$"):
        load({"schemaFile": "schema.json"}, base_dir=tmp_path)


def test_skip_ttl_deletes_combines_with_filters() -> None:
    config = load(
        {"dynamodb": {"source": "new", "partitionKey": "id", "skipTtlDeletes": True, "filters": [{"a": ["b"]}]}}
    )
    assert config.dynamodb.skip_ttl_deletes and config.dynamodb.filters == ({"a": ["b"]},)


def test_retries_bounded_by_record_age() -> None:
    assert load({"esm": {"retryAttempts": "-1"}}).dynamodb.esm.retry_attempts == -1
    assert load({"esm": {"retryAttempts": 3}}).dynamodb.esm.retry_attempts == 3
    # A longer-lived stream may keep records longer.
    config = load({"kinesis": {"source": "new", "retentionHours": 168, "esm": {"maxRecordAgeSeconds": 604800}}})
    assert config.kinesis.esm.max_record_age_seconds == 604800


def test_create_dataset_from_the_command_line() -> None:
    # `cdk deploy -c createDataset='{"datasetGroupName":"catalog"}'` with the shipped cdk.json (example datasetArn).
    context = {**cdk_json_context(), "createDataset": json.dumps({"datasetGroupName": "catalog"})}
    config = load_config(context, base_dir=REPO)
    assert config.dataset_arn is None and config.create_dataset is not None
    assert config.create_dataset.dataset_group_name == "catalog"
    # `-c datasetArn=none` unsets cdk.json's value too.
    config = load_config({**context, "datasetArn": "none"}, base_dir=REPO)
    assert config.create_dataset is not None


def test_example_dataset_arn_flags() -> None:
    assert load({}).uses_example_dataset_arn
    assert load({"allowExampleDatasetArn": "true"}).allow_example_dataset_arn
    other = load({"datasetArn": "arn:aws:personalize:us-east-1:444455556666:dataset/g/ITEMS"})
    assert not other.uses_example_dataset_arn


def test_the_timeout_check_covers_the_runtimes_worst_call() -> None:
    """The minimum timeout the app accepts must leave the runtime its reserve for one PutItems call, or a
    deployed function would retry every record forever (found by the review of issue 8)."""
    from connector.config import load_settings
    from connector.handler import put_items_worst_call_ms
    from infra.config import PUT_ITEMS_WORST_CALL_MS

    arn = "arn:aws:personalize:us-east-1:111122223333:dataset/catalog/ITEMS"
    with_table = put_items_worst_call_ms(load_settings({"DATASET_ARN": arn, "STATE_TABLE": "state"}))
    alone = put_items_worst_call_ms(load_settings({"DATASET_ARN": arn}))
    assert alone < with_table <= PUT_ITEMS_WORST_CALL_MS < with_table + 2_000
