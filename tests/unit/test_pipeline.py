"""The whole pipeline with fakes: outcomes that add up, the DLQ, the batch response, the deadline."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from connector import pipeline
from connector.config import load_settings
from connector.deadline import Deadline
from connector.putitems import Pacer, PutItemsSink
from connector.response import Outcome, UnreportableRecordError
from tests.factories import DATASET_ARN, cdc_payload, dynamodb_record, event, kinesis_record
from tests.fakes import FakePersonalize, FakeSQS, reject_ids

DLQ = "https://sqs.us-east-1.amazonaws.com/111122223333/poison"


def run(
    records: list[dict[str, Any]],
    fake: FakePersonalize | None = None,
    sqs: FakeSQS | None = None,
    env: dict[str, str] | None = None,
    deadline: Deadline | None = None,
) -> tuple[pipeline.Result, FakePersonalize, FakeSQS]:
    fake = fake or FakePersonalize()
    sqs = sqs or FakeSQS()
    settings = load_settings({"DATASET_ARN": DATASET_ARN, "DLQ_URL": DLQ, **(env or {})})
    sink = PutItemsSink(
        fake.client, DATASET_ARN, worst_call_ms=100, pacer=Pacer(1000, clock=lambda: 0.0, sleep=lambda _: None)
    )
    result = pipeline.run(
        event(*records),
        settings=settings,
        sink=sink,
        sqs=sqs,
        deadline=deadline or Deadline.unbounded(),
        dlq_worst_ms=1_000,
    )
    return result, fake, sqs


def failures(result: pipeline.Result) -> list[str]:
    return [str(f["itemIdentifier"]) for f in result.response["batchItemFailures"]]


def test_mixed_batch_every_outcome_counted_once() -> None:
    records = [
        dynamodb_record("INSERT", {"sku": "a"}, {"sku": "a", "v": 1}, seq="1"),
        dynamodb_record("MODIFY", {"sku": "a"}, {"sku": "a", "v": 2}, seq="2"),  # supersedes 1
        dynamodb_record("INSERT", {"sku": "bad"}, {"sku": "bad"}, seq="3"),  # rejected by the service
        dynamodb_record("REMOVE", {"sku": "gone"}, old={"sku": "gone"}, seq="4"),  # ignored
        dynamodb_record("INSERT", {"sku": "c"}, {"sku": "c", "__": 1}, seq="5"),  # cannot be named
    ]
    result, fake, sqs = run(records, FakePersonalize(reject_ids("bad")))
    assert result.counts == {Outcome.PUT: 2, Outcome.POISON: 2, Outcome.RETRY: 0, Outcome.SKIPPED: 1}
    assert sum(result.counts.values()) == len(records)
    assert failures(result) == []
    assert fake.items == {"a": {"v": 2}}
    reasons = sorted(json.loads(m)["reason"] for m in sqs.messages)
    assert reasons == [
        "PutItems rejected the item: Invalid item bad",
        "attribute '__' has no ASCII letter or digit to make a property name; exclude it",
    ]


def test_dlq_message_holds_the_original_record_reason_and_source() -> None:
    bad = kinesis_record("%%%", seq="77")
    result, _, sqs = run([bad])
    (message,) = [json.loads(m) for m in sqs.messages]
    assert message["record"] == bad
    assert message["source"] == "aws:kinesis"
    assert message["sequenceNumber"] == "77"
    assert message["eventSourceARN"] == bad["eventSourceARN"]
    assert message["reason"].startswith("data is not base64")
    assert result.dead_lettered == 1


@pytest.mark.parametrize("mode", ["all", "partial"])
def test_failed_dlq_send_turns_poison_into_retry(mode: str) -> None:
    bad = [kinesis_record("%%%", seq=str(10 + i)) for i in range(4)]
    result, _, sqs = run(bad, sqs=FakeSQS(fail=mode))
    retried = failures(result)
    assert len(sqs.messages) + len(retried) == 4  # each record either dead-lettered or retried
    assert result.counts[Outcome.POISON] == len(sqs.messages)
    assert result.counts[Outcome.RETRY] == len(retried) > 0


def test_without_a_dlq_poison_is_retried_never_dropped() -> None:
    result, _, _ = run([kinesis_record("%%%", seq="5")], env={"DLQ_URL": ""})
    assert failures(result) == ["5"]
    assert result.counts[Outcome.RETRY] == 1


def test_failure_identifiers_follow_the_source() -> None:
    fake = FakePersonalize(lambda _: ("ResourceNotFoundException", "no dataset"))
    ddb, _, _ = run([dynamodb_record("INSERT", {"sku": "a"}, {"sku": "a"}, seq="111")], fake)
    cdc = kinesis_record(cdc_payload("INSERT", {"sku": "a"}, {"sku": "a"}), seq="222")
    doc = kinesis_record({"id": "b"}, seq="333")
    kin, _, _ = run([cdc, doc], fake)
    assert failures(ddb) == ["111"]
    assert failures(kin) == ["222", "333"]


def test_superseded_records_share_the_winners_outcome() -> None:
    fake = FakePersonalize(lambda _: ("ThrottlingException", "slow down"))
    recs = [dynamodb_record("MODIFY", {"sku": "a"}, {"sku": "a", "v": v}, seq=str(v)) for v in (1, 2, 3)]
    result, _, _ = run(recs, fake)
    assert failures(result) == ["1", "2", "3"]  # all redelivered from the lowest


def test_a_poison_newest_change_lets_the_last_good_change_land() -> None:
    """Defect 7: the result must not depend on whether the bad change arrived in the same batch."""
    recs = [
        dynamodb_record("MODIFY", {"sku": "a"}, {"sku": "a", "v": 1}, seq="1"),
        dynamodb_record("MODIFY", {"sku": "a"}, {"sku": "a", "a_b": 1, "aB": 2}, seq="2"),
    ]
    result, fake, sqs = run(recs)
    assert result.counts[Outcome.POISON] == 1 and result.counts[Outcome.PUT] == 1
    assert json.loads(sqs.messages[0])["sequenceNumber"] == "2"
    assert fake.items == {"a": {"v": 1}}


def test_deadline_leaves_unsent_items_and_poison_as_retry() -> None:
    recs = [kinesis_record({"id": f"i{n}"}, seq=str(100 + n)) for n in range(25)] + [kinesis_record("%", seq="999")]
    result, fake, sqs = run(recs, deadline=Deadline(lambda: 50.0, margin_ms=10))
    assert fake.calls == [] and sqs.messages == []
    assert len(failures(result)) == 26
    assert result.counts[Outcome.RETRY] == 26


def test_a_record_that_cannot_be_reported_fails_the_whole_batch() -> None:
    rec = kinesis_record({"id": "a"})
    del rec["kinesis"]["sequenceNumber"]
    fake = FakePersonalize(lambda _: ("ThrottlingException", "slow down"))
    with pytest.raises(UnreportableRecordError):
        run([rec], fake)


def test_oversized_dlq_message_keeps_coordinates() -> None:
    huge = kinesis_record({"id": "x", "blob": "z" * 300_000, "__": 1}, seq="55")
    _, _, sqs = run([huge])
    (message,) = [json.loads(m) for m in sqs.messages]
    assert message["record"]["truncated"] is True
    assert message["record"]["eventID"] == huge["eventID"]
    assert message["sequenceNumber"] == "55"


def test_dlq_message_is_ascii_even_for_lone_surrogates_and_control_characters() -> None:
    # Valid JSON whose id decodes to a lone surrogate, with an attribute that makes it poison.
    data = base64.b64encode(b'{"id": "\\ud800 caf\\u00e9 \\u0000", "__": 1}').decode()
    _, _, sqs = run([kinesis_record(data, seq="66")])
    (message,) = sqs.messages
    message.encode("ascii")  # SQS-safe: nothing outside ASCII, so nothing it refuses
    assert json.loads(message)["itemId"] == "\ud800 caf\u00e9 \u0000"


def test_each_dlq_send_must_fit_before_the_deadline() -> None:
    """25 poison records are three SendMessageBatch calls; only the first fits, the rest are retried."""
    checks: list[int] = []

    def remaining() -> float:
        checks.append(1)
        return 10_000 if len(checks) <= 1 else 1_200  # the first DLQ batch fits, then too little time

    bad = [kinesis_record("%%%", seq=str(500 + i)) for i in range(25)]
    result, _, sqs = run(bad, deadline=Deadline(remaining, margin_ms=500))
    assert len(sqs.messages) == 10
    assert result.counts[Outcome.POISON] == 10 and result.counts[Outcome.RETRY] == 15
    assert failures(result) == [str(500 + i) for i in range(10, 25)]
