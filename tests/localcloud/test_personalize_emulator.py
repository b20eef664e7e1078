"""The Personalize Events emulator: every validation rule, the quota, faults, and the wire format.

The wire format is checked through the clients that will really talk to it: boto3 (botocore's rest-json
parser and its retry classification) and the AWS CLI (``awscli`` from PyPI, run as a subprocess).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore import UNSIGNED
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

from localcloud.personalize_emulator import (
    EmulatorClient,
    PersonalizeEmulator,
    Schema,
    dataset_group_of,
    property_key,
)
from tests.factories import items_schema

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ACCOUNT = "123456789012"
ARN = f"arn:aws:personalize:us-east-1:{ACCOUNT}:dataset/catalog/ITEMS"
USERS_ARN = f"arn:aws:personalize:us-east-1:{ACCOUNT}:dataset/catalog/USERS"
OTHER_GROUP_ARN = f"arn:aws:personalize:us-east-1:{ACCOUNT}:dataset/other/ITEMS"
SCHEMA: dict[str, Any] = items_schema(
    {"name": "GENRES", "type": ["null", "string"], "categorical": True},
    {"name": "PRICE", "type": "float"},
    {"name": "CREATION_TIMESTAMP", "type": "long"},
    {"name": "NUMBER_OF_RATINGS", "type": ["null", "int"]},
    {"name": "IN_STOCK", "type": ["null", "boolean"]},
    {"name": "DESCRIPTION", "type": ["null", "string"], "textual": True},
    {"name": "RATING", "type": ["double", "null"], "default": 0.0},
)
VALID = {"price": 9.99, "creationTimestamp": 1_700_000_000}
# botocore's retries "max_attempts" counts *retries*; "total_max_attempts": 1 means one attempt, no retry.
NO_RETRY: dict[str, Any] = {"total_max_attempts": 1, "mode": "standard"}


@pytest.fixture(autouse=True)
def fake_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")


@pytest.fixture
def emu() -> Iterator[PersonalizeEmulator]:
    with PersonalizeEmulator(tps=10, seed=7) as emulator:
        emulator.register_dataset(ARN, SCHEMA)
        emulator.register_dataset(USERS_ARN)
        yield emulator


def client_for(emulator: PersonalizeEmulator, config: Config | None = None) -> Any:
    config = config or Config(retries=dict(NO_RETRY))
    return boto3.client("personalize-events", endpoint_url=emulator.endpoint_url, config=config)


@pytest.fixture
def pe(emu: PersonalizeEmulator) -> Any:
    return client_for(emu)


def item(item_id: str = "sku-1", **props: Any) -> dict[str, str]:
    return {"itemId": item_id, "properties": json.dumps({**VALID, **props})}


def error_of(exc_info: pytest.ExceptionInfo[ClientError]) -> tuple[str, int, str]:
    err = exc_info.value.response
    return err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"], err["Error"]["Message"]


def raw_call(
    emulator: PersonalizeEmulator,
    path: str,
    body: bytes | dict[str, Any],
    *,
    service: str | None = "personalize",
    method: str = "POST",
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """A request the SDK would refuse to send (or an unsigned / wrongly scoped one)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = AWSRequest(
        method=method, url=emulator.endpoint_url + path, data=data, headers={"Content-Type": "application/json"}
    )
    if service is not None:
        SigV4Auth(Credentials("testing", "testing"), service, "us-east-1").add_auth(request)
    conn = http.client.HTTPConnection("127.0.0.1", emulator.port, timeout=5)
    try:
        conn.request(method, path, body=data, headers=dict(request.headers.items()))
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------- wire format


def test_put_items_success_is_an_empty_200_and_the_item_lands(emu: PersonalizeEmulator, pe: Any) -> None:
    response = pe.put_items(datasetArn=ARN, items=[item("sku-1", genres="Horror|Action")])

    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert response["ResponseMetadata"]["RequestId"]
    assert set(response) == {"ResponseMetadata"}
    assert emu.items(ARN) == {"sku-1": {**VALID, "genres": "Horror|Action"}}


def test_errors_use_the_rest_json_shape(emu: PersonalizeEmulator) -> None:
    status, headers, body = raw_call(emu, "/items", {"datasetArn": ARN, "items": [{"itemId": "a"}]})

    assert status == 400
    assert headers["X-Amzn-ErrorType"] == "InvalidInputException"
    assert headers["Content-Type"] == "application/json"
    assert set(json.loads(body)) == {"message"}


