"""Answers an invalid partial-batch response (kind ``$INVALID_KIND``) on its first call, then succeeds."""

import os
from typing import Any

from _common import first_time, record_call

INVALID = {
    "empty": {"batchItemFailures": [{"itemIdentifier": ""}]},
    "null": {"batchItemFailures": [{"itemIdentifier": None}]},
    "unknown": {"batchItemFailures": [{"itemIdentifier": "999999999999"}]},
    "badkey": {"batchItemFailures": [{"sequenceNumber": "1"}]},
    "string": "batchItemFailures",
}


def handler(event: dict[str, Any], context: Any) -> Any:
    record_call(event, context)
    if first_time("invalid"):
        return INVALID[os.environ["INVALID_KIND"]]
    return None  # a null response is a complete success
