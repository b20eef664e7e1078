"""The Lambda handler: contract names, metrics, logs without property values, configuration errors."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from connector import handler
from connector.config import ConfigError, load_settings
from tests.factories import DATASET_ARN, FakeContext, dynamodb_record, event, kinesis_record
from tests.fakes import FakePersonalize, FakeSQS, moto_state_table, reject_ids, wire_response

SECRET = "s3cr3t-customer-value"


@pytest.fixture
def fake() -> Iterator[FakePersonalize]:
    fake = FakePersonalize(reject_ids("bad"))
    settings = load_settings({"DATASET_ARN": DATASET_ARN, "DLQ_URL": "https://sqs/q"})
    handler.reset(handler.build_runtime(settings, personalize=fake.client, sqs=FakeSQS()))
    yield fake
    handler.reset()


def emf(out: str) -> dict[str, float]:
    for line in out.splitlines():
        if '"_aws"' in line:
            doc = json.loads(line)
            names = [m["Name"] for m in doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]]
            return {n: sum(doc[n]) if isinstance(doc[n], list) else doc[n] for n in names}
    raise AssertionError("no EMF document printed")


def test_handler_publishes_outcome_metrics(fake: FakePersonalize, capsys: pytest.CaptureFixture[str]) -> None:
    records = [dynamodb_record("INSERT", {"sku": f"i{n}"}, {"sku": f"i{n}", "title": SECRET}) for n in range(12)]
    records.append(dynamodb_record("INSERT", {"sku": "bad"}, {"sku": "bad"}))
    records.append(kinesis_record("%%"))
    response = handler.handler(event(*records), FakeContext())
    assert response == {"batchItemFailures": []}
    metrics = emf(capsys.readouterr().out)
    assert metrics["RecordsIn"] == 14
    assert metrics["RecordsPut"] == 12 and metrics["RecordsPoison"] == 2
    assert metrics["RecordsRetry"] == 0 and metrics["RecordsSkipped"] == 0
    assert metrics["PutItemsCalls"] == 3 and metrics["ItemsSent"] == 12  # 10 + 2, after bisecting "bad" out
    assert metrics["ItemsPerCall"] == 4  # 12 items in 3 accepted calls


def test_no_property_value_is_logged_at_info(fake: FakePersonalize, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    records = [dynamodb_record("INSERT", {"sku": "a"}, {"sku": "a", "title": SECRET, "n": 7})]
    records.append(dynamodb_record("INSERT", {"sku": "bad"}, {"sku": "bad", "title": SECRET}))
    handler.handler(event(*records), FakeContext())
    info_and_above = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert any(r.getMessage() == "Batch done" for r in info_and_above)
    for record in info_and_above:
        assert SECRET not in json.dumps(record.__dict__, default=str)


def test_configuration_error_fails_loudly(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    handler.reset()
    monkeypatch.setenv("DATASET_ARN", "not-an-arn")
    with pytest.raises(ConfigError, match="not a Personalize dataset ARN"):
        handler.handler(event(), FakeContext())
    assert any("misconfigured" in r.getMessage() for r in caplog.records)
    handler.reset()


def test_runtime_built_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    handler.reset()
    monkeypatch.setenv("DATASET_ARN", DATASET_ARN)
    monkeypatch.setenv("CONNECTOR_CONFIG", json.dumps({"itemId": "sku"}))
    monkeypatch.setenv("MAX_CALLS_PER_SECOND", "4")
    rt = handler.runtime()
    assert rt.settings.mapping.item_id == "sku" and rt.settings.max_calls_per_second == 4
    assert handler.runtime() is rt  # once per container
    retries = rt.sink._client.meta.config.retries
    assert retries == {"mode": "standard", "total_max_attempts": 3}  # attempts in all, not retries
    handler.reset()
    monkeypatch.setenv("PUT_ITEMS_RETRY_MODE", "adaptive")
    assert handler.runtime().sink._client.meta.config.retries["mode"] == "adaptive"
    handler.reset()


def _accept_on_the_wire(**_: Any) -> AWSResponse:
    """PutItems answered at ``before-send``, after the connector's pacer took its slot (FakePersonalize answers at
    ``before-call``, before any pacing)."""
    return wire_response(200)


def test_batch_done_carries_the_shared_budgets_counters_and_a_batch_reserves_no_slot_it_does_not_use(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With STATE_TABLE: the pipeline tells the budget the batch's calls (``expect``), so one block holds exactly
    them (without the hint: blocks of 1, 2 and 4), and the ``Batch done`` line says what the budget did."""
    personalize = boto3.client("personalize-events", region_name="us-east-1")
    env = {
        "DATASET_ARN": DATASET_ARN,
        "DLQ_URL": "https://sqs/q",
        "STATE_TABLE": "state",
        "QUOTA_CALLS_PER_SECOND": "200",
    }
    with moto_state_table("state") as dynamodb:
        rt = handler.build_runtime(load_settings(env), personalize=personalize, sqs=FakeSQS(), dynamodb=dynamodb)
        # This test is about the block's size, not about wall-clock speed: slots 5 ms apart with 15 ms of slack
        # were missed on a loaded CI machine (a slow first round trip to moto), which re-reserves legitimately.
        assert rt.budget is not None
        rt.budget.slack = 1.0
        personalize.meta.events.register_last("before-send.personalize-events.PutItems", _accept_on_the_wire)
        handler.reset(rt)
        caplog.set_level(logging.INFO)
        records = [dynamodb_record("INSERT", {"sku": f"s{i}"}, {"sku": f"s{i}", "title": "t"}) for i in range(45)]
        handler.handler(event(*records), FakeContext())
        handler.reset()
    fields = next(r for r in caplog.records if r.getMessage() == "Batch done").__dict__
    assert fields["put_items_calls"] == 5 and fields["put_items_attempts"] == 5
    assert {f"budget_{name}" for name in handler.BUDGET_LOGGED} <= set(fields)
    assert fields["budget_cuts"] == fields["budget_restores"] == fields["budget_graces"] == 0
    assert fields["budget_reservations"] == 1 and fields["budget_wasted"] == 0  # one block of exactly 5 slots
