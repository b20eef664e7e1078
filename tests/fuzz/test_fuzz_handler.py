"""Fuzzing the whole pipeline against the Personalize Events emulator (issue 5, "Fuzzing").

Arbitrary DynamoDB images (every type, nesting, empty sets, huge strings, odd attribute names, unicode) and
arbitrary Kinesis bytes go through the handler's pipeline with a real boto3 client. For every example:

* nothing raises;
* every record gets exactly one outcome, and the counts add up;
* no PutItems call that reaches the emulator breaks a documented limit or the schema: the emulator counts
  zero invalid calls, because the connector enforces limits and coerces to the schema before sending.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector import handler, pipeline
from connector.config import load_settings
from connector.deadline import Deadline
from connector.response import Outcome
from localcloud.personalize_emulator import PersonalizeEmulator
from tests.factories import DATASET_ARN, dynamodb_record, event, kinesis_record
from tests.fakes import FakeSQS
from tests.unit.test_ddbjson import _attrs

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SCHEMA_ARN = DATASET_ARN.replace("/catalog/", "/schema-catalog/")
SCHEMA = json.loads((ROOT / "examples" / "items-schema.json").read_text())

_names = st.one_of(
    st.sampled_from(
        [
            "title",
            "Title",
            "GENRES",
            "price",
            "listPrice",
            "number_of_ratings",
            "inStock",
            "creationTimestamp",
            "createdAt",
            "status",
            "dims",
            "__",
            "a.b",
            "x",
        ]
    ),
    st.text(min_size=1, max_size=12),
)
_huge = st.integers(300, 40_000).map(lambda n: {"S": "é" * n})
_values = st.one_of(_attrs, _huge)
_keys = st.one_of(
    st.text(min_size=0, max_size=20),
    st.text(min_size=250, max_size=300),  # around the 256-character itemId limit
    st.integers(-(10**12), 10**12).map(str),
)
# Mostly valid for the example schema (CREATION_TIMESTAMP is required), so most examples reach the emulator.
_schema_base = st.fixed_dictionaries(
    {"createdAt": st.one_of(st.integers(0, 2**40).map(lambda n: {"N": str(n)}), _attrs)},
    optional={"GENRES": st.one_of(_huge, _attrs), "listPrice": _attrs, "title": st.one_of(_huge, _attrs)},
)


@st.composite
def dynamodb_event(draw: st.DrawFn) -> dict[str, Any]:
    records = []
    for _ in range(draw(st.integers(1, 25))):
        sku = draw(st.one_of(_keys, st.sampled_from(["hot-1", "hot-2"])))
        image = {"sku": {"S": sku}, **draw(_schema_base), **draw(st.dictionaries(_names, _values, max_size=6))}
        name = draw(st.sampled_from(["INSERT", "MODIFY", "REMOVE"]))
        new = image if name != "REMOVE" else None
        records.append(dynamodb_record(name, {"sku": {"S": sku}}, new, image, raw_images=True))
    return event(*records)


# Any code point, lone surrogates included (JSON escapes like "\ud800" decode to them).
_any_text = st.text(
    alphabet=st.one_of(st.characters(categories=["Cs"]), st.characters(exclude_categories=())), max_size=10
)
_json_docs = st.dictionaries(
    st.one_of(st.just("id"), st.just("itemId"), _names, _any_text),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50) | _any_text,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=8,
    ),
    max_size=6,
)


@st.composite
def kinesis_event(draw: st.DrawFn) -> dict[str, Any]:
    records = []
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["bytes", "doc", "text"]))
        if kind == "bytes":
            records.append(kinesis_record(draw(st.binary(max_size=200))))
        elif kind == "doc":
            records.append(kinesis_record(base64.b64encode(json.dumps(draw(_json_docs)).encode()).decode()))
        else:
            records.append(kinesis_record(draw(st.text(max_size=40))))
    return event(*records)


@pytest.fixture(scope="module")
def emulator() -> Iterator[PersonalizeEmulator]:
    with PersonalizeEmulator(tps=None) as emu:
        emu.register_dataset(DATASET_ARN)
        emu.register_dataset(SCHEMA_ARN, SCHEMA)
        yield emu


def _run(emulator: PersonalizeEmulator, evt: dict[str, Any], mapping: dict[str, Any], arn: str) -> None:
    source = evt["Records"][0]["eventSource"] if evt["Records"] else "none"
    before = emulator.stats()
    client = boto3.client(
        "personalize-events",
        endpoint_url=emulator.endpoint_url,
        region_name="us-east-1",
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )
    s = load_settings(
        {
            "DATASET_ARN": arn,
            "DLQ_URL": "https://sqs/q",
            "MAX_CALLS_PER_SECOND": "100000",
            "CONNECTOR_CONFIG": json.dumps(mapping),
        }
    )
    rt = handler.build_runtime(s, personalize=client, sqs=FakeSQS())
    result = pipeline.run(evt, settings=s, sink=rt.sink, sqs=rt.sqs, deadline=Deadline.unbounded())
    after = emulator.stats()

    assert sum(result.counts.values()) == result.records_in == len(evt["Records"])
    assert result.counts[Outcome.RETRY] == 0  # no throttles, faults or systemic errors here
    assert after["invalid"] == before["invalid"], "a call reached the emulator that breaks a limit or the schema"
    assert after["accepted"] - before["accepted"] == result.report.calls
    _reached.setdefault(source, []).append(result.report.calls)


_reached: dict[str, list[int]] = {}  # PutItems calls per example, by event source


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(evt=dynamodb_event())
def test_fuzz_dynamodb_images_schemaless(emulator: PersonalizeEmulator, evt: dict[str, Any]) -> None:
    _run(emulator, evt, {}, DATASET_ARN)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(evt=dynamodb_event())
def test_fuzz_dynamodb_images_with_schema(emulator: PersonalizeEmulator, evt: dict[str, Any]) -> None:
    mapping = {
        "schema": SCHEMA,
        "fields": {"PRICE": "listPrice", "CREATION_TIMESTAMP": "createdAt"},
        "onRemove": {"STATUS": "deleted"},
    }
    _run(emulator, evt, mapping, SCHEMA_ARN)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(evt=kinesis_event())
def test_fuzz_kinesis_bytes_and_documents(emulator: PersonalizeEmulator, evt: dict[str, Any]) -> None:
    _run(emulator, evt, {}, DATASET_ARN)


def test_zz_fuzzing_reached_the_emulator() -> None:
    """Guard against a fuzzer that only ever produces poison: DynamoDB images must often send real calls.

    Arbitrary Kinesis bytes are poison almost always (0-7 of 60 examples reached the emulator in six runs), so only
    the DynamoDB examples are held to a share: 57-104 of 120 reached it in those runs, 59 of 180 over all three
    tests in one CI run (which a bound over all three, a third, failed on); a fifth of the DynamoDB examples
    still tells a fuzzer that reaches the emulator from one that does not."""
    dynamodb = _reached.get("aws:dynamodb", [])
    if not dynamodb:
        pytest.skip("the DynamoDB fuzz tests did not run in this session")
    assert sum(1 for n in dynamodb if n) >= len(dynamodb) / 5
