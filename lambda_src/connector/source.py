"""Step 1, source: recognise each record of a Lambda stream event and parse it.

Three formats reach the same handler:

* **DynamoDB Streams** (``eventSource: aws:dynamodb``): images in DynamoDB JSON, failures reported with
  ``dynamodb.SequenceNumber``.
* **Kinesis, plain JSON documents** (``eventSource: aws:kinesis``): base64 data holding one JSON object.
* **Kinesis, DynamoDB CDC** (Kinesis Data Streams for DynamoDB): base64 data holding
  ``{eventName, eventSource: "aws:dynamodb", dynamodb: {Keys, NewImage, OldImage, ApproximateCreationDateTime}}``.
  It has no DynamoDB sequence number, so failures are reported with the Kinesis sequence number, and its order
  key is ``ApproximateCreationDateTime`` (milliseconds or microseconds, detected and normalised to µs).

Kinesis metadata is read through Powertools' data class. A record that cannot be parsed is not an exception: it
comes back with ``error`` set, and the pipeline treats it as poison. Images stay in their wire form here; they
are converted only for the change that wins coalescing (see ``putitems.coalesce``).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import KinesisStreamRecord

DYNAMODB = "aws:dynamodb"
KINESIS = "aws:kinesis"
EVENT_NAMES = frozenset({"INSERT", "MODIFY", "REMOVE"})
# DynamoDB Time to Live deletes carry userIdentity {"type": "Service", "principalId": TTL_PRINCIPAL}.
TTL_PRINCIPAL = "dynamodb.amazonaws.com"
# ApproximateCreationDateTime above this is in microseconds (1e14 ms is the year 5138).
_MICROS_THRESHOLD = 10**14


class Format(StrEnum):
    DYNAMODB_STREAM = "dynamodb-stream"
    KINESIS_DOCUMENT = "kinesis-document"
    KINESIS_CDC = "kinesis-cdc"


class EventError(ValueError):
    """The event as a whole is not a stream event this connector can read."""


@dataclass(slots=True)
class SourceRecord:
    """One record of the event, parsed. ``image_is_dynamodb_json`` tells how to read the images."""

    position: int
    raw: dict[str, Any]
    event_source: str
    sequence_number: str | None
    event_source_arn: str | None
    format: Format | None = None
    event_name: str | None = None  # INSERT / MODIFY / REMOVE for the DynamoDB formats
    keys: dict[str, Any] | None = None
    new_image: dict[str, Any] | None = None
    old_image: dict[str, Any] | None = None
    approximate_ts_us: int | None = None
    cdc_event_id: str | None = None  # CDC over Kinesis: the change's eventID (a duplicate delivery repeats it)
    ttl_delete: bool = False  # a REMOVE made by DynamoDB's Time to Live, not by a caller
    error: str | None = None

    @property
    def image_is_dynamodb_json(self) -> bool:
        return self.format is not Format.KINESIS_DOCUMENT


def parse_event(event: Any) -> list[SourceRecord]:
    """Parse every record of a DynamoDB Streams or Kinesis event, in delivery order."""
    if not isinstance(event, dict) or not isinstance(event.get("Records"), list):
        raise EventError("not a DynamoDB Streams or Kinesis event: no 'Records' list")
    parsed = []
    for position, raw in enumerate(event["Records"]):
        try:
            parsed.append(_record(position, raw))
        except Exception as exc:  # one malformed record must never fail the batch: it becomes poison
            parsed.append(_unparseable(position, raw, f"record cannot be parsed ({type(exc).__name__})"))
    return parsed


def _record(position: int, raw: Any) -> SourceRecord:
    if not isinstance(raw, dict):
        return SourceRecord(position, {"record": raw}, "", None, None, error="record is not an object")
    source = raw.get("eventSource") or (DYNAMODB if "dynamodb" in raw else KINESIS if "kinesis" in raw else "")
    if source == DYNAMODB:
        return _dynamodb_record(position, raw)
    if source == KINESIS:
        return _kinesis_record(position, raw)
    return SourceRecord(
        position,
        raw,
        str(source)[:100],
        None,
        _text_or_none(raw.get("eventSourceARN")),
        error=f"unknown event source {str(source)[:100]!r}",
    )


def _unparseable(position: int, raw: Any, error: str) -> SourceRecord:
    """The coordinates that can still be read from a record that failed to parse, with ``error`` set."""
    record = raw if isinstance(raw, dict) else {"record": raw}
    body = record.get("dynamodb") if isinstance(record.get("dynamodb"), dict) else record.get("kinesis")
    seq = body.get("SequenceNumber") or body.get("sequenceNumber") if isinstance(body, dict) else None
    source = DYNAMODB if "dynamodb" in record else KINESIS if "kinesis" in record else ""
    return SourceRecord(
        position, record, source, _text_or_none(seq), _text_or_none(record.get("eventSourceARN")), error=error
    )


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _dynamodb_record(position: int, raw: dict[str, Any]) -> SourceRecord:
    # Plain dict access: Powertools' StreamRecord builds a TypeDeserializer per record, which we never use.
    body = raw.get("dynamodb")
    seq = body.get("SequenceNumber") if isinstance(body, dict) else None
    parsed = SourceRecord(
        position, raw, DYNAMODB, _text_or_none(seq), _text_or_none(raw.get("eventSourceARN")), Format.DYNAMODB_STREAM
    )
    if not isinstance(body, dict):
        parsed.error = "record has no 'dynamodb' object"
        return parsed
    return _fill_cdc(parsed, raw.get("eventName"), body, raw.get("userIdentity"))


def _kinesis_record(position: int, raw: dict[str, Any]) -> SourceRecord:
    record = KinesisStreamRecord(raw)
    body = raw.get("kinesis")
    seq = record.kinesis.get("sequenceNumber") if isinstance(body, dict) else None
    parsed = SourceRecord(position, raw, KINESIS, _text_or_none(seq), _text_or_none(raw.get("eventSourceARN")))
    if not isinstance(body, dict) or not isinstance(body.get("data"), str):
        parsed.error = "record has no 'kinesis.data' string"
        return parsed
    try:
        # Strict base64: Powertools' data_as_bytes() silently skips characters outside the alphabet.
        payload = json.loads(base64.b64decode(body["data"], validate=True))
    except (binascii.Error, ValueError, RecursionError) as exc:
        # The reason names the problem, never the data: it is logged.
        kind = "base64" if isinstance(exc, binascii.Error) else "JSON" if isinstance(exc, ValueError) else None
        parsed.error = f"data is not {kind}" if kind else "data is JSON nested too deeply to parse"
        return parsed
    if not isinstance(payload, dict):
        parsed.error = f"data is a JSON {type(payload).__name__}, not an object"
        return parsed
    if payload.get("eventSource") == DYNAMODB and isinstance(payload.get("dynamodb"), dict):
        parsed.format = Format.KINESIS_CDC
        event_id = payload.get("eventID")
        parsed.cdc_event_id = event_id[:256] if isinstance(event_id, str) and event_id else None
        return _fill_cdc(parsed, payload.get("eventName"), payload["dynamodb"], payload.get("userIdentity"))
    parsed.format = Format.KINESIS_DOCUMENT
    parsed.new_image = payload
    return parsed


def _fill_cdc(parsed: SourceRecord, event_name: Any, body: dict[str, Any], identity: Any) -> SourceRecord:
    """Fill the DynamoDB fields shared by DynamoDB Streams and CDC over Kinesis."""
    if event_name not in EVENT_NAMES:
        parsed.error = f"eventName {str(event_name)[:40]!r} is not INSERT, MODIFY or REMOVE"
        return parsed
    parsed.ttl_delete = (
        event_name == "REMOVE"
        and isinstance(identity, dict)
        and identity.get("type") == "Service"
        and identity.get("principalId") == TTL_PRINCIPAL
    )
    parsed.event_name = event_name
    for attr, key in (("keys", "Keys"), ("new_image", "NewImage"), ("old_image", "OldImage")):
        image = body.get(key)
        if image is not None and not isinstance(image, dict):
            parsed.error = f"dynamodb.{key} is not an object"
            return parsed
        setattr(parsed, attr, image)
    if event_name != "REMOVE" and parsed.new_image is None:
        parsed.error = "no NewImage: the stream view type must be NEW_IMAGE or NEW_AND_OLD_IMAGES"
        return parsed
    ts = body.get("ApproximateCreationDateTime")
    if (
        parsed.format is Format.KINESIS_CDC
        and isinstance(ts, int | float)
        and not isinstance(ts, bool)
        and 0 < ts < _MICROS_THRESHOLD * 10_000  # beyond that the value is garbage, not a time
    ):
        parsed.approximate_ts_us = int(ts) if ts >= _MICROS_THRESHOLD else int(ts * 1000)
    return parsed
