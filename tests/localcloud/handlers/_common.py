"""Shared helpers for the deliberately misbehaving test handlers (the asset directory of the ESM runner tests).

Each handler appends what it saw -- the event, the context, a few environment variables, its process id and the
id of its module import -- as one JSON line to ``$RECORD_FILE``, so the tests can check exactly what was delivered.
``$STATE_DIR`` holds marker files for "misbehave only once" (workers can be killed and replaced, so the state
must outlive a process).
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from pathlib import Path
from typing import Any

INIT_ID = uuid.uuid4().hex  # one per import, i.e. per warm worker
ENV_KEYS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_PERSONALIZE_EVENTS",
    "AWS_ACCOUNT_ID_ENDPOINT_MODE",
    "AWS_REGION",
    "AWS_LAMBDA_FUNCTION_NAME",
    "LAMBDA_TASK_ROOT",
    "POWERTOOLS_TRACE_DISABLED",
    "DLQ_URL",
    "TABLE_NAME",
    "STREAM_ARN",
    "LAYER_VERSION",
    "PLAIN",
)


def sequence_number(record: dict[str, Any]) -> str:
    if "kinesis" in record:
        return str(record["kinesis"]["sequenceNumber"])
    return str(record["dynamodb"]["SequenceNumber"])


def is_poison(record: dict[str, Any]) -> bool:
    if "kinesis" in record:
        try:
            return bool(json.loads(base64.b64decode(record["kinesis"]["data"])).get("poison"))
        except ValueError:
            return False
    image = record["dynamodb"].get("NewImage") or {}
    return image.get("poison", {}).get("BOOL") is True


def record_call(event: dict[str, Any], context: Any, **extra: Any) -> None:
    entry = {
        "pid": os.getpid(),
        "init_id": INIT_ID,
        "event": event,
        "context": {
            "aws_request_id": context.aws_request_id,
            "function_name": context.function_name,
            "function_version": context.function_version,
            "memory_limit_in_mb": context.memory_limit_in_mb,
            "invoked_function_arn": context.invoked_function_arn,
            "remaining_ms": context.get_remaining_time_in_millis(),
        },
        "env": {key: os.environ[key] for key in ENV_KEYS if key in os.environ},
        **extra,
    }
    with open(os.environ["RECORD_FILE"], "a", encoding="utf-8") as out:
        out.write(json.dumps(entry) + "\n")


def first_time(name: str) -> bool:
    """True exactly once per test run (per STATE_DIR), across worker processes."""
    marker = Path(os.environ["STATE_DIR"]) / name
    try:
        marker.touch(exist_ok=False)
    except FileExistsError:
        return False
    return True
