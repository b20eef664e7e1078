"""DynamoDB JSON conversion: each type, bad input, and equivalence with boto3's TypeDeserializer."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from boto3.dynamodb.types import Binary, TypeDeserializer
from hypothesis import given, settings
from hypothesis import strategies as st

from connector import ddbjson

_deserializer = TypeDeserializer()


@pytest.mark.parametrize(
    ("attr", "expected"),
    [
        ({"S": "héllo"}, "héllo"),
        ({"N": "10"}, 10),
        ({"N": "-3"}, -3),
        ({"N": "1.5"}, 1.5),
        ({"N": "1.0"}, 1),
        ({"N": "1E+3"}, 1000),
        ({"N": "12345678901234567890123456789012345678"}, 12345678901234567890123456789012345678),
        ({"B": "AAEC"}, "AAEC"),
        ({"BOOL": True}, True),
        ({"BOOL": False}, False),
        ({"NULL": True}, None),
        ({"SS": ["b", "a"]}, ["a", "b"]),
        ({"NS": ["10", "2", "1.5"]}, [1.5, 2, 10]),
        ({"BS": ["Yg==", "YQ=="]}, ["YQ==", "Yg=="]),
        ({"L": [{"S": "x"}, {"N": "1"}, {"NULL": True}]}, ["x", 1, None]),
        ({"M": {"w": {"N": "2"}, "u": {"S": "cm"}}}, {"w": 2, "u": "cm"}),
        ({"SS": []}, []),
    ],
)
def test_each_type(attr: dict[str, Any], expected: Any) -> None:
    got = ddbjson.value(attr)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize(
    "attr",
    [
        {"S": 1},
        {"N": "abc"},
        {"N": "NaN"},
        {"N": "Infinity"},
        {"N": 5},
        {"BOOL": "true"},
        {"X": "1"},
        {"S": "a", "N": "1"},
        "plain",
        {"L": "notalist"},
        {"SS": [1]},
        {"NS": [1]},
    ],
)
def test_invalid_values_raise(attr: Any) -> None:
    with pytest.raises(ddbjson.DynamoDBJSONError):
        ddbjson.value(attr)


def test_image_must_be_a_map() -> None:
    with pytest.raises(ddbjson.DynamoDBJSONError):
        ddbjson.image([{"S": "x"}])


def _reference(attr: dict[str, Any]) -> Any:
    """TypeDeserializer, then the documented rules: numbers by decimal_to_number, sets sorted, binary base64."""
    return _plain(_deserializer.deserialize(_typed(attr)))


def _typed(attr: Any) -> Any:
    # Stream JSON carries B as base64 text; TypeDeserializer expects bytes there.
    import base64

    ((tag, raw),) = attr.items()
    if tag == "B":
        return {"B": base64.b64decode(raw)}
    if tag == "BS":
        return {"BS": [base64.b64decode(v) for v in raw]}
    if tag == "L":
        return {"L": [_typed(v) for v in raw]}
    if tag == "M":
        return {"M": {k: _typed(v) for k, v in raw.items()}}
    return attr


def _plain(value: Any) -> Any:
    import base64

    if isinstance(value, Decimal):
        return ddbjson.decimal_to_number(value)
    if isinstance(value, Binary):
        return base64.b64encode(value.value).decode()
    if isinstance(value, set | frozenset):
        return sorted(_plain(v) for v in value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


_numbers = (
    st.decimals(allow_nan=False, allow_infinity=False, places=None)
    .filter(lambda d: d.is_finite() and abs(d.adjusted()) < 120)
    .map(lambda d: str(d.normalize()) if d else "0")
)
_b64 = st.binary(min_size=1, max_size=8).map(lambda b: __import__("base64").b64encode(b).decode())
_scalars = st.one_of(
    st.text(max_size=20).map(lambda s: {"S": s}),
    _numbers.map(lambda n: {"N": n}),
    _b64.map(lambda b: {"B": b}),
    st.booleans().map(lambda b: {"BOOL": b}),
    st.just({"NULL": True}),
    st.sets(st.text(min_size=1, max_size=5), min_size=1, max_size=4).map(lambda s: {"SS": list(s)}),
    st.sets(st.integers(-1000, 1000), min_size=1, max_size=4).map(lambda s: {"NS": [str(v) for v in s]}),
    st.sets(_b64, min_size=1, max_size=3).map(lambda s: {"BS": list(s)}),
)
_attrs = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda v: {"L": v}),
        st.dictionaries(st.text(max_size=8), inner, max_size=4).map(lambda m: {"M": m}),
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(_attrs)
def test_equivalent_to_type_deserializer(attr: dict[str, Any]) -> None:
    assert ddbjson.value(attr) == _reference(attr)


@settings(max_examples=300, deadline=None)
@given(_numbers)
def test_numbers_match_decimal_rule_and_type(text: str) -> None:
    expected = ddbjson.decimal_to_number(Decimal(text))
    got = ddbjson.number(text)
    assert got == expected
    assert type(got) is type(expected)
