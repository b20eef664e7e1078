"""Adversarial tests of ``ops.feed`` / ``ops redrive``: inputs and failures chosen to break "never lose a message".

Each test is an attack. The ones named after a defect failed when the attack was written and were fixed
(``ops/feed.py`` retries by outcome, not by sequence number; a missing table leaves its messages with the
reason; a truncated payload is one unreadable object, not the end of the run); the others held.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from botocore.exceptions import ClientError

from connector.response import Outcome, Verdict, dlq_message
from connector.source import parse_event
from ops.feed import Feeder, Stopped, Systemic
from tests.factories import cdc_payload, kinesis_record
from tests.ops.conftest import Cloud
from tests.ops.test_redrive import redrive


class DeadLetterDown:
    """An SQS client whose SendMessageBatch is denied (the re-dead-letter fails); everything else is moto's."""

    def __init__(self, sqs: Any) -> None:
        self._sqs = sqs

    def send_message_batch(self, **_: Any) -> Any:
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "SendMessageBatch")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sqs, name)


def seqless(data: bytes) -> dict[str, Any]:
    """A Kinesis record that lost its sequence number (a hand-edited or corrupted DLQ body)."""
    r = kinesis_record(data, seq="1")
    del r["kinesis"]["sequenceNumber"]
    return r


def cdc(sku: str, title: str, seq: str, ts: int) -> dict[str, Any]:
    return kinesis_record(cdc_payload("MODIFY", {"sku": sku}, {"sku": sku, "title": title}, ts=ts), seq=seq)


def dead_letter(cloud: Cloud, record: dict[str, Any], reason: str = "poison under the old mapping") -> None:
    [parsed] = parse_event({"Records": [record]})
    body = dlq_message(Verdict(parsed, Outcome.POISON, reason))
    cloud.sqs.send_message(QueueUrl=cloud.dlq_url, MessageBody=body)


def stop_after(seconds: float) -> threading.Event:
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.daemon = True
    timer.start()
    return stop


# --- Feeder.feed: every record ends put, poison or skipped, or feed() does not return ----------------------------


def test_feed_does_not_return_while_a_record_without_a_sequence_number_is_still_retry(cloud: Cloud) -> None:
    stop = stop_after(1.0)
    feeder = Feeder(
        cloud.settings(),
        dynamodb=cloud.ddb,
        personalize=cloud.personalize.client,
        sqs=DeadLetterDown(cloud.sqs),  # the garbage record is poison, its dead-letter fails: retry
        stop=stop,
        backoff_base_s=0.01,
        backoff_max_s=0.02,
    )
    good = kinesis_record({"itemId": "a", "title": "x"}, seq="100")
    try:
        feeder.feed([good, seqless(b"not json")])
        returned = True
    except Stopped:
        returned = False
    t = feeder.tally
    assert not returned, f"feed() returned with a record unhandled (tally: put {t.put}, poison {t.poison})"


def test_feed_counts_each_record_once_by_its_final_outcome(cloud: Cloud) -> None:
    """Two records, one throttled twice: the tally must say 2 handled, not 2 + re-sends."""
    throttled = {"n": 0}

    def rule(items: list[dict[str, Any]]) -> tuple[str, str] | None:
        if any(i["itemId"] == "b" for i in items) and throttled["n"] < 2:
            throttled["n"] += 1
            return ("ThrottlingException", "slow down")
        return None

    cloud.personalize.rule = rule
    feeder = Feeder(
        cloud.settings(),
        dynamodb=cloud.ddb,
        personalize=cloud.personalize.client,
        backoff_base_s=0.01,
        backoff_max_s=0.02,
    )
    feeder.feed([kinesis_record({"itemId": "a", "v": 1}, seq="10"), kinesis_record({"itemId": "b", "v": 2}, seq="11")])
    t = feeder.tally
    assert (t.put, t.poison, t.skipped) == (2, 0, 0)
    assert cloud.personalize.items == {"a": {"v": 1}, "b": {"v": 2}}


# --- redrive: a message is deleted only when its record was handled ---------------------------------------------


