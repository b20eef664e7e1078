"""Reports the records at positions ``$FAIL_POSITIONS`` (e.g. "8,6") as failed on its first call, then succeeds."""

import os
from typing import Any

from _common import first_time, record_call, sequence_number


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    record_call(event, context)
    if not first_time("partial"):
        return {"batchItemFailures": []}
    positions = [int(p) for p in os.environ["FAIL_POSITIONS"].split(",")]
    records = event["Records"]
    return {"batchItemFailures": [{"itemIdentifier": sequence_number(records[p])} for p in positions]}
