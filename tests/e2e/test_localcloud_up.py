"""``python -m localcloud up``: what it prints is enough to run ``python -m ops ...`` against it.

``up`` runs through its own code path (:func:`localcloud.cli.main`, in this process, with the session's
synthesized template and free ports); its ``export`` lines are then evaluated by ``bash`` in an environment that
holds nothing else (no ``PYTHONPATH``, no credentials), and the operator commands it suggests are run with them:
``ops status --json`` must find the state table's budget, the poison DLQ and the S3 on-failure bucket, and the
tools that load the runtime's settings (``CONNECTOR_CONFIG``, ``DATASET_ARN``, ``STATE_TABLE``, ``DLQ_URL``)
must accept them.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import boto3
import pytest

from localcloud import cli
from localcloud.demo import ROOT
from tests.e2e.waiting import wait_for


def _bash(exports: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``command`` in a bash whose environment is only ``PATH``, ``HOME`` and the ``export`` lines."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    return subprocess.run(
        ["bash", "-euc", f"{exports}\n{command}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _exported(exports: str) -> dict[str, str]:
    done = _bash(exports, f"{shlex.quote(sys.executable)} -c 'import json, os; print(json.dumps(dict(os.environ)))'")
    assert done.returncode == 0, done.stderr
    env: dict[str, str] = json.loads(done.stdout)
    return env


@pytest.mark.e2e
def test_up_exports_run_the_ops_tools(
    template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    state_file = tmp_path / "state.json"
    monkeypatch.setattr(cli, "STATE_FILE", state_file)
    monkeypatch.setattr(cli.demo, "synthesize", lambda *a, **k: template)
    handlers: dict[int, Any] = {}

    def fake_signal(signum: int, handler: Any) -> Any:  # no real signal handlers in the test process
        previous = handlers.get(signum)
        handlers[signum] = handler
        return previous

    monkeypatch.setattr(cli.signal, "signal", fake_signal)
    printed: list[str] = []
    outcome: dict[str, Any] = {}

    def operator() -> None:
        try:
            wait_for("the state file", state_file.exists)

            def finished() -> bool:
                printed.append(capsys.readouterr().out)
                return "Ctrl-C" in "".join(printed)

            wait_for("the end of up's output", finished)
            outcome["output"] = "".join(printed)
            outcome["state"] = json.loads(state_file.read_text())
            outcome["localcloud_status"] = cli.main(["status", "--json"]), capsys.readouterr().out
            exports = "\n".join(line for line in outcome["output"].splitlines() if line.startswith("export "))
            outcome["exports"] = exports
            env = outcome["env"] = _exported(exports)
            moto = {"endpoint_url": env["AWS_ENDPOINT_URL"], "region_name": env["AWS_DEFAULT_REGION"]}
            outcome["buckets"] = {b["Name"] for b in boto3.client("s3", **moto).list_buckets()["Buckets"]}
            outcome["tables"] = set(boto3.client("dynamodb", **moto).list_tables()["TableNames"])
            examples = [line.strip() for line in outcome["output"].splitlines() if line.startswith("  python -m ops ")]
            python = shlex.quote(sys.executable)
            outcome["runs"] = {
                line: _bash(exports, line.replace("python", python, 1) + (" --json" if " status" in line else ""))
                for line in examples
            }
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            stop = handlers.get(cli.signal.SIGTERM)
            if stop is not None:
                stop(cli.signal.SIGTERM, None)

    helper = threading.Thread(target=operator, daemon=True)
    helper.start()
    code = cli.main(["up", "--port-moto", "0", "--port-personalize", "0", "--fast"])
    helper.join(timeout=120)
    if "error" in outcome:
        raise outcome["error"]
    assert code == 0
    assert not state_file.exists(), "up removes its state file when it stops"

    output, state, env = outcome["output"], outcome["state"], outcome["env"]
    # Nothing printed as None: an S3 destination is shown as the bucket, not as a missing queue.
    assert "None" not in output, output
    bucket = env["ON_FAILURE_BUCKET"]
    assert f"s3://{bucket}/aws/lambda/" in output
    assert "ON_FAILURE_QUEUE_URL" not in env
    # The exports carry what the runtime's load_settings reads, taken from the provisioned function.
    for name in ("STATE_TABLE", "DATASET_ARN", "DLQ_URL", "QUOTA_CALLS_PER_SECOND", "AWS_ENDPOINT_URL"):
        assert env.get(name), name
    assert env.get("CONNECTOR_CONFIG") or env.get("CONNECTOR_CONFIG_FILE")
    if env.get("CONNECTOR_CONFIG"):
        assert json.loads(env["CONNECTOR_CONFIG"])["itemId"]
    assert not any(k.startswith(("LOCALCLOUD_", "AWS_LAMBDA_")) for k in env)
    # ... and they name resources that exist in the local cloud.
    assert bucket in outcome["buckets"]
    assert env["STATE_TABLE"] in outcome["tables"] and env["STATE_TABLE"] != env["TABLE_NAME"]
    # The state file carries the same values.
    assert state["stateTable"] == env["STATE_TABLE"] and state["onFailureBucket"] == bucket
    assert state["onFailureUrl"] is None and state["onFailure"]["kind"] == "s3"
    assert {k: env[k] for k in state["environment"]} == state["environment"]
    code, text = outcome["localcloud_status"]
    assert code == 0, text
    assert json.loads(text)["queues"] == {"dlqUrl": 0, "onFailureBucket": 0}

    # The operator commands up suggests run with exactly these exports.
    runs: dict[str, subprocess.CompletedProcess[str]] = outcome["runs"]
    assert any(" replay " in line for line in runs) and any(" redrive" in line for line in runs)
    for line, done in runs.items():
        assert done.returncode == 0, f"{line}: {done.stdout}\n{done.stderr}"
    status_line = next(line for line in runs if " status" in line)
    report = json.loads(runs[status_line].stdout)
    assert report["problems"] == [], report["problems"]
    assert report["onFailure"]["kind"] == "s3" and report["onFailure"]["bucket"] == bucket, report["onFailure"]
    assert "error" not in report["dlq"], report["dlq"]
    assert "error" not in report["budget"] and report["budget"]["ceiling"] > 0, report["budget"]
    assert report["resources"]["state_table"] == env["STATE_TABLE"]


def _state(**changes: Any) -> dict[str, Any]:
    state: dict[str, Any] = {
        "motoEndpoint": "http://127.0.0.1:4566",
        "personalizeEndpoint": "http://127.0.0.1:4599",
        "datasetArn": "arn:aws:personalize:us-east-1:111122223333:dataset/catalog/ITEMS",
        "tableName": "Table",
        "streamName": None,
        "stateTable": None,
        "dlqUrl": "http://127.0.0.1:4566/123456789012/dlq",
        "onFailure": {"kind": None, "arns": []},
        "onFailureBucket": None,
        "onFailureUrl": None,
        "functionName": "Connector",
        "functionLog": "/tmp/Connector.log",
        "environment": {"AWS_ENDPOINT_URL": "http://127.0.0.1:4566", "CONNECTOR_CONFIG": '{"itemId": "sku"}'},
    }
    state.update(changes)
    return state


def test_an_sqs_destination_is_exported_as_its_queue_url_and_nothing_prints_none() -> None:
    url = "http://127.0.0.1:4566/123456789012/failed"
    state = _state(onFailure={"kind": "sqs", "queueUrl": url}, onFailureUrl=url)
    text = cli.describe(state) + "\n" + cli.exports(state) + "\n" + "\n".join(cli.ops_examples(state))
    assert "None" not in text, text
    assert f"{url} (SQS queue)" in cli.describe(state)
    assert f"export ON_FAILURE_QUEUE_URL={url}" in text and "ON_FAILURE_BUCKET" not in text
    assert "STREAM_NAME" not in text  # no Kinesis source: left out, not exported as None
    assert 'export CONNECTOR_CONFIG=\'{"itemId": "sku"}\'' in text  # shell-quoted JSON
    assert not any(" replay " in line for line in cli.ops_examples(state))  # replay needs STATE_TABLE
    assert "none (the event source mappings have no destination)" in cli.describe(_state())
