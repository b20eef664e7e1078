"""``ops.feed``: the runtime's pipeline with a retry loop, the tools' share of the budget, the records it builds."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from ops.common import OpsError
from ops.feed import (
    Feeder,
    Stopped,
    Systemic,
    describe_table,
    is_unversioned,
    plan,
    table_name_from_arn,
    table_record,
)
from tests.factories import kinesis_record
from tests.fakes import FakePersonalize
from tests.ops.conftest import TABLE, Cloud


def feeder(cloud: Cloud, personalize: FakePersonalize, **kwargs: Any) -> Feeder:
    kwargs.setdefault("backoff_base_s", 0.01)
    return Feeder(cloud.settings(), dynamodb=cloud.ddb, personalize=personalize.client, sqs=cloud.sqs, **kwargs)


def records(cloud: Cloud, f: Feeder, n: int) -> list[dict[str, Any]]:
    table = describe_table(cloud.ddb, TABLE)
    return [
        table_record(table, {"sku": {"S": f"s{i}"}}, {"sku": {"S": f"s{i}"}, "t": {"S": "x"}}, f.seq())
        for i in range(n)
    ]


def test_the_tool_builds_the_runtimes_shared_budget_with_its_share(cloud: Cloud) -> None:
    f = feeder(cloud, cloud.personalize, max_share=0.3)
    assert f.budget.max_share == 0.3 and f.budget.table == "state"
    f.feed(records(cloud, f, 25))
    assert f.tally.put == 25 and f.tally.calls == 3
    # FakePersonalize answers before botocore's before-send, where the runtime paces each HTTP attempt, so the
    # pacing itself is not exercised here (see the report: an end-to-end share test is still to do).
    assert f.runtime.budget is f.budget


def test_retry_outcomes_are_sent_again_until_they_land(cloud: Cloud) -> None:
    answers = iter([("ThrottlingException", "slow down")] * 7)

    def throttled_at_first(items: list[dict[str, Any]]) -> tuple[str, str] | None:
        return next(answers, None)

    p = FakePersonalize(throttled_at_first)
    f = feeder(cloud, p)
    f.feed(records(cloud, f, 12))
    assert set(p.items) == {f"s{i}" for i in range(12)}
    assert f.tally.put == 12 and f.tally.retries > 0  # counted once by its final outcome


def test_stopping_while_records_wait_for_a_retry_raises_stopped(cloud: Cloud) -> None:
    stop = threading.Event()

    def down(items: list[dict[str, Any]]) -> tuple[str, str]:
        stop.set()
        return ("ResourceNotFoundException", "no dataset")  # systemic: every record is retry

    f = feeder(cloud, FakePersonalize(down), stop=stop)
    with pytest.raises(Stopped):
        f.feed(records(cloud, f, 3))
    assert f.tally.put == 0


def test_a_systemic_failure_that_waiting_does_not_fix_ends_the_feed_with_a_clear_error(cloud: Cloud) -> None:
    def wrong_schema(items: list[dict[str, Any]]) -> tuple[str, str]:
        return ("InvalidInputException", "properties do not match the dataset's schema")  # every item, alone

    f = feeder(cloud, FakePersonalize(wrong_schema))
    f._backoff = (0.001, 0.002)
    with pytest.raises(Systemic, match="mapping's schema is the dataset's; nothing was lost"):
        f.feed(records(cloud, f, 12))
    assert f.tally.put == 0 and f.tally.poison == 0  # retried, never dead-lettered one by one


def test_the_tools_require_the_state_table_and_the_dlq(cloud: Cloud) -> None:
    with pytest.raises(OpsError, match="STATE_TABLE"):
        Feeder(cloud.settings(STATE_TABLE=""), dynamodb=cloud.ddb)
    with pytest.raises(OpsError, match="DLQ_URL"):
        Feeder(cloud.settings(DLQ_URL=""), dynamodb=cloud.ddb)


def test_plans_and_arns() -> None:
    assert table_name_from_arn("arn:aws:dynamodb:us-east-1:1:table/cat/stream/2026") == "cat"
    assert table_name_from_arn("arn:aws:kinesis:us-east-1:1:stream/cat") is None
    doc = kinesis_record({"id": "k"})
    assert is_unversioned(doc)
    p = plan([doc, {"truncated": True}])
    assert p.accepted == [] and len(p.left) == 2
    assert plan([doc], force=True).accepted == [0]