def test_unknown_dataset_is_resource_not_found_404(pe: Any) -> None:
    with pytest.raises(pe.exceptions.ResourceNotFoundException) as exc:
        pe.put_items(datasetArn=OTHER_GROUP_ARN, items=[item()])
    assert error_of(exc)[:2] == ("ResourceNotFoundException", 404)


def test_dataset_not_active_is_resource_in_use_409(emu: PersonalizeEmulator, pe: Any) -> None:
    emu.register_dataset(ARN, SCHEMA, status="CREATE IN_PROGRESS")

    with pytest.raises(pe.exceptions.ResourceInUseException) as exc:
        pe.put_items(datasetArn=ARN, items=[item()])
    assert error_of(exc)[:2] == ("ResourceInUseException", 409)


def test_access_denied_is_403(emu: PersonalizeEmulator, pe: Any) -> None:
    emu.register_dataset(ARN, SCHEMA, access_denied=True)

    with pytest.raises(ClientError) as exc:
        pe.put_items(datasetArn=ARN, items=[item()])
    assert error_of(exc)[:2] == ("AccessDeniedException", 403)
    assert emu.items(ARN) == {}


def test_unknown_route_and_method(emu: PersonalizeEmulator) -> None:
    status, headers, _ = raw_call(emu, "/actions-nope", {})
    assert (status, headers["X-Amzn-ErrorType"]) == (404, "UnknownOperationException")
    status, headers, _ = raw_call(emu, "/items", b"", method="GET")
    assert (status, headers["X-Amzn-ErrorType"]) == (404, "UnknownOperationException")


@pytest.mark.parametrize("body", [b"{not json", b"[]", b'{"datasetArn": 5, "items": []}'])
def test_malformed_body_is_serialization_exception(emu: PersonalizeEmulator, body: bytes) -> None:
    status, headers, _ = raw_call(emu, "/items", body)
    assert (status, headers["X-Amzn-ErrorType"]) == (400, "SerializationException")


# ------------------------------------------------------------------------------------------------ SigV4


def test_missing_signature_is_rejected(emu: PersonalizeEmulator) -> None:
    unsigned = client_for(emu, Config(signature_version=UNSIGNED, retries=dict(NO_RETRY)))
    with pytest.raises(ClientError) as exc:
        unsigned.put_items(datasetArn=ARN, items=[item()])
    assert error_of(exc)[:2] == ("MissingAuthenticationTokenException", 403)
    assert emu.items(ARN) == {}


@pytest.mark.parametrize("service", ["personalize-events", "execute-api"])
def test_signature_scoped_to_another_service_is_rejected(emu: PersonalizeEmulator, service: str) -> None:
    status, headers, body = raw_call(emu, "/items", {"datasetArn": ARN, "items": [item()]}, service=service)

    assert (status, headers["X-Amzn-ErrorType"]) == (403, "InvalidSignatureException")
    assert "personalize" in json.loads(body)["message"]


def test_signature_for_personalize_is_accepted_without_verifying_it(emu: PersonalizeEmulator) -> None:
    status, _, _ = raw_call(emu, "/items", {"datasetArn": ARN, "items": [item()]}, service="personalize")
    assert status == 200


def test_non_sigv4_authorization_is_rejected(emu: PersonalizeEmulator) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=5)
    conn.request("POST", "/items", body=b"{}", headers={"Authorization": "Basic Zm9vOmJhcg=="})
    resp = conn.getresponse()
    assert (resp.status, resp.headers["X-Amzn-ErrorType"]) == (403, "IncompleteSignatureException")
    conn.close()


# ------------------------------------------------------------------------------------ request validation


@pytest.mark.parametrize(
    "dataset_arn",
    [
        "arn:aws:s3:::my-bucket",
        "arn:aws:personalize:us-east-1:123456789012",
        "ARN:aws:personalize:us-east-1:1:dataset/x/ITEMS",
        f"arn:aws:personalize:us-east-1:{ACCOUNT}:dataset/{'g' * 230}/ITEMS",  # 277 characters
    ],
)
def test_dataset_arn_length_and_pattern(pe: Any, dataset_arn: str) -> None:
    with pytest.raises(pe.exceptions.InvalidInputException) as exc:
        pe.put_items(datasetArn=dataset_arn, items=[item()])
    assert "datasetArn" in error_of(exc)[2]


