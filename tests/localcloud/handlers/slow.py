"""Well-behaved but slow: sleeps ``$SLEEP_S`` per invocation and appends its start and end times to
``$STATE_DIR/spans.jsonl``, so a test can see whether invocations overlapped."""

import json
import os
import time
from pathlib import Path
from typing import Any


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    start = time.time()
    time.sleep(float(os.environ.get("SLEEP_S", "0.5")))
    with open(Path(os.environ["STATE_DIR"]) / "spans.jsonl", "a") as spans:
        spans.write(json.dumps({"start": start, "end": time.time(), "records": len(event["Records"])}) + "\n")
    return {"batchItemFailures": []}