def test_a_record_without_a_sequence_number_does_not_abort_the_redrive(cloud: Cloud) -> None:
    dead_letter(cloud, cdc("s1", "fine now", seq="100", ts=1_764_000_000_000))
    garbage = seqless(b"not json")
    cloud.sqs.send_message(
        QueueUrl=cloud.dlq_url,
        MessageBody=json.dumps(
            {"reason": "unparseable", "eventSourceARN": garbage["eventSourceARN"], "record": garbage}
        ),
    )
    job = redrive(cloud, None, sqs=DeadLetterDown(cloud.sqs), stop=stop_after(1.5))
    assert job.feeder is not None
    job.feeder._backoff = (0.01, 0.02)
    job.run()
    assert cloud.dlq_depth() >= 1, "the garbage record's message was deleted: lost"


def test_a_systemic_failure_deletes_nothing_ends_the_run_and_the_messages_come_back(cloud: Cloud) -> None:
    for i in range(5):
        dead_letter(cloud, cdc(f"s{i}", f"t{i}", seq=str(100 + i), ts=1_764_000_000_000 + i))

    def denied(_: list[dict[str, Any]]) -> tuple[str, str]:
        return ("AccessDeniedException", "not authorized to perform personalize:PutItems")

    cloud.personalize.rule = denied
    stop = stop_after(1.0)
    job = redrive(cloud, None, visibility_s=1, stop=stop)
    assert job.feeder is not None
    job.feeder._backoff = (0.01, 0.05)
    # A denied PutItems does not go away by waiting: the run ends with a one-line error (exit 2 from the CLI)
    # before the operator's stop, and releases the messages it held.
    with pytest.raises(Systemic, match="personalize:PutItems permission"):
        job.run()
    assert not stop.is_set() and job.report.deleted == 0 and cloud.personalize.items == {}
    got = cloud.sqs.receive_message(QueueUrl=cloud.dlq_url, MaxNumberOfMessages=10, VisibilityTimeout=0)
    assert len(got.get("Messages", [])) == 5

    cloud.personalize.rule = lambda _: None  # the outage is over
    report = redrive(cloud, None, visibility_s=60).run()
    assert (report.tally.put, report.deleted) == (5, 5) and cloud.dlq_depth() == 0
    assert cloud.personalize.items == {f"s{i}": {"title": f"t{i}"} for i in range(5)}


def test_a_stale_cdc_copy_in_the_dlq_cannot_regress_an_item_the_stream_updated_since(cloud: Cloud) -> None:
    feeder = Feeder(
        cloud.settings(),
        dynamodb=cloud.ddb,
        personalize=cloud.personalize.client,
        backoff_base_s=0.01,
        backoff_max_s=0.02,
    )
    feeder.feed([cdc("s1", "new", seq="200", ts=1_764_000_000_500)])  # the stream wrote the newer version
    dead_letter(cloud, cdc("s1", "old", seq="100", ts=1_764_000_000_000))  # an older change, dead-lettered
    report = redrive(cloud, None).run()
    assert report.deleted == 1 and report.tally.skipped == 1
    assert cloud.personalize.items["s1"] == {"title": "new"}


def test_a_message_from_a_deleted_table_does_not_block_the_redrive_of_the_others(cloud: Cloud) -> None:
    from tests.factories import dynamodb_record

    for i in range(3):
        cloud.put(f"s{i}", title=f"t{i}")
        rec = dynamodb_record("INSERT", {"sku": f"s{i}"}, {"sku": f"s{i}", "title": f"t{i}"})
        rec["eventSourceARN"] = "arn:aws:dynamodb:us-east-1:123456789012:table/catalog/stream/2025-01-01T00:00:00.000"
        dead_letter(cloud, rec)
    gone = dynamodb_record("INSERT", {"sku": "x"}, {"sku": "x", "title": "x"})
    gone["eventSourceARN"] = "arn:aws:dynamodb:us-east-1:123456789012:table/old-catalog/stream/2024-01-01T00:00:00.000"
    dead_letter(cloud, gone)
    report = redrive(cloud, None).run()
    assert report.deleted == 3
    assert set(cloud.personalize.items) == {"s0", "s1", "s2"}
