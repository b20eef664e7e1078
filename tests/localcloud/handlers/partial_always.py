"""Always reports the batch's second record as failed (so every answer moves the checkpoint by one record)."""

from typing import Any

from _common import record_call, sequence_number


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    record_call(event, context)
    records = event["Records"]
    if len(records) < 2:
        return {"batchItemFailures": []}
    return {"batchItemFailures": [{"itemIdentifier": sequence_number(records[1])}]}
