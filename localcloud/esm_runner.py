"""A local Lambda event source mapping (ESM) for DynamoDB Streams and Kinesis, driven by a synthesized template.

Why this is hand-written: moto serves DynamoDB Streams and Kinesis, but it has no Lambda stream poller -- nothing
in moto reads a shard, batches records, invokes a function and applies the ESM's error handling. The connector's
correctness depends on exactly those semantics (the lowest-sequence checkpoint of ``ReportBatchItemFailures``,
bisect, retries, record age, the on-failure destination, timeouts), so the local cloud reproduces them here,
from the ``AWS::Lambda::EventSourceMapping`` resources of the synthesized CDK template.

What it does, per mapping and per shard (one thread each, so one batch in flight per shard):

* polls the shard (``dynamodbstreams`` / ``kinesis`` ``GetShardIterator`` + ``GetRecords``) from
  ``StartingPosition`` (``TRIM_HORIZON``, ``LATEST``, Kinesis ``AT_TIMESTAMP``); shards that appear later
  (resharding) are read from ``TRIM_HORIZON`` once their parent is drained;
* builds records shaped like Lambda's (``eventID``, ``eventSourceARN``, base64 Kinesis ``data``,
  DynamoDB ``SequenceNumber`` ...);
* applies ``FilterCriteria`` with moto's EventBridge pattern matcher (``moto.events.models.EventPattern``);
  filters are ORed; for Kinesis the pattern's ``data`` applies to the decoded JSON payload (records whose data is
  not JSON never match a ``data`` pattern). Filtered-out records are checkpointed, never delivered;
* batches up to ``BatchSize`` records (and 6 MB), waiting up to ``MaximumBatchingWindowInSeconds``;
* invokes the function in a warm worker process (:mod:`localcloud.lambda_worker`) with the template's environment
  resolved to local endpoints; a worker that overruns ``Timeout`` is killed (a function error);
* with ``ReportBatchItemFailures`` checkpoints at the **lowest** reported sequence number and redelivers from
  there; a null/empty response or an empty/absent ``batchItemFailures`` is success; an ``itemIdentifier``
  that is empty, null, under another key or not in the batch, or a response that is not a JSON object, fails
  the whole batch;
* on a function error (raise, timeout, crash, invalid response) retries the batch; with
  ``BisectBatchOnFunctionError`` splits it in halves first (splits do not consume the retry budget); after
  ``MaximumRetryAttempts`` retries, or once records are older than ``MaximumRecordAgeInSeconds``, sends the
  on-failure message -- batch *coordinates* only -- to the SQS ``DestinationConfig.OnFailure`` queue and moves on.

* polls each shard at Lambda's documented base rate -- Kinesis once a second, DynamoDB Streams four times a
  second -- with jitter (``poll_interval``, ``poll_jitter``) whenever the last read found nothing new; with a
  backlog it reads again as soon as a batch is done;
* **reserved concurrency** (``ReservedConcurrentExecutions``): an invoke that finds every slot busy is *rejected*,
  as Lambda does: it counts as a Lambda ``Throttles`` data point (``RunnerStats.throttles``) and the shard's
  poller retries it after a jittered exponential backoff (``throttle_backoff_s`` doubling up to
  ``max_throttle_backoff_s``, times a factor drawn in ``[1, 1 + throttle_jitter]``). Throttled attempts do not
  count against ``MaximumRetryAttempts``; the records keep ageing, so they do count against
  ``MaximumRecordAgeInSeconds``. The backoff Lambda really uses is not documented: the default (1 s doubling to
  30 s) is a pessimistic guess, modelled on the documented backoff of throttled asynchronous invokes;
* optional, for tests: ``dynamodb_shards=n`` spreads one DynamoDB stream shard over ``n`` shards by key hash
  (like a table with ``n`` partitions: per-key order kept, shards invoked in parallel), and
  :meth:`EsmRunner.ttl_delete` deletes an item as DynamoDB's TTL would, so its ``REMOVE`` record carries
  ``userIdentity {type: Service, principalId: dynamodb.amazonaws.com}``.

Undocumented choices, pessimistic by default and switchable: ``partial_counts_as_retry`` (a partial response
that moved the checkpoint still counts against ``MaximumRetryAttempts``; default True).

Known gaps (documented, not emulated): ``ParallelizationFactor`` above 1 is treated as 1; tumbling windows,
KPL de-aggregation, enhanced fan-out, SNS/S3 on-failure destinations and the account-level (unreserved)
concurrency limit are not modelled; checkpoints live in memory only.

Usage::

    resources = provision(template_path, endpoint_url=moto_url)
    with EsmRunner(template_path, resources, moto_endpoint=moto_url,
                   personalize_endpoint=emulator_url) as runner:
        ...                       # write to the table / stream
        runner.wait_idle(30)      # every shard drained, nothing in flight
        print(runner.stats())
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import IO, Any, Literal

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from moto.events.models import EventPattern

from localcloud.provision import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_REGION,
    ProvisionedResource,
    Resolver,
    Unresolvable,
    generated_name,
    load_template,
    stack_name_for,
)

__all__ = [
    "EsmConfigError",
    "EsmRunner",
    "FunctionConfig",
    "Invocation",
    "MappingConfig",
    "RunnerStats",
    "build_on_failure_message",
    "evaluate_batch_response",
    "parse_template",
]

log = logging.getLogger("localcloud.esm")

WORKER_SCRIPT = str(Path(__file__).with_name("lambda_worker.py"))
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024 - 64 * 1024  # 6 MB synchronous invoke payload, minus envelope headroom
INIT_TIMEOUT_S = 10.0  # Lambda's init phase limit
GET_RECORDS_LIMIT = {"dynamodb": 1000, "kinesis": 10000}
#: Lambda's documented base poll rate per shard: Kinesis once a second, DynamoDB Streams four times a second.
POLL_INTERVAL_S = {"kinesis": 1.0, "dynamodb": 0.25}

Outcome = Literal["success", "partial", "invalid_response", "error", "timeout", "killed"]


class EsmConfigError(ValueError):
    """The template describes a mapping or function the runner cannot run."""


# --------------------------------------------------------------------------------------------------------------
# Configuration parsed from the template
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FunctionConfig:
    logical_id: str
    name: str
    arn: str
    handler: str
    asset_dir: Path
    timeout_s: float
    memory_mb: int
    environment: Mapping[str, str]
    role_arn: str
    reserved_concurrency: int | None = None  # ReservedConcurrentExecutions: at most this many invokes at once


@dataclass(frozen=True)
class MappingConfig:
    logical_id: str
    function: FunctionConfig
    source: Literal["dynamodb", "kinesis"]
    source_arn: str
    batch_size: int = 100
    batching_window_s: float = 0.0
    starting_position: str = "TRIM_HORIZON"
    starting_position_timestamp: float | None = None
    filter_patterns: tuple[str, ...] = ()
    report_batch_item_failures: bool = False
    bisect_on_error: bool = False
    max_retry_attempts: int = -1  # -1: until the record expires
    max_record_age_s: int = -1  # -1: no limit
    parallelization_factor: int = 1
    on_failure_arn: str | None = None

    @property
    def stream_name(self) -> str:
        return self.source_arn.rsplit("/", 1)[-1]


def parse_template(
    template: Mapping[str, Any] | str | Path,
    resources: Mapping[str, ProvisionedResource],
    *,
    region: str = DEFAULT_REGION,
    account_id: str = DEFAULT_ACCOUNT_ID,
    stack_name: str | None = None,
    template_dir: str | Path | None = None,
    asset_dir: str | Path | Mapping[str, str | Path] | None = None,
    warnings: list[str] | None = None,
) -> list[MappingConfig]:
    """Read the enabled stream ``AWS::Lambda::EventSourceMapping`` resources and their functions."""
    body = load_template(template)
    stack = stack_name or stack_name_for(template)
    if template_dir is None and not isinstance(template, Mapping):
        template_dir = Path(template).parent
    resolver = Resolver(resources, region=region, account_id=account_id, stack_name=stack)
    warn = warnings if warnings is not None else []
    all_resources: dict[str, Any] = body.get("Resources") or {}
    functions: dict[str, FunctionConfig] = {}
    mappings: list[MappingConfig] = []

    for logical_id, spec in all_resources.items():
        if spec.get("Type") != "AWS::Lambda::EventSourceMapping":
            continue
        props = spec.get("Properties") or {}
        if props.get("Enabled") is False or str(props.get("Enabled", "true")).lower() == "false":
            continue
        try:
            source_arn = str(resolver.resolve(props["EventSourceArn"]))
        except (KeyError, Unresolvable) as exc:
            raise EsmConfigError(f"{logical_id}: cannot resolve EventSourceArn: {exc}") from exc
        if ":kinesis:" in source_arn:
            source: Literal["dynamodb", "kinesis"] = "kinesis"
        elif ":dynamodb:" in source_arn and "/stream/" in source_arn:
            source = "dynamodb"
        else:
            warn.append(f"{logical_id}: event source {source_arn} is not a stream; ignored")
            continue
        function_id = _function_logical_id(props.get("FunctionName"), all_resources, resolver)
        if function_id not in functions:
            functions[function_id] = _function_config(
                function_id,
                spec=all_resources[function_id],
                resolver=resolver,
                stack=stack,
                region=region,
                account_id=account_id,
                template_dir=template_dir,
                asset_dir=asset_dir,
                warn=warn,
            )
        parallelization = int(props.get("ParallelizationFactor", 1))
        if parallelization > 1:
            warn.append(f"{logical_id}: ParallelizationFactor {parallelization} is run as 1 locally")
        if props.get("TumblingWindowInSeconds"):
            warn.append(f"{logical_id}: TumblingWindowInSeconds is not emulated")
        on_failure = ((props.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
        timestamp = props.get("StartingPositionTimestamp")
        patterns = tuple(
            str(f["Pattern"]) for f in (props.get("FilterCriteria") or {}).get("Filters") or [] if f.get("Pattern")
        )
        for pattern in patterns:
            EventPattern.load(pattern)  # validates; raises InvalidEventPatternException
        mappings.append(
            MappingConfig(
                logical_id=logical_id,
                function=functions[function_id],
                source=source,
                source_arn=source_arn,
                batch_size=int(props.get("BatchSize", 100)),
                batching_window_s=float(props.get("MaximumBatchingWindowInSeconds", 0)),
                starting_position=str(props.get("StartingPosition", "TRIM_HORIZON")),
                starting_position_timestamp=float(timestamp) if timestamp is not None else None,
                filter_patterns=patterns,
                report_batch_item_failures="ReportBatchItemFailures" in (props.get("FunctionResponseTypes") or []),
                bisect_on_error=_bool(props.get("BisectBatchOnFunctionError", False)),
                max_retry_attempts=int(props.get("MaximumRetryAttempts", -1)),
                max_record_age_s=int(props.get("MaximumRecordAgeInSeconds", -1)),
                parallelization_factor=parallelization,
                on_failure_arn=str(resolver.resolve(on_failure)) if on_failure else None,
            )
        )
    return mappings


def _bool(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def _function_logical_id(value: Any, resources: Mapping[str, Any], resolver: Resolver) -> str:
    functions = {lid for lid, spec in resources.items() if spec.get("Type") == "AWS::Lambda::Function"}
    if isinstance(value, dict):
        if "Ref" in value and value["Ref"] in functions:
            return str(value["Ref"])
        if "Fn::GetAtt" in value:
            arg = value["Fn::GetAtt"]
            target = arg.split(".", 1)[0] if isinstance(arg, str) else arg[0]
            if target in functions:
                return str(target)
    if isinstance(value, str):
        name = value.rsplit(":function:", 1)[-1].split(":", 1)[0]
        for lid in functions:
            if lid == name or resources[lid].get("Properties", {}).get("FunctionName") == name:
                return lid
    raise EsmConfigError(f"FunctionName {value!r} does not name an AWS::Lambda::Function in the template")


def _function_config(
    logical_id: str,
    *,
    spec: Mapping[str, Any],
    resolver: Resolver,
    stack: str,
    region: str,
    account_id: str,
    template_dir: str | Path | None,
    asset_dir: str | Path | Mapping[str, str | Path] | None,
    warn: list[str],
) -> FunctionConfig:
    props = spec.get("Properties") or {}
    try:
        name = str(resolver.resolve(props["FunctionName"])) if "FunctionName" in props else None
    except Unresolvable:
        name = None
    name = name or generated_name(stack, logical_id, max_len=64)
    environment: dict[str, str] = {}
    for key, value in ((props.get("Environment") or {}).get("Variables") or {}).items():
        try:
            resolved = resolver.resolve(value)
        except Unresolvable as exc:
            warn.append(f"{logical_id}: environment variable {key} left out: {exc}")
            continue
        environment[key] = resolved if isinstance(resolved, str) else json.dumps(resolved)
    role = props.get("Role")
    try:
        role_arn = str(resolver.resolve(role)) if role is not None else ""
    except Unresolvable:
        role_arn = ""
    if not role_arn.startswith("arn:"):
        role_id = role.get("Fn::GetAtt", [logical_id])[0] if isinstance(role, dict) else logical_id
        role_arn = f"arn:aws:iam::{account_id}:role/{stack}-{role_id}"
    return FunctionConfig(
        logical_id=logical_id,
        name=name,
        arn=f"arn:aws:lambda:{region}:{account_id}:function:{name}",
        handler=str(props.get("Handler", "index.handler")),
        asset_dir=_asset_dir(logical_id, spec, template_dir, asset_dir),
        timeout_s=float(props.get("Timeout", 3)),
        memory_mb=int(props.get("MemorySize", 128)),
        environment=environment,
        role_arn=role_arn,
        reserved_concurrency=int(props["ReservedConcurrentExecutions"])
        if "ReservedConcurrentExecutions" in props
        else None,
    )


def _asset_dir(
    logical_id: str,
    spec: Mapping[str, Any],
    template_dir: str | Path | None,
    override: str | Path | Mapping[str, str | Path] | None,
) -> Path:
    if isinstance(override, Mapping):
        if logical_id in override:
            return Path(override[logical_id]).resolve()
    elif override is not None:
        return Path(override).resolve()
    asset_path = (spec.get("Metadata") or {}).get("aws:asset:path")
    if asset_path:
        path = Path(asset_path)
        if not path.is_absolute() and template_dir is not None:
            path = Path(template_dir) / path
        if path.is_dir():
            return path.resolve()
        raise EsmConfigError(f"{logical_id}: asset directory {path} does not exist (synthesize first)")
    code = (spec.get("Properties") or {}).get("Code") or {}
    if "ZipFile" in code:  # inline code: CloudFormation writes it to index.py
        directory = Path(tempfile.mkdtemp(prefix=f"inline-{logical_id}-"))
        (directory / "index.py").write_text(str(code["ZipFile"]))
        return directory
    raise EsmConfigError(f"{logical_id}: no aws:asset:path metadata and no asset_dir given")


# --------------------------------------------------------------------------------------------------------------
# Pure pieces: response evaluation and the on-failure message
# --------------------------------------------------------------------------------------------------------------


def evaluate_batch_response(response: Any, sequence_numbers: list[str]) -> tuple[str, int | None, str | None]:
    """Apply Lambda's ``ReportBatchItemFailures`` rules to a handler response.

    Returns ``("success", None, None)``, ``("partial", index_of_lowest_failure, None)`` or
    ``("invalid", None, reason)``; an invalid response fails the whole batch.
    """
    if response is None or response in ("", []):  # a bare falsy answer: nothing failed
        return "success", None, None
    if not isinstance(response, dict):
        return "invalid", None, f"response is a {type(response).__name__}, not a JSON object"
    failures = response.get("batchItemFailures")
    if failures is None:
        return "success", None, None
    if not isinstance(failures, list):
        return "invalid", None, "batchItemFailures is not a list"
    if not failures:
        return "success", None, None
    position = {seq: i for i, seq in enumerate(sequence_numbers)}
    lowest: int | None = None
    for item in failures:
        if not isinstance(item, dict) or "itemIdentifier" not in item:
            return "invalid", None, f"batch item failure {item!r} has no itemIdentifier"
        identifier = item["itemIdentifier"]
        if identifier is None or identifier == "":
            return "invalid", None, "itemIdentifier is empty or null"
        if not isinstance(identifier, str) or identifier not in position:
            return "invalid", None, f"itemIdentifier {identifier!r} is not a sequence number of the batch"
        index = position[identifier]
        lowest = index if lowest is None else min(lowest, index)
    return "partial", lowest, None


def _iso(epoch: float, *, millis: bool) -> str:
    moment = dt.datetime.fromtimestamp(epoch, tz=dt.UTC)
    if millis:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def build_on_failure_message(
    *,
    mapping: MappingConfig,
    shard_id: str,
    sequence_numbers: list[str],
    arrivals: list[float],
    condition: Literal["RetryAttemptsExhausted", "RecordAgeExceeded"],
    request_id: str,
    invoke_count: int,
    function_error: str | None,
    now: float | None = None,
) -> dict[str, Any]:
    """The JSON document Lambda sends to a stream ESM's on-failure destination: coordinates, not records."""
    kinesis = mapping.source == "kinesis"
    message: dict[str, Any] = {
        "requestContext": {
            "requestId": request_id,
            "functionArn": mapping.function.arn,
            "condition": condition,
            "approximateInvokeCount": invoke_count,
        },
    }
    if invoke_count:  # a batch that expired before any invoke (throttled, or behind a stuck one) has no response
        response_context: dict[str, Any] = {"statusCode": 200, "executedVersion": "$LATEST"}
        if function_error:
            response_context["functionError"] = function_error
        message["responseContext"] = response_context
    return message | {
        "version": "1.0",
        "timestamp": _iso(time.time() if now is None else now, millis=True),
        ("KinesisBatchInfo" if kinesis else "DDBStreamBatchInfo"): {
            "shardId": shard_id,
            "startSequenceNumber": sequence_numbers[0],
            "endSequenceNumber": sequence_numbers[-1],
            "approximateArrivalOfFirstRecord": _iso(arrivals[0], millis=kinesis),
            "approximateArrivalOfLastRecord": _iso(arrivals[-1], millis=kinesis),
            "batchSize": len(sequence_numbers),
            "streamArn": mapping.source_arn,
        },
    }


