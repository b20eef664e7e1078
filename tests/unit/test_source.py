"""Source step: each format is recognised and parsed; bad payloads become poison, not crashes."""

from __future__ import annotations

import base64

import pytest

from connector.source import EventError, Format, parse_event
from tests.factories import cdc_payload, dynamodb_record, event, kinesis_record


def test_dynamodb_stream_record() -> None:
    rec = dynamodb_record("MODIFY", {"sku": "a"}, {"sku": "a", "n": 1}, {"sku": "a", "n": 0}, seq="42")
    (parsed,) = parse_event(event(rec))
    assert parsed.format is Format.DYNAMODB_STREAM
    assert parsed.error is None
    assert parsed.sequence_number == "42"
    assert parsed.event_name == "MODIFY"
    assert parsed.new_image == {"sku": {"S": "a"}, "n": {"N": "1"}}
    assert parsed.old_image == {"sku": {"S": "a"}, "n": {"N": "0"}}
    assert parsed.image_is_dynamodb_json


def test_kinesis_document() -> None:
    (parsed,) = parse_event(event(kinesis_record({"id": "x", "price": 1.5}, seq="7")))
    assert parsed.format is Format.KINESIS_DOCUMENT
    assert parsed.sequence_number == "7"
    assert parsed.new_image == {"id": "x", "price": 1.5}
    assert not parsed.image_is_dynamodb_json


@pytest.mark.parametrize(
    ("ts", "expected_us"), [(1_764_000_000_123, 1_764_000_000_123_000), (1_764_000_000_123_456, 1_764_000_000_123_456)]
)
def test_kinesis_cdc_and_timestamp_unit(ts: int, expected_us: int) -> None:
    payload = cdc_payload("INSERT", {"sku": "a"}, {"sku": "a"}, ts=ts)
    (parsed,) = parse_event(event(kinesis_record(payload, seq="9")))
    assert parsed.format is Format.KINESIS_CDC
    assert parsed.sequence_number == "9"  # CDC has no DynamoDB sequence number: Kinesis's is reported
    assert parsed.event_name == "INSERT"
    assert parsed.keys == {"sku": {"S": "a"}}
    assert parsed.approximate_ts_us == expected_us


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("!!!not-base64!!!", "not base64"),
        (base64.b64encode(b"{not json").decode(), "not JSON"),
        (base64.b64encode(b"\xff\xfe\x00").decode(), "not JSON"),
        (base64.b64encode(b"[1, 2]").decode(), "JSON list, not an object"),
        (base64.b64encode(b"42").decode(), "JSON int, not an object"),
    ],
)
def test_bad_kinesis_payload_is_poison(data: str, reason: str) -> None:
    (parsed,) = parse_event(event(kinesis_record(data)))
    assert parsed.error is not None and reason in parsed.error
    assert parsed.sequence_number  # still reportable


def test_malformed_records_are_poison_not_crashes() -> None:
    no_body = {"eventSource": "aws:dynamodb", "eventName": "INSERT"}
    bad_name = dynamodb_record("UPSERT", {"sku": "a"}, {"sku": "a"})
    no_new_image = dynamodb_record("INSERT", {"sku": "a"})
    stranger = {"eventSource": "aws:sqs", "body": "{}"}
    parsed = parse_event(event(no_body, bad_name, no_new_image, stranger, "oops"))  # type: ignore[arg-type]
    reasons = [p.error for p in parsed]
    assert reasons[0] == "record has no 'dynamodb' object"
    assert "eventName 'UPSERT'" in (reasons[1] or "")
    assert "NEW_IMAGE or NEW_AND_OLD_IMAGES" in (reasons[2] or "")
    assert reasons[3] == "unknown event source 'aws:sqs'"
    assert reasons[4] == "record is not an object"
    assert [p.position for p in parsed] == [0, 1, 2, 3, 4]


def test_remove_needs_no_new_image() -> None:
    (parsed,) = parse_event(event(dynamodb_record("REMOVE", {"sku": "a"}, old={"sku": "a"})))
    assert parsed.error is None and parsed.new_image is None


@pytest.mark.parametrize("bad", [None, {}, {"Records": "x"}, []])
def test_not_a_stream_event(bad: object) -> None:
    with pytest.raises(EventError):
        parse_event(bad)
