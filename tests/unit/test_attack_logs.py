"""Attack: property values in log lines at DEBUG (issue 8, defect 10: "no property value may appear in any log
line at any level a deployed function emits").

``test_promise.test_10`` answers PutItems at botocore's ``before-call`` event, which skips the whole HTTP layer,
so botocore never logs the request. Here the clients go through botocore's endpoint as on the wire, with the
HTTP response supplied at ``before-send`` (the last step before the socket). The function's log level is a
deploy-time knob (``lambda.logLevel: DEBUG`` → ``POWERTOOLS_LOG_LEVEL``; Lambda's ApplicationLogLevel sets the
root logger), and the runtime never caps the ``botocore``/``urllib3`` loggers.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from connector import pipeline
from connector.config import load_settings
from connector.deadline import Deadline
from connector.putitems import Pacer, PutItemsSink
from tests.factories import DATASET_ARN, dynamodb_record, event

DLQ = "https://sqs.us-east-1.amazonaws.com/111122223333/poison"
SECRET = "s3cr3t-customer-value"


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Any:
        yield self._body


def _wire(client: Any, answer: Any) -> Any:
    """Answer every HTTP request of ``client`` with ``answer(request) -> (status, body dict)``."""

    def before_send(request: Any, **_: Any) -> AWSResponse:
        status, body = answer(request)
        raw = json.dumps(body).encode()
        return AWSResponse(request.url, status, {"Content-Type": "application/json"}, _Raw(raw))

    client.meta.events.register("before-send", before_send)
    return client


def test_attack_botocore_debug_logs_carry_property_values(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    def personalize(request: Any) -> tuple[int, dict[str, Any]]:
        if b"reject" in request.body:  # the service's message quotes the value, as test_10 assumes
            return 400, {"__type": "InvalidInputException", "message": f"Invalid value {SECRET}"}
        return 200, {}

    def sqs_answer(request: Any) -> tuple[int, dict[str, Any]]:
        entries = json.loads(request.body)["Entries"]
        return 200, {"Successful": [{"Id": e["Id"], "MessageId": "m", "MD5OfMessageBody": "x"} for e in entries]}

    personalize_client = _wire(boto3.client("personalize-events", region_name="us-east-1"), personalize)
    sqs = _wire(boto3.client("sqs", region_name="us-east-1"), sqs_answer)
    sink = PutItemsSink(personalize_client, DATASET_ARN, worst_call_ms=1, pacer=Pacer(1e6, sleep=lambda _: None))
    records = [
        dynamodb_record("INSERT", {"sku": "a"}, {"sku": "a", "title": SECRET}, seq="1"),
        dynamodb_record("INSERT", {"sku": "b"}, {"sku": "b", "title": SECRET, "reject": True}, seq="2"),
    ]
    settings = load_settings({"DATASET_ARN": DATASET_ARN, "DLQ_URL": DLQ})
    result = pipeline.run(event(*records), settings=settings, sink=sink, sqs=sqs, deadline=Deadline.unbounded())
    assert result.dead_lettered == 1
    leaking = sorted({r.name for r in caplog.records if SECRET in r.getMessage()})
    assert leaking == [], f"property values logged by {leaking}"