def test_more_than_ten_items_fail_the_whole_call(emu: PersonalizeEmulator, pe: Any) -> None:
    with pytest.raises(pe.exceptions.InvalidInputException) as exc:
        pe.put_items(datasetArn=ARN, items=[item(f"sku-{i}") for i in range(11)])
    assert "less than or equal to 10" in error_of(exc)[2]
    assert emu.items(ARN) == {}
    pe.put_items(datasetArn=ARN, items=[item(f"sku-{i}") for i in range(10)])
    assert len(emu.items(ARN)) == 10


def test_zero_items_reach_the_server_only_unsigned_by_the_sdk(emu: PersonalizeEmulator) -> None:
    status, headers, body = raw_call(emu, "/items", {"datasetArn": ARN, "items": []})
    assert (status, headers["X-Amzn-ErrorType"]) == (400, "InvalidInputException")
    assert "greater than or equal to 1" in json.loads(body)["message"]


@pytest.mark.parametrize(
    ("item_id", "ok"),
    [
        ("x" * 256, True),
        ("x" * 257, False),
        ("\U0001f600" * 256, True),  # code points, as Smithy's @length counts (512 UTF-16 units)
        ("\U0001f600" * 257, False),
    ],
)
def test_item_id_length(emu: PersonalizeEmulator, pe: Any, item_id: str, ok: bool) -> None:
    if ok:
        pe.put_items(datasetArn=ARN, items=[item(item_id)])
        assert item_id in emu.items(ARN)
    else:
        with pytest.raises(pe.exceptions.InvalidInputException) as exc:
            pe.put_items(datasetArn=ARN, items=[item(item_id)])
        assert "itemId" in error_of(exc)[2]


def test_empty_item_id_and_empty_properties_are_rejected_server_side(emu: PersonalizeEmulator) -> None:
    for bad in ({"itemId": ""}, {"itemId": "a", "properties": ""}, {"properties": "{}"}):
        status, headers, _ = raw_call(emu, "/items", {"datasetArn": ARN, "items": [bad]})
        assert (status, headers["X-Amzn-ErrorType"]) == (400, "InvalidInputException"), bad


def test_properties_length_limit_is_32000_characters(emu: PersonalizeEmulator, pe: Any) -> None:
    emu.register_dataset(ARN, None)  # no schema: any JSON object

    def props_of_length(n: int) -> str:
        text = json.dumps({"blob": ""})
        return json.dumps({"blob": "x" * (n - len(text))})

    pe.put_items(datasetArn=ARN, items=[{"itemId": "a", "properties": props_of_length(32_000)}])
    with pytest.raises(pe.exceptions.InvalidInputException) as exc:
        pe.put_items(datasetArn=ARN, items=[{"itemId": "b", "properties": props_of_length(32_001)}])
    assert "properties" in error_of(exc)[2]
    assert set(emu.items(ARN)) == {"a"}


@pytest.mark.parametrize("properties", ["not json", "[1, 2]", '"a string"', "12", '{"a": NaN}'])
def test_properties_must_be_a_json_object(emu: PersonalizeEmulator, pe: Any, properties: str) -> None:
    emu.register_dataset(ARN, None)
    with pytest.raises(pe.exceptions.InvalidInputException):
        pe.put_items(datasetArn=ARN, items=[{"itemId": "a", "properties": properties}])


def test_without_schema_any_json_object_is_accepted(emu: PersonalizeEmulator, pe: Any) -> None:
    emu.register_dataset(ARN, None)
    props = {"whatever": {"nested": [1, 2]}, "x": None}
    pe.put_items(datasetArn=ARN, items=[{"itemId": "a", "properties": json.dumps(props)}])
    assert emu.items(ARN) == {"a": props}


def test_one_bad_item_fails_the_whole_call(emu: PersonalizeEmulator, pe: Any) -> None:
    items = [item(f"sku-{i}") for i in range(10)]
    items[8] = item("sku-8", price="cheap")

    with pytest.raises(pe.exceptions.InvalidInputException) as exc:
        pe.put_items(datasetArn=ARN, items=items)
    assert "items.9.member" in error_of(exc)[2]
    assert emu.items(ARN) == {}


