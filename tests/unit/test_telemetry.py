"""Tracing off never imports the X-Ray SDK; tracing on still traces the handler (Powertools' own Tracer).

Each case imports the handler in a fresh interpreter (``sys.modules`` of this process already holds whatever
other tests imported). Tracing on runs as inside Lambda: ``LAMBDA_TASK_ROOT`` and a sampled ``_X_AMZN_TRACE_ID``,
with ``AWS_XRAY_DAEMON_ADDRESS`` pointing at a UDP socket of this test standing in for the X-Ray daemon, so what
the function would send to X-Ray is read back.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from connector import telemetry
from connector.telemetry import NoTracer, tracing_enabled

ROOT = Path(__file__).resolve().parents[2]
TRACE_ID = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"

# Runs in the child: import the handler, report what got imported, then (with "invoke") handle a two-record batch
# against the fake Personalize client (a real boto3 client answered by botocore events, so X-Ray's botocore patch
# sees its calls).
CHILD = """
import json, sys
import connector.handler as h
from connector import telemetry
report = {
    "xray": "aws_xray_sdk" in sys.modules,
    "xray_core": "aws_xray_sdk.core" in sys.modules,
    "tracer": type(telemetry.tracer).__name__,
    "disabled": telemetry.tracer.disabled,
}
if sys.argv[1] == "invoke":
    from connector.config import load_settings
    from tests.factories import DATASET_ARN, FakeContext, dynamodb_record, event
    from tests.fakes import FakePersonalize, FakeSQS
    fake = FakePersonalize()
    settings = load_settings({"DATASET_ARN": DATASET_ARN, "DLQ_URL": "https://sqs/q"})
    h.reset(h.build_runtime(settings, personalize=fake.client, sqs=FakeSQS()))
    records = [dynamodb_record("INSERT", {"sku": s}, {"sku": s, "title": "t"}) for s in ("a", "b")]
    report["response"] = h.handler(event(*records), FakeContext())
    report["put"] = sorted(fake.items)
print("REPORT " + json.dumps(report))
"""


@pytest.fixture
def daemon() -> Iterator[socket.socket]:
    """A UDP socket standing in for the X-Ray daemon."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


def _child(mode: str, env: Mapping[str, str], tmp_path: Path) -> dict[str, Any]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("POWERTOOLS_TRACE", "LAMBDA_TASK_ROOT", "AWS_SAM_LOCAL", "AWS_CHALICE", "_X_AMZN", "AWS_XRAY")
        )
    }
    base["PYTHONPATH"] = os.pathsep.join([str(ROOT / "lambda_src"), str(ROOT)])
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode],
        env={**base, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("REPORT ")]
    report: dict[str, Any] = json.loads(line.removeprefix("REPORT "))
    return report


def _segments(sock: socket.socket) -> list[dict[str, Any]]:
    """Every (sub)segment document the child sent: X-Ray's UDP format is a JSON header line, then the document."""
    documents: list[dict[str, Any]] = []
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return documents
        header, _, body = data.decode().partition("\n")
        assert json.loads(header) == {"format": "json", "version": 1}
        documents.append(json.loads(body))


def _lambda_env(tmp_path: Path, disabled: str, daemon: socket.socket) -> dict[str, str]:
    host, port = daemon.getsockname()
    return {
        "LAMBDA_TASK_ROOT": str(tmp_path),
        "POWERTOOLS_TRACE_DISABLED": disabled,
        "_X_AMZN_TRACE_ID": TRACE_ID,
        "AWS_XRAY_DAEMON_ADDRESS": f"{host}:{port}",
    }


def test_tracing_off_in_lambda_never_imports_the_xray_sdk(tmp_path: Path, daemon: socket.socket) -> None:
    report = _child("invoke", _lambda_env(tmp_path, "true", daemon), tmp_path)
    assert report["xray"] is False and report["xray_core"] is False
    assert report["tracer"] == "NoTracer"
    assert report["response"] == {"batchItemFailures": []} and report["put"] == ["a", "b"]
    assert _segments(daemon) == []


def test_tracing_on_in_lambda_traces_the_handler_and_its_calls(tmp_path: Path, daemon: socket.socket) -> None:
    report = _child("invoke", _lambda_env(tmp_path, "false", daemon), tmp_path)
    assert report["xray_core"] is True
    assert report["tracer"] == "Tracer" and report["disabled"] is False
    assert report["response"] == {"batchItemFailures": []} and report["put"] == ["a", "b"]
    names = {s["name"] for s in _segments(daemon)}
    # capture_lambda_handler, capture_method on pipeline.run, and X-Ray's botocore patch around the PutItems call
    assert {"## handler", "## connector.pipeline.run", "personalize-events"} <= names, names


def test_outside_lambda_the_xray_sdk_is_not_imported_either(tmp_path: Path) -> None:
    """Powertools would disable its Tracer here (tests, the ops CLI, the local cloud) but still import the SDK."""
    report = _child("import", {"POWERTOOLS_TRACE_DISABLED": "false"}, tmp_path)
    assert report["xray"] is False and report["tracer"] == "NoTracer"


@pytest.mark.parametrize(
    ("environ", "enabled"),
    [
        ({}, False),  # outside Lambda
        ({"LAMBDA_TASK_ROOT": "/var/task"}, True),  # Powertools' default inside Lambda: on
        ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "false"}, True),
        ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": ""}, True),
        ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "true"}, False),
        ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "1"}, False),
        ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "TRUE"}, False),
        ({"LAMBDA_TASK_ROOT": "/var/task", "AWS_SAM_LOCAL": "true"}, False),
        ({"LAMBDA_TASK_ROOT": "/var/task", "AWS_CHALICE_CLI_MODE": "true"}, False),
    ],
)
def test_tracing_enabled_follows_powertools(environ: dict[str, str], enabled: bool) -> None:
    assert tracing_enabled(environ) is enabled


def test_an_unknown_trace_switch_value_is_refused_like_powertools_does() -> None:
    with pytest.raises(ValueError, match="maybe"):
        tracing_enabled({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "maybe"})


def test_no_tracer_decorators_return_the_function_itself() -> None:
    def f(x: int) -> int:
        return x + 1

    no = NoTracer()
    assert no.capture_lambda_handler(f) is f
    assert no.capture_lambda_handler(capture_response=False)(f) is f
    assert no.capture_method(f) is f
    assert no.capture_method(capture_response=False, capture_error=False)(f) is f
    assert no.disabled is True


def test_the_test_session_runs_without_the_xray_sdk() -> None:
    """tests/conftest.py sets POWERTOOLS_TRACE_DISABLED=true: the package's tracer is the stand-in."""
    assert isinstance(telemetry.tracer, NoTracer)
