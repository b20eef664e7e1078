"""DynamoDB JSON → JSON-ready Python values, without ``Decimal``.

Why hand-written: boto3's ``TypeDeserializer`` (which Powertools' data classes use) turns every number into a
``Decimal`` and every set into a Python ``set``; both then need a second pass before ``json.dumps`` can write
them. That round trip is about two thirds of the transform cost (DESIGN.md, "Transform cost"). This module goes
straight to the values a property map needs, and ``tests/unit/test_ddbjson.py`` proves with hypothesis that it
is equivalent to ``TypeDeserializer`` followed by :func:`decimal_to_number`.

The mapping, type by type:

=========  =====================================================================================
``S``      ``str``
``N``      ``int`` when the number is integral (``"10"``, ``"1.0"``, ``"1E+3"``), else ``float``
``B``      the base64 text as it came (DynamoDB Streams already base64-encode binary values)
``BOOL``   ``bool``
``NULL``   ``None``
``SS``     ``list[str]``, sorted (sets have no order; sorting keeps the output stable)
``NS``     ``list[int | float]``, sorted by value
``BS``     ``list[str]`` of base64 text, sorted
``L``      ``list`` of converted values, in order
``M``      ``dict`` of converted values
=========  =====================================================================================
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any


class DynamoDBJSONError(ValueError):
    """The value is not valid DynamoDB JSON."""


def decimal_to_number(value: Decimal) -> int | float:
    """The rule for numbers: integral values become ``int``, the rest ``float``."""
    if value == value.to_integral_value():
        return int(value)
    return float(value)


def number(text: str) -> int | float:
    """Convert the text of an ``N`` value; equal to ``decimal_to_number(Decimal(text))``."""
    if "." not in text and "e" not in text and "E" not in text:
        try:
            return int(text)
        except ValueError:
            pass
    try:
        as_float = float(text)
    except ValueError:
        raise DynamoDBJSONError("N value is not a number") from None
    if not math.isfinite(as_float):
        raise DynamoDBJSONError("N value is not a finite number")
    if as_float.is_integer():  # rare: "1.0", "1E+3", or a long fraction that rounds to an integer
        return decimal_to_number(Decimal(text))
    return as_float


def value(attr: Any) -> Any:
    """Convert one DynamoDB JSON attribute value (``{"S": "x"}``, ``{"N": "1"}``, …)."""
    try:
        ((tag, raw),) = attr.items()
    except (AttributeError, ValueError):
        raise DynamoDBJSONError("attribute value must be an object with exactly one type key") from None
    # The most frequent types first: this function runs once per attribute of every winning image.
    if tag == "S":
        if raw.__class__ is not str:
            raise DynamoDBJSONError("S value must be a string")
        return raw
    if tag == "N":
        if raw.__class__ is not str:
            raise DynamoDBJSONError("N value must be a string")
        return number(raw)
    if tag == "BOOL":
        if raw.__class__ is not bool:
            raise DynamoDBJSONError("BOOL value must be true or false")
        return raw
    if tag == "M":
        return image(raw)
    if tag == "NULL":
        return None
    if tag == "B":
        if raw.__class__ is not str:
            raise DynamoDBJSONError("B value must be a string")
        return raw
    if tag not in _LIST_TAGS:
        raise DynamoDBJSONError("unknown DynamoDB type tag")
    if raw.__class__ is not list:
        raise DynamoDBJSONError(f"{tag} value must be a list")
    if tag == "L":
        return [value(v) for v in raw]
    if not all(v.__class__ is str for v in raw):
        raise DynamoDBJSONError(f"{tag} members must be strings")
    if tag == "NS":
        return sorted(number(v) for v in raw)
    return sorted(raw)


_LIST_TAGS = frozenset({"L", "SS", "NS", "BS"})


def image(raw: Any) -> dict[str, Any]:
    """Convert a whole image (``NewImage``, ``OldImage``, ``Keys`` or an ``M`` value)."""
    if not isinstance(raw, dict):
        raise DynamoDBJSONError("an image must be an object of attribute values")
    return {name: value(attr) for name, attr in raw.items()}
