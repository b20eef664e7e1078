"""Configuration: every user error names the variable or key and what is allowed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connector.config import ConfigError, load_settings, parse_mapping
from tests.factories import DATASET_ARN


def test_defaults() -> None:
    s = load_settings({"DATASET_ARN": DATASET_ARN})
    assert s.dlq_url is None
    assert s.max_calls_per_second == 9.7  # a hair under the quota of 10, for network jitter
    assert s.mapping.on_remove is None and s.mapping.schema is None


def test_config_file_relative_to_task_root(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text(json.dumps({"itemId": "sku"}))
    s = load_settings(
        {"DATASET_ARN": DATASET_ARN, "CONNECTOR_CONFIG_FILE": "c.json", "LAMBDA_TASK_ROOT": str(tmp_path)}
    )
    assert s.mapping.item_id == "sku"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "DATASET_ARN is required"),
        ({"DATASET_ARN": "arn:aws:s3:::bucket"}, "is not a Personalize dataset ARN"),
        ({"DATASET_ARN": DATASET_ARN + "x" * 300}, "at most 256"),
        ({"DATASET_ARN": DATASET_ARN, "CONNECTOR_CONFIG": "{"}, "CONNECTOR_CONFIG is not valid JSON"),
        ({"DATASET_ARN": DATASET_ARN, "CONNECTOR_CONFIG": "{}", "CONNECTOR_CONFIG_FILE": "x"}, "not both"),
        ({"DATASET_ARN": DATASET_ARN, "CONNECTOR_CONFIG_FILE": "/nope.json"}, "cannot be read"),
        ({"DATASET_ARN": DATASET_ARN, "MAX_CALLS_PER_SECOND": "fast"}, "MAX_CALLS_PER_SECOND='fast' is not a number"),
        ({"DATASET_ARN": DATASET_ARN, "MAX_CALLS_PER_SECOND": "0"}, "must be at least 0.1"),
        ({"DATASET_ARN": DATASET_ARN, "PUT_ITEMS_RETRY_MODE": "legacy"}, "allowed: 'standard', 'adaptive'"),
    ],
)
def test_settings_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "must be a JSON object"),
        ({"itemID": "x"}, r"unknown mapping key\(s\) \['itemID'\]"),
        ({"itemId": ""}, "'itemId' must be a non-empty attribute name"),
        ({"fields": {"PRICE": 1}}, "'fields' must map schema field names"),
        ({"exclude": "x"}, "'exclude' must be a list"),
        ({"onRemove": "delete"}, "'onRemove' must be \"ignore\" or a non-empty object"),
        ({"schema": {"type": "enum"}}, "must be an Avro record"),
        ({"schema": {"type": "record", "fields": [{"name": "ITEM_ID", "type": "map"}]}}, "has type 'map'"),
        ({"schema": {"type": "record", "fields": [{"name": "X", "type": "string"}]}}, "must have an ITEM_ID field"),
        (
            {"schema": {"type": "record", "fields": [{"name": "ITEM_ID", "type": "string"}]}, "fields": {"P": "p"}},
            r"names \['P'\], which are not fields",
        ),
        (
            {
                "schema": {"type": "record", "fields": [{"name": "ITEM_ID", "type": "string"}]},
                "onRemove": {"STATUS": "x"},
            },
            r"'onRemove' names \['STATUS'\]",
        ),
    ],
)
def test_mapping_errors(doc: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_mapping(doc)


def test_schema_may_be_a_json_string() -> None:
    schema = {
        "type": "record",
        "fields": [
            {"name": "ITEM_ID", "type": "string"},
            {"name": "GENRES", "type": ["null", "string"], "categorical": True},
        ],
    }
    m = parse_mapping({"schema": json.dumps(schema)})
    assert m.schema is not None and m.schema[1].categorical and m.schema[1].nullable
