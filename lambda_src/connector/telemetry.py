"""Powertools Logger, Metrics and Tracer, one instance each for the whole package.

Logs are JSON with the request id (``inject_lambda_context``). They carry item ids, counts, sequence
numbers and error codes, never property values: catalogs hold customer data. botocore's own DEBUG logs print
request bodies (the items' properties, the DLQ messages) and the service's error messages, so the SDK's loggers
are held at WARNING whatever the function's log level.
"""

from __future__ import annotations

import logging
import os

from aws_lambda_powertools import Logger, Metrics, Tracer

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME") or "stream-to-personalize"
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "StreamToPersonalize"

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
tracer = Tracer(service=SERVICE)

for _sdk in ("botocore", "boto3", "urllib3", "s3transfer"):
    logging.getLogger(_sdk).setLevel(max(logging.WARNING, logging.getLogger(_sdk).level))
