"""Powertools Logger, Metrics and Tracer, one instance each for the whole package.

Logs are JSON with the request id (``inject_lambda_context``). They carry item ids, counts, sequence
numbers and error codes, never property values: catalogs hold customer data. botocore's own DEBUG logs print
request bodies (the items' properties, the DLQ messages) and the service's error messages, so the SDK's loggers
are held at WARNING whatever the function's log level.

Tracing is switched by Powertools' own ``POWERTOOLS_TRACE_DISABLED`` (the stack sets it from ``lambda.tracing``).
A Powertools ``Tracer`` imports ``aws_xray_sdk.core`` even when it is disabled (3.37: ``Tracer()`` always builds the
X-Ray provider; only its module loads the SDK lazily, so importing the ``Tracer`` class is free). Outside Lambda that
import also builds the X-Ray sampling clients (about 0.2 s of CPU); inside Lambda it is about 15 ms, and an enabled
Tracer's auto-patching about 40 ms more: 0.05-0.1 s of the 0.35-0.5 s the handler's import takes at one core
(``python -m bench.bench_import``; docs/deploy.md). So when tracing is off, by Powertools' own rule
(:func:`tracing_enabled`), ``tracer`` is a :class:`NoTracer` instead: the same decorators, doing nothing, and the
X-Ray SDK is never imported (neither in tests, the local cloud nor the operator tools, which run outside Lambda).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.shared import constants
from aws_lambda_powertools.shared.functions import strtobool

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME") or "stream-to-personalize"
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "StreamToPersonalize"

F = TypeVar("F", bound=Callable[..., Any])


def tracing_enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether a Powertools ``Tracer`` would trace here: not when ``POWERTOOLS_TRACE_DISABLED`` is true, and only
    inside Lambda (``LAMBDA_TASK_ROOT`` set), not under SAM local or Chalice (Powertools'
    ``Tracer._is_tracer_disabled``, with its own parser of the variable: an unknown value raises ``ValueError``)."""
    if strtobool(environ.get(constants.TRACER_DISABLED_ENV) or "false"):
        return False
    in_lambda = bool(environ.get(constants.LAMBDA_TASK_ROOT_ENV))
    return in_lambda and not environ.get(constants.SAM_LOCAL_ENV) and not environ.get(constants.CHALICE_LOCAL_ENV)


class NoTracer:
    """The decorators of Powertools' ``Tracer`` this package uses, doing nothing (tracing off, no X-Ray SDK)."""

    disabled = True

    @overload
    def capture_lambda_handler(
        self, lambda_handler: F, capture_response: bool | None = None, capture_error: bool | None = None
    ) -> F: ...
    @overload
    def capture_lambda_handler(
        self, lambda_handler: None = None, capture_response: bool | None = None, capture_error: bool | None = None
    ) -> Callable[[F], F]: ...
    def capture_lambda_handler(
        self, lambda_handler: F | None = None, capture_response: bool | None = None, capture_error: bool | None = None
    ) -> F | Callable[[F], F]:
        return lambda_handler if lambda_handler is not None else _unchanged

    @overload
    def capture_method(
        self, method: F, capture_response: bool | None = None, capture_error: bool | None = None
    ) -> F: ...
    @overload
    def capture_method(
        self, method: None = None, capture_response: bool | None = None, capture_error: bool | None = None
    ) -> Callable[[F], F]: ...
    def capture_method(
        self, method: F | None = None, capture_response: bool | None = None, capture_error: bool | None = None
    ) -> F | Callable[[F], F]:
        return method if method is not None else _unchanged


def _unchanged(function: F) -> F:
    return function


logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
tracer: Tracer | NoTracer = Tracer(service=SERVICE) if tracing_enabled() else NoTracer()

for _sdk in ("botocore", "boto3", "urllib3", "s3transfer"):
    logging.getLogger(_sdk).setLevel(max(logging.WARNING, logging.getLogger(_sdk).level))
