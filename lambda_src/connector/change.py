"""Step 2, change: one normalised change per parsed record.

A :class:`Change` says which item changed (``item_id``), how (upsert or remove), with which image, and where it
sits in the order of changes to that item. Images stay in their wire form; the item step converts them.

The item id, by the mapping's ``itemId``:

* set: the value of that attribute, from the new image, else the keys, else the old image;
* DynamoDB (both formats), unset: the only key attribute's value; for a composite key, the key values joined
  with ``#`` in attribute-name order, each value with ``\\`` and ``#`` escaped (``\\\\``, ``\\#``) so that two
  different keys never make the same id (the record does not say which key is the partition key, so set
  ``itemId`` if you need another order);
* Kinesis documents, unset: the ``itemId`` attribute, then ``id``.

A DynamoDB number keeps its decimal text exactly as the stream carries it (no trip through ``float``, which
would merge ids beyond 17 significant digits); a JSON number becomes its shortest text (``42``, not ``42.0``).
A missing, empty or non-scalar id makes the record poison.

The order of changes to one item (:func:`newest_first`) is the stream position, except for CDC over Kinesis,
which may arrive out of order and twice: there :attr:`Change.version` orders the changes, that is
``ApproximateCreationDateTime`` (µs) with the Kinesis sequence number (arrival) as the tie-breaker, and copies of
one change (the same ``eventID``) rank as their first copy. A CDC change without a usable timestamp has no
version: it ranks after the changes that arrived before it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from connector import ddbjson
from connector.config import ItemMapping
from connector.source import Format, SourceRecord

DOCUMENT_ID_ATTRIBUTES = ("itemId", "id")
SEQUENCE_DIGITS_MAX = 129


class Poison(Exception):
    """This record can never land; the message is the reason that goes to the DLQ (never a property value)."""


class Kind(StrEnum):
    UPSERT = "upsert"
    REMOVE = "remove"


@dataclass(slots=True)
class Change:
    record: SourceRecord
    item_id: str
    kind: Kind
    id_attributes: tuple[str, ...]  # the attributes the id was read from; they are not properties
    version: tuple[int, int] | None = None  # CDC over Kinesis: (ApproximateCreationDateTime µs, sequence number)

    @property
    def position(self) -> int:
        return self.record.position

    @property
    def image(self) -> dict[str, Any]:
        """The image the item is built from: the new image, or the old one for a remove (may be empty)."""
        chosen = self.record.new_image if self.kind is Kind.UPSERT else self.record.old_image
        return chosen or {}


def from_record(record: SourceRecord, mapping: ItemMapping) -> Change:
    """Build the :class:`Change` for a parsed record, or raise :class:`Poison` (never anything else)."""
    if record.error is not None:
        raise Poison(record.error)
    try:
        kind = Kind.REMOVE if record.event_name == "REMOVE" else Kind.UPSERT
        item_id, id_attributes = _item_id(record, mapping)
    except Poison:
        raise
    except Exception as exc:  # one malformed record must never fail the batch
        raise Poison(f"no item id: unexpected {type(exc).__name__}") from None
    version = None
    if record.format is Format.KINESIS_CDC and record.approximate_ts_us is not None:
        version = (record.approximate_ts_us, sequence_value(record.sequence_number))
    return Change(record, item_id, kind, id_attributes, version)


def sequence_value(seq: str | None) -> int:
    """A sequence number as a number (Kinesis: at most 129 decimal digits), or 0 when it is not one."""
    if seq and len(seq) <= SEQUENCE_DIGITS_MAX and seq.isascii() and seq.isdigit():
        return int(seq)
    return 0


def newest_first(changes: list[Change]) -> list[Change]:
    """``changes`` (in delivery order) from the newest to the oldest.

    By position, unless some carry a version (CDC over Kinesis): then by version, copies of one change (the same
    ``eventID``) ranking as their first copy, and a change without a version ranking after every change that
    arrived before it (its own sequence number standing for its time within that instant).
    """
    if all(c.version is None for c in changes):
        return changes[::-1]
    first_copy: dict[str, int] = {}
    for c in changes:
        event_id = c.record.cdc_event_id
        if c.version is not None and event_id:
            first_copy[event_id] = min(first_copy.get(event_id, c.version[1]), c.version[1])
    keys: dict[int, tuple[int, int, int]] = {}
    latest = 0
    for c in changes:
        if c.version is None:
            keys[c.position] = (latest, sequence_value(c.record.sequence_number), c.position)
            continue
        ts, seq = c.version
        latest = max(latest, ts)
        keys[c.position] = (ts, first_copy.get(c.record.cdc_event_id or "", seq), c.position)
    return sorted(changes, key=lambda c: keys[c.position], reverse=True)


def _item_id(record: SourceRecord, mapping: ItemMapping) -> tuple[str, tuple[str, ...]]:
    ddb = record.image_is_dynamodb_json
    if mapping.item_id is not None:
        name = mapping.item_id
        for image in (record.new_image, record.keys, record.old_image):
            if image and name in image:
                return _id_text(image[name], name, ddb), (name,)
        raise Poison(f"no item id: attribute {name!r} is missing")
    if record.format is Format.KINESIS_DOCUMENT:
        doc = record.new_image or {}
        for name in DOCUMENT_ID_ATTRIBUTES:
            if name in doc:
                return _id_text(doc[name], name, ddb=False), (name,)
        raise Poison("no item id: the document has no 'itemId' or 'id' attribute; set 'itemId' in the mapping")
    keys = record.keys
    if not keys:
        raise Poison("no item id: the record has no Keys")
    names = tuple(sorted(keys))
    if len(names) == 1:
        return _id_text(keys[names[0]], names[0], ddb=True), names
    return "#".join(_escape(_id_text(keys[n], n, ddb=True)) for n in names), names


def _escape(part: str) -> str:
    return part.replace("\\", "\\\\").replace("#", "\\#")


def _id_text(raw: Any, name: str, ddb: bool) -> str:
    if ddb:
        text = _ddb_id_text(raw, name)
    else:
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise Poison(f"no item id: attribute {name!r} is not a string or number")
        if isinstance(raw, float):
            if not math.isfinite(raw):
                raise Poison(f"no item id: attribute {name!r} is not a finite number")
            text = str(int(raw)) if raw.is_integer() else repr(raw)
        else:
            text = str(raw)
    if not text:
        raise Poison(f"no item id: attribute {name!r} is empty")
    return text


def _ddb_id_text(raw: Any, name: str) -> str:
    """An ``S`` value as it is, an ``N`` value as its exact decimal text (validated, never through float)."""
    if not isinstance(raw, dict) or len(raw) != 1:
        raise Poison(f"no item id: attribute {name!r} is not valid DynamoDB JSON")
    ((tag, value),) = raw.items()
    if tag == "S" and isinstance(value, str):
        return value
    if tag == "N" and isinstance(value, str):
        try:
            ddbjson.number(value)
        except ddbjson.DynamoDBJSONError:
            raise Poison(f"no item id: attribute {name!r} is not a number") from None
        return value
    if tag in ("S", "N"):
        raise Poison(f"no item id: attribute {name!r} is not valid DynamoDB JSON")
    raise Poison(f"no item id: attribute {name!r} is not a string or number")
