"""Change step: item ids by the mapping's rules, kinds, and order keys."""

from __future__ import annotations

import pytest

from connector.change import Change, Kind, Poison, from_record
from connector.config import parse_mapping
from connector.source import parse_event
from tests.factories import cdc_payload, dynamodb_record, event, kinesis_record

DEFAULT = parse_mapping({})


def _change(rec: dict, mapping: dict | None = None) -> Change:
    (parsed,) = parse_event(event(rec))
    return from_record(parsed, parse_mapping(mapping or {}))


def test_single_key_is_the_id() -> None:
    c = _change(dynamodb_record("INSERT", {"sku": "A1"}, {"sku": "A1", "x": 1}))
    assert (c.item_id, c.kind, c.id_attributes) == ("A1", Kind.UPSERT, ("sku",))


def test_composite_key_joined_in_attribute_name_order() -> None:
    c = _change(dynamodb_record("INSERT", {"pk": "P", "sk": 7}, {"pk": "P", "sk": 7}))
    assert c.item_id == "P#7"
    assert c.id_attributes == ("pk", "sk")


def test_configured_id_attribute_from_image() -> None:
    c = _change(dynamodb_record("INSERT", {"pk": "P", "sk": "S"}, {"pk": "P", "sk": "S", "sku": 12}), {"itemId": "sku"})
    assert c.item_id == "12"
    assert c.id_attributes == ("sku",)


def test_configured_id_on_remove_comes_from_old_image() -> None:
    c = _change(dynamodb_record("REMOVE", {"pk": "P"}, old={"pk": "P", "sku": "S1"}), {"itemId": "sku"})
    assert (c.item_id, c.kind) == ("S1", Kind.REMOVE)


@pytest.mark.parametrize(("doc", "expected"), [({"itemId": "a", "id": "b"}, "a"), ({"id": 3}, "3"), ({"id": 3.0}, "3")])
def test_document_default_ids(doc: dict, expected: str) -> None:
    assert _change(kinesis_record(doc)).item_id == expected


@pytest.mark.parametrize(
    ("rec", "mapping", "reason"),
    [
        (kinesis_record({"name": "x"}), None, "no 'itemId' or 'id'"),
        (kinesis_record({"id": ""}), None, "is empty"),
        (kinesis_record({"id": {"a": 1}}), None, "not a string or number"),
        (kinesis_record({"id": True}), None, "not a string or number"),
        (kinesis_record({"id": float("nan")}), None, "not a finite number"),
        (dynamodb_record("INSERT", {"pk": "P"}, {"pk": "P"}), {"itemId": "sku"}, "'sku' is missing"),
        (
            dynamodb_record("INSERT", {"pk": {"BOOL": True}}, {"pk": {"BOOL": True}}, raw_images=True),
            None,
            "not a string or number",
        ),
        (dynamodb_record("INSERT", {"pk": {"N": "x"}}, {"pk": {"N": "x"}}, raw_images=True), None, "not a number"),
    ],
)
def test_bad_ids_are_poison(rec: dict, mapping: dict | None, reason: str) -> None:
    with pytest.raises(Poison, match=reason):
        _change(rec, mapping)


def test_parse_error_becomes_poison() -> None:
    with pytest.raises(Poison, match="not base64"):
        _change(kinesis_record("***"))


def test_versions_order_cdc_changes_and_fall_back_to_position() -> None:
    late = kinesis_record(cdc_payload("MODIFY", {"sku": "a"}, {"sku": "a"}, ts=2_000), seq="5")
    early = kinesis_record(cdc_payload("MODIFY", {"sku": "a"}, {"sku": "a"}, ts=1_000), seq="6")
    parsed = parse_event(event(late, early))
    versions = [from_record(p, DEFAULT).version for p in parsed]
    assert versions == [(2_000_000, 5), (1_000_000, 6)]  # ms → µs, sequence number as the tie-breaker
    plain = parse_event(event(kinesis_record({"id": 1}), kinesis_record({"id": 1})))
    assert [from_record(p, DEFAULT).version for p in plain] == [None, None]
    no_ts = cdc_payload("MODIFY", {"sku": "a"}, {"sku": "a"})
    del no_ts["dynamodb"]["ApproximateCreationDateTime"]
    (parsed_no_ts,) = parse_event(event(kinesis_record(no_ts)))
    assert from_record(parsed_no_ts, DEFAULT).version is None  # falls back to its position, not to 0


def test_number_keys_keep_their_exact_decimal_text() -> None:
    """Defect 8: two N keys that differ beyond the 17th significant digit must stay two items."""
    ids = {
        _change(dynamodb_record("INSERT", {"pk": {"N": n}}, {"pk": {"N": n}}, raw_images=True)).item_id
        for n in ("12345678901234567890", "12345678901234567891")
    }
    assert ids == {"12345678901234567890", "12345678901234567891"}


def test_composite_ids_are_unambiguous() -> None:
    """Defect 8: ("x#y", "z") and ("x", "y#z") must not both become "x#y#z"."""
    a = _change(dynamodb_record("INSERT", {"pk": "x#y", "sk": "z"}, {"pk": "x#y", "sk": "z"}))
    b = _change(dynamodb_record("INSERT", {"pk": "x", "sk": "y#z"}, {"pk": "x", "sk": "y#z"}))
    c = _change(dynamodb_record("INSERT", {"pk": "x\\", "sk": "#z"}, {"pk": "x\\", "sk": "#z"}))
    assert len({a.item_id, b.item_id, c.item_id}) == 3
    assert a.item_id == "x\\#y#z"
