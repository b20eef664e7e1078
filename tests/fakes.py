"""Fakes for the pipeline's clients.

``FakePersonalize`` is a real botocore ``personalize-events`` client (so parameter validation and the
``ClientError`` shape are real) whose calls are answered in-process by a rule you pass, the way botocore's
``Stubber`` answers them, but without a fixed script: the rule sees each call's items and decides.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
from botocore.awsrequest import AWSResponse
from botocore.config import Config

Rule = Callable[[list[dict[str, Any]]], tuple[str, str] | None]  # items → (error code, message) or None
Answer = tuple[str, str] | None  # (error code, message), or None: accepted
WireRule = Callable[[list[dict[str, Any]]], Answer]
STATUS = {
    "InvalidInputException": 400,
    "ResourceNotFoundException": 404,
    "ResourceInUseException": 409,
    "ThrottlingException": 400,
    "AccessDeniedException": 403,
    "InternalServerError": 500,
}


def accept_all(_: list[dict[str, Any]]) -> None:
    return None


def reject_ids(*bad: str) -> Rule:
    """InvalidInputException whenever a call carries one of ``bad``."""

    def rule(items: list[dict[str, Any]]) -> tuple[str, str] | None:
        hits = [i["itemId"] for i in items if i["itemId"] in bad]
        return ("InvalidInputException", f"Invalid item {hits[0]}") if hits else None

    return rule


class FakePersonalize:
    def __init__(self, rule: Rule = accept_all) -> None:
        self.rule = rule
        self.client = boto3.client("personalize-events", region_name="us-east-1")
        self.calls: list[list[dict[str, Any]]] = []  # every call, accepted or not
        self.accepted: list[list[dict[str, Any]]] = []
        self.items: dict[str, dict[str, Any]] = {}  # current state, as the service would hold it
        self._local = threading.local()  # the parameters of the call this thread is making (calls in flight)
        events = self.client.meta.events
        events.register("before-parameter-build.personalize-events.PutItems", self._capture)
        events.register("before-call.personalize-events.PutItems", self._answer)

    def _capture(self, params: dict[str, Any], **_: Any) -> None:
        self._local.params = params

    def _answer(self, **_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        import json

        items = self._local.params["items"]
        self.calls.append(items)
        error = self.rule(items)
        if error is None:
            self.accepted.append(items)
            for i in items:
                self.items[i["itemId"]] = json.loads(i.get("properties", "{}"))
            return AWSResponse("", 200, {}, None), {"ResponseMetadata": {"HTTPStatusCode": 200}}
        code, message = error
        status = STATUS.get(code, 400)
        return AWSResponse("", status, {}, None), {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        }


class FakeSQS:
    """Records messages; ``fail`` makes every send fail (an exception) or some entries fail (``"partial"``)."""

    def __init__(self, fail: str | None = None) -> None:
        self.fail = fail
        self.messages: list[str] = []

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        if self.fail == "all":
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "SendMessageBatch")
        failed = []
        for i, entry in enumerate(Entries):
            if self.fail == "partial" and i % 2 == 1:
                failed.append({"Id": entry["Id"], "Code": "InternalError", "SenderFault": False})
            else:
                entry["MessageBody"].encode("utf-8")  # what botocore does on the wire: must not raise
                self.messages.append(entry["MessageBody"])
        return {"Successful": [], "Failed": failed}


def create_state_table(client: Any, name: str = "state") -> None:
    """A ``STATE_TABLE`` as the contract has it: string partition key ``pk``, no sort key, on demand."""
    client.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )


@contextlib.contextmanager
def moto_state_table(name: str = "state") -> Iterator[Any]:
    """An in-process moto DynamoDB with the state table ``name``; yields the client."""
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        create_state_table(client, name)
        yield client


class _Body:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


def wire_response(status: int, body: bytes = b"{}", headers: dict[str, str] | None = None) -> AWSResponse:
    """A PutItems answer to return from a ``before-send`` handler: after the connector's pacer took its slot (an
    answer at ``before-call``, as FakePersonalize gives, comes before any pacing)."""
    return AWSResponse("https://personalize-events", status, headers or {}, _Body(body))


class Wire:
    """PutItems answered at ``before-send`` by ``rule`` after ``latency(call number)`` (or
    ``latency_by_items(item ids)``) seconds; records every call."""

    def __init__(
        self,
        rule: WireRule | None = None,
        latency: Callable[[int], float] = lambda _: 0.0,
        latency_by_items: Callable[[list[str]], float] | None = None,
        attempts: int = 1,
    ) -> None:
        self.rule = rule or (lambda _: None)
        self.latency = latency
        self.latency_by_items = latency_by_items
        self.client = boto3.client(
            "personalize-events",
            region_name="us-east-1",
            config=Config(retries={"mode": "standard", "total_max_attempts": attempts}),
        )
        self.calls: list[tuple[float, float, list[str], str | None]] = []  # start, end, item ids, error code
        self.items: dict[str, dict[str, Any]] = {}  # the dataset, as the service holds it
        self._lock = threading.Lock()
        self._n = 0
        self.client.meta.events.register_last("before-send.personalize-events.PutItems", self._answer)

    def _answer(self, request: Any, **_: Any) -> AWSResponse:
        start = time.monotonic()
        items = json.loads(request.body)["items"]
        with self._lock:
            n, self._n = self._n, self._n + 1
        ids = [i["itemId"] for i in items]
        time.sleep(self.latency_by_items(ids) if self.latency_by_items else self.latency(n))
        answer = self.rule(items)
        with self._lock:
            self.calls.append((start, time.monotonic(), [i["itemId"] for i in items], answer and answer[0]))
            if answer is None:
                for i in items:
                    self.items[i["itemId"]] = json.loads(i.get("properties", "{}"))
        if answer is None:
            return wire_response(200)
        code, message = answer
        body = json.dumps({"message": message}).encode()
        return wire_response(STATUS.get(code, 400), body, {"x-amzn-errortype": code})

    def starts(self) -> list[float]:
        return sorted(s for s, _, _, _ in self.calls)
