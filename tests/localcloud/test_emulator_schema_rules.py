"""The item dataset rules the emulator enforces beyond types (Amazon Personalize, "Items dataset schema
requirements", "Item metadata" and "Service quotas"): string lengths, textual limits for Chinese and Japanese,
lower-case booleans, Avro defaults, CREATION_TIMESTAMP in seconds."""

from __future__ import annotations

from typing import Any

import pytest

from localcloud.personalize_emulator import Schema
from tests.factories import items_schema

SCHEMA: dict[str, Any] = items_schema(
    {"name": "CREATION_TIMESTAMP", "type": "long"},
    {"name": "TITLE", "type": ["null", "string"]},
    {"name": "GENRES", "type": ["null", "string"], "categorical": True},
    {"name": "DESCRIPTION", "type": ["null", "string"], "textual": True},
    {"name": "IN_STOCK", "type": ["null", "boolean"]},
    {"name": "STATUS", "type": "string", "categorical": True, "default": "active"},
)
VALID = {"creationTimestamp": 1_700_000_000, "status": "active"}


def problem(**props: Any) -> str | None:
    schema = Schema.load(SCHEMA)
    assert schema is not None
    return schema.validate({**VALID, **props}, "items.1.member")


def test_the_valid_item_is_valid() -> None:
    assert problem() is None


@pytest.mark.parametrize(
    ("props", "fragment"),
    [
        ({"title": "t" * 1001}, "non-categorical string longer than 1000"),
        ({"genres": "g" * 1001}, "categorical value longer than 1000"),
        ({"description": "d" * 20_001}, "textual value longer than 20000"),
        ({"description": "説明" * 3501}, "Chinese or Japanese textual value longer than 7000"),  # 7,002 characters
        ({"description": "x" * 6990 + "カタカナ" * 3}, "Chinese or Japanese"),  # 7,002, Katakana
        ({"inStock": "True"}, "inStock"),
        ({"inStock": "TRUE"}, "inStock"),
        ({"creationTimestamp": 1_700_000_000_000}, "epoch seconds"),  # milliseconds
    ],
)
def test_violations(props: dict[str, Any], fragment: str) -> None:
    found = problem(**props)
    assert found is not None and fragment in found


@pytest.mark.parametrize(
    "props",
    [
        {"title": "t" * 1000},
        {"genres": "g" * 1000},
        {"description": "d" * 20_000},
        {"description": "説明" * 3500},  # 7,000 characters
        {"inStock": "true"},
        {"inStock": False},
        {"creationTimestamp": 99_999_999_999},  # year 5138, still seconds
    ],
)
def test_limits_are_inclusive(props: dict[str, Any]) -> None:
    assert problem(**props) is None


def test_a_field_with_an_avro_default_is_still_required() -> None:
    schema = Schema.load(SCHEMA)
    assert schema is not None
    found = schema.validate({"creationTimestamp": 1_700_000_000}, "items.1.member")
    assert found is not None and "'status'" in found and "missing" in found
