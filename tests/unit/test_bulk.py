"""The bulk converter: a row is what the stream would PutItems for the same image; rejects are what it would
dead-letter. The stream side runs the real pipeline (fake PutItems); the CSV is read back by the emulator's
import-job reader, so types survive the CSV round trip too."""

from __future__ import annotations

import functools
import gzip
import io
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from connector import bulk, pipeline
from connector.config import load_settings, parse_mapping
from connector.deadline import Deadline
from connector.putitems import Pacer, PutItemsSink
from connector.response import Outcome
from localcloud.emulator.imports import ImportFailed, _read_csv
from localcloud.emulator.schema import MILLIS_THRESHOLD, Schema
from tests.factories import DATASET_ARN, dynamodb_record, event
from tests.fakes import FakePersonalize, FakeSQS

SCHEMA = {
    "type": "record",
    "name": "Items",
    "fields": [
        {"name": "ITEM_ID", "type": "string"},
        {"name": "TITLE", "type": "string"},
        {"name": "GENRES", "type": ["null", "string"], "categorical": True},
        {"name": "PRICE", "type": ["null", "float"]},
        {"name": "NUMBER_OF_RATINGS", "type": "int"},
        {"name": "IN_STOCK", "type": ["null", "boolean"]},
        {"name": "CREATION_TIMESTAMP", "type": "long"},
    ],
}
DOC = {"schema": SCHEMA, "fields": {"PRICE": "listPrice"}, "exclude": ["internal"]}
KEYS = ["pk", "sk"]


def _csv_rows(text: str) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    schema = Schema.load(SCHEMA)
    _read_csv(schema, "part.csv", io.StringIO(text), rows)
    return rows


