"""Item step: property maps with and without an Items schema, removes, and poison reasons."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector import ddbjson, item
from connector.change import Poison, from_record
from connector.config import parse_mapping
from connector.source import parse_event
from tests.factories import dynamodb_record, event, items_schema, kinesis_record
from tests.unit.test_ddbjson import _attrs

SCHEMA = items_schema(
    {"name": "GENRES", "type": ["null", "string"], "categorical": True},
    {"name": "PRICE", "type": "float"},
    {"name": "NUMBER_OF_RATINGS", "type": ["null", "int"]},
    {"name": "IN_STOCK", "type": ["null", "boolean"]},
    {"name": "CREATION_TIMESTAMP", "type": ["null", "long"]},
    {"name": "TITLE", "type": ["null", "string"], "textual": True},
    {"name": "STATUS", "type": ["null", "string"], "categorical": True},
)


def build(rec: dict[str, Any], mapping: dict[str, Any] | None = None) -> dict[str, Any] | None:
    (parsed,) = parse_event(event(rec))
    m = parse_mapping(mapping or {})
    return item.build(from_record(parsed, m), m)


def upsert(image: dict[str, Any], mapping: dict[str, Any] | None = None) -> dict[str, Any] | None:
    return build(dynamodb_record("INSERT", {"sku": "A"}, {"sku": "A", **image}), mapping)


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("Message", "message"),
        ("number_of_ratings", "numberOfRatings"),
        ("NUMBER_OF_RATINGS", "numberOfRatings"),
        ("listPrice", "listPrice"),
        ("ITEM_ID", "itemId"),
        ("SKU", "sku"),
        ("HTTPCode", "httpCode"),
        ("genre-l2", "genreL2"),
        ("a.b c", "aBC"),
        ("x", "x"),
        ("__", ""),
        ("émoji😀", "moji"),
    ],
)
def test_camel_case(name: str, key: str) -> None:
    assert item.camel_case(name) == key


def test_schemaless_every_dynamodb_type() -> None:
    props = upsert(
        {
            "Title": "Dune",  # S
            "price": Decimal("9.5"),  # N (float)
            "number_of_ratings": 12,  # N (int)
            "thumb": b"\x00\x01",  # B → base64 text
            "in_stock": True,  # BOOL
            "discontinued": None,  # NULL → left out
            "genres": {"scifi", "classic"},  # SS → sorted, |-joined
            "sizes": {Decimal(10), Decimal("2.5")},  # NS → sorted by value, |-joined
            "blobs": {b"b", b"a"},  # BS → sorted base64, |-joined
            "tags": ["new", 1, True],  # L of scalars → |-joined
            "variants": [{"c": "red"}],  # L holding maps → JSON text
            "dims": {"width": 2, "unit": {"name": "cm"}},  # M → flattened
            "empty": [],  # empty list → left out
        }
    )
    assert props == {
        "title": "Dune",
        "price": 9.5,
        "numberOfRatings": 12,
        "thumb": "AAE=",
        "inStock": True,
        "genres": "classic|scifi",
        "sizes": "2.5|10",
        "blobs": "YQ==|Yg==",
        "tags": "new|1|true",
        "variants": '[{"c":"red"}]',
        "dimsWidth": 2,
        "dimsUnitName": "cm",
    }


def test_schemaless_drops_id_and_excluded_attributes() -> None:
    assert upsert({"internalNotes": "x", "keep": 1}, {"exclude": ["internalNotes"]}) == {"keep": 1}


def test_schemaless_kinesis_document() -> None:
    props = build(kinesis_record({"id": "d1", "Price": 3, "meta": {"a_b": [1, 2]}, "nothing": None}))
    assert props == {"price": 3, "metaAB": "1|2"}


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        ({"a_b": 1, "aB": 2}, "both become property 'aB'"),
        ({"__": 1}, "no ASCII letter or digit"),
    ],
)
def test_schemaless_poison(image: dict[str, Any], reason: str) -> None:
    with pytest.raises(Poison, match=reason):
        upsert(image)


def test_non_finite_document_numbers_are_poison() -> None:
    with pytest.raises(Poison, match="not a finite number"):
        build(kinesis_record({"id": "d", "x": float("inf")}))


def test_schema_mode_fills_and_coerces() -> None:
    props = upsert(
        {
            "genres": {"b", "a"},
            "listPrice": "12.50",
            "numberOfRatings": Decimal("7.0"),
            "inStock": "TRUE",
            "creationTimestamp": "2026-01-02T03:04:05Z",
            "title": 42,
            "unrelated": "dropped",
        },
        {"schema": SCHEMA, "fields": {"PRICE": "listPrice"}},
    )
    assert props == {
        "genres": "a|b",
        "price": 12.5,
        "numberOfRatings": 7,
        "inStock": True,
        "creationTimestamp": 1767323045,
        "title": "42",
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1767323045, 1767323045),
        (1767323045123, 1767323045),
        (1767323045123456, 1767323045),
        ("2026-01-02T03:04:05", 1767323045),
        ("2026-01-02T04:04:05+01:00", 1767323045),
        ("1767323045", 1767323045),
    ],
)
def test_creation_timestamp_becomes_epoch_seconds(value: Any, expected: int) -> None:
    props = upsert({"PRICE": 1, "creation_timestamp": value}, {"schema": SCHEMA})
    assert props is not None and props["creationTimestamp"] == expected


def test_schema_field_from_nested_path() -> None:
    props = upsert({"price": {"amount": 3}}, {"schema": SCHEMA, "fields": {"PRICE": "price.amount"}})
    assert props == {"price": 3.0}


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        ({}, "field PRICE: required"),
        ({"PRICE": "cheap"}, "field PRICE: a non-numeric str cannot be coerced to float"),
        ({"PRICE": True}, "field PRICE: a bool cannot"),
        ({"PRICE": 1, "NUMBER_OF_RATINGS": Decimal("1.5")}, "fractional number cannot fill an int"),
        ({"PRICE": 1, "NUMBER_OF_RATINGS": 2**40}, "out of range for int"),
        ({"PRICE": 1, "IN_STOCK": "maybe"}, "cannot be coerced to boolean"),
        ({"PRICE": 1, "CREATION_TIMESTAMP": "yesterday"}, "neither epoch time nor an ISO 8601 date"),
        ({"PRICE": 1, "TITLE": {"a": 1}}, "a dict cannot fill a string field"),
        ({"PRICE": 1, "TITLE": ["a", "b"]}, "a list cannot fill a string field"),
        ({"PRICE": 1, "GENRES": "x" * 1001}, "categorical value over 1000 characters"),
        ({"PRICE": 1, "TITLE": "x" * 20_001}, "textual value over 20000 characters"),
    ],
)
def test_schema_mode_poison_reasons_name_fields_not_values(image: dict[str, Any], reason: str) -> None:
    with pytest.raises(Poison, match=reason) as caught:
        upsert(image, {"schema": SCHEMA})
    assert "cheap" not in str(caught.value) and "maybe" not in str(caught.value)


def test_remove_ignored_by_default() -> None:
    assert build(dynamodb_record("REMOVE", {"sku": "A"}, old={"sku": "A", "x": 1})) is None


def test_remove_soft_delete_keeps_old_image_schemaless() -> None:
    props = build(
        dynamodb_record("REMOVE", {"sku": "A"}, old={"sku": "A", "status": "live", "x": 1}),
        {"onRemove": {"STATUS": "deleted"}},
    )
    assert props == {"status": "deleted", "x": 1}


def test_remove_soft_delete_with_schema() -> None:
    props = build(
        dynamodb_record("REMOVE", {"sku": "A"}, old={"sku": "A", "price": 4, "status": "live"}),
        {"schema": SCHEMA, "onRemove": {"STATUS": "deleted"}},
    )
    assert props == {"price": 4.0, "status": "deleted"}


def test_serialize_is_compact_and_keeps_unicode() -> None:
    text = item.serialize({"title": "Café", "n": 1})
    assert text == '{"title":"Café","n":1}'
    assert json.loads(text) == {"title": "Café", "n": 1}


@pytest.mark.parametrize("use_orjson", [True, False])
def test_serialize_with_and_without_orjson(monkeypatch: pytest.MonkeyPatch, use_orjson: bool) -> None:
    if not use_orjson:
        monkeypatch.setattr(item, "_orjson", None)
    props = {"title": "Café ☕", "n": 1, "big": 12345678901234567890123456789012345678, "f": 0.1, "b": True}
    text = item.serialize(props)
    assert json.loads(text) == props
    assert ", " not in text and "\\u" not in text  # compact, unicode kept (length counts characters)


def _outcome(fn: Any) -> Any:
    try:
        return fn()
    except Poison as exc:
        return ("poison", str(exc))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["a", "b_c", "bC", "Dims", "__", "x1"]), _attrs, max_size=5))
def test_fused_dynamodb_path_equals_convert_then_flatten(image: dict[str, Any]) -> None:
    """schemaless() converts DynamoDB JSON inline; it must equal converting the image first."""
    fused = _outcome(lambda: item.schemaless(image, frozenset(), dynamodb_json=True))
    two_pass = _outcome(lambda: item.schemaless(ddbjson.image(image), frozenset()))
    assert fused == two_pass


# --- the compiled schema plan is a cache of the reference path -----------------------------------------------

PLAN_DOC = {
    "schema": {
        "type": "record",
        "name": "Items",
        "fields": [
            {"name": "TITLE", "type": "string"},
            {"name": "ITEM_ID", "type": "string"},
            {"name": "GENRES", "type": ["null", "string"], "categorical": True},
            {"name": "LABEL", "type": ["null", "string"]},
            {"name": "PRICE", "type": ["null", "float"]},
            {"name": "SCORE", "type": ["null", "double"]},
            {"name": "COUNT", "type": ["null", "int"]},
            {"name": "BIG", "type": ["null", "long"]},
            {"name": "IN_STOCK", "type": ["null", "boolean"]},
            {"name": "CREATION_TIMESTAMP", "type": ["null", "long"]},
            {"name": "DESCRIPTION", "type": ["null", "string"], "textual": True},
            {"name": "DEPTH", "type": ["null", "int"]},
            {"name": "NOTE", "type": ["null", "string"]},
        ],
    },
    "fields": {"PRICE": "listPrice", "DEPTH": "dims.depth", "NOTE": "note.text"},
    "exclude": ["internal"],
}
_number_texts = st.one_of(
    st.integers(-(2**64), 2**64).map(str),
    st.floats(allow_nan=False, width=64).map(repr),
    st.integers(-(10**6), 10**6).map(str),
    st.floats(-1e6, 1e6).map(repr),
    st.sampled_from(["1.0", "1E+3", "1e400", "-0", "0.5", "1e-7", "9" * 40, "12.5E1", "x", "NaN"]),
)
_text_values = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["", "true", "FALSE", "12", "3.5", "2026-01-02T03:04:05", "2026-01-02T03:04:05+02:00"]),
    st.text(max_size=8),
    st.text(max_size=8),
    st.sampled_from([1_000, 20_000]).flatmap(lambda n: st.integers(n - 1, n + 1)).map(lambda n: "x" * n),
)
_valid_attrs = st.one_of(
    _attrs,
    _number_texts.map(lambda t: {"N": t}),
    _text_values.map(lambda t: {"S": t}),
    st.lists(st.text(max_size=4), min_size=1, max_size=4).map(lambda v: {"SS": v}),
    st.lists(st.integers(-(10**20), 10**20).map(str), min_size=1, max_size=3).map(lambda v: {"NS": v}),
    st.dictionaries(st.sampled_from(["depth", "text", "x"]), _attrs, max_size=2).map(lambda m: {"M": m}),
    st.sampled_from([{"SS": []}, {"L": []}, {"NULL": True}, {"BOOL": True}, {"BOOL": False}]),
)
_invalid_attrs = st.sampled_from(
    [{"S": 1}, {"N": 5}, {"BOOL": "true"}, {"X": "1"}, {"S": "a", "N": "1"}, "plain", None, {}, {"SS": [1]}]
)
_plan_attrs = st.one_of(*([_valid_attrs] * 9), _invalid_attrs)  # an invalid attribute in about 1 in 10
_plan_names = st.sampled_from(
    [
        "title", "TITLE", "genres", "label", "listPrice", "price", "score", "count", "COUNT", "big", "inStock",
        "in_stock", "creationTimestamp", "description", "dims", "dims.depth", "note", "internal", "sku", "__",
    ]
)  # fmt: skip


def _reference(image: dict[str, Any], mapping: Any, skip: frozenset[str]) -> Any:
    try:
        return item.with_schema(ddbjson.image(image), mapping, skip)
    except (Poison, ddbjson.DynamoDBJSONError) as exc:
        return ("poison", str(exc))


def _typed(props: Any) -> Any:
    return props if not isinstance(props, dict) else [(k, type(v).__name__, v) for k, v in props.items()]


_small_ints = st.integers(-(2**32), 2**32).map(str)
_FITTING = {  # attribute → values that usually fit its field, so that the plan's successes are many
    "title": _text_values.map(lambda t: {"S": t}),
    "genres": st.one_of(
        st.lists(st.text(max_size=4), min_size=1, max_size=4).map(lambda v: {"SS": v}),
        st.lists(st.text(max_size=4), max_size=3).map(lambda v: {"L": [{"S": x} for x in v]}),
    ),
    "label": st.one_of(_text_values.map(lambda t: {"S": t}), _number_texts.map(lambda t: {"N": t})),
    "listPrice": _number_texts.map(lambda t: {"N": t}),
    "score": _number_texts.map(lambda t: {"N": t}),
    "count": _small_ints.map(lambda t: {"N": t}),
    "big": _number_texts.map(lambda t: {"N": t}),
    "in_stock": st.one_of(st.booleans().map(lambda b: {"BOOL": b}), _text_values.map(lambda t: {"S": t})),
    "creationTimestamp": st.one_of(_number_texts.map(lambda t: {"N": t}), _text_values.map(lambda t: {"S": t})),
    "description": _text_values.map(lambda t: {"S": t}),
    "dims": _small_ints.map(lambda t: {"M": {"depth": {"N": t}}}),
    "note": _text_values.map(lambda t: {"M": {"text": {"S": t}}}),
    "sku": _text_values.map(lambda t: {"S": t}),
}


@st.composite
def _plan_images(draw: st.DrawFn) -> dict[str, Any]:
    image = {}
    for name, fitting in _FITTING.items():
        choice = draw(st.integers(0, 19))
        if choice >= 2:
            image[name] = draw(fitting)
        elif choice == 1:
            image[name] = draw(_plan_attrs)
    image.update(draw(st.dictionaries(_plan_names, _plan_attrs, max_size=2)))  # strays, clashes, overrides
    return image


@settings(max_examples=600, deadline=None)
@given(_plan_images(), st.sampled_from([(), ("sku",), ("sku", "label")]))
def test_the_schema_plan_equals_the_reference_path(image: dict[str, Any], ids: tuple[str, ...]) -> None:
    """item.schema_properties either defers (None) or returns exactly what ddbjson.image + with_schema build
    (same keys, order, types and values); build() always equals the reference."""
    mapping = parse_mapping(PLAN_DOC)
    skip = mapping.exclude.union(ids)
    reference = _reference(image, mapping, skip)
    fast = item.schema_properties(image, mapping, skip)
    if fast is not None:
        assert _typed(fast) == _typed(reference)
        assert item.serialize(fast) == item.serialize(reference)


def test_the_schema_plan_takes_the_common_cases_and_defers_the_rest() -> None:
    mapping = parse_mapping(PLAN_DOC)
    skip = frozenset({"sku"})
    image = {
        "sku": {"S": "A"},
        "title": {"S": "T"},
        "genres": {"SS": ["b", "a"]},
        "label": {"N": "7"},
        "listPrice": {"N": "12"},
        "score": {"N": "0.25"},
        "count": {"N": "3"},
        "big": {"N": str(2**40)},
        "in_stock": {"BOOL": False},
        "creationTimestamp": {"N": "1700000000123"},
        "description": {"S": "d"},
        "dims": {"M": {"depth": {"N": "4"}}},
        "note": {"M": {"text": {"S": "n"}}},
    }
    expected = item.with_schema(ddbjson.image(image), mapping, skip)
    fast = item.schema_properties(image, mapping, skip)
    assert fast is not None and _typed(fast) == _typed(expected)
    assert fast["creationTimestamp"] == 1_700_000_000 and fast["genres"] == "a|b" and fast["label"] == "7"
    assert type(fast["price"]) is float and fast["depth"] == 4
    for broken in (
        {**image, "sku": {"N": "x"}},  # an attribute no field reads is still validated
        {**image, "TITLE": {"S": "clash"}},
        {**image, "title": {"NULL": True}},
        {**image, "count": {"N": str(2**31)}},
    ):
        assert item.schema_properties(broken, mapping, skip) is None
        assert _reference(broken, mapping, skip)[0] == "poison"
    assert len(mapping.compiled["schema"].routes) == 2  # one route per attribute-name set
