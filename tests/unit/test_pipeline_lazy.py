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


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per ``item.build`` call from now on."""
    calls: list[int] = []
    real_build = item.build

    def counting_build(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(item, "build", counting_build)
    return calls


def test_the_first_call_leaves_after_two_calls_worth_of_items_are_built_not_the_whole_batch(built: list[int]) -> None:
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


def test_after_a_deadline_stop_nothing_more_is_built_and_the_redelivery_dead_letters_the_poison_behind_it(
    built: list[int],
) -> None:
    """Once the sink stops, the groups not built yet are not built (no deadline check reserved time for them):
    they are retried, and the redelivery validates them, so a poison record behind the stop still reaches the
    DLQ, one invocation later."""
    fake = FakePersonalize()
    records = [dynamodb_record("INSERT", {"sku": f"s{i}"}, {"sku": f"s{i}", "v": i}, seq=str(i)) for i in range(300)]
    records[290] = dynamodb_record("INSERT", {"sku": "bad"}, {"sku": "bad", "__": 1}, seq="290")
    # room for three calls (worst case 2 s each), then only for the DLQ (1 s)
    deadline = Deadline(lambda: 10_000 if len(fake.calls) < 3 else 1_500, margin_ms=0)
    result = run(records, fake, deadline=deadline, worst_call_ms=2_000)
    assert len(fake.calls) == 3 and result.report.stopped == "deadline"
    assert len(built) == pipeline.READY_AHEAD + 3 * 10  # one call ahead, nothing after the stop
    assert result.counts == {Outcome.PUT: 30, Outcome.POISON: 0, Outcome.RETRY: 270, Outcome.SKIPPED: 0}
    first_retried = result.response["batchItemFailures"][0]["itemIdentifier"]
    assert first_retried == "30"
    sqs = FakeSQS()
    redelivered = run(records[30:], fake, sqs=sqs)
    assert redelivered.counts == {Outcome.PUT: 269, Outcome.POISON: 1, Outcome.RETRY: 0, Outcome.SKIPPED: 0}
    assert [json.loads(m)["sequenceNumber"] for m in sqs.messages] == ["290"]
    assert len(fake.items) == 299


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


def test_an_older_timed_change_sent_as_a_fallback_is_guarded_too(state: Any) -> None:
    """The newest change of an item carries no timestamp (it cannot be guarded) and PutItems rejects it: the
    older change sent in its place does carry one, and must not overwrite a newer version already written
    (the attacker's find: the guard looked at the newest candidate only)."""
    guard = VersionGuard(state, "state", DATASET_ARN)
    fake = FakePersonalize(
        lambda items: (
            ("InvalidInputException", "bad") if any("reject" in i.get("properties", "") for i in items) else None
        )
    )
    run([cdc("a", 3, "50")], fake, guard=guard)  # version (ts+50) written
    untimed = cdc_payload("MODIFY", {"sku": "a"}, {"sku": "a", "v": 9, "reject": True})
    del untimed["dynamodb"]["ApproximateCreationDateTime"]
    untimed["eventID"] = "e-untimed"
    result = run([cdc("a", 1, "40"), kinesis_record(untimed, seq="60")], fake, guard=guard)
    assert fake.items["a"] == {"v": 3}
    assert result.stale == 1 and result.counts[Outcome.POISON] == 1


class ExpectingPacer(Pacer):
    """A pacer that records what the pipeline tells it (``expect``), as the shared budget would be told."""

    def __init__(self) -> None:
        super().__init__(1000, clock=lambda: 0.0, sleep=lambda _: None)
        self.told: list[tuple[int, bool]] = []

    def expect(self, calls: int, *, exact: bool) -> None:
        self.told.append((calls, exact))


def told(records: list[dict[str, Any]], fake: FakePersonalize) -> list[tuple[int, bool]]:
    pacer = ExpectingPacer()
    sink = PutItemsSink(fake.client, DATASET_ARN, worst_call_ms=100, pacer=pacer)
    settings = load_settings({"DATASET_ARN": DATASET_ARN, "DLQ_URL": DLQ})
    pipeline.run(
        event(*records), settings=settings, sink=sink, sqs=FakeSQS(), deadline=Deadline.unbounded(), dlq_worst_ms=1_000
    )
    return pacer.told


def test_a_small_batch_is_built_whole_and_its_exact_calls_told_before_the_first(built: list[int]) -> None:
    """At most 100 groups (one version read): every item is built before the first call, so the budget is told
    the exact calls at once and may reserve them as one block (whole batches)."""
    fake = FakePersonalize()
    records = [dynamodb_record("INSERT", {"sku": f"s{i}"}, {"sku": f"s{i}", "title": "t"}) for i in range(45)]
    assert told(records, fake) == [(5, True)]
    assert len(built) == 45 and len(fake.calls) == 5


def test_a_big_batch_is_told_an_upper_bound_then_the_exact_rest_once_all_is_built() -> None:
    fake = FakePersonalize()
    records = [dynamodb_record("INSERT", {"sku": f"s{i}"}, {"sku": f"s{i}", "title": "t"}) for i in range(250)]
    hints = told(records, fake)
    assert hints[0] == (25, False)  # 250 groups, not built yet: at most 25 calls
    assert len(hints) == 2 and hints[1][1] is True and hints[1][0] <= 3  # the rest, exact, near the end
    assert len(fake.calls) == 25