# ------------------------------------------------------------------------------------------------ schema


# Only the documented examples (PutItems API reference and "Importing items individually": UPPER_SNAKE field names
# become camelCase keys, e.g. NUMBER_OF_RATINGS -> numberOfRatings). Other spellings are undocumented: testing them
# here would only test the emulator against the connector's own rule.
@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("NUMBER_OF_RATINGS", "numberOfRatings"),
        ("CREATION_TIMESTAMP", "creationTimestamp"),
        ("GENRES", "genres"),
    ],
)
def test_property_key_is_camel_case_of_the_field_name(field: str, expected: str) -> None:
    assert property_key(field) == expected


@pytest.mark.parametrize(
    ("props", "reason"),
    [
        ({"price": 1.0}, "creationTimestamp"),  # missing non-null field
        ({**VALID, "colour": "red"}, "colour"),  # unknown key
        ({**VALID, "PRICE": 1.0}, "PRICE"),  # the schema name is not the property key
        ({**VALID, "itemId": "sku-1"}, "itemId"),  # ITEM_ID is not a property
        ({**VALID, "price": "cheap"}, "price"),
        ({**VALID, "price": True}, "price"),
        ({**VALID, "price": None}, "price"),  # null for a non-null field
        ({**VALID, "creationTimestamp": 1.5}, "creationTimestamp"),
        ({**VALID, "creationTimestamp": 2**63}, "creationTimestamp"),
        ({**VALID, "numberOfRatings": 2**31}, "numberOfRatings"),  # int is 32-bit
        ({**VALID, "numberOfRatings": "many"}, "numberOfRatings"),
        ({**VALID, "inStock": "yes"}, "inStock"),
        ({**VALID, "inStock": 1}, "inStock"),
        ({**VALID, "genres": ["a", "b"]}, "genres"),
        ({**VALID, "genres": 7}, "genres"),
        ({**VALID, "genres": "g" * 1001}, "genres"),  # categorical value over 1,000 characters
        ({**VALID, "description": "d" * 20_001}, "description"),  # textual over 20,000
        ({**VALID, "rating": {"v": 1}}, "rating"),
    ],
)
def test_schema_violations_are_invalid_input(emu: PersonalizeEmulator, pe: Any, props: dict, reason: str) -> None:
    with pytest.raises(pe.exceptions.InvalidInputException) as exc:
        pe.put_items(datasetArn=ARN, items=[{"itemId": "sku-1", "properties": json.dumps(props)}])
    assert reason in error_of(exc)[2]
    assert emu.items(ARN) == {}


@pytest.mark.parametrize(
    "props",
    [
        VALID,
        {**VALID, "genres": None, "numberOfRatings": None, "inStock": None, "rating": None},
        {**VALID, "genres": "g" * 1000, "description": "d" * 20_000},
        {**VALID, "price": 10, "numberOfRatings": 2**31 - 1, "creationTimestamp": 99_999_999_999},
        {**VALID, "inStock": False, "rating": 4.5},
        {**VALID, "numberOfRatings": "12", "price": "9.5", "creationTimestamp": "1700000000"},  # API doc form
    ],
)
def test_schema_conforming_properties_are_accepted(emu: PersonalizeEmulator, pe: Any, props: dict) -> None:
    pe.put_items(datasetArn=ARN, items=[{"itemId": "sku-1", "properties": json.dumps(props)}])
    assert emu.items(ARN) == {"sku-1": props}


def test_strict_types_rejects_numeric_strings(emu: PersonalizeEmulator, pe: Any) -> None:
    emu.configure(strict_types=True)
    with pytest.raises(pe.exceptions.InvalidInputException) as exc:
        pe.put_items(datasetArn=ARN, items=[item(numberOfRatings="12")])
    assert "numberOfRatings" in error_of(exc)[2]


def test_error_messages_never_quote_property_values(emu: PersonalizeEmulator, pe: Any) -> None:
    secret = "s3cr3t-" * 200
    with pytest.raises(pe.exceptions.InvalidInputException) as exc:
        pe.put_items(datasetArn=ARN, items=[item(genres=secret)])
    assert "s3cr3t" not in error_of(exc)[2]