# --------------------------------------------------------------------------------------------------------------
# Ledger and counters
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Invocation:
    """One entry of the runner's ledger: an invocation of a function for a batch of one shard."""

    index: int
    mapping: str
    function: str
    shard_id: str
    request_id: str
    started_at: float  # epoch seconds
    duration_ms: float
    sequence_numbers: tuple[str, ...]
    outcome: Outcome
    response: Any = None
    error: Mapping[str, Any] | None = None
    detail: str | None = None
    attempt: int = 0  # failed attempts of this (sub)batch before this invocation
    cold_start: bool = False
    init_ms: float | None = None
    worker_pid: int | None = None
    iterator_age_ms: float = 0.0
    fault: Literal["kill", "hang"] | None = None  # a fault hook that fired during this invocation

    @property
    def batch_size(self) -> int:
        return len(self.sequence_numbers)

    @property
    def failed(self) -> bool:
        return self.outcome not in ("success", "partial")


_COUNTERS = (
    "invocations",
    "records_delivered",
    "records_succeeded",
    "records_filtered",
    "retries",
    "bisects",
    "function_errors",
    "invalid_responses",
    "partial_failures",
    "timeouts",
    "kills",
    "hangs",
    "cold_starts",
    "on_failure_messages",
    "records_to_on_failure",
    "records_expired",
    "poll_errors",
    "throttles",
)


