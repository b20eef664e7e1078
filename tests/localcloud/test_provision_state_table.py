"""A template with a second DynamoDB table (the connector's STATE_TABLE: string key ``pk``, TTL ``expiresAt``,
no stream): provisioning creates it, the function sees its name, and the source table is the streamed one."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from localcloud.demo import streamed_table
from tests.localcloud import test_esm_runner as base

moto_url = base.moto_url  # the module-scoped moto server fixture

STATE_TABLE: dict[str, Any] = {
    "Type": "AWS::DynamoDB::Table",
    "Properties": {
        "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
        "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
        "BillingMode": "PAY_PER_REQUEST",
        "TimeToLiveSpecification": {"AttributeName": "expiresAt", "Enabled": True},
        "SSESpecification": {"SSEEnabled": True},
    },
}


def with_state_table(template: dict[str, Any]) -> dict[str, Any]:
    template = copy.deepcopy(template)
    resources = template["Resources"]
    resources = {"StateTable": STATE_TABLE, **resources}  # first, so "the first table" would be the wrong one
    resources["Fn"]["Properties"]["Environment"]["Variables"]["STATE_TABLE"] = {"Ref": "StateTable"}
    template["Resources"] = resources
    return template


def test_state_table_is_provisioned_with_ttl_and_passed_to_the_function(moto_url: str, tmp_path: Path) -> None:
    template = with_state_table(base.make_template("recorder.handler", dynamodb={}))
    with base.harness(moto_url, tmp_path, template) as h:
        state = h.resources["StateTable"]
        ddb = h.client("dynamodb")
        described = ddb.describe_table(TableName=state.ref)["Table"]
        ttl = ddb.describe_time_to_live(TableName=state.ref)["TimeToLiveDescription"]
        env = h.runner.function_environment(next(iter(h.runner.functions.values())))
        source = streamed_table(h.resources, [m.source_arn for m in h.runner.mappings])
        ddb.put_item(TableName=state.ref, Item={"pk": {"S": "budget#x"}, "expiresAt": {"N": "1"}})  # usable

    assert described["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert "StreamSpecification" not in described or not described["StreamSpecification"].get("StreamEnabled")
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expiresAt"}
    assert env["STATE_TABLE"] == state.ref
    assert source == h.resources["Table"].ref != state.ref
