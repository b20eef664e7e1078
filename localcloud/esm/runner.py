"""The runner: discovers shards, starts a poller per shard, invokes the function pool, keeps the ledger."""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from localcloud.esm.batch_policy import (
    Outcome,
    build_on_failure_s3_record,
    evaluate_batch_response,
    on_failure_s3_key,
)
from localcloud.esm.config import EsmConfigError, FunctionConfig, MappingConfig, parse_template
from localcloud.esm.function_pool import (
    WORKER_SCRIPT,
    _FunctionPool,
    _InvokeResult,
    _Throttled,
    _WorkerGone,
    _WorkerInitError,
)
from localcloud.esm.ledger import _COUNTERS, Invocation, RunnerStats
from localcloud.esm.metrics import MetricPublisher
from localcloud.esm.poller import POLL_INTERVAL_S, _canonical_keys, _Record, _ShardPoller
from localcloud.esm.sandbox import cpu_share, find_python, lambda_site_packages
from localcloud.provision import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_REGION,
    ProvisionedResource,
)

log = logging.getLogger("localcloud.esm")


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
    ``sandbox`` (default True): run each worker as the Lambda would (:mod:`localcloud.esm.sandbox`): python3.13 if
    installed, only the asset, the Powertools layer's and the runtime's packages on ``sys.path``, memory capped at
    ``MemorySize``, CPU in proportion to it. ``python``: the interpreter the workers run.
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
        sandbox: bool = True,
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
        publish_metrics: bool = True,
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
        self.sandbox = sandbox
        self.python = python or (find_python() if sandbox else sys.executable)
        self._site_packages = str(lambda_site_packages()) if sandbox else ""
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
        self._metrics = MetricPublisher(lambda: self._client("cloudwatch"), enabled=publish_metrics)

    # -- public API --------------------------------------------------------------------------------------------
    def add_env_overrides(self, overrides: Mapping[str, str]) -> None:
        """More environment overrides for every function's workers; only before :meth:`start`."""
        if self._started:
            raise RuntimeError("environment overrides must be set before the runner starts")
        self._env_overrides.update(overrides)

    def start(self) -> EsmRunner:
        """Create iterators for every shard (so LATEST means "from now"), then start polling."""
        if self._started:
            return self
        self._started = True
        for function in self.functions.values():
            self._pools[function.logical_id] = _FunctionPool(
                function,
                self.function_environment(function),
                self.log_dir / f"{function.name}.log",
                self.python,
                isolated=self.sandbox,
                cpu=cpu_share(function.memory_mb) if self.sandbox else 1.0,
            )
        self._metrics.start()
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
        self._metrics.stop()

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
        if self.sandbox:
            env.update(
                {
                    "LOCALCLOUD_SYS_PATH": self._site_packages,
                    "LOCALCLOUD_MEMORY_MB": str(function.memory_mb),
                    "MALLOC_ARENA_MAX": "2",
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
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, s3={"addressing_style": "path"}),
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
        # ... published as Lambda does: AWS/Lambda IteratorAge by FunctionName, so `ops status` reads it here too
        self._metrics.add("IteratorAge", age_ms, unit="Milliseconds", dimensions={"FunctionName": function.name})
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
        self,
        mapping: MappingConfig,
        message: Mapping[str, Any],
        records: int,
        *,
        expired: bool,
        shard_id: str = "",
        event: Mapping[str, Any] | None = None,
    ) -> None:
        """Send the on-failure message as Lambda does: to an SQS queue (coordinates), or to an S3 bucket as one
        object per batch with the whole invocation event in ``payload``."""
        self._count(mapping, "records_to_on_failure", records)
        if expired:
            self._count(mapping, "records_expired", records)
        if not mapping.on_failure_arn:
            log.warning("%s: %d records discarded (no on-failure destination)", mapping.logical_id, records)
            return
        if ":sqs:" in mapping.on_failure_arn:
            url = self._queue_url(mapping.on_failure_arn)
            self._control_client("sqs").send_message(QueueUrl=url, MessageBody=json.dumps(message))
        elif mapping.on_failure_arn.startswith("arn:aws:s3:::"):
            bucket = mapping.on_failure_arn.split(":::", 1)[1]
            key = on_failure_s3_key(mapping.uuid, shard_id)
            body = build_on_failure_s3_record(message, event or {"Records": []})
            self._control_client("s3").put_object(Bucket=bucket, Key=key, Body=json.dumps(body).encode())
        else:
            log.warning("%s: on-failure destination %s is not emulated", mapping.logical_id, mapping.on_failure_arn)
            return
        self._count(mapping, "on_failure_messages")
        self._metrics.add(
            "OnFailureDestinationDeliveredEventCount",
            records,
            unit="Count",
            dimensions={"EventSourceMappingUUID": mapping.uuid},
        )

    def _queue_url(self, arn: str) -> str:
        for resource in self.resources.values():
            if resource.attributes.get("Arn") == arn and "QueueUrl" in resource.attributes:
                return resource.attributes["QueueUrl"]
        return str(self._control_client("sqs").get_queue_url(QueueName=arn.rsplit(":", 1)[-1])["QueueUrl"])