@dataclass
class RunnerStats:
    """Counters across all mappings (``by_mapping`` breaks them down per ESM logical id)."""

    invocations: int = 0
    records_delivered: int = 0  # records sent to the function, counting redeliveries
    records_succeeded: int = 0  # records checkpointed after a successful (part of an) invocation
    records_filtered: int = 0
    retries: int = 0
    bisects: int = 0
    function_errors: int = 0  # raised, crashed, timed out, killed or answered an invalid response
    invalid_responses: int = 0
    partial_failures: int = 0
    timeouts: int = 0
    kills: int = 0  # workers killed by the kill_worker_probability fault hook
    hangs: int = 0  # workers frozen by the hang fault hook (a timeout, unless the answer was already out)
    cold_starts: int = 0
    on_failure_messages: int = 0
    records_to_on_failure: int = 0
    records_expired: int = 0  # of records_to_on_failure: past MaximumRecordAgeInSeconds
    poll_errors: int = 0
    throttles: int = 0  # invokes rejected at the reserved concurrency (Lambda's Throttles metric)
    records_pending: int = 0  # read from the shards but not yet checkpointed: the lag, in records
    iterator_age_ms: float = 0.0  # the highest current iterator age over the shards
    max_iterator_age_ms: float = 0.0
    shards: int = 0
    in_flight: int = 0
    by_mapping: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# --------------------------------------------------------------------------------------------------------------
# Warm workers
# --------------------------------------------------------------------------------------------------------------


class _WorkerGone(Exception):
    pass


class _WorkerTimeout(Exception):
    pass


class _Throttled(Exception):
    """The invoke found every reserved-concurrency slot busy and was rejected."""


class _WorkerInitError(Exception):
    def __init__(self, error: Mapping[str, Any]) -> None:
        super().__init__(error.get("errorMessage"))
        self.error = dict(error)


@dataclass
class _InvokeResult:
    status: Literal["ok", "error", "timeout", "killed"]
    response: Any = None
    error: Mapping[str, Any] | None = None
    duration_ms: float = 0.0
    cold_start: bool = False
    init_ms: float | None = None
    worker_pid: int | None = None
    hung: bool = False  # the hang fault hook froze the worker during this invoke


