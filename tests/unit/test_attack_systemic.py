"""Attack: the systemic-rejection streak (issue 8, defect 4) can wedge a stream forever on one item."""

from __future__ import annotations

import json
from typing import Any

from connector import pipeline
from connector.config import load_settings
from connector.deadline import Deadline
from connector.putitems import SYSTEMIC_REJECTION_STREAK, Pacer, PutItemsSink
from tests.factories import DATASET_ARN, dynamodb_record
from tests.fakes import FakePersonalize, FakeSQS

DLQ = "https://sqs.us-east-1.amazonaws.com/111122223333/poison"


def rule(items: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The dataset refuses any item carrying ``bad`` (say, an attribute its schema does not have)."""
    if any(json.loads(i.get("properties", "{}")).get("bad") for i in items):
        return ("InvalidInputException", "Invalid item")
    return None


def drain(records: list[dict[str, Any]], fake: FakePersonalize, sqs: FakeSQS, limit: int = 30) -> int:
    """Lambda's loop: redeliver from the lowest reported sequence number; return the invocations used."""
    settings = load_settings({"DATASET_ARN": DATASET_ARN, "DLQ_URL": DLQ})
    sink = PutItemsSink(fake.client, DATASET_ARN, worst_call_ms=1, pacer=Pacer(1e6, sleep=lambda _: None))
    checkpoint, invocations = 0, 0
    while checkpoint < len(records) and invocations < limit:
        invocations += 1
        batch = records[checkpoint:]
        result = pipeline.run({"Records": batch}, settings=settings, sink=sink, sqs=sqs, deadline=Deadline.unbounded())
        failed = [int(str(f["itemIdentifier"])) for f in result.response["batchItemFailures"]]
        if not failed:
            return invocations
        seqs = [int(r["dynamodb"]["SequenceNumber"]) for r in batch]
        checkpoint += seqs.index(min(failed))
    return invocations


def test_attack_one_item_with_ten_rejected_changes_wedges_the_stream() -> None:
    """One hot item whose every update the dataset refuses (eleven updates in one batch), among good items.

    Defect 7's fallback sends the item's changes one after another; each is rejected alone and counts as a
    distinct change towards ``SYSTEMIC_REJECTION_STREAK``. The newest rides with a good item (whose acceptance
    clears the streak); the next ten are sent alone, one per round, and the tenth looks like a systemic
    rejection: it is reported as retry. On redelivery the same happens again, so the checkpoint never passes
    that record, forever (until the records expire and the window is lost). Nothing here is systemic."""
    n = SYSTEMIC_REJECTION_STREAK + 1
    records = [dynamodb_record("INSERT", {"sku": "g1"}, {"sku": "g1"}, seq="100")]
    records += [
        dynamodb_record("MODIFY", {"sku": "hot"}, {"sku": "hot", "bad": True, "v": v}, seq=str(101 + v))
        for v in range(n)
    ]
    records += [dynamodb_record("INSERT", {"sku": "g2"}, {"sku": "g2"}, seq=str(101 + n))]
    fake, sqs = FakePersonalize(rule), FakeSQS()
    invocations = drain(records, fake, sqs)
    assert invocations < 30, "the stream never drains"
    assert len({json.loads(m)["sequenceNumber"] for m in sqs.messages}) == n  # every bad change dead-lettered
    assert fake.items == {"g1": {}, "g2": {}}


def test_attack_a_lone_item_with_ten_rejected_changes_stops_the_stream() -> None:
    """The same with nothing else in the batch: the tenth change of one item trips the systemic detector."""
    n = SYSTEMIC_REJECTION_STREAK
    records = [
        dynamodb_record("MODIFY", {"sku": "hot"}, {"sku": "hot", "bad": True, "v": v}, seq=str(200 + v))
        for v in range(n)
    ]
    fake, sqs = FakePersonalize(rule), FakeSQS()
    assert drain(records, fake, sqs) < 30, "the stream never drains"
