"""``lambda.tracing``: config validation, and what each setting synthesizes for the connector and the bulk-load
converter (TracingConfig, the X-Ray grant, ``POWERTOOLS_TRACE_DISABLED``).

Off is the example cdk.json (the shared default synth); on is the ``new_on_demand`` variant (which also has the
bulk load). The converter with tracing off is checked on the construct itself (a small synth, no asset bundling).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_lambda as lambda_
from aws_cdk.assertions import Template

from infra.bulk_load import CONVERTER_HANDLER, BulkLoad
from infra.config import ConfigError, load_config
from infra.stream_to_personalize import HANDLER
from infra.synth import CDK_JSON, cdk_json_context
from tests.infra.conftest import Synthesized

pytestmark = pytest.mark.infra

XRAY = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
DATASET_ARN = "arn:aws:personalize:us-east-1:111122223333:dataset/catalog/ITEMS"
MINIMAL: dict[str, Any] = {"datasetArn": DATASET_ARN, "dynamodb": {"source": "new", "partitionKey": "id"}}


# ---------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------


def test_tracing_is_off_by_default_and_in_the_example() -> None:
    assert load_config(MINIMAL, base_dir=CDK_JSON.parent).lambda_.tracing is False
    assert load_config(cdk_json_context(), base_dir=CDK_JSON.parent).lambda_.tracing is False


@pytest.mark.parametrize(("value", "expected"), [(True, True), (False, False), ("true", True), ("FALSE", False)])
def test_tracing_takes_a_boolean_or_a_cli_string(value: Any, expected: bool) -> None:
    config = load_config({**MINIMAL, "lambda": {"tracing": value}}, base_dir=CDK_JSON.parent)
    assert config.lambda_.tracing is expected


@pytest.mark.parametrize("value", ["yes", "on", 1, 0, "Active", None, {"mode": "Active"}])
def test_a_non_boolean_tracing_is_refused_with_the_key(value: Any) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config({**MINIMAL, "lambda": {"tracing": value}}, base_dir=CDK_JSON.parent)
    text = str(excinfo.value)
    assert text.startswith("context key 'lambda.tracing'"), text
    assert f"expected true or false, got {value!r}" in text
    assert "\n" not in text


# ---------------------------------------------------------------------------------------------------
# Template
# ---------------------------------------------------------------------------------------------------


def _function(app: Synthesized, handler: str) -> tuple[str, Mapping[str, Any]]:
    (found,) = [
        (k, r)
        for k, r in app.template.find_resources("AWS::Lambda::Function").items()
        if r["Properties"].get("Handler") == handler
    ]
    return found


def _role_actions(template: Mapping[str, Any], function: Mapping[str, Any]) -> set[str]:
    """Every action the function's role is granted by the template's policies."""
    role = function["Properties"]["Role"]["Fn::GetAtt"][0]
    actions: set[str] = set()
    for resource in template["Resources"].values():
        if resource["Type"] != "AWS::IAM::Policy" or {"Ref": role} not in resource["Properties"]["Roles"]:
            continue
        for statement in resource["Properties"]["PolicyDocument"]["Statement"]:
            action = statement["Action"]
            actions.update([action] if isinstance(action, str) else action)
    return actions


def test_off_by_default_no_tracing_config_no_grant_and_powertools_told(default_app: Synthesized) -> None:
    _, fn = _function(default_app, HANDLER)
    assert "TracingConfig" not in fn["Properties"]  # CDK's Tracing.DISABLED: Lambda's default, PassThrough
    assert fn["Properties"]["Environment"]["Variables"]["POWERTOOLS_TRACE_DISABLED"] == "true"
    assert not XRAY & _role_actions(default_app.raw, fn)
    assert "xray:" not in json.dumps(default_app.raw)  # no other X-Ray grant anywhere in the default stack


def test_on_the_connector_and_the_converter_trace_actively(variant_app: Callable[[str], Synthesized]) -> None:
    app = variant_app("new_on_demand")
    for handler in (HANDLER, CONVERTER_HANDLER):
        _, fn = _function(app, handler)
        assert fn["Properties"]["TracingConfig"] == {"Mode": "Active"}, handler
        assert fn["Properties"]["Environment"]["Variables"]["POWERTOOLS_TRACE_DISABLED"] == "false", handler
        assert _role_actions(app.raw, fn) >= XRAY, handler


def test_the_converter_follows_the_switch_when_off() -> None:
    app = cdk.App()
    stack = cdk.Stack(app, "Bulk")
    BulkLoad(
        stack,
        "BulkLoad",
        dataset_arn=DATASET_ARN,
        code=lambda_.Code.from_inline("def handler(event, context): pass"),
        environment={"DATASET_ARN": DATASET_ARN},
        layers=[],
        export_bucket_name="catalog-exports",
    )
    template = Template.from_stack(stack).to_json()
    (converter,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::Lambda::Function"]
    assert "TracingConfig" not in converter["Properties"]
    assert converter["Properties"]["Environment"]["Variables"] == {
        "DATASET_ARN": DATASET_ARN,
        "POWERTOOLS_TRACE_DISABLED": "true",
    }
    assert not XRAY & _role_actions(template, converter)
    # the state machine keeps its own tracing (not a Lambda cold start)
    (machine,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::StepFunctions::StateMachine"]
    assert machine["Properties"]["TracingConfiguration"] == {"Enabled": True}
