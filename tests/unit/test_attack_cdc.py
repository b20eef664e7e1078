"""Attack: CDC over Kinesis ordering, the version guard, and malformed sequence numbers (issue 8 review).

Each test is a minimal reproducer of a violation of the final-state promise or of "no record, however
malformed, fails a whole batch" on the current code.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from connector import pipeline
from connector.config import load_settings
from connector.deadline import Deadline
from connector.putitems import Pacer, PutItemsSink
from connector.response import Outcome
from connector.versions import VersionGuard
from tests.factories import DATASET_ARN, cdc_payload, event, kinesis_record
from tests.fakes import FakePersonalize, FakeSQS, moto_state_table

DLQ = "https://sqs.us-east-1.amazonaws.com/111122223333/poison"
T = 1_764_000_000_000  # ms


def run(records: list[dict[str, Any]], fake: FakePersonalize, guard: VersionGuard | None = None) -> pipeline.Result:
    settings = load_settings({"DATASET_ARN": DATASET_ARN, "DLQ_URL": DLQ})
    sink = PutItemsSink(fake.client, DATASET_ARN, worst_call_ms=1, pacer=Pacer(1e6, sleep=lambda _: None))
    return pipeline.run(
        event(*records), settings=settings, sink=sink, sqs=FakeSQS(), deadline=Deadline.unbounded(), guard=guard
    )


def cdc(v: int, seq: str, ts: int | None, *, extra: dict[str, Any] | None = None, event_id: str | None = None) -> Any:
    payload = cdc_payload("MODIFY", {"sku": "a"}, {"sku": "a", "v": v, **(extra or {})}, ts=ts or T)
    if ts is None:
        del payload["dynamodb"]["ApproximateCreationDateTime"]
    if event_id is not None:
        payload["eventID"] = event_id
    return kinesis_record(payload, seq=seq)


@pytest.fixture
def guard() -> Iterator[VersionGuard]:
    with moto_state_table("state") as client:
        yield VersionGuard(client, "state", DATASET_ARN)


def test_attack_guard_untimed_change_older_than_a_timed_one_crashes_the_batch(guard: VersionGuard) -> None:
    """An item already has a stored version; the batch holds an untimed CDC change and, after it, a timed one.
    The group is ordered by position (not every change has a version), ``candidates[0]`` is the timed one, so
    ``_guard`` compares every candidate with the stored version and hits ``assert version is not None``
    (``None > tuple`` under ``python -O``): the exception escapes ``pipeline.run`` and fails the whole batch."""
    fake = FakePersonalize()
    run([cdc(1, "1", T)], fake, guard)
    result = run([cdc(2, "2", None), cdc(3, "3", T + 2_000)], fake, guard)  # raises today
    assert fake.items == {"a": {"v": 3}}
    assert result.response == {"batchItemFailures": []}


def test_attack_an_untimed_poison_change_flips_the_order_of_timed_changes() -> None:
    """Two timed changes of one item arrive out of order (v2 at T+1 s first, v1 at T second) with an untimed,
    poison change of the same item. Minus the DLQ record, the source's final state is v2. Because one change
    of the group lacks a version, the whole group falls back to stream position and v1 (older) is written."""
    fake = FakePersonalize()
    poison_untimed = cdc(9, "3", None, extra={"__": 1})  # no ASCII letter: poison by the mapping
    result = run([cdc(2, "1", T + 1_000), cdc(1, "2", T), poison_untimed], fake)
    assert result.counts[Outcome.POISON] == 1
    assert fake.items == {"a": {"v": 2}}  # today: {"v": 1}


def test_attack_a_duplicate_with_an_equal_timestamp_regresses_the_item_across_batches(guard: VersionGuard) -> None:
    """Kinesis Data Streams for DynamoDB at millisecond precision: A then B in the same millisecond, then a
    duplicate of A (same eventID, new Kinesis sequence number) in a later batch. The version guard's tie-breaker
    is the Kinesis sequence number, so the duplicate looks newer than B and overwrites it."""
    fake = FakePersonalize()
    a, b = cdc(1, "10", T, event_id="evt-a"), cdc(2, "11", T, event_id="evt-b")
    run([a, b], fake, guard)
    assert fake.items == {"a": {"v": 2}}
    result = run([cdc(1, "12", T, event_id="evt-a")], fake, guard)  # the duplicate of A
    assert fake.items == {"a": {"v": 2}}  # today: {"v": 1}
    assert result.counts[Outcome.PUT] == 0


def test_attack_a_duplicate_with_an_equal_timestamp_wins_inside_one_batch() -> None:
    """The same without the guard, inside one batch: A, B (same millisecond), duplicate of A."""
    fake = FakePersonalize()
    run([cdc(1, "10", T, event_id="evt-a"), cdc(2, "11", T, event_id="evt-b"), cdc(1, "12", T, event_id="evt-a")], fake)
    assert fake.items == {"a": {"v": 2}}  # today: {"v": 1}


@pytest.mark.parametrize("seq", ["\u00b2", "1" * 5_000], ids=["superscript-two", "5000-digits"])
def test_attack_a_malformed_sequence_number_fails_the_whole_batch(seq: str) -> None:
    """``str.isdigit`` accepts '²' (int() does not) and int() refuses more than 4,300 digits: the version is
    computed outside ``from_record``'s try block, so the ValueError escapes and fails the batch."""
    fake = FakePersonalize()
    payload = cdc_payload("MODIFY", {"sku": "b"}, {"sku": "b"}, ts=T)
    result = run([kinesis_record(payload, seq=seq), kinesis_record({"id": "ok"}, seq="2")], fake)  # raises today
    assert fake.items.get("ok") == {}
    assert sum(result.counts.values()) == 2