def test_schema_loads_from_a_connector_mapping_document_and_rejects_nested_types() -> None:
    schema = Schema.load({"itemId": "sku", "schema": SCHEMA, "fields": {"PRICE": "listPrice"}})
    assert schema is not None
    assert set(schema.fields) == {
        "genres",
        "price",
        "creationTimestamp",
        "numberOfRatings",
        "inStock",
        "description",
        "rating",
    }
    with pytest.raises(ValueError, match="unsupported"):
        Schema.load({"type": "record", "name": "x", "fields": [{"name": "A", "type": {"type": "array"}}]})


# ------------------------------------------------------------------------------------------ full replace


def test_put_items_replaces_the_whole_item_latest_call_wins(emu: PersonalizeEmulator, pe: Any) -> None:
    pe.put_items(datasetArn=ARN, items=[item("a", genres="Horror", numberOfRatings=3)])
    pe.put_items(datasetArn=ARN, items=[item("a", price=1.0)])

    assert emu.items(ARN) == {"a": {**VALID, "price": 1.0}}


def test_duplicate_ids_in_one_call_last_one_wins(emu: PersonalizeEmulator, pe: Any) -> None:
    pe.put_items(datasetArn=ARN, items=[item("a", price=1.0), item("b"), item("a", price=2.0)])

    assert emu.items(ARN)["a"]["price"] == 2.0
    assert emu.stats()["items_written"] == 3


# ----------------------------------------------------------------------------------------------- quota


def test_rapid_calls_beyond_the_quota_are_throttled(emu: PersonalizeEmulator, pe: Any) -> None:
    outcomes = []
    for i in range(15):
        try:
            pe.put_items(datasetArn=ARN, items=[item(f"sku-{i}")])
            outcomes.append("ok")
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "ThrottlingException"
            assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 400
            outcomes.append("throttled")

    assert outcomes.count("ok") == 10
    assert outcomes.count("throttled") == 5
    assert len(emu.items(ARN)) == 10  # throttled calls wrote nothing
    stats = emu.stats()
    assert (stats["throttled"], stats["throttled_quota"], stats["accepted"]) == (5, 5, 10)
    assert stats["calls_per_second"]["max_accepted_in_1s"] == 10
    assert stats["throttled_share"] == pytest.approx(5 / 15)


def test_calls_spaced_at_the_quota_are_not_throttled(emu: PersonalizeEmulator, pe: Any) -> None:
    for i in range(13):  # every gap >= 110 ms, so no 1-second window ever holds more than 10 calls
        if i:
            time.sleep(0.11)
        pe.put_items(datasetArn=ARN, items=[item(f"sku-{i}")])

    assert emu.stats()["throttled"] == 0
    assert len(emu.items(ARN)) == 13


def test_the_window_slides(emu: PersonalizeEmulator, pe: Any) -> None:
    emu.set_tps(2)
    pe.put_items(datasetArn=ARN, items=[item("a")])
    pe.put_items(datasetArn=ARN, items=[item("b")])
    with pytest.raises(pe.exceptions.ClientError, match="ThrottlingException"):
        pe.put_items(datasetArn=ARN, items=[item("c")])
    time.sleep(1.05)
    pe.put_items(datasetArn=ARN, items=[item("c")])


def test_datasets_of_one_group_share_the_quota_other_groups_do_not(emu: PersonalizeEmulator, pe: Any) -> None:
    sibling = ARN.replace("/ITEMS", "/ITEMS_SHADOW")  # same dataset group "catalog"
    emu.register_dataset(sibling)
    emu.register_dataset(OTHER_GROUP_ARN)
    emu.set_tps(4)
    assert (
        dataset_group_of(sibling)
        == dataset_group_of(ARN)
        == (f"arn:aws:personalize:us-east-1:{ACCOUNT}:dataset-group/catalog")
    )

    throttled = 0
    for i in range(3):
        for arn in (ARN, sibling):
            try:
                pe.put_items(datasetArn=arn, items=[item(f"sku-{i}")])
            except ClientError:
                throttled += 1
    for i in range(4):
        pe.put_items(datasetArn=OTHER_GROUP_ARN, items=[item(f"sku-{i}")])  # its own quota

    assert throttled == 2
    assert emu.stats()["throttled_quota"] == 2