class StreamPath:
    """The stream's pipeline for one INSERT record: ``("put", props)`` or ``("poison", reason)``."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.fake = FakePersonalize()
        self.settings = load_settings(
            {"DATASET_ARN": DATASET_ARN, "DLQ_URL": "https://sqs/q", "CONNECTOR_CONFIG": json.dumps(doc)}
        )

    def put(self, keys: dict[str, Any], image: dict[str, Any]) -> tuple[str, Any]:
        self.fake.items.clear()
        sink = PutItemsSink(
            self.fake.client,
            DATASET_ARN,
            worst_call_ms=100,
            pacer=Pacer(1000, clock=lambda: 0.0, sleep=lambda _: None),
        )
        record = dynamodb_record("INSERT", keys, image, raw_images=True)
        result = pipeline.run(
            event(record), settings=self.settings, sink=sink, sqs=FakeSQS(), deadline=Deadline.unbounded()
        )
        if result.counts.get(Outcome.POISON):
            return "poison", None
        assert result.counts.get(Outcome.PUT) == 1
        ((item_id, props),) = self.fake.items.items()
        return item_id, props


@functools.cache
def stream() -> StreamPath:
    return StreamPath(DOC)


def convert(items: list[dict[str, Any]], doc: dict[str, Any] = DOC, keys: list[str] = KEYS) -> tuple[str, list]:
    conv = bulk.Converter(parse_mapping(doc), keys)
    lines = [json.dumps({"Item": i}).encode() + b"\n" for i in items]
    out, rej = io.StringIO(), io.StringIO()
    stats = conv.convert(lines, out, rej)
    rejects = [json.loads(line) for line in rej.getvalue().splitlines()]
    assert stats.rows + stats.rejects == len(items)
    assert stats.rejects == len(rejects)
    return out.getvalue(), rejects


# --- the equivalence ---------------------------------------------------------------------------------------

_text = st.text(st.characters(codec="utf-8"), max_size=12)
_num_text = st.one_of(
    st.integers(-(10**12), 10**17).map(str),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr),
)


def _attr(*kinds: str) -> st.SearchStrategy[dict[str, Any]]:
    options = {
        "S": _text.map(lambda v: {"S": v}),
        "N": _num_text.map(lambda v: {"N": v}),
        "BOOL": st.booleans().map(lambda v: {"BOOL": v}),
        "SS": st.lists(_text.filter(bool), min_size=1, max_size=3, unique=True).map(lambda v: {"SS": v}),
        "L": st.lists(_text, max_size=3).map(lambda v: {"L": [{"S": x} for x in v]}),
        "NULL": st.just({"NULL": True}),
        "BIG": st.just({"S": "x" * 1_001}),
        "ISO": st.sampled_from(["2026-01-02T03:04:05", "2026-01-02T03:04:05+02:00", "not a date"]).map(
            lambda v: {"S": v}
        ),
        "BOOLTEXT": st.sampled_from(["true", "False", "yes"]).map(lambda v: {"S": v}),
    }
    return st.one_of(*(options[k] for k in kinds))


@st.composite
def exported_item(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    keys = {"pk": draw(_attr("S")), "sk": draw(_attr("N", "S"))}
    image = dict(keys)
    for name, kinds in (
        ("title", ("S", "N", "BOOL", "BIG", "L")),
        ("genres", ("SS", "S", "L", "NULL", "N")),
        ("listPrice", ("N", "S", "NULL", "BOOL")),
        ("number_of_ratings", ("N", "S")),
        ("inStock", ("BOOL", "BOOLTEXT", "NULL", "N")),
        ("CREATION_TIMESTAMP", ("N", "ISO")),
        ("internal", ("S",)),
        ("other", ("S", "N")),
    ):
        if draw(st.integers(0, 9)) > 0:  # sometimes missing
            image[name] = draw(_attr(*kinds))
    return keys, image


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(exported_item())
def test_a_bulk_row_is_what_the_stream_puts(case: tuple[dict[str, Any], dict[str, Any]]) -> None:
    keys, image = case
    outcome, props = stream().put(keys, image)
    text, rejects = convert([image])
    if outcome == "poison":
        assert len(rejects) == 1 and rejects[0]["key"] == keys and rejects[0]["reason"]
        return
    if props.get("title") == "":  # the one documented difference: a CSV cannot carry "" in a required field
        assert len(rejects) == 1 and "empty string" in rejects[0]["reason"]
        return
    assert rejects == []
    if abs(props.get("creationTimestamp", 0)) >= MILLIS_THRESHOLD:
        # µs beyond 1e17 become seconds the emulator reads as milliseconds: its import rejects the row, as its
        # PutItems would reject the stream's item (the fake PutItems here accepts anything)
        with pytest.raises(ImportFailed, match="milliseconds"):
            _csv_rows(text)
        return
    rows = _csv_rows(text)
    expected = {k: v for k, v in props.items() if v != ""}  # "" in a nullable field: no value in a CSV
    assert rows == {outcome: expected}


def test_composite_ids_are_escaped_and_joined_like_the_stream() -> None:
    image = {
        "pk": {"S": "a#b"},
        "sk": {"N": "7"},
        "title": {"S": "T"},
        "number_of_ratings": {"N": "3"},
        "CREATION_TIMESTAMP": {"N": "1700000000123"},
    }
    text, rejects = convert([image])
    assert rejects == []
    assert stream().put({"pk": image["pk"], "sk": image["sk"]}, image)[0] == "a\\#b#7"
    assert text.split("\r\n")[:2] == [
        "ITEM_ID,TITLE,GENRES,PRICE,NUMBER_OF_RATINGS,IN_STOCK,CREATION_TIMESTAMP",
        "a\\#b#7,T,,,3,,1700000000",  # milliseconds → seconds
    ]


def test_categorical_lists_booleans_and_floats_in_csv() -> None:
    image = {
        "pk": {"S": "x"},
        "sk": {"N": "1"},
        "title": {"S": 'with "quotes", commas\nand lines'},
        "genres": {"SS": ["b", "a"]},
        "listPrice": {"N": "12.50"},
        "number_of_ratings": {"N": "3"},
        "inStock": {"BOOL": False},
        "CREATION_TIMESTAMP": {"S": "2026-01-01T00:00:00Z"},
        "internal": {"S": "secret"},
    }
    text, rejects = convert([image])
    assert rejects == []
    assert _csv_rows(text) == {
        "x#1": {
            "title": 'with "quotes", commas\nand lines',
            "genres": "a|b",
            "price": 12.5,
            "numberOfRatings": 3,
            "inStock": False,
            "creationTimestamp": 1767225600,
        }
    }
    assert ",a|b,12.5,3,false,1767225600" in text


def test_rejects_name_the_key_and_reason_and_never_stop_the_file() -> None:
    good = {"pk": {"S": "g"}, "sk": {"N": "1"}, "title": {"S": "t"}, "number_of_ratings": {"N": "1"}}
    good["CREATION_TIMESTAMP"] = {"N": "1"}
    bad = {**good, "sk": {"N": "2"}, "number_of_ratings": {"S": "many"}}
    no_key = {k: v for k, v in good.items() if k != "sk"}
    conv = bulk.Converter(parse_mapping(DOC), KEYS)
    lines = [json.dumps({"Item": x}).encode() for x in (good, bad, no_key)] + [b"{not json", b'{"x": 1}', b""]
    out, rej = io.StringIO(), io.StringIO()
    stats = conv.convert(lines, out, rej)
    assert (stats.rows, stats.rejects) == (1, 4)
    reports = [json.loads(line) for line in rej.getvalue().splitlines()]
    assert [r["line"] for r in reports] == [2, 3, 4, 5]
    assert reports[0]["key"] == {"pk": {"S": "g"}, "sk": {"N": "2"}}
    assert "NUMBER_OF_RATINGS" in reports[0]["reason"] and "many" not in reports[0]["reason"]
    assert "no item id" in reports[1]["reason"]
    assert reports[2] == {"line": 4, "key": None, "reason": "line is not valid JSON"}
    assert "export record" in reports[3]["reason"]


def test_over_the_putitems_limits_is_a_reject() -> None:
    image = {"pk": {"S": "p" * 300}, "sk": {"N": "1"}, "title": {"S": "t"}, "number_of_ratings": {"N": "1"}}
    image["CREATION_TIMESTAMP"] = {"N": "1"}
    _, rejects = convert([image])
    assert "itemId is" in rejects[0]["reason"]


def test_a_mapping_without_schema_cannot_bulk_load() -> None:
    with pytest.raises(bulk.BulkConfigError, match="no 'schema'"):
        bulk.Converter(parse_mapping({}), KEYS)


def test_the_header_is_the_schema_and_the_id_attribute_wins() -> None:
    doc = {**DOC, "itemId": "sku"}
    image = {"sku": {"N": "0012.0"}, "pk": {"S": "ignored"}, "title": {"S": "t"}, "number_of_ratings": {"N": "1"}}
    image["CREATION_TIMESTAMP"] = {"N": "1"}
    text, _ = convert([image], doc, keys=[])
    assert text.splitlines()[1].startswith("0012.0,t,")  # the N text as the stream keeps it


def test_output_keys_keep_rejects_outside_the_import_folder() -> None:
    assert bulk.output_keys("imports/job-1/", "exp/AWSDynamoDB/01/data/abc.json.gz") == (
        "imports/job-1/abc.csv",
        "imports/job-1-rejects/abc.rejects.jsonl",
    )
    assert bulk.part_name("x/moto.gz") == "moto"


@mock_aws
def test_lambda_handler_reads_s3_writes_csv_and_rejects(monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    monkeypatch.setenv("DATASET_ARN", DATASET_ARN)
    monkeypatch.setenv("CONNECTOR_CONFIG", json.dumps(DOC))
    monkeypatch.delenv("CONNECTOR_CONFIG_FILE", raising=False)
    bulk._converter_cache.clear()
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="bulk-bucket")
    good = {"pk": {"S": "g"}, "sk": {"N": "1"}, "title": {"S": "t"}, "number_of_ratings": {"N": "1"}}
    good["CREATION_TIMESTAMP"] = {"N": "1"}
    bad = {**good, "sk": {"N": "2"}, "CREATION_TIMESTAMP": {"S": "soon"}}
    body = gzip.compress(b"".join(json.dumps({"Item": x}).encode() + b"\n" for x in (good, bad)))
    s3.put_object(Bucket="bulk-bucket", Key="exp/AWSDynamoDB/01/data/part1.json.gz", Body=body)
    result = bulk.handler(
        {
            "bucket": "bulk-bucket",
            "key": "exp/AWSDynamoDB/01/data/part1.json.gz",
            "keys": KEYS,
            "outputBucket": "bulk-bucket",
            "outputPrefix": "csv/job",
        },
        None,
    )
    assert result == {
        "rows": 1,
        "rejects": 1,
        "csvKey": "csv/job/part1.csv",
        "rejectsKey": "csv/job-rejects/part1.rejects.jsonl",
    }
    csv_text = s3.get_object(Bucket="bulk-bucket", Key=result["csvKey"])["Body"].read().decode()
    assert list(_csv_rows(csv_text)) == ["g#1"]
    report = s3.get_object(Bucket="bulk-bucket", Key=result["rejectsKey"])["Body"].read().decode()
    assert json.loads(report)["key"] == {"pk": {"S": "g"}, "sk": {"N": "2"}}
    with pytest.raises(ValueError, match="outputPrefix"):
        bulk.handler({"bucket": "bulk-bucket", "key": "k", "keys": [], "outputBucket": "bulk-bucket"}, None)


def test_the_stream_handler_does_not_import_bulk() -> None:
    import subprocess
    import sys

    code = "import sys, connector.handler; print('connector.bulk' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="lambda_src"
    ).stdout
    assert out.strip() == "False"


def test_emulator_reader_rejects_a_bad_cell() -> None:
    text = "ITEM_ID,TITLE,NUMBER_OF_RATINGS,CREATION_TIMESTAMP\nx,t,1.5,1\n"
    with pytest.raises(ImportFailed, match="not an integer"):
        _csv_rows(text)


# --- the fast row path is a cache of the reference path -------------------------------------------------------

_FAST_DOCS = [DOC, {**DOC, "itemId": "pk"}]


@settings(max_examples=400, deadline=None)
@given(exported_item(), st.sampled_from([0, 1]), st.sampled_from([KEYS, ["pk"]]))
def test_the_fast_row_is_the_reference_row(
    case: tuple[dict[str, Any], dict[str, Any]], doc: int, keys: list[str]
) -> None:
    """Converter._fast_row either defers (None) or returns exactly the row the Change/item/limits path builds."""
    _, image = case
    conv = bulk.Converter(parse_mapping(_FAST_DOCS[doc]), keys)
    fast = conv._fast_row(image)
    try:
        reference: Any = conv.reference_row(image)
    except Exception as exc:
        reference = exc
    if fast is not None:
        assert fast == reference


def test_the_fast_row_takes_plain_items_and_defers_rejects() -> None:
    conv = bulk.Converter(parse_mapping(DOC), KEYS)
    image = {
        "pk": {"S": "a#b\\c"},
        "sk": {"N": "7"},
        "title": {"S": "T"},
        "genres": {"SS": ["y", "x"]},
        "listPrice": {"N": "9.5"},
        "number_of_ratings": {"N": "3"},
        "inStock": {"BOOL": True},
        "CREATION_TIMESTAMP": {"N": "1700000000000"},
        "internal": {"S": "hidden"},
    }
    fast = conv._fast_row(image)
    assert fast is not None and fast == conv.reference_row(image)
    assert fast == ["a\\#b\\\\c#7", "T", "x|y", "9.5", "3", "true", "1700000000"]
    for broken in (
        {**image, "title": {"S": ""}},  # "" in a required string: a reject
        {**image, "pk": {"S": "x" * 300}},  # itemId over 256
        {**image, "internal": {"N": "nope"}},  # an attribute no field reads, invalid
        {k: v for k, v in image.items() if k != "sk"},  # a key attribute missing
    ):
        assert conv._fast_row(broken) is None
        with pytest.raises(bulk.Poison):
            conv.reference_row(broken)


def test_near_the_properties_limit_the_length_is_measured() -> None:
    doc = {"schema": {"type": "record", "name": "I", "fields": [
        {"name": "ITEM_ID", "type": "string"},
        *({"name": f"T{i}", "type": "string", "textual": True} for i in range(2)),
    ]}}  # fmt: skip
    conv = bulk.Converter(parse_mapping(doc), ["id"])
    for size, fits in ((15_000, True), (16_100, False)):
        image = {"id": {"S": "i"}, "t0": {"S": "a" * size}, "t1": {"S": "b" * size}}
        if fits:
            assert conv._fast_row(image) == conv.reference_row(image)
        else:
            assert conv._fast_row(image) is None
            with pytest.raises(bulk.Poison, match="properties are"):
                conv.reference_row(image)
