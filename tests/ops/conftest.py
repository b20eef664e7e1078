"""A moto account for the operator tools: a catalog table (with a stream), the state table, the DLQ, and a
FakePersonalize (a real botocore client answered in-process) that holds the dataset's current items."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto import mock_aws

from connector.config import Settings, load_settings
from tests.factories import DATASET_ARN
from tests.fakes import FakePersonalize, create_state_table

TABLE = "catalog"
STATE = "state"
# A fast quota, so that the tests are not paced at 10 calls/s; the pacing itself is the budget's tests' business.
FAST_QUOTA = "1000"


@dataclass
class Cloud:
    ddb: Any
    sqs: Any
    dlq_url: str
    personalize: FakePersonalize
    env: dict[str, str]

    def settings(self, **overrides: str) -> Settings:
        return load_settings({**self.env, **overrides})

    def put(self, sku: str, **attrs: Any) -> None:
        item = {"sku": {"S": sku}, **{k: _attr(v) for k, v in attrs.items()}}
        self.ddb.put_item(TableName=TABLE, Item=item)

    def dlq(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            got = self.sqs.receive_message(QueueUrl=self.dlq_url, MaxNumberOfMessages=10, VisibilityTimeout=0)
            msgs = got.get("Messages", [])
            if not msgs:
                return out
            for m in msgs:
                out.append(json.loads(m["Body"]))
                self.sqs.delete_message(QueueUrl=self.dlq_url, ReceiptHandle=m["ReceiptHandle"])

    def dlq_depth(self) -> int:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=self.dlq_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])

    def table_as_items(self) -> dict[str, dict[str, Any]]:
        """What the dataset must hold for the table (schemaless mapping: every non-key attribute)."""
        out = {}
        for page in self.ddb.get_paginator("scan").paginate(TableName=TABLE, ConsistentRead=True):
            for it in page["Items"]:
                out[it["sku"]["S"]] = {k: _value(v) for k, v in it.items() if k != "sku"}
        return out


def _attr(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"BOOL": v}
    if isinstance(v, int | float):
        return {"N": str(v)}
    return {"S": str(v)}


def _value(v: dict[str, Any]) -> Any:
    if "N" in v:
        n = float(v["N"])
        return int(n) if n.is_integer() else n
    if "BOOL" in v:
        return v["BOOL"]
    return v["S"]


@pytest.fixture
def cloud() -> Iterator[Cloud]:
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        ddb.create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "sku", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "sku", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )
        create_state_table(ddb, STATE)
        sqs = boto3.client("sqs", region_name="us-east-1")
        dlq_url = sqs.create_queue(QueueName="dlq")["QueueUrl"]
        env = {
            "DATASET_ARN": DATASET_ARN,
            "STATE_TABLE": STATE,
            "DLQ_URL": dlq_url,
            "QUOTA_CALLS_PER_SECOND": FAST_QUOTA,
            "CONNECTOR_CONFIG": json.dumps({"onRemove": {"deleted": True}}),
        }
        yield Cloud(ddb, sqs, dlq_url, FakePersonalize(), env)
