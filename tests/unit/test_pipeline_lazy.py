"""Items are built as they are sent, one call ahead: the first call leaves at once, and nothing else changes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from connector import item, pipeline
from connector.config import load_settings
from connector.deadline import Deadline
from connector.putitems import Pacer, PutItemsSink
from connector.response import Outcome
from connector.versions import VersionGuard
from tests.factories import DATASET_ARN, cdc_payload, dynamodb_record, event, kinesis_record
from tests.fakes import FakePersonalize, FakeSQS, moto_state_table

DLQ = "https://sqs.us-east-1.amazonaws.com/111122223333/poison"


def sink_for(fake: FakePersonalize, worst_call_ms: float = 100) -> PutItemsSink:
    pacer = Pacer(1000, clock=lambda: 0.0, sleep=lambda _: None)
    return PutItemsSink(fake.client, DATASET_ARN, worst_call_ms=worst_call_ms, pacer=pacer)


def run(
    records: list[dict[str, Any]],
    fake: FakePersonalize,
    *,
    sqs: FakeSQS | None = None,
    deadline: Deadline | None = None,
    guard: VersionGuard | None = None,
    worst_call_ms: float = 100,
) -> pipeline.Result:
    settings = load_settings({"DATASET_ARN": DATASET_ARN, "DLQ_URL": DLQ})
    return pipeline.run(
        event(*records),
        settings=settings,
        sink=sink_for(fake, worst_call_ms),
        sqs=sqs or FakeSQS(),
        deadline=deadline or Deadline.unbounded(),
        dlq_worst_ms=1_000,
        guard=guard,
    )


def test_the_first_call_leaves_after_two_calls_worth_of_items_are_built_not_the_whole_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[int] = []
    real_build = item.build

    def counting_build(*args: Any, **kwargs: Any) -> Any:
        built.append(1)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(item, "build", counting_build)
    at_first_call: list[int] = []

    def rule(_: list[dict[str, Any]]) -> None:
        if not at_first_call:
            at_first_call.append(len(built))

    fake = FakePersonalize(rule)
    records = [dynamodb_record("INSERT", {"sku": f"s{i}"}, {"sku": f"s{i}", "v": i}) for i in range(1_000)]
    result = run(records, fake)
    assert at_first_call == [pipeline.READY_AHEAD]
    assert len(built) == 1_000
    assert result.counts[Outcome.PUT] == 1_000
    assert [len(c) for c in fake.calls] == [10] * 100  # every call still full


def test_a_deadline_mid_batch_still_validates_and_dead_letters_the_records_after_it() -> None:
    """Once the sink stops, the rest of the batch is built anyway: a poison record behind the stop is
    dead-lettered in this batch, as when everything was built first; the rest is retried, never sent."""
    fake = FakePersonalize()
    records = [dynamodb_record("INSERT", {"sku": f"s{i}"}, {"sku": f"s{i}", "v": i}, seq=str(i)) for i in range(300)]
    records[290] = dynamodb_record("INSERT", {"sku": "bad"}, {"sku": "bad", "__": 1}, seq="290")
    # room for three calls (worst case 2 s each), then only for the DLQ (1 s)
    deadline = Deadline(lambda: 10_000 if len(fake.calls) < 3 else 1_500, margin_ms=0)
    sqs = FakeSQS()
    result = run(records, fake, sqs=sqs, deadline=deadline, worst_call_ms=2_000)
    assert len(fake.calls) == 3
    assert result.counts == {Outcome.PUT: 30, Outcome.POISON: 1, Outcome.RETRY: 269, Outcome.SKIPPED: 0}
    assert [json.loads(m)["sequenceNumber"] for m in sqs.messages] == ["290"]
    assert result.report.stopped == "deadline"
    assert result.response["batchItemFailures"][0]["itemIdentifier"] == "30"


@pytest.fixture
def state() -> Iterator[Any]:
    with moto_state_table("state") as client:
        yield client


def cdc(key: str, v: int, seq: str) -> dict[str, Any]:
    payload = cdc_payload("MODIFY", {"sku": key}, {"sku": key, "v": v}, ts=1_764_000_000_000 + int(seq))
    payload["eventID"] = f"e{seq}"
    return kinesis_record(payload, seq=seq)


def test_versions_are_read_per_100_items_as_they_are_built_and_after_a_failed_read_the_rest_is_retried(
    state: Any,
) -> None:
    reads: list[int] = []
    fail_read: list[int] = []
    real = state.batch_get_item

    def flaky(**kwargs: Any) -> Any:
        reads.append(len(next(iter(kwargs["RequestItems"].values()))["Keys"]))
        if len(reads) in fail_read:
            raise ClientError({"Error": {"Code": "InternalServerError", "Message": "boom"}}, "BatchGetItem")
        return real(**kwargs)

    state.batch_get_item = flaky
    result = run(
        [cdc(f"i{n}", 1, str(n)) for n in range(250)],
        FakePersonalize(),
        guard=VersionGuard(state, "state", DATASET_ARN),
    )
    assert reads == [100, 100, 50] and result.counts[Outcome.PUT] == 250  # a clean run: 100 keys per request
    reads.clear()
    fail_read.append(2)
    fake = FakePersonalize()
    result = run([cdc(f"j{n}", 1, str(n)) for n in range(250)], fake, guard=VersionGuard(state, "state", DATASET_ARN))
    assert reads == [100, 100]  # no read after the failed one
    assert result.state_errors == 1
    assert sorted(fake.items) == sorted(f"j{n}" for n in range(100))
    assert result.counts[Outcome.PUT] == 100 and result.counts[Outcome.RETRY] == 150
    assert result.response["batchItemFailures"][0]["itemIdentifier"] == "100"
