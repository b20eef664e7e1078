"""The handler in a real subprocess, over the real wire: PutItems to a local HTTP endpoint, the DLQ on moto.

boto3 inside the subprocess is redirected only by the standard ``AWS_ENDPOINT_URL_<SERVICE>`` variables, as the
runtime contract says. The endpoint here is deliberately small (it records requests and answers by rule); the
full Personalize Events emulator lives in the local cloud.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.factories import DATASET_ARN, dynamodb_record, event, kinesis_record

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
RUNNER = """
import json, sys
from connector.handler import handler
class Context:
    aws_request_id = "req-wire"; function_name = "connector"; memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:111122223333:function:connector"
    def get_remaining_time_in_millis(self): return 60_000
print("RESPONSE " + json.dumps(handler(json.load(sys.stdin), Context())))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Endpoint(ThreadingHTTPServer):
    """Records PutItems requests; throttles the first one; rejects any call that carries item "bad"."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, Any]] = []
        self.times: list[float] = []
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: Endpoint

    def log_message(self, *_: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append(
                {
                    "path": self.path,
                    "auth": self.headers.get("Authorization", ""),
                    "content_type": self.headers.get("Content-Type"),
                    "body": body,
                }
            )
            self.server.times.append(time.monotonic())
            first = len(self.server.requests) == 1
        if first:
            self._reply(400, {"message": "Rate exceeded"}, "ThrottlingException")
        elif any(i["itemId"] == "bad" for i in body["items"]):
            self._reply(400, {"message": "Invalid properties for item bad"}, "InvalidInputException")
        else:
            self._reply(200, {})

    def _reply(self, status: int, doc: dict[str, Any], error: str | None = None) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if error:
            self.send_header("X-Amzn-ErrorType", error)
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    server = Endpoint()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def test_handler_over_the_wire(moto_url: str, endpoint: Endpoint) -> None:
    sqs = boto3.client("sqs", endpoint_url=moto_url, region_name="us-east-1")
    queue = sqs.create_queue(QueueName="poison")["QueueUrl"]
    records = [dynamodb_record("INSERT", {"sku": f"i{n}"}, {"sku": f"i{n}", "price": n}) for n in range(19)]
    records.append(dynamodb_record("INSERT", {"sku": "bad"}, {"sku": "bad"}))
    records.append(kinesis_record("not base64 at all!"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT")},
        "PYTHONPATH": str(ROOT / "lambda_src"),
        "DATASET_ARN": DATASET_ARN,
        "DLQ_URL": queue,
        "MAX_CALLS_PER_SECOND": "5",
        "AWS_ENDPOINT_URL_PERSONALIZE_EVENTS": f"http://127.0.0.1:{endpoint.server_port}",
        "AWS_ENDPOINT_URL_SQS": moto_url,
    }
    done = subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=json.dumps(event(*records)),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("RESPONSE ")]
    assert json.loads(line.removeprefix("RESPONSE ")) == {"batchItemFailures": []}

    first = endpoint.requests[0]
    assert first["path"] == "/items"
    assert "/personalize/aws4_request" in first["auth"]  # SigV4 for the service name "personalize"
    assert first["body"]["datasetArn"] == DATASET_ARN
    assert isinstance(first["body"]["items"][0]["properties"], str)  # a JSON string, not an object
    sizes = [len(r["body"]["items"]) for r in endpoint.requests]
    assert sizes[:2] == [10, 10]  # the throttled call, then botocore's retry of it
    gaps = [b - a for a, b in zip(endpoint.times, endpoint.times[1:], strict=False)]
    assert min(gaps) >= 0.19  # paced at 5 calls/s, retries included

    emf = next(json.loads(x) for x in done.stdout.splitlines() if '"_aws"' in x)
    assert emf["Throttles"] == [1.0] and emf["RecordsPut"] == [19.0] and emf["RecordsPoison"] == [2.0]
    # Every attempt is counted, the throttled one and the rejected ones included (issue 8, defect 4).
    rejected = sum(any(i["itemId"] == "bad" for i in r["body"]["items"]) for r in endpoint.requests)
    assert emf["PutItemsAttempts"] == [float(len(endpoint.requests))]
    assert emf["PutItemsRejected"] == [float(rejected)] and rejected >= 2
    assert emf["PutItemsCalls"] == [float(len(endpoint.requests) - 1 - rejected)]

    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    reasons = sorted(json.loads(m["Body"])["reason"] for m in messages)
    assert reasons[0] == "PutItems rejected the item: Invalid properties for item bad"
    assert reasons[1].startswith("data is not base64")
