"""Step 2, change: one normalised change per parsed record.

A :class:`Change` says which item changed (``item_id``), how (upsert or remove), with which image, and where it
sits in the order of changes (``order_key``). Images stay in their wire form so that a change superseded within
the batch is never converted (see ``putitems.coalesce``).

The item id, by the mapping's ``itemId``:

* set: the value of that attribute, from the new image, else the keys, else the old image;
* DynamoDB (both formats), unset: the only key attribute's value; for a composite key, the key values joined
  with ``#`` in attribute-name order (the record does not say which key is the partition key, so set
  ``itemId`` if you need another order);
* Kinesis documents, unset: the ``itemId`` attribute, then ``id``.

Numbers become their decimal text (``42``, not ``42.0``). A missing, empty or non-scalar id makes the record poison.
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
    order_key: tuple[int, int]

    @property
    def image(self) -> dict[str, Any]:
        """The image the item is built from: the new image, or the old one for a remove (may be empty)."""
        chosen = self.record.new_image if self.kind is Kind.UPSERT else self.record.old_image
        return chosen or {}


def from_record(record: SourceRecord, mapping: ItemMapping) -> Change:
    """Build the :class:`Change` for a parsed record, or raise :class:`Poison`."""
    if record.error is not None:
        raise Poison(record.error)
    kind = Kind.REMOVE if record.event_name == "REMOVE" else Kind.UPSERT
    item_id, id_attributes = _item_id(record, mapping)
    # CDC over Kinesis may arrive out of order and twice: order by ApproximateCreationDateTime, then position.
    order_key = (record.approximate_ts_us or 0, record.position)
    return Change(record, item_id, kind, id_attributes, order_key)


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
    return "#".join(_id_text(keys[n], n, ddb=True) for n in names), names


def _id_text(raw: Any, name: str, ddb: bool) -> str:
    try:
        value = ddbjson.value(raw) if ddb else raw
    except ddbjson.DynamoDBJSONError as exc:
        raise Poison(f"no item id: attribute {name!r}: {exc}") from None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise Poison(f"no item id: attribute {name!r} is not a string or number")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Poison(f"no item id: attribute {name!r} is not a finite number")
        if value.is_integer():
            value = int(value)
    text = str(value)
    if not text:
        raise Poison(f"no item id: attribute {name!r} is empty")
    return text
