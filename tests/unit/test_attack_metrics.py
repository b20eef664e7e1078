"""Attack: the handler's metrics and alarms for systemic errors (issue 8: "count it in a metric that has an
alarm"; DESIGN.md: a missing permission is a systemic error, "logged once, loudly")."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from connector import handler
from connector.config import load_settings
from connector.deadline import OutageBackoff
from infra.stream_to_personalize import EMF_METRICS
from tests.factories import DATASET_ARN, FakeContext, cdc_payload, event, kinesis_record
from tests.fakes import FakePersonalize, FakeSQS

DLQ = "https://sqs.us-east-1.amazonaws.com/111122223333/poison"


class DeniedStateTable:
    """STATE_TABLE without the grant (the IAM outage of issue 8): every read is AccessDeniedException."""

    def batch_get_item(self, **_: Any) -> Any:
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "BatchGetItem")


def test_attack_a_state_table_outage_is_in_no_metric(capsys: pytest.CaptureFixture[str]) -> None:
    """Every CDC record is retried on every invocation while the grant is missing, but the only trace is a log
    line: ``SystemicErrors`` stays 0 and no metric counts ``state_errors``, so no alarm can fire (iterator age
    only fires once the backlog is old, and RecordsRetry is also high under ordinary throttling)."""
    settings = load_settings({"DATASET_ARN": DATASET_ARN, "DLQ_URL": DLQ, "STATE_TABLE": "state"})
    runtime = handler.build_runtime(
        settings, personalize=FakePersonalize().client, sqs=FakeSQS(), dynamodb=DeniedStateTable()
    )
    runtime.backoff = OutageBackoff(sleep=lambda _: None)
    handler.reset(runtime)
    try:
        record = kinesis_record(cdc_payload("MODIFY", {"sku": "a"}, {"sku": "a"}), seq="1")
        response = handler.handler(event(record), FakeContext())
    finally:
        handler.reset()
    assert response == {"batchItemFailures": [{"itemIdentifier": "1"}]}
    doc = next(json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line)
    counted = {name: doc[name] for name in doc if "State" in name or name == "SystemicErrors"}
    assert any(value != [0.0] for value in counted.values()), f"the outage is in no metric: {counted}"


def test_attack_the_systemic_metrics_have_no_alarm_in_the_stack() -> None:
    """The runtime emits SystemicErrors / PutItemsAttempts / PutItemsRejected / StaleSkipped, but the CDK app
    only knows the old metric names (``connector.metric('SystemicErrors')`` raises), so nothing alarms on a
    systemic rejection."""
    assert {"SystemicErrors", "PutItemsAttempts"} <= set(EMF_METRICS)