def test_concurrent_callers_never_exceed_the_quota(emu: PersonalizeEmulator) -> None:
    results: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        client = client_for(emu)
        for i in range(6):
            try:
                client.put_items(datasetArn=ARN, items=[item(f"w{n}-{i}")])
                outcome = "ok"
            except ClientError as exc:
                outcome = exc.response["Error"]["Code"]
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    stats = emu.stats()
    assert set(results) <= {"ok", "ThrottlingException"}
    assert stats["calls"] == 24 == stats["accepted"] + stats["throttled"]
    assert stats["calls_per_second"]["max_accepted_in_1s"] <= 10
    assert results.count("ThrottlingException") >= 1


# ------------------------------------------------------------------------------ retries, faults, latency


@pytest.mark.parametrize(
    ("mode", "errors"),
    [
        ("standard", ["ThrottlingException", "InternalServerError", "ServiceUnavailable"]),
        ("legacy", ["ThrottlingException"]),  # legacy backoff grows fast: keep it short
    ],
)
def test_botocore_retries_throttling_and_5xx(emu: PersonalizeEmulator, mode: str, errors: list[str]) -> None:
    emu.inject(*errors)
    client = client_for(emu, Config(retries={"total_max_attempts": 4, "mode": mode}))

    response = client.put_items(datasetArn=ARN, items=[item()])

    assert response["ResponseMetadata"]["RetryAttempts"] == len(errors)
    assert [c["error"] for c in emu.calls()] == [*errors, None]
    assert emu.stats()["throttled_injected"] == 1


@pytest.mark.parametrize(
    ("kwargs", "code", "status"),
    [
        ({"throttle_rate": 1.0}, "ThrottlingException", 400),
        ({"error_rate": 1.0, "error_status": 500}, "InternalServerError", 500),
        ({"error_rate": 1.0, "error_status": 503}, "ServiceUnavailable", 503),
    ],
)
def test_fault_rates(emu: PersonalizeEmulator, pe: Any, kwargs: dict, code: str, status: int) -> None:
    emu.set_faults(**kwargs)
    with pytest.raises(ClientError) as exc:
        pe.put_items(datasetArn=ARN, items=[item()])

    assert error_of(exc)[:2] == (code, status)
    assert emu.items(ARN) == {}
    assert emu.stats()["faults_injected"] == 1
    assert emu.calls()[-1]["injected"] is True


def test_partial_fault_rate_is_a_share_not_all_or_nothing(emu: PersonalizeEmulator, pe: Any) -> None:
    emu.set_tps(None)
    emu.set_faults(throttle_rate=0.5)
    outcomes = []
    for i in range(40):
        try:
            pe.put_items(datasetArn=ARN, items=[item(f"sku-{i}")])
            outcomes.append("ok")
        except ClientError:
            outcomes.append("fault")
    assert 5 < outcomes.count("fault") < 35


def test_slow_response_lands_even_when_the_client_times_out(emu: PersonalizeEmulator) -> None:
    emu.set_faults(slow_rate=1.0, slow_ms=400)
    impatient = client_for(emu, Config(read_timeout=0.1, retries=dict(NO_RETRY)))

    with pytest.raises(ReadTimeoutError):
        impatient.put_items(datasetArn=ARN, items=[item("late")])

    assert "late" in emu.items(ARN)  # written before the delayed response, as on the real service
    assert emu.stats()["slow_responses"] == 1


def test_latency_is_applied_and_changeable_at_runtime(emu: PersonalizeEmulator, pe: Any) -> None:
    emu.set_latency(latency_ms=150)
    start = time.monotonic()
    pe.put_items(datasetArn=ARN, items=[item()])
    assert time.monotonic() - start >= 0.15

    emu.set_latency(latency_ms=0)
    start = time.monotonic()
    pe.put_items(datasetArn=ARN, items=[item()])
    assert time.monotonic() - start < 0.15


def test_bad_settings_are_refused(emu: PersonalizeEmulator) -> None:
    for kwargs in ({"throttle_rate": 1.5}, {"error_status": 502}, {"slow_ms": -1}):
        with pytest.raises(ValueError):
            emu.set_faults(**kwargs)
    with pytest.raises(ValueError):
        emu.inject("NoSuchError")


# ------------------------------------------------------------------------------- PutUsers and PutEvents


