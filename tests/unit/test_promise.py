"""One test per defect of issue 8 (the final-state promise), each reproduced as the review found it.

Defects 7 and 8 are also guarded in ``test_pipeline.py`` and ``test_change.py``; the convergence property over
whole streams is ``tests/property/test_convergence.py``.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from connector import handler, item, pipeline
from connector.config import ConfigError, load_settings
from connector.deadline import Deadline, OutageBackoff
from connector.putitems import Pacer, PutItemsSink
from connector.response import SQS_MAX_BYTES, Outcome
from connector.versions import Stored, VersionGuard
from tests.factories import DATASET_ARN, FakeContext, cdc_payload, dynamodb_record, event, kinesis_record
from tests.fakes import FakePersonalize, FakeSQS, moto_state_table, reject_ids

DLQ = "https://sqs.us-east-1.amazonaws.com/111122223333/poison"
SECRET = "s3cr3t-customer-value"
SCHEMA = {
    "type": "record",
    "name": "Items",
    "fields": [
        {"name": "ITEM_ID", "type": "string"},
        {"name": "GENRES", "type": ["null", "string"], "categorical": True},
        {"name": "PRICE", "type": ["null", "float"]},
        {"name": "CREATION_TIMESTAMP", "type": ["null", "long"]},
    ],
}


def sink_for(fake: FakePersonalize) -> PutItemsSink:
    return PutItemsSink(fake.client, DATASET_ARN, worst_call_ms=1, pacer=Pacer(1e6, sleep=lambda _: None))


def run(
    records: list[dict[str, Any]],
    fake: FakePersonalize | None = None,
    *,
    env: dict[str, str] | None = None,
    sqs: FakeSQS | None = None,
    sink: PutItemsSink | None = None,
    guard: VersionGuard | None = None,
) -> tuple[pipeline.Result, FakePersonalize, FakeSQS]:
    fake = fake or FakePersonalize()
    sqs = sqs or FakeSQS()
    settings = load_settings({"DATASET_ARN": DATASET_ARN, "DLQ_URL": DLQ, **(env or {})})
    result = pipeline.run(
        event(*records),
        settings=settings,
        sink=sink or sink_for(fake),
        sqs=sqs,
        deadline=Deadline.unbounded(),
        guard=guard,
    )
    assert sum(result.counts.values()) == len(records)
    return result, fake, sqs


def failures(result: pipeline.Result) -> list[str]:
    return [str(f["itemIdentifier"]) for f in result.response["batchItemFailures"]]


# 1 --------------------------------------------------------------------------------------------------------


def test_1_ignored_remove_does_not_hide_the_upserts_before_it() -> None:
    """INSERT, MODIFY, REMOVE of one key in one batch (the event AWS tooling generates) under "ignore"."""
    records = [
        dynamodb_record("INSERT", {"sku": "a"}, {"sku": "a", "v": 1}, seq="1"),
        dynamodb_record("MODIFY", {"sku": "a"}, {"sku": "a", "v": 2}, seq="2"),
        dynamodb_record("REMOVE", {"sku": "a"}, old={"sku": "a", "v": 2}, seq="3"),
    ]
    result, fake, _ = run(records)
    assert fake.items == {"a": {"v": 2}}  # as when the REMOVE arrives in a batch of its own
    assert result.counts[Outcome.PUT] == 2 and result.counts[Outcome.SKIPPED] == 1


# 2 --------------------------------------------------------------------------------------------------------


def test_2_a_redelivery_cannot_bring_back_an_older_cdc_change_without_its_winner() -> None:
    newest = kinesis_record(cdc_payload("MODIFY", {"sku": "a"}, {"sku": "a", "v": 2}, ts=5_000), seq="10")
    blocked = kinesis_record("%%%", seq="11")  # poison whose DLQ send fails: retried
    stale = kinesis_record(cdc_payload("MODIFY", {"sku": "a"}, {"sku": "a", "v": 1}, ts=4_000), seq="12")
    result, fake, _ = run([newest, blocked, stale], sqs=FakeSQS(fail="all"))
    assert fake.items == {"a": {"v": 2}}
    # Lambda redelivers from the lowest reported record: it must include the winner, not just the stale change.
    assert min(int(s) for s in failures(result)) == 10
    again, _, _ = run([newest, blocked, stale], fake, sqs=FakeSQS())
    assert fake.items == {"a": {"v": 2}} and failures(again) == []


def test_2_a_cdc_change_without_a_timestamp_is_ordered_by_position() -> None:
    timed = kinesis_record(cdc_payload("MODIFY", {"sku": "a"}, {"sku": "a", "v": 1}, ts=5_000), seq="1")
    untimed_payload = cdc_payload("MODIFY", {"sku": "a"}, {"sku": "a", "v": 2})
    del untimed_payload["dynamodb"]["ApproximateCreationDateTime"]
    _, fake, _ = run([timed, kinesis_record(untimed_payload, seq="2")])
    assert fake.items == {"a": {"v": 2}}  # not ranked as time 0, before everything


def test_7_when_putitems_rejects_the_newest_change_the_next_newest_is_written() -> None:
    records = [
        dynamodb_record("MODIFY", {"sku": "a"}, {"sku": "a", "v": 1}, seq="1"),
        dynamodb_record("MODIFY", {"sku": "a"}, {"sku": "a", "v": 2, "bad": True}, seq="2"),
        dynamodb_record("MODIFY", {"sku": "b"}, {"sku": "b", "v": 1}, seq="3"),
    ]

    def rule(items: list[dict[str, Any]]) -> tuple[str, str] | None:
        return ("InvalidInputException", "bad") if any('"bad"' in i.get("properties", "") for i in items) else None

    result, fake, sqs = run(records, FakePersonalize(rule))
    assert fake.items == {"a": {"v": 1}, "b": {"v": 1}}
    assert [json.loads(m)["sequenceNumber"] for m in sqs.messages] == ["2"]
    assert result.counts[Outcome.PUT] == 2 and failures(result) == []


def test_a_kinesis_record_without_an_event_source_arn_is_processed() -> None:
    rec = kinesis_record({"id": "a", "v": 1}, seq="1")
    del rec["eventSourceARN"]
    _, fake, _ = run([rec])
    assert fake.items == {"a": {"v": 1}}


def test_the_systemic_streak_restarts_after_an_accepted_call() -> None:
    bad = {f"b{n}" for n in range(18)}
    fake = FakePersonalize(reject_ids(*bad))
    sink = sink_for(fake)
    first = [dynamodb_record("INSERT", {"sku": f"b{n}"}, {"sku": f"b{n}"}, seq=str(10 + n)) for n in range(9)]
    run(first, fake, sink=sink)  # nine rejected on their own: not yet systemic
    run([dynamodb_record("INSERT", {"sku": "good"}, {"sku": "good"}, seq="30")], fake, sink=sink)
    second = [dynamodb_record("INSERT", {"sku": f"b{n}"}, {"sku": f"b{n}"}, seq=str(40 + n)) for n in range(9, 18)]
    result, _, sqs = run(second, fake, sink=sink)
    assert result.report.systemic is None and len(sqs.messages) == 9  # the count started again at the good call


# 3 --------------------------------------------------------------------------------------------------------


@pytest.fixture
def state() -> Iterator[Any]:
    with moto_state_table("state") as client:
        yield client


def cdc(key: str, v: int, ts: int, seq: str, name: str = "MODIFY") -> dict[str, Any]:
    new = {"sku": key, "v": v} if name != "REMOVE" else None
    return kinesis_record(cdc_payload(name, {"sku": key}, new, old={"sku": key, "v": v}, ts=ts), seq=seq)


def test_3_version_guard_refuses_an_older_change_in_a_later_batch(state: Any) -> None:
    guard = VersionGuard(state, "state", DATASET_ARN)
    fake = FakePersonalize()
    run([cdc("a", 2, 5_000, "20"), cdc("b", 1, 5_000, "21")], fake, guard=guard)
    result, _, _ = run([cdc("a", 1, 4_000, "22"), cdc("a", 2, 5_000, "20")], fake, guard=guard)  # late + duplicate
    assert fake.items == {"a": {"v": 2}, "b": {"v": 1}}
    assert result.stale == 2 and result.counts[Outcome.SKIPPED] == 2
    assert len(fake.accepted) == 1  # nothing was sent for the stale batch
    run([cdc("a", 3, 6_000, "23")], fake, guard=guard)
    assert fake.items["a"] == {"v": 3}


def test_3_concurrent_writers_cannot_regress_the_stored_version(state: Any) -> None:
    guard = VersionGuard(state, "state", DATASET_ARN)
    assert guard.record([("a", (6_000_000, 9), frozenset({"e1"}))]) == []
    assert guard.record([("a", (5_000_000, 99), frozenset({"e0"}))]) == []  # refused by the condition, no error
    assert guard.stored(["a"]) == {"a": Stored((6_000_000, 9), frozenset({"e1"}))}
    assert guard.record([("a", (6_000_000, 10), frozenset({"e2"}))]) == []  # same instant: later seq, both ids
    assert guard.stored(["a", "missing"]) == {"a": Stored((6_000_000, 10), frozenset({"e1", "e2"}))}
    assert guard.record([("a", (6_000_000, 5), frozenset({"e3"}))]) == []  # same instant, earlier: id added only
    (stored,) = guard.stored(["a"]).values()
    assert stored.version == (6_000_000, 10) and stored.event_ids == {"e1", "e2", "e3"}
    assert stored.supersedes((6_000_000, 11), "e1")  # a late copy of a change of that instant
    assert not stored.supersedes((6_000_000, 11), "e9") and not stored.supersedes((6_000_001, 0), None)


def test_3_version_reads_are_batched(state: Any) -> None:
    guard = VersionGuard(state, "state", DATASET_ARN)
    guard.stored([f"i{n}" for n in range(250)])
    assert guard.requests == 3  # 100 keys per BatchGetItem


def test_3_an_unreadable_state_table_retries_cdc_changes_and_lands_the_rest(state: Any) -> None:
    guard = VersionGuard(state, "no-such-table", DATASET_ARN)
    doc = kinesis_record({"id": "plain"}, seq="31")
    result, fake, _ = run([cdc("a", 1, 5_000, "30"), doc], guard=guard)
    assert failures(result) == ["30"] and result.state_errors == 1
    assert fake.items == {"plain": {}}  # documents carry no version: not guarded


# 4 --------------------------------------------------------------------------------------------------------


def test_4_only_an_items_dataset_is_accepted() -> None:
    users = DATASET_ARN.replace("/ITEMS", "/USERS")
    with pytest.raises(ConfigError, match="not an Items dataset"):
        load_settings({"DATASET_ARN": users})


def test_4_a_systemic_rejection_stops_and_retries_instead_of_dead_lettering_everything() -> None:
    fake = FakePersonalize(lambda _: ("InvalidInputException", "schema mismatch"))
    records = [dynamodb_record("INSERT", {"sku": f"i{n}"}, {"sku": f"i{n}"}, seq=str(100 + n)) for n in range(1_000)]
    result, _, sqs = run(records, fake)
    assert sqs.messages == []
    assert result.counts[Outcome.RETRY] == 1_000
    assert len(fake.calls) == 19  # one call bisected down to its ten items, then stop
    assert result.report.systemic == "SystemicRejection"


def test_4_one_bad_item_among_good_ones_still_goes_to_the_dlq() -> None:
    fake = FakePersonalize(reject_ids("i3"))
    records = [dynamodb_record("INSERT", {"sku": f"i{n}"}, {"sku": f"i{n}"}, seq=str(100 + n)) for n in range(30)]
    result, _, sqs = run(records, fake)
    assert [json.loads(m)["itemId"] for m in sqs.messages] == ["i3"]
    assert result.counts[Outcome.PUT] == 29 and result.report.systemic is None


def test_4_a_bad_item_redelivered_behind_throttles_is_not_mistaken_for_a_systemic_rejection() -> None:
    """The same rejected change counts once: redeliveries cannot build a streak and wedge the stream."""
    throttled = iter([True] * 30)

    def rule(items: list[dict[str, Any]]) -> tuple[str, str] | None:
        if any(i["itemId"] == "bad" for i in items):
            return ("InvalidInputException", "bad")
        return ("ThrottlingException", "slow") if next(throttled, False) else None

    fake = FakePersonalize(rule)
    sink = sink_for(fake)
    records = [
        dynamodb_record("INSERT", {"sku": "bad"}, {"sku": "bad"}, seq="1"),
        dynamodb_record("INSERT", {"sku": "good"}, {"sku": "good"}, seq="2"),
    ]
    for _ in range(40):
        result, _, _ = run(records, fake, sink=sink)
        if not failures(result):
            break
        assert result.report.systemic is None
    assert fake.items == {"good": {}}


def test_4_systemic_rejection_is_published_as_a_metric(capsys: pytest.CaptureFixture[str]) -> None:
    """Every attempt (not only accepted calls) is counted over the wire in ``tests/integration``."""
    fake = FakePersonalize(lambda _: ("InvalidInputException", "wrong dataset"))
    settings = load_settings({"DATASET_ARN": DATASET_ARN, "DLQ_URL": DLQ})
    runtime = handler.build_runtime(settings, personalize=fake.client, sqs=FakeSQS())
    runtime.backoff = OutageBackoff(sleep=lambda _: None)
    handler.reset(runtime)
    try:
        records = [dynamodb_record("INSERT", {"sku": f"i{n}"}, {"sku": f"i{n}"}) for n in range(10)]
        response = handler.handler(event(*records), FakeContext())
    finally:
        handler.reset()
    assert len(response["batchItemFailures"]) == 10
    doc = next(json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line)
    assert doc["SystemicErrors"] == [1.0] and doc["PutItemsRejected"] == [19.0] and doc["RecordsPoison"] == [0.0]
    assert runtime.backoff.failures == 1  # the next failing invocation waits before returning


# 5 --------------------------------------------------------------------------------------------------------


def test_5_a_deeply_nested_document_is_poison_not_a_crash() -> None:
    deep = base64.b64encode(b"[" * 100_000 + b"]" * 100_000).decode()
    result, _, sqs = run([kinesis_record(deep, seq="1"), kinesis_record({"id": "ok"}, seq="2")])
    assert result.counts[Outcome.POISON] == 1 and result.counts[Outcome.PUT] == 1
    assert "nested too deeply" in json.loads(sqs.messages[0])["reason"]


@pytest.mark.parametrize(("field", "value"), [("PRICE", "1" + "0" * 400), ("CREATION_TIMESTAMP", "9" * 400)])
def test_5_numbers_beyond_float_range_are_poison_not_a_crash(field: str, value: str) -> None:
    mapping = json.dumps({"schema": SCHEMA})
    rec = kinesis_record({"id": "x", field.lower(): value}, seq="1")
    result, _, sqs = run([rec], env={"CONNECTOR_CONFIG": mapping})
    assert result.counts[Outcome.POISON] == 1
    assert "out of range" in json.loads(sqs.messages[0])["reason"]


def test_5_any_exception_while_building_an_item_makes_only_that_record_poison(monkeypatch: pytest.MonkeyPatch) -> None:
    real = item.build

    def build(change: Any, mapping: Any) -> Any:
        if change.item_id == "boom":
            raise KeyError(SECRET)
        return real(change, mapping)

    monkeypatch.setattr(item, "build", build)
    _, fake, sqs = run([kinesis_record({"id": "boom"}, seq="1"), kinesis_record({"id": "ok"}, seq="2")])
    assert fake.items == {"ok": {}}
    reason = json.loads(sqs.messages[0])["reason"]
    assert "KeyError" in reason and SECRET not in reason


# 6 --------------------------------------------------------------------------------------------------------


def test_6_every_dlq_message_fits_whatever_the_input() -> None:
    huge_id = "i" * 300_000
    huge_name = "_" * 300_000  # no letters: poison, and its name is in the reason
    records = [
        kinesis_record({"id": huge_id}, seq="1"),  # id over 256 characters
        kinesis_record({"id": "x", huge_name: 1}, seq="2"),
    ]
    _, _, sqs = run(records)
    assert len(sqs.messages) == 2
    for text in sqs.messages:
        assert len(text.encode()) < SQS_MAX_BYTES
    first = json.loads(sqs.messages[0])
    assert first["itemIdLength"] == 300_000 and len(first["itemId"]) == 1_024
    second = json.loads(sqs.messages[1])
    assert second["reasonLength"] > 300_000 and second["record"]["truncated"] is True


# 9 --------------------------------------------------------------------------------------------------------


def test_9_the_reserve_covers_retry_after_and_adaptive_waits() -> None:
    settings = load_settings({"DATASET_ARN": DATASET_ARN, "PUT_ITEMS_RETRY_MODE": "adaptive"})
    adaptive = handler.build_runtime(settings, sqs=FakeSQS()).sink._worst_call_ms
    standard = handler.build_runtime(load_settings({"DATASET_ARN": DATASET_ARN}), sqs=FakeSQS()).sink._worst_call_ms
    # 3 attempts: 3 × (2 + 5 + 1/9.7) s + backoffs (1 + 5) + (2 + 5) s; adaptive adds 3 × 2 s.
    assert standard == pytest.approx((3 * (7 + 1 / 9.7) + 13) * 1000)
    assert adaptive - standard == pytest.approx(6_000)


# 10 -------------------------------------------------------------------------------------------------------


def test_10_no_property_value_reaches_any_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    def rule(items: list[dict[str, Any]]) -> tuple[str, str] | None:
        hits = [i for i in items if SECRET in i.get("properties", "")]
        return ("InvalidInputException", f"Invalid value {SECRET}") if hits else None

    records = [
        dynamodb_record("INSERT", {"sku": "a"}, {"sku": "a", "title": SECRET}, seq="1"),
        dynamodb_record("INSERT", {"sku": "b"}, {"sku": "b", "n": {"N": SECRET}}, seq="2", raw_images=True),
        dynamodb_record("INSERT", {"sku": "c"}, {"sku": "c", "x": {"Q": SECRET}}, seq="3", raw_images=True),
    ]
    records[1]["dynamodb"]["Keys"] = {"sku": {"S": "b"}}
    records[2]["dynamodb"]["Keys"] = {"sku": {"S": "c"}}
    result, _, sqs = run(records, FakePersonalize(rule))
    assert result.counts[Outcome.POISON] == 3
    for record in caplog.records:
        assert SECRET not in json.dumps(record.__dict__, default=str)
    reasons = [json.loads(m)["reason"] for m in sqs.messages]
    assert sum(SECRET in r for r in reasons) == 1  # only the service's own message, and only in the DLQ


# 11 -------------------------------------------------------------------------------------------------------


def test_11_two_attributes_for_one_schema_field_are_poison_in_both_modes() -> None:
    image = {"sku": "a", "genres": "x", "GENRES": "y"}
    with_schema, _, sqs = run(
        [dynamodb_record("INSERT", {"sku": "a"}, image)], env={"CONNECTOR_CONFIG": json.dumps({"schema": SCHEMA})}
    )
    without, _, _ = run([dynamodb_record("INSERT", {"sku": "a"}, image)])
    assert with_schema.counts[Outcome.POISON] == 1 and without.counts[Outcome.POISON] == 1
    assert "'genres' and 'GENRES' both match" in json.loads(sqs.messages[0])["reason"]
    _, fake, _ = run(
        [dynamodb_record("INSERT", {"sku": "a"}, image)],
        env={"CONNECTOR_CONFIG": json.dumps({"schema": SCHEMA, "fields": {"GENRES": "genres"}})},
    )
    assert fake.items == {"a": {"genres": "x"}}  # naming one in 'fields' resolves it


# TTL deletes and outages ----------------------------------------------------------------------------------


def test_ttl_deletes_are_skipped_when_asked_and_user_deletes_are_not() -> None:
    ttl = dynamodb_record("REMOVE", {"sku": "a"}, old={"sku": "a"}, seq="1")
    ttl["userIdentity"] = {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
    user = dynamodb_record("REMOVE", {"sku": "b"}, old={"sku": "b"}, seq="2")
    env = {"CONNECTOR_CONFIG": json.dumps({"onRemove": {"STATUS": "deleted"}}), "SKIP_TTL_DELETES": "true"}
    result, fake, _ = run([ttl, user], env=env)
    assert fake.items == {"b": {"status": "deleted"}}
    assert result.counts[Outcome.SKIPPED] == 1


def test_outage_backoff_grows_is_bounded_by_the_deadline_and_resets() -> None:
    slept: list[float] = []
    backoff = OutageBackoff(base_s=1, max_s=8, sleep=slept.append)
    roomy = Deadline(lambda: 600_000, margin_ms=5_000)
    for _ in range(5):
        backoff.after(True, roomy)
    backoff.after(True, Deadline(lambda: 7_000, margin_ms=5_000))  # only 2 s left before the margin
    backoff.after(False, roomy)
    backoff.after(True, roomy)
    assert slept == [1, 2, 4, 8, 8, 2, 1]
