"""Sleeps far past the function's timeout on its first call (the runner must kill it), then answers at once."""

import os
import time
from typing import Any

from _common import first_time, record_call


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    record_call(event, context)
    if first_time("sleep"):
        time.sleep(float(os.environ.get("SLEEP_S", "30")))
    return {"batchItemFailures": []}