def test_put_users_and_type_mismatch(emu: PersonalizeEmulator, pe: Any) -> None:
    pe.put_users(datasetArn=USERS_ARN, users=[{"userId": "u1", "properties": '{"tier": "gold"}'}])
    assert emu.items(USERS_ARN) == {"u1": {"tier": "gold"}}

    with pytest.raises(pe.exceptions.InvalidInputException):
        pe.put_items(datasetArn=USERS_ARN, items=[item()])
    with pytest.raises(pe.exceptions.InvalidInputException):
        pe.put_users(datasetArn=ARN, users=[{"userId": "u1"}])


def test_put_events_is_accepted(emu: PersonalizeEmulator, pe: Any) -> None:
    pe.put_events(
        trackingId="t-1",
        sessionId="s-1",
        eventList=[{"eventType": "click", "sentAt": 1_700_000_000, "itemId": "sku-1"}],
    )
    assert emu.stats()["by_operation"]["PutEvents"]["accepted"] == 1


# ------------------------------------------------------------------------------------- admin/read API


def test_admin_http_api_round_trip(emu: PersonalizeEmulator, pe: Any) -> None:
    admin = EmulatorClient(emu.endpoint_url)
    admin.wait_ready(timeout=2)
    new_arn = f"arn:aws:personalize:eu-west-1:{ACCOUNT}:dataset/remote/ITEMS"

    assert admin.register_dataset(new_arn, json.dumps(SCHEMA))["schema"]["name"] == "Items"
    assert new_arn in {d["datasetArn"] for d in admin.datasets()}
    pe.put_items(datasetArn=new_arn, items=[item("r1")])
    assert admin.items(new_arn) == {"r1": VALID}

    admin.inject("ResourceInUseException")
    with pytest.raises(pe.exceptions.ResourceInUseException):
        pe.put_items(datasetArn=new_arn, items=[item("r2")])
    assert admin.set_faults(throttle_rate=0.25)["throttleRate"] == 0.25
    assert admin.set_latency(latency_ms=5, jitter_ms=2)["jitterMs"] == 2
    assert admin.set_tps(20)["tps"] == 20
    assert admin.config()["latencyMs"] == 5

    calls = admin.calls()
    assert [c["outcome"] for c in calls] == ["ok", "in_use"]
    assert admin.calls(since=calls[-1]["seq"]) == calls[-1:]
    stats = admin.stats()
    assert (stats["calls"], stats["accepted"], stats["items_written"], stats["faults_injected"]) == (2, 1, 1, 1)

    admin.reset()
    assert admin.items(new_arn) == {}
    assert admin.stats()["calls"] == 0
    admin.reset(datasets=True)
    with pytest.raises(KeyError):
        admin.items(new_arn)
    with pytest.raises(ValueError):
        admin.set_faults(error_rate=3)


def test_call_log_feeds_items_per_call(emu: PersonalizeEmulator, pe: Any) -> None:
    pe.put_items(datasetArn=ARN, items=[item(f"a{i}") for i in range(10)])
    pe.put_items(datasetArn=ARN, items=[item(f"b{i}") for i in range(4)])

    calls = emu.calls()
    assert [(c["records"], c["outcome"]) for c in calls] == [(10, "ok"), (4, "ok")]
    assert all(c["dataset_group"].endswith("dataset-group/catalog") and c["ts"] > 0 for c in calls)
    stats = emu.stats()
    assert stats["items_per_call"] == 7.0
    assert stats["items_per_call_histogram"] == {"4": 1, "10": 1}


def test_accepted_items_log_is_off_by_default(emu: PersonalizeEmulator, pe: Any) -> None:
    pe.put_items(datasetArn=ARN, items=[item("a")])
    assert not emu.state.logs_items
    with pytest.raises(RuntimeError, match="log_items"):
        emu.accepted()
    with pytest.raises(ValueError, match="log_items"):
        EmulatorClient(emu.endpoint_url).accepted()


