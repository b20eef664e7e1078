"""Set-up shared by the benchmarks that run the shared budget in-process against moto (``bench_budget``,
``bench_learning``): the runtime on the import path, fake credentials, and the runtime's logging and tracing quiet.
Call :func:`offline` before importing boto3, moto or ``connector``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",  # moto's DynamoDB with botocore 1.44
    "POWERTOOLS_TRACE_DISABLED": "true",
    "POWERTOOLS_LOG_LEVEL": "ERROR",
}


def offline() -> None:
    """Put ``lambda_src`` and the repository on ``sys.path`` and set ``ENV`` where the environment does not."""
    for path in (str(ROOT), str(ROOT / "lambda_src")):
        if path not in sys.path:
            sys.path.insert(0, path)
    for key, value in ENV.items():
        os.environ.setdefault(key, value)