class _Worker:
    """One warm sandbox: a ``lambda_worker.py`` process speaking JSON lines over two private pipes."""

    def __init__(
        self, function: FunctionConfig, env: Mapping[str, str], log_file: IO[bytes], python: str = sys.executable
    ) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [python, "-P", WORKER_SCRIPT, str(to_child_r), str(from_child_w)],
                pass_fds=(to_child_r, from_child_w),
                env=dict(env),
                cwd=str(function.asset_dir),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self._to_child = os.fdopen(to_child_w, "w", encoding="utf-8")
        self._from_child = from_child_r
        self._buffer = b""
        started = time.monotonic()
        try:
            ready = self._read(started + INIT_TIMEOUT_S)
        except (_WorkerGone, _WorkerTimeout) as exc:
            self.kill()
            raise _WorkerInitError({"errorType": "Runtime.InitError", "errorMessage": repr(exc)}) from exc
        if ready.get("type") != "ready":
            self.kill()
            raise _WorkerInitError(ready.get("error") or {"errorType": "Runtime.InitError", "errorMessage": "?"})
        self.init_ms = float(ready.get("init_ms", 0.0))
        self.pid = int(ready.get("pid", self.proc.pid))

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _WorkerTimeout
            readable, _, _ = select.select([self._from_child], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(self._from_child, 1 << 16)
            if not chunk:
                raise _WorkerGone
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def invoke(
        self,
        event: Mapping[str, Any],
        *,
        request_id: str,
        function: FunctionConfig,
        kill_after_s: float | None,
        hang_after_s: float | None = None,
    ) -> _InvokeResult:
        started = time.monotonic()
        deadline_ms = int(time.time() * 1000 + function.timeout_s * 1000)
        message = {
            "type": "invoke",
            "request_id": request_id,
            "deadline_ms": deadline_ms,
            "invoked_function_arn": function.arn,
            "event": event,
        }
        try:
            self._to_child.write(json.dumps(message) + "\n")
            self._to_child.flush()
        except (BrokenPipeError, OSError):
            return _InvokeResult("error", error=_exit_error("the worker was gone before the invoke"))
        limit = function.timeout_s if kill_after_s is None else min(kill_after_s, function.timeout_s)
        hung = False
        try:
            if hang_after_s is not None and hang_after_s < limit:
                try:
                    reply = self._read(started + hang_after_s)
                except _WorkerTimeout:
                    # A frozen sandbox (a call stuck without a timeout, a stalled host): the handler stops
                    # where it is, its deadline passes, and only the function timeout ends the invocation.
                    self.freeze()
                    hung = True
                    reply = self._read(started + limit)
            else:
                reply = self._read(started + limit)
        except _WorkerGone:
            self.kill()
            return _InvokeResult(
                "error",
                error=_exit_error("the worker exited during the invoke"),
                duration_ms=(time.monotonic() - started) * 1000,
            )
        except _WorkerTimeout:
            self.kill()
            elapsed = (time.monotonic() - started) * 1000
            if kill_after_s is not None and kill_after_s < function.timeout_s:
                return _InvokeResult("killed", error=_exit_error("killed by the fault hook"), duration_ms=elapsed)
            return _InvokeResult(
                "timeout",
                error={
                    "errorType": "Sandbox.Timedout",
                    "errorMessage": f"{request_id} Task timed out after {function.timeout_s:.2f} seconds",
                },
                duration_ms=elapsed,
                hung=hung,
            )
        if hung:  # it answered before the freeze took hold: keep the answer, never reuse a frozen sandbox
            self.kill()
        if kill_after_s is not None:  # the fault hook fires even when the handler was quicker
            self.kill()
            return _InvokeResult(
                "killed", error=_exit_error("killed by the fault hook"), duration_ms=(time.monotonic() - started) * 1000
            )
        duration = float(reply.get("duration_ms", (time.monotonic() - started) * 1000))
        if reply.get("ok"):
            return _InvokeResult("ok", response=reply.get("response"), duration_ms=duration, hung=hung)
        return _InvokeResult("error", error=reply.get("error"), duration_ms=duration, hung=hung)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def freeze(self) -> None:
        """SIGSTOP the worker's process group (it is killed later, like any sandbox that overran)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGSTOP)

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self.close_pipes()

    def shutdown(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._to_child.write('{"type": "shutdown"}\n')
            self._to_child.flush()
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.kill()
        self.close_pipes()

    def close_pipes(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._to_child.close()
        with contextlib.suppress(OSError):
            os.close(self._from_child)
        self._from_child = -1


def _exit_error(message: str) -> dict[str, Any]:
    return {"errorType": "Runtime.ExitError", "errorMessage": message}


class _FunctionPool:
    """Warm workers of one function, like Lambda's execution environments: reused, replaced when killed."""

    def __init__(
        self, function: FunctionConfig, env: Mapping[str, str], log_path: Path, python: str = sys.executable
    ) -> None:
        self.python = python
        self.function = function
        self.env = dict(env)
        self.log_path = log_path
        self._log_file: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - lives as long as the pool
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._busy = 0
        self._slots = threading.Lock()

    @contextlib.contextmanager
    def slot(self) -> Iterator[bool]:
        """Try to take one of the function's reserved-concurrency slots for an invocation; never waits.

        Yields False when every slot is busy: Lambda rejects such an invoke (a throttle) and the caller, the
        shard's poller, backs off and tries again. Raises ``_WorkerGone`` when the pool is closed.
        """
        limit = self.function.reserved_concurrency
        with self._slots:
            if self._closed:
                raise _WorkerGone
            free = limit is None or self._busy < limit
            if free:
                self._busy += 1
        if not free:
            yield False
            return
        try:
            yield True
        finally:
            with self._slots:
                self._busy -= 1

    def acquire(self) -> tuple[_Worker, bool]:
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.alive:
                    return worker, False
                self._all.discard(worker)
            if self._closed:
                raise _WorkerGone
        worker = _Worker(self.function, self.env, self._log_file, self.python)
        with self._lock:
            self._all.add(worker)
            if self._closed:
                worker.kill()
                raise _WorkerGone
        return worker, True

    def release(self, worker: _Worker) -> None:
        with self._lock:
            if worker.alive and not self._closed:
                self._idle.append(worker)
            else:
                self._all.discard(worker)

    def discard(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            self._all.discard(worker)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers, self._all, self._idle = list(self._all), set(), []
        for worker in workers:
            worker.kill()
        self._log_file.close()


# --------------------------------------------------------------------------------------------------------------
# Shard pollers
# --------------------------------------------------------------------------------------------------------------


@dataclass
class _Record:
    sequence_number: str
    arrival: float  # epoch seconds
    event: dict[str, Any]
    size: int
    read_at: float = 0.0  # monotonic time the poller read it: the batching window counts from the oldest


@dataclass
class _Segment:
    records: list[_Record]
    attempts: int = 0  # failed attempts counted against MaximumRetryAttempts
    invokes: int = 0
    throttles: int = 0  # consecutive invokes rejected at the reserved concurrency (drives the backoff)
    retry_waited: bool = False  # the retry delay before the next attempt is already served
    last_request_id: str | None = None
    last_function_error: str | None = None


def _jsonable(value: Any) -> Any:
    """boto3 decodes DynamoDB ``B``/``BS`` values to bytes; Lambda events carry them base64 encoded."""
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _key_hash(keys: Mapping[str, Any]) -> int:
    return int(hashlib.md5(_canonical_keys(keys).encode(), usedforsecurity=False).hexdigest()[:8], 16)


def _canonical_keys(keys: Mapping[str, Any]) -> str:
    return json.dumps(_jsonable(dict(keys)), sort_keys=True)


def _epoch(value: Any) -> float:
    if isinstance(value, dt.datetime):
        return value.timestamp()
    return float(value)


class _ShardPoller(threading.Thread):
    def __init__(
        self,
        runner: EsmRunner,
        mapping: MappingConfig,
        shard_id: str,
        iterator: str | None,
        parent: _ShardPoller | None,
        *,
        split: tuple[int, int] | None = None,
    ) -> None:
        """``split=(i, n)``: one of ``n`` shards carved out of the source shard ``shard_id`` by key hash."""
        self.source_shard_id = shard_id
        self.split = split
        if split is not None:
            shard_id = f"{shard_id}#{split[0]}"
        super().__init__(name=f"esm-{mapping.logical_id}-{shard_id}", daemon=True)
        self.runner = runner
        self.mapping = mapping
        self.shard_id = shard_id
        self.poll_interval = runner.poll_interval_for(mapping.source)
        self.iterator = iterator
        self.parent = parent
        self.buffer: deque[_Record] = deque()
        self.segments: deque[_Segment] = deque()
        self.shard_ended = False
        self.last_empty_poll = 0.0  # monotonic time of the last GetRecords that returned nothing new
        self.in_flight = False
        self.iterator_age_ms = 0.0
        self.last_sequence_number: str | None = None  # last record read (for iterator renewal)
        self._filters = [EventPattern.load(p) for p in mapping.filter_patterns]
        self._client = runner._client("kinesis" if mapping.source == "kinesis" else "dynamodbstreams")

    # -- state for wait_idle / stats --------------------------------------------------------------------------
    @property
    def drained(self) -> bool:
        return not self.buffer and not self.segments and not self.in_flight

    def idle_since(self, moment: float) -> bool:
        return self.drained and (self.shard_ended or self.last_empty_poll > moment)

    @property
    def pending(self) -> int:
        return len(self.buffer) + sum(len(s.records) for s in self.segments)

    # -- main loop ---------------------------------------------------------------------------------------------
    def run(self) -> None:
        stop = self.runner._stop
        while not stop.is_set():
            if self.parent is not None and not (self.parent.shard_ended and self.parent.drained):
                stop.wait(self._poll_wait())
                continue
            if self.shard_ended and self.drained:
                return
            try:
                worked = self._step()
            except Exception as exc:
                if stop.is_set():
                    return
                log.warning("%s: poll error: %r", self.name, exc)
                self.runner._count(self.mapping, "poll_errors")
                worked = False
            if not worked:
                stop.wait(self._poll_wait())

    def _poll_wait(self) -> float:
        """The next poll's delay: the source's base interval with jitter, cut short when a batching window ends."""
        wait = self.poll_interval * self.runner.poll_jitter_factor()
        if self.buffer:
            remaining = self.mapping.batching_window_s - (time.monotonic() - self.buffer[0].read_at)
            wait = min(wait, max(0.0, remaining))
        return wait

    def _step(self) -> bool:
        if not self.segments:
            self._fill()
            batch = self._take_batch()
            if batch is None:
                return False
            self.segments.append(_Segment(batch))
        self._process_head()
        return True

    def _fill(self) -> None:
        while self.iterator and len(self.buffer) < self.mapping.batch_size and not self.runner._stop.is_set():
            limit = min(GET_RECORDS_LIMIT[self.mapping.source], max(100, 2 * self.mapping.batch_size))
            # An empty answer proves the shard idle only as of when it was asked, not when it came back.
            asked = time.monotonic()
            try:
                page = self._client.get_records(ShardIterator=self.iterator, Limit=limit)
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "ExpiredIteratorException":
                    raise
                self.iterator = self._renew_iterator()
                continue
            self.iterator = page.get("NextShardIterator")
            if self.iterator is None:
                self.shard_ended = True
            raw = page.get("Records") or []
            for item in raw:
                if self.split is not None and _key_hash(item["dynamodb"]["Keys"]) % self.split[1] != self.split[0]:
                    self.last_sequence_number = str(item["dynamodb"]["SequenceNumber"])
                    continue  # another of the split shards owns this key
                record = self._to_record(item)
                self.last_sequence_number = record.sequence_number
                if self._filters and not self._matches(record.event):
                    self.runner._count(self.mapping, "records_filtered")
                    continue
                record.read_at = time.monotonic()
                self.buffer.append(record)
            if not raw:
                self.last_empty_poll = asked
                return

    def _renew_iterator(self) -> str:
        args: dict[str, Any] = {"ShardId": self.source_shard_id}
        if self.mapping.source == "kinesis":
            args["StreamName"] = self.mapping.stream_name
        else:
            args["StreamArn"] = self.mapping.source_arn
        if self.last_sequence_number:
            args.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=self.last_sequence_number)
            if self.mapping.source == "dynamodb":
                args["SequenceNumber"] = args.pop("StartingSequenceNumber")
        else:
            args["ShardIteratorType"] = "TRIM_HORIZON"
        return str(self._client.get_shard_iterator(**args)["ShardIterator"])

    def _to_record(self, item: Mapping[str, Any]) -> _Record:
        mapping = self.mapping
        region = self.runner.region
        if mapping.source == "kinesis":
            arrival = _epoch(item["ApproximateArrivalTimestamp"])
            payload: dict[str, Any] = {
                "kinesisSchemaVersion": "1.0",
                "partitionKey": item["PartitionKey"],
                "sequenceNumber": item["SequenceNumber"],
                "data": base64.b64encode(item["Data"]).decode("ascii"),
                "approximateArrivalTimestamp": round(arrival, 3),
            }
            if item.get("EncryptionType") and item["EncryptionType"] != "NONE":
                payload["encryptionType"] = item["EncryptionType"]
            event: dict[str, Any] = {
                "kinesis": payload,
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": f"{self.shard_id}:{item['SequenceNumber']}",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": mapping.function.role_arn,
                "awsRegion": region,
                "eventSourceARN": mapping.source_arn,
            }
            sequence_number = str(item["SequenceNumber"])
        else:
            change = dict(item["dynamodb"])
            arrival = _epoch(change["ApproximateCreationDateTime"])
            body: dict[str, Any] = {"ApproximateCreationDateTime": float(int(arrival))}
            for key in ("Keys", "NewImage", "OldImage", "SequenceNumber", "SizeBytes", "StreamViewType"):
                if key in change:
                    body[key] = _jsonable(change[key])
            event = {
                "eventID": item["eventID"],
                "eventName": item["eventName"],
                "eventVersion": "1.1",  # what Lambda delivers for DynamoDB Streams (moto says 1.0)
                "eventSource": "aws:dynamodb",
                "awsRegion": item.get("awsRegion", region),
                "dynamodb": body,
                "eventSourceARN": mapping.source_arn,
            }
            if item.get("userIdentity"):
                event["userIdentity"] = {
                    "type": item["userIdentity"].get("Type", "Service"),
                    "principalId": item["userIdentity"].get("PrincipalId", "dynamodb.amazonaws.com"),
                }
            elif item["eventName"] == "REMOVE" and self.runner._take_ttl_key(mapping.source_arn, change["Keys"]):
                event["userIdentity"] = {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
            sequence_number = str(change["SequenceNumber"])
        return _Record(sequence_number, arrival, event, len(json.dumps(event)))

    def _matches(self, event: Mapping[str, Any]) -> bool:
        if self.mapping.source == "kinesis":
            view: dict[str, Any] = {k: v for k, v in event.items() if k != "kinesis"}
            view.update({k: v for k, v in event["kinesis"].items() if k != "data"})
            with contextlib.suppress(ValueError):  # not JSON: a pattern on data cannot match
                view["data"] = json.loads(base64.b64decode(event["kinesis"]["data"]))
        else:
            view = dict(event)
        event_view: Any = view
        return any(pattern.matches_event(event_view) for pattern in self._filters)

    def _take_batch(self) -> list[_Record] | None:
        if not self.buffer:
            return None
        full = len(self.buffer) >= self.mapping.batch_size
        # The window runs from the oldest buffered record: records left over from the last batch have waited.
        waited = time.monotonic() - self.buffer[0].read_at
        if not (full or self.shard_ended or waited >= self.mapping.batching_window_s):
            return None
        batch: list[_Record] = []
        size = 0
        while self.buffer and len(batch) < self.mapping.batch_size:
            if batch and size + self.buffer[0].size > MAX_PAYLOAD_BYTES:
                break
            record = self.buffer.popleft()
            size += record.size
            batch.append(record)
        return batch

    # -- error handling ----------------------------------------------------------------------------------------
    def _process_head(self) -> None:
        mapping = self.mapping
        segment = self.segments[0]
        if mapping.max_record_age_s >= 0:
            now = time.time()
            expired = 0
            while expired < len(segment.records) and now - segment.records[expired].arrival > mapping.max_record_age_s:
                expired += 1
            if expired:
                self._send_on_failure(segment, segment.records[:expired], "RecordAgeExceeded")
                segment.records = segment.records[expired:]
                if not segment.records:
                    self.segments.popleft()
                return
        if segment.attempts and not segment.retry_waited:
            delay = min(self.runner.retry_backoff_s * 2 ** (segment.attempts - 1), self.runner.max_retry_backoff_s)
            if self.runner._stop.wait(delay):
                return
            self.runner._count(mapping, "retries")
            segment.retry_waited = True
        records = segment.records
        try:
            invocation = self.runner._invoke(self, records, attempt=segment.attempts)
        except _Throttled:
            # Rejected at the reserved concurrency: not a retry attempt; back off, and the records keep ageing.
            segment.throttles += 1
            self.runner._stop.wait(self.runner.throttle_delay(segment.throttles))
            return
        if invocation is None:  # stopping
            return
        segment.throttles = 0
        segment.retry_waited = False
        segment.invokes += 1
        segment.last_request_id = invocation.request_id
        segment.last_function_error = None
        if invocation.outcome == "success":
            self._succeeded(len(records))
            self.segments.popleft()
            return
        if invocation.outcome == "partial":
            index = records.index(next(r for r in records if r.sequence_number == invocation.detail))
            self._succeeded(index)
            segment.records = records[index:]
            if index and not self.runner.partial_counts_as_retry:
                segment.attempts = 0  # the checkpoint moved: the rest is taken as a new batch
            else:
                segment.attempts += 1
        else:
            segment.last_function_error = "Unhandled"
            if mapping.bisect_on_error and len(records) > 1:
                half = len(records) // 2
                self.segments.popleft()
                # Splitting does not consume the retry budget: both halves keep the attempts so far.
                self.segments.appendleft(_Segment(records[half:], attempts=segment.attempts))
                self.segments.appendleft(_Segment(records[:half], attempts=segment.attempts))
                self.runner._count(mapping, "bisects")
                return
            segment.attempts += 1
        if 0 <= mapping.max_retry_attempts < segment.attempts:
            self._send_on_failure(segment, segment.records, "RetryAttemptsExhausted")
            self.segments.popleft()

    def _succeeded(self, count: int) -> None:
        if count:
            self.runner._count(self.mapping, "records_succeeded", count)

    def _send_on_failure(
        self,
        segment: _Segment,
        records: list[_Record],
        condition: Literal["RetryAttemptsExhausted", "RecordAgeExceeded"],
    ) -> None:
        message = build_on_failure_message(
            mapping=self.mapping,
            shard_id=self.shard_id,
            sequence_numbers=[r.sequence_number for r in records],
            arrivals=[r.arrival for r in records],
            condition=condition,
            request_id=segment.last_request_id or str(uuid.uuid4()),
            invoke_count=segment.invokes,
            function_error=segment.last_function_error,
        )
        self.runner._deliver_on_failure(self.mapping, message, len(records), expired=condition == "RecordAgeExceeded")


# --------------------------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------------------------


class EsmRunner:
    """Runs every stream event source mapping of a template against moto server, with warm worker processes.

    ``template`` is the synthesized template (a path, whose directory anchors ``aws:asset:path``, or a dict);
    ``resources`` is what :func:`localcloud.provision.provision` returned for it. ``asset_dir`` overrides the
    function code directory (one path for all functions, or ``{function logical id: path}``); ``env_overrides``
    is applied last to every function's environment; ``function_overrides`` replaces :class:`FunctionConfig`
    fields of every function (``{"timeout_s": 8}`` runs it with a shorter ``Timeout`` than the template's).
    Fault hooks: ``kill_worker_probability`` kills the worker in the middle of that share of invocations, at a
    random moment within the first ``kill_window_s`` seconds (a crashed sandbox: a function error, the batch is
    retried); ``hang_worker_probability`` freezes the worker (SIGSTOP) at a random moment within the first
    ``hang_window_s`` seconds, so that the invocation ends only at the function's timeout and is killed then
    (outcome ``timeout``), whatever the handler's own deadline logic would have done. A hook that fires after
    the handler has already answered: a kill still counts (the answer is lost); a freeze that comes too late
    is harmless (the answer stands, the sandbox is discarded).
    ``set_faults(kill_next=n, hang_next=n)`` forces the hook on the next ``n`` invocations.
    ``mapping_overrides`` replaces :class:`MappingConfig` fields on every mapping (``batching_window_s`` ...);
    ``on_invocation`` is called with each ledger entry as it is recorded (from the shard's thread).
    Polling: ``poll_interval`` (seconds, one number or ``{"kinesis": s, "dynamodb": s}``; default Lambda's
    documented 1 s and 0.25 s) with ``poll_jitter`` (each wait is drawn in ``interval x [1 - j, 1 + j]``).
    Reserved concurrency: ``throttle_backoff_s``, ``max_throttle_backoff_s``, ``throttle_jitter`` (see the module
    docstring). ``partial_counts_as_retry``: whether a partial response that moved the checkpoint still counts
    against ``MaximumRetryAttempts``. ``dynamodb_shards``: split each DynamoDB stream shard into this many.
    ``python``: the interpreter the workers run (default: this one).
    """

    def __init__(
        self,
        template: Mapping[str, Any] | str | Path,
        resources: Mapping[str, ProvisionedResource],
        *,
        moto_endpoint: str,
        personalize_endpoint: str,
        asset_dir: str | Path | Mapping[str, str | Path] | None = None,
        env_overrides: Mapping[str, str] | None = None,
        region: str = DEFAULT_REGION,
        account_id: str = DEFAULT_ACCOUNT_ID,
        stack_name: str | None = None,
        template_dir: str | Path | None = None,
        log_dir: str | Path | None = None,
        poll_interval: float | Mapping[str, float] | None = None,
        poll_jitter: float = 0.2,
        throttle_backoff_s: float = 1.0,
        max_throttle_backoff_s: float = 30.0,
        throttle_jitter: float = 0.5,
        partial_counts_as_retry: bool = True,
        dynamodb_shards: int = 1,
        python: str | None = None,
        retry_backoff_s: float = 0.05,
        max_retry_backoff_s: float = 1.0,
        discovery_interval: float = 1.0,
        kill_worker_probability: float = 0.0,
        kill_window_s: float = 0.2,
        hang_worker_probability: float = 0.0,
        hang_window_s: float = 0.2,
        function_overrides: Mapping[str, Any] | None = None,
        seed: int | None = None,
        on_invocation: Callable[[Invocation], None] | None = None,
        mapping_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.region = region
        self.account_id = account_id
        self.moto_endpoint = moto_endpoint
        self.personalize_endpoint = personalize_endpoint
        if poll_interval is None:
            poll_interval = POLL_INTERVAL_S
        self.poll_interval: dict[str, float] = (
            {source: float(poll_interval) for source in POLL_INTERVAL_S}
            if isinstance(poll_interval, int | float)
            else {**POLL_INTERVAL_S, **poll_interval}
        )
        if not 0.0 <= poll_jitter < 1.0 or throttle_jitter < 0 or dynamodb_shards < 1:
            raise ValueError("poll_jitter must be in [0, 1), throttle_jitter >= 0, dynamodb_shards >= 1")
        self.poll_jitter = poll_jitter
        self.throttle_backoff_s = throttle_backoff_s
        self.max_throttle_backoff_s = max_throttle_backoff_s
        self.throttle_jitter = throttle_jitter
        self.partial_counts_as_retry = partial_counts_as_retry
        self.dynamodb_shards = dynamodb_shards
        self.python = python or sys.executable
        self._ttl_keys: set[tuple[str, str]] = set()
        self.retry_backoff_s = retry_backoff_s
        self.max_retry_backoff_s = max_retry_backoff_s
        self.discovery_interval = discovery_interval
        self.kill_worker_probability = kill_worker_probability
        self.kill_window_s = kill_window_s
        self.hang_worker_probability = hang_worker_probability
        self.hang_window_s = hang_window_s
        self._kill_next = 0
        self._hang_next = 0
        self.on_invocation = on_invocation
        self.warnings: list[str] = []
        self.resources = dict(resources)
        self.mappings: list[MappingConfig] = parse_template(
            template,
            resources,
            region=region,
            account_id=account_id,
            stack_name=stack_name,
            template_dir=template_dir,
            asset_dir=asset_dir,
            warnings=self.warnings,
        )
        if mapping_overrides:  # e.g. {"batching_window_s": 0.2} to keep a demo snappy; fields of MappingConfig
            self.mappings = [replace(m, **dict(mapping_overrides)) for m in self.mappings]
        if function_overrides:  # e.g. {"timeout_s": 8}; fields of FunctionConfig, applied to every function
            functions = {m.function.logical_id: replace(m.function, **dict(function_overrides)) for m in self.mappings}
            self.mappings = [replace(m, function=functions[m.function.logical_id]) for m in self.mappings]
        for warning in self.warnings:
            log.warning("%s", warning)
        self.functions: dict[str, FunctionConfig] = {m.function.logical_id: m.function for m in self.mappings}
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="esm-runner-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._env_overrides = dict(env_overrides or {})
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._counters: dict[str, Counter[str]] = {m.logical_id: Counter() for m in self.mappings}
        self._max_iterator_age_ms = 0.0
        self._ledger: list[Invocation] = []
        self._pollers: dict[tuple[str, str], _ShardPoller] = {}
        self._pools: dict[str, _FunctionPool] = {}
        self._discovery: threading.Thread | None = None
        self._started = False
        self._thread_local = threading.local()

    # -- public API --------------------------------------------------------------------------------------------
    def start(self) -> EsmRunner:
        """Create iterators for every shard (so LATEST means "from now"), then start polling."""
        if self._started:
            return self
        self._started = True
        for function in self.functions.values():
            self._pools[function.logical_id] = _FunctionPool(
                function, self.function_environment(function), self.log_dir / f"{function.name}.log", self.python
            )
        self._discover(initial=True)
        self._discovery = threading.Thread(target=self._discovery_loop, name="esm-discovery", daemon=True)
        self._discovery.start()
        return self

    def stop(self) -> None:
        """Stop polling, kill the workers (an in-flight invocation is abandoned) and join the threads."""
        self._stop.set()
        for pool in self._pools.values():
            pool.close()
        for poller in list(self._pollers.values()):
            poller.join(timeout=10)
        if self._discovery is not None:
            self._discovery.join(timeout=10)

    def __enter__(self) -> EsmRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until every shard is drained and nothing is in flight, as seen by a poll made after the call.

        Returns False on timeout (a stuck batch that retries forever never becomes idle).
        """
        begin = time.monotonic()
        self._discover(initial=False)
        deadline = begin + timeout
        while time.monotonic() < deadline:
            pollers = list(self._pollers.values())
            if all(p.idle_since(begin) for p in pollers):
                return True
            time.sleep(0.02)
        return False

    def stats(self) -> RunnerStats:
        with self._lock:
            by_mapping = {lid: {name: float(c[name]) for name in _COUNTERS} for lid, c in self._counters.items()}
            pollers = list(self._pollers.values())
            stats = RunnerStats(max_iterator_age_ms=self._max_iterator_age_ms)
        for name in _COUNTERS:
            setattr(stats, name, int(sum(m[name] for m in by_mapping.values())))
        for poller in pollers:
            entry = by_mapping.setdefault(poller.mapping.logical_id, {})
            entry["records_pending"] = entry.get("records_pending", 0) + poller.pending
            entry["shards"] = entry.get("shards", 0) + 1
            entry["iterator_age_ms"] = max(entry.get("iterator_age_ms", 0.0), poller.iterator_age_ms)
            stats.records_pending += poller.pending
            stats.iterator_age_ms = max(stats.iterator_age_ms, poller.iterator_age_ms)
            stats.in_flight += int(poller.in_flight)
        stats.shards = len(pollers)
        stats.by_mapping = by_mapping
        return stats

    def ledger(self, mapping: str | None = None) -> list[Invocation]:
        """Every invocation so far (optionally of one mapping), in the order they finished."""
        with self._lock:
            entries = list(self._ledger)
        return [e for e in entries if mapping is None or e.mapping == mapping]

    def interpreter(self) -> str:
        """The interpreter the workers run (path and version), for reports."""
        try:
            out = subprocess.run(
                [self.python, "-c", "import platform; print(platform.python_version())"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
            version = out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            version = "?"
        return f"Python {version} ({self.python})"

    def poll_interval_for(self, source: str) -> float:
        return self.poll_interval[source]

    def poll_jitter_factor(self) -> float:
        with self._lock:
            return self._rng.uniform(1.0 - self.poll_jitter, 1.0 + self.poll_jitter)

    def throttle_delay(self, throttles: int) -> float:
        """The wait after the ``throttles``-th consecutive rejected invoke of a batch (jittered exponential)."""
        base = min(self.throttle_backoff_s * 2 ** (throttles - 1), self.max_throttle_backoff_s)
        with self._lock:
            return base * self._rng.uniform(1.0, 1.0 + self.throttle_jitter)

    def ttl_delete(self, table_name: str, key: Mapping[str, Any]) -> None:
        """Delete an item as DynamoDB's TTL does: its ``REMOVE`` record carries the service's ``userIdentity``.

        ``key`` is in DynamoDB JSON (``{"pk": {"S": "a"}}``). Only tables whose stream a mapping reads.
        """
        arns = {
            m.source_arn for m in self.mappings if m.source == "dynamodb" and f":table/{table_name}/" in m.source_arn
        }
        if not arns:
            raise ValueError(f"no DynamoDB mapping reads the stream of table {table_name}")
        with self._lock:
            for arn in arns:
                self._ttl_keys.add((arn, _canonical_keys(key)))
        self._control_client("dynamodb").delete_item(TableName=table_name, Key=dict(key))

    def _take_ttl_key(self, stream_arn: str, keys: Mapping[str, Any]) -> bool:
        marker = (stream_arn, _canonical_keys(keys))
        with self._lock:
            if marker in self._ttl_keys:
                self._ttl_keys.discard(marker)
                return True
        return False

    def set_faults(
        self,
        *,
        kill_worker_probability: float | None = None,
        kill_window_s: float | None = None,
        hang_worker_probability: float | None = None,
        hang_window_s: float | None = None,
        kill_next: int | None = None,
        hang_next: int | None = None,
    ) -> None:
        """Change the fault hooks (None leaves a knob unchanged); ``*_next`` force the hook on the next invocations."""
        with self._lock:
            if kill_worker_probability is not None:
                self.kill_worker_probability = kill_worker_probability
            if kill_window_s is not None:
                self.kill_window_s = kill_window_s
            if hang_worker_probability is not None:
                self.hang_worker_probability = hang_worker_probability
            if hang_window_s is not None:
                self.hang_window_s = hang_window_s
            if kill_next is not None:
                self._kill_next = kill_next
            if hang_next is not None:
                self._hang_next = hang_next

    def _draw_faults(self, function: FunctionConfig) -> tuple[float | None, float | None, bool]:
        """When (seconds into the invoke) the kill and hang hooks fire for the next invocation, if they do, and
        whether the hang is a forced one (re-armed if the handler answered before it could take hold)."""
        with self._lock:
            # A forced hook fires within 50 ms, before any handler that calls PutItems can have answered.
            kill_after = hang_after = None
            forced_hang = False
            if self._kill_next > 0:
                self._kill_next -= 1
                kill_after = self._rng.uniform(0.0, min(0.05, function.timeout_s))
            elif self.kill_worker_probability and self._rng.random() < self.kill_worker_probability:
                kill_after = self._rng.uniform(0.0, min(self.kill_window_s, function.timeout_s))
            if kill_after is None:
                if self._hang_next > 0:
                    self._hang_next -= 1
                    forced_hang = True
                    hang_after = self._rng.uniform(0.0, min(0.05, function.timeout_s))
                elif self.hang_worker_probability and self._rng.random() < self.hang_worker_probability:
                    hang_after = self._rng.uniform(0.0, min(self.hang_window_s, function.timeout_s))
            return kill_after, hang_after, forced_hang

    def function_environment(self, function: FunctionConfig) -> dict[str, str]:
        """The environment a worker of ``function`` runs with: Lambda's variables, the template's, local endpoints."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": "en_US.UTF-8",
            "TZ": ":UTC",
            "PYTHONUNBUFFERED": "1",
            "LAMBDA_TASK_ROOT": str(function.asset_dir),
            "LAMBDA_RUNTIME_DIR": str(Path(WORKER_SCRIPT).parent),
            "_HANDLER": function.handler,
            "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
            "AWS_LAMBDA_FUNCTION_NAME": function.name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(function.memory_mb),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": f"local/[$LATEST]{uuid.uuid4().hex}",
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }
        env.update(function.environment)
        env.update(
            {
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_SESSION_TOKEN": "testing",
                "AWS_ENDPOINT_URL": self.moto_endpoint,
                "AWS_ENDPOINT_URL_PERSONALIZE_EVENTS": self.personalize_endpoint,
                "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
                "POWERTOOLS_TRACE_DISABLED": "true",
            }
        )
        env.update(self._env_overrides)
        return env

    # -- internals ---------------------------------------------------------------------------------------------
    def _client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.moto_endpoint,
            region_name=self.region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106 - moto's fake credentials
            config=Config(retries={"max_attempts": 5, "mode": "standard"}),
        )

    def _control_client(self, service: str) -> Any:
        clients = getattr(self._thread_local, "clients", None)
        if clients is None:
            clients = self._thread_local.clients = {}
        if service not in clients:
            clients[service] = self._client(service)
        return clients[service]

    def _count(self, mapping: MappingConfig, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counters[mapping.logical_id][name] += amount

    def _discovery_loop(self) -> None:
        while not self._stop.wait(self.discovery_interval):
            try:
                self._discover(initial=False)
            except Exception as exc:
                if not self._stop.is_set():
                    log.warning("shard discovery failed: %r", exc)

    def _list_shards(self, mapping: MappingConfig) -> Iterator[Mapping[str, Any]]:
        if mapping.source == "kinesis":
            client = self._control_client("kinesis")
            page = client.list_shards(StreamName=mapping.stream_name)
            yield from page.get("Shards", [])
            while page.get("NextToken"):
                page = client.list_shards(NextToken=page["NextToken"])
                yield from page.get("Shards", [])
        else:
            client = self._control_client("dynamodbstreams")
            args: dict[str, Any] = {"StreamArn": mapping.source_arn}
            while True:
                desc = client.describe_stream(**args)["StreamDescription"]
                yield from desc.get("Shards", [])
                if not desc.get("LastEvaluatedShardId"):
                    return
                args["ExclusiveStartShardId"] = desc["LastEvaluatedShardId"]

    def _discover(self, *, initial: bool) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            for mapping in self.mappings:
                n = self.dynamodb_shards if mapping.source == "dynamodb" else 1
                for shard in self._list_shards(mapping):
                    for i in range(n):
                        suffix = f"#{i}" if n > 1 else ""
                        key = (mapping.logical_id, shard["ShardId"] + suffix)
                        if key in self._pollers:
                            continue
                        parent_id = shard.get("ParentShardId")
                        parent = self._pollers.get((mapping.logical_id, parent_id + suffix)) if parent_id else None
                        position = mapping.starting_position if initial else "TRIM_HORIZON"
                        iterator = self._initial_iterator(mapping, shard["ShardId"], position)
                        split = (i, n) if n > 1 else None
                        poller = _ShardPoller(self, mapping, shard["ShardId"], iterator, parent, split=split)
                        self._pollers[key] = poller
                        poller.start()

    def _initial_iterator(self, mapping: MappingConfig, shard_id: str, position: str) -> str:
        if mapping.source == "kinesis":
            args: dict[str, Any] = {
                "StreamName": mapping.stream_name,
                "ShardId": shard_id,
                "ShardIteratorType": position,
            }
            if position == "AT_TIMESTAMP":
                args["Timestamp"] = mapping.starting_position_timestamp or time.time()
            return str(self._control_client("kinesis").get_shard_iterator(**args)["ShardIterator"])
        if position not in ("TRIM_HORIZON", "LATEST"):
            raise EsmConfigError(f"{mapping.logical_id}: DynamoDB Streams supports TRIM_HORIZON or LATEST only")
        return str(
            self._control_client("dynamodbstreams").get_shard_iterator(
                StreamArn=mapping.source_arn, ShardId=shard_id, ShardIteratorType=position
            )["ShardIterator"]
        )

    def _invoke(self, poller: _ShardPoller, records: list[_Record], *, attempt: int) -> Invocation | None:
        mapping = poller.mapping
        function = mapping.function
        pool = self._pools[function.logical_id]
        request_id = str(uuid.uuid4())
        event = {"Records": [r.event for r in records]}
        poller.in_flight = True
        try:
            with pool.slot() as free:
                if not free:
                    self._count(mapping, "throttles")
                    raise _Throttled
                kill_after, hang_after, forced_hang = self._draw_faults(function)
                started_at = time.time()
                try:
                    worker, cold = pool.acquire()
                except _WorkerInitError as exc:
                    result = _InvokeResult("error", error=exc.error, cold_start=True)
                else:
                    result = worker.invoke(
                        event,
                        request_id=request_id,
                        function=function,
                        kill_after_s=kill_after,
                        hang_after_s=hang_after,
                    )
                    result.cold_start, result.worker_pid = cold, worker.pid
                    result.init_ms = worker.init_ms if cold else None
                    if result.status in ("ok", "error") and worker.alive:
                        pool.release(worker)  # a handler that raised leaves its sandbox warm, as on Lambda
                    else:
                        pool.discard(worker)  # timed out, killed or crashed: the next invoke is a cold start
        except _WorkerGone:
            return None
        finally:
            poller.in_flight = False
        if forced_hang and not result.hung:
            with self._lock:
                self._hang_next += 1  # the handler was quicker than the freeze: force it on a later invocation
        if self._stop.is_set():
            return None
        # IteratorAge: how old the batch's last record is when the batch finishes
        age_ms = max(0.0, (time.time() - records[-1].arrival) * 1000)
        poller.iterator_age_ms = age_ms
        sequence_numbers = [r.sequence_number for r in records]
        detail: str | None = None
        outcome: Outcome
        if result.status == "ok":
            if mapping.report_batch_item_failures:
                verdict, index, reason = evaluate_batch_response(result.response, sequence_numbers)
                if verdict == "success":
                    outcome = "success"
                elif verdict == "partial" and index is not None:
                    outcome, detail = "partial", sequence_numbers[index]
                else:
                    outcome, detail = "invalid_response", reason
            else:
                outcome = "success"
        elif result.status == "timeout":
            outcome = "timeout"
        elif result.status == "killed":
            outcome = "killed"
        else:
            outcome = "error"
        with self._lock:
            counters = self._counters[mapping.logical_id]
            counters["invocations"] += 1
            counters["records_delivered"] += len(records)
            counters["cold_starts"] += int(result.cold_start)
            if outcome in ("error", "timeout", "killed", "invalid_response"):
                counters["function_errors"] += 1
            counters["timeouts"] += int(outcome == "timeout")
            counters["kills"] += int(outcome == "killed")
            counters["hangs"] += int(result.hung)
            counters["invalid_responses"] += int(outcome == "invalid_response")
            counters["partial_failures"] += int(outcome == "partial")
            self._max_iterator_age_ms = max(self._max_iterator_age_ms, age_ms)
            invocation = Invocation(
                index=len(self._ledger),
                mapping=mapping.logical_id,
                function=function.logical_id,
                shard_id=poller.shard_id,
                request_id=request_id,
                started_at=started_at,
                duration_ms=result.duration_ms,
                sequence_numbers=tuple(sequence_numbers),
                outcome=outcome,
                response=result.response,
                error=result.error,
                detail=detail,
                attempt=attempt,
                cold_start=result.cold_start,
                init_ms=result.init_ms,
                worker_pid=result.worker_pid,
                iterator_age_ms=age_ms,
                fault="kill" if outcome == "killed" else "hang" if result.hung else None,
            )
            self._ledger.append(invocation)
        if outcome not in ("success", "partial"):
            log.info("%s %s: %s %s", mapping.logical_id, poller.shard_id, outcome, detail or result.error)
        if self.on_invocation is not None:
            self.on_invocation(invocation)
        return invocation

    def _deliver_on_failure(
        self, mapping: MappingConfig, message: Mapping[str, Any], records: int, *, expired: bool
    ) -> None:
        self._count(mapping, "records_to_on_failure", records)
        if expired:
            self._count(mapping, "records_expired", records)
        if not mapping.on_failure_arn:
            log.warning("%s: %d records discarded (no on-failure destination)", mapping.logical_id, records)
            return
        if ":sqs:" not in mapping.on_failure_arn:
            log.warning("%s: on-failure destination %s is not emulated", mapping.logical_id, mapping.on_failure_arn)
            return
        url = self._queue_url(mapping.on_failure_arn)
        self._control_client("sqs").send_message(QueueUrl=url, MessageBody=json.dumps(message))
        self._count(mapping, "on_failure_messages")

    def _queue_url(self, arn: str) -> str:
        for resource in self.resources.values():
            if resource.attributes.get("Arn") == arn and "QueueUrl" in resource.attributes:
                return resource.attributes["QueueUrl"]
        return str(self._control_client("sqs").get_queue_url(QueueName=arn.rsplit(":", 1)[-1])["QueueUrl"])
