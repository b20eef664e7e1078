"""Records what the sandbox looks like from inside: interpreter, sys.path, packages, memory cap, CPU share."""

import os
import resource
import sys
import time
from importlib import metadata
from typing import Any

from _common import record_call


def handler(event: dict[str, Any], context: Any) -> None:
    memory_mb = int(os.environ["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"])
    try:
        block = bytearray(memory_mb * 1024 * 1024)  # the whole MemorySize at once: past the cap
        del block
        allocation = "ok"
    except MemoryError:
        allocation = "MemoryError"
    wall0, cpu0 = time.monotonic(), time.process_time()
    while time.monotonic() - wall0 < 1.0:  # busy for one second of wall time
        pass
    cpu_ratio = (time.process_time() - cpu0) / (time.monotonic() - wall0)
    importable = {}
    for name in ("boto3", "aws_lambda_powertools", "pytest", "moto", "rich", "pydantic"):
        try:
            __import__(name)
            importable[name] = True
        except ImportError:
            importable[name] = False
    record_call(
        event,
        context,
        python=list(sys.version_info[:2]),
        sys_path=sys.path,
        rlimit_as=resource.getrlimit(resource.RLIMIT_AS)[0],
        allocation=allocation,
        cpu_ratio=cpu_ratio,
        importable=importable,
        versions={d: metadata.version(d) for d in ("boto3", "aws-lambda-powertools")},
    )
