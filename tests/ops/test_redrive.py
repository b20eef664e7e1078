"""``ops redrive``: DLQ records through the current mapping; current table images; nothing lost on a crash."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from connector.response import Outcome, Verdict, dlq_message
from connector.source import parse_event
from ops.backfill import Backfill
from ops.redrive import Redrive
from tests.factories import KINESIS_ARN, items_schema, kinesis_record
from tests.ops.conftest import TABLE, Cloud

# A schema whose PRICE is required: items that keep their price in "listPrice" are poison until the mapping names it.
SCHEMA = items_schema({"name": "TITLE", "type": ["null", "string"]}, {"name": "PRICE", "type": "float"})
BROKEN = json.dumps({"schema": SCHEMA})
FIXED = json.dumps({"schema": SCHEMA, "fields": {"PRICE": "listPrice"}})


def redrive(cloud: Cloud, config: str | None = FIXED, **kwargs: Any) -> Redrive:
    """A redrive against the test cloud; ``config=None`` keeps the cloud's own mapping."""
    return Redrive(
        cloud.settings(CONNECTOR_CONFIG=config) if config is not None else cloud.settings(),
        dynamodb=cloud.ddb,
        sqs=kwargs.pop("sqs", cloud.sqs),
        personalize=cloud.personalize.client,
        show_progress=False,
        wait_s=0,
        visibility_s=kwargs.pop("visibility_s", 30),
        **kwargs,
    )


def poison_catalog(cloud: Cloud, n: int = 25) -> None:
    """n items the broken mapping dead-letters (no PRICE), loaded by a backfill under that mapping."""
    for i in range(n):
        cloud.put(f"s{i:03d}", title=f"t{i}", listPrice=i + 0.5)
    Backfill(
        cloud.settings(CONNECTOR_CONFIG=BROKEN),
        TABLE,
        segments=1,
        dynamodb=cloud.ddb,
        personalize=cloud.personalize.client,
        sqs=cloud.sqs,
        show_progress=False,
    ).run()
    assert cloud.personalize.items == {} and cloud.dlq_depth() == n


def test_redrive_after_a_mapping_fix_puts_the_current_items_and_empties_the_dlq(cloud: Cloud) -> None:
    poison_catalog(cloud)
    cloud.put("s003", title="changed since", listPrice=99.0)  # the DLQ's image is older than the table's
    report = redrive(cloud).run()
    assert (report.received, report.tally.put, report.tally.poison, report.deleted) == (25, 25, 0, 25)
    assert cloud.dlq_depth() == 0
    assert cloud.personalize.items["s003"] == {"title": "changed since", "price": 99.0}
    assert cloud.personalize.items["s010"] == {"title": "t10", "price": 10.5}


def test_what_still_cannot_land_is_dead_lettered_again_with_its_new_reason(cloud: Cloud) -> None:
    poison_catalog(cloud, 3)
    cloud.put("s001", title="t1", listPrice="not a number")
    report = redrive(cloud).run()
    assert (report.tally.put, report.tally.poison, report.deleted) == (2, 1, 3)
    [again] = cloud.dlq()
    assert again["itemId"] == "s001" and "PRICE" in again["reason"]
    assert "required" not in again["reason"]  # the new reason (a bad value), not the old one (missing)


def test_duplicates_are_redriven_once_and_deleted(cloud: Cloud) -> None:
    poison_catalog(cloud, 2)
    bodies = cloud.dlq()
    for body in bodies + bodies + bodies[:1]:  # Lambda's redeliveries dead-letter the same record again
        cloud.sqs.send_message(QueueUrl=cloud.dlq_url, MessageBody=json.dumps(body))
    report = redrive(cloud, batch=3).run()  # duplicates across rounds too
    assert (report.received, report.duplicates, report.tally.put, report.deleted) == (5, 3, 2, 5)
    assert sum(len(c) for c in cloud.personalize.accepted) == 2
    assert cloud.dlq_depth() == 0


def test_a_crash_after_the_put_and_before_the_delete_loses_nothing(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison_catalog(cloud, 12)
    cloud.put("s005", listPrice="bad")  # still poison: dead-lettered again, then the crash

    def crash(*_: Any, **__: Any) -> None:
        raise RuntimeError("the machine died")

    monkeypatch.setattr(Redrive, "_delete", crash)
    with pytest.raises(RuntimeError):
        redrive(cloud, visibility_s=1).run()
    monkeypatch.undo()
    assert len(cloud.personalize.items) == 11
    time.sleep(1.2)  # the received messages reappear
    assert cloud.dlq_depth() == 13  # 12 originals + the one dead-lettered again: nothing lost

    report = redrive(cloud).run()
    assert len(cloud.personalize.items) == 11
    # The second run handles all 13: s005's two messages (different sequence numbers) name one table item,
    # which is re-read and fed once; it is still poison, so it is in the DLQ once again, with its reason.
    assert report.deleted == 13 and report.tally.poison == 1
    [left] = cloud.dlq()
    assert left["itemId"] == "s005" and "coerced" in left["reason"]


def test_a_removed_item_is_redriven_as_a_remove(cloud: Cloud) -> None:
    poison_catalog(cloud, 2)
    cloud.ddb.delete_item(TableName=TABLE, Key={"sku": {"S": "s001"}})
    redrive(
        cloud, config=json.dumps({"schema": SCHEMA, "fields": {"PRICE": "listPrice"}, "onRemove": {"TITLE": "gone"}})
    ).run()
    assert set(cloud.personalize.items) == {"s000", "s001"}
    # A REMOVE: onRemove's properties over the last image known (the DLQ record's).
    assert cloud.personalize.items["s001"] == {"title": "gone", "price": 1.5}
    assert cloud.personalize.items["s000"] == {"title": "t0", "price": 0.5}


def dead_letter_kinesis(cloud: Cloud, document: dict[str, Any], reason: str = "old mapping") -> None:
    record = parse_event({"Records": [kinesis_record(document)]})[0]
    body = dlq_message(Verdict(record, Outcome.POISON, reason, str(document.get("id"))))
    cloud.sqs.send_message(QueueUrl=cloud.dlq_url, MessageBody=body)


def test_a_kinesis_document_needs_force_and_stays_in_the_queue_without_it(cloud: Cloud) -> None:
    dead_letter_kinesis(cloud, {"id": "k1", "title": "doc"})
    report = redrive(cloud, config="{}").run()
    assert report.tally.put == 0 and report.deleted == 0 and sum(report.left.values()) == 1
    assert cloud.dlq_depth() == 1  # released, visible again
    forced = redrive(cloud, config="{}", force=True).run()
    assert forced.tally.put == 1 and forced.deleted == 1 and cloud.dlq_depth() == 0
    assert cloud.personalize.items["k1"] == {"title": "doc"}
    assert KINESIS_ARN  # the factory's stream ARN is the record's eventSourceARN


def test_dry_run_reports_with_the_current_mapping_and_touches_nothing(cloud: Cloud) -> None:
    poison_catalog(cloud, 4)
    cloud.put("s002", listPrice="bad")
    report = redrive(cloud, dry_run=True).run()
    assert report.received == 4 and report.would == {"put": 3, "poison": 1}
    assert cloud.personalize.calls == [] and cloud.dlq_depth() == 4