def test_accepted_items_log_records_each_accepted_call_with_its_items_and_write_time() -> None:
    with PersonalizeEmulator(tps=10, seed=7, log_items=True) as emulator:
        emulator.register_dataset(ARN, SCHEMA)
        pe = client_for(emulator)
        before = time.time()
        pe.put_items(datasetArn=ARN, items=[item("a", price=1.5), item("b")])
        emulator.inject("ThrottlingException")
        with pytest.raises(ClientError, match="ThrottlingException"):
            pe.put_items(datasetArn=ARN, items=[item("c")])
        with pytest.raises(pe.exceptions.InvalidInputException):
            pe.put_items(datasetArn=ARN, items=[item("d", price="n/a")])
        pe.put_items(datasetArn=ARN, items=[item("a", price=2.5)])
        after = time.time()

        accepted = emulator.accepted()
        calls = emulator.calls()
        assert [[i[0] for i in e["items"]] for e in accepted] == [["a", "b"], ["a"]]  # only accepted calls
        assert [e["seq"] for e in accepted] == [c["seq"] for c in calls if c["outcome"] == "ok"]
        assert accepted[0]["items"][0][1] == {**VALID, "price": 1.5}
        assert accepted[1]["items"][0][1]["price"] == 2.5
        assert before <= accepted[0]["ts"] <= accepted[1]["ts"] <= after
        assert all(e["dataset_arn"] == ARN and e["operation"] == "PutItems" for e in accepted)
        assert emulator.accepted(since=accepted[1]["seq"]) == accepted[1:]
        assert EmulatorClient(emulator.endpoint_url).accepted() == accepted  # and over HTTP
        emulator.reset()
        assert emulator.accepted() == []


def test_stop_closes_kept_alive_connections(emu: PersonalizeEmulator, pe: Any) -> None:
    pe.put_items(datasetArn=ARN, items=[item()])  # opens a pooled keep-alive connection
    emu.stop()
    with pytest.raises((EndpointConnectionError, ConnectionClosedError)):
        pe.put_items(datasetArn=ARN, items=[item()])


# ------------------------------------------------------------------------- AWS CLI and the entry point


def run_aws(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE="/nonexistent",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
        AWS_MAX_ATTEMPTS="1",
        **(env_extra or {}),
    )
    aws = str(Path(sys.executable).with_name("aws"))
    return subprocess.run([aws, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_aws_cli_put_items_with_endpoint_url(emu: PersonalizeEmulator) -> None:
    items = json.dumps([item("cli-1", genres="Drama")])
    done = run_aws(
        "personalize-events", "put-items", "--endpoint-url", emu.endpoint_url,
        "--dataset-arn", ARN, "--items", items,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert emu.items(ARN) == {"cli-1": {**VALID, "genres": "Drama"}}


def test_aws_cli_sees_modelled_errors_via_service_endpoint_env(emu: PersonalizeEmulator) -> None:
    items = json.dumps([{"itemId": "cli-2", "properties": json.dumps({"price": "cheap"})}])
    done = run_aws(
        "personalize-events", "put-items", "--dataset-arn", ARN, "--items", items,
        env_extra={"AWS_ENDPOINT_URL_PERSONALIZE_EVENTS": emu.endpoint_url},
    )  # fmt: skip

    assert done.returncode in (254, 255)  # awscli v1 exits 255 on a service error, v2 254
    assert "(InvalidInputException) when calling the PutItems operation" in done.stderr
    assert emu.stats()["invalid"] == 1


def test_boto3_honours_the_service_endpoint_env(emu: PersonalizeEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_PERSONALIZE_EVENTS", emu.endpoint_url)
    boto3.client("personalize-events", config=Config(retries=dict(NO_RETRY))).put_items(
        datasetArn=ARN, items=[item("env")]
    )
    assert "env" in emu.items(ARN)


def test_module_entry_point_runs_in_the_foreground(tmp_path: Path) -> None:
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(SCHEMA))
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "localcloud.personalize_emulator", "--port", "0",
            "--dataset", ARN, "--schema", str(schema_file), "--tps", "10", "--latency-ms", "5",
            "--ready-file", str(ready),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not ready.exists() or not ready.read_text().strip():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "emulator did not start"
            time.sleep(0.05)
        endpoint = ready.read_text().strip()
        client = boto3.client("personalize-events", endpoint_url=endpoint, config=Config(retries=dict(NO_RETRY)))
        client.put_items(datasetArn=ARN, items=[item("p1")])
        with pytest.raises(client.exceptions.InvalidInputException):
            client.put_items(datasetArn=ARN, items=[item("p2", colour="red")])
        assert EmulatorClient(endpoint).items(ARN) == {"p1": VALID}
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "listening on http://127.0.0.1:" in out
    assert json.loads(err)["accepted"] == 1
