"""``python -m localcloud demo``: the synthesized stack, end to end on this machine, ending with a convergence check.

The steps: synthesize the real CDK app (:func:`synthesize`), boot the local cloud (:class:`LocalCloud`: moto
server, the Personalize Events emulator at 10 calls/s with about 50 ms latency, the template's tables, streams
and queues, and the event source mapping runner with the function's asset), write the catalog workload of
:mod:`localcloud.workload` while showing live progress, wait until the connector has caught up, then print a
report and **check convergence** (:func:`check`).

**Act 1, a catalog that exists before the stack** (``--catalog N``, default 3,000 in ``make demo``; 0 skips it):
before the event source mappings start, the table is filled with ``N`` items that make no stream record (as on
AWS, where enabling a stream does not put a table's existing items into it; :meth:`LocalCloud.without_stream`).
Then the first act loads them (:class:`CatalogLoad`) while about 10 % of them are updated through the stream:
``backfill`` (the code of ``python -m ops backfill``, in this process, taking at most ``--share`` of the shared
PutItems budget) or ``bulk-load`` (export → CSV by the asset's converter → a FULL import job through the
emulator's control plane, the mappings started before the export time, which the check verifies). Act 2 is the
streaming workload below. The convergence check then covers the whole catalog: the emulator's items (for a bulk
load, its effective view: the PutItems layer over the bulk layer) equal the table's final state for every item.

* every item in the emulator equals what the sources' final state implies (computed independently by
  :meth:`Workload.expected_items`), and there is no other item;
* every deliberately bad record is in the poison DLQ with the expected reason, and nothing else is (a bad record
  that Lambda delivered twice may be there twice; never more often than it was delivered);
* the on-failure queue is empty and nothing went to it;
* no record is lost: every record written to a source was checkpointed by the runner, and every record the
  function received got exactly one outcome (the handler's ``Batch done`` logs add up to the runner's deliveries;
  when some invocations were killed or timed out, each answered invocation's line is matched with its ledger
  entry by request id instead, see :func:`_match_invocations`).

The exit code is non-zero, with a diff summary, when any of these fails.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import boto3
from botocore.config import Config
from moto.server import ThreadedMotoServer
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from localcloud.esm_runner import EsmRunner, FunctionConfig, Invocation, MappingConfig, RunnerStats
from localcloud.personalize_emulator import PersonalizeEmulator
from localcloud.provision import DEFAULT_ACCOUNT_ID, DEFAULT_REGION, TABLE_TYPES, ProvisionedResource, provision
from localcloud.workload import BadRecord, Workload, WorkloadSpec

__all__ = [
    "CheckResult",
    "DemoResult",
    "LocalCloud",
    "check",
    "run_demo",
    "synthesize",
]

ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = ROOT / ".localcloud"
EXAMPLE_SCHEMA = ROOT / "examples" / "items-schema.json"
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}


R = TypeVar("R")


class SetupError(RuntimeError):
    """The local cloud could not be set up (synth, boot or provisioning failed)."""


def dataset_schema(template: Path, given: Path | Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """The Items schema the dataset has, and where it came from: ``given``, else the template's
    ``AWS::Personalize::Schema`` (``createDataset``), else cdk.json's ``schemaFile``; ``(None, "")`` if none."""
    if isinstance(given, Mapping):
        return dict(given), "the given schema"
    if given is not None:
        return json.loads(Path(given).read_text()), str(given)
    body = json.loads(Path(template).read_text())
    for logical_id, resource in (body.get("Resources") or {}).items():
        if resource.get("Type") == "AWS::Personalize::Schema":
            document = (resource.get("Properties") or {}).get("Schema")
            schema = json.loads(document) if isinstance(document, str) else document
            return schema, f"the template's AWS::Personalize::Schema {logical_id} (createDataset)"
    cdk_json = ROOT / "cdk.json"
    if cdk_json.exists():
        schema_file = (json.loads(cdk_json.read_text()).get("context") or {}).get("schemaFile")
        if schema_file:
            path = Path(schema_file) if Path(schema_file).is_absolute() else ROOT / schema_file
            return json.loads(path.read_text()), f"cdk.json schemaFile {schema_file}"
    return None, ""


def streamed_table(resources: Mapping[str, ProvisionedResource], stream_arns: Sequence[str]) -> str | None:
    """The name of the table whose stream is one of ``stream_arns`` (a template may have more tables)."""
    for resource in resources.values():
        if resource.type in TABLE_TYPES and resource.attributes.get("StreamArn") in stream_arns:
            return resource.ref
    return None


def _canonical_schema(schema: Any) -> list[str]:
    fields = schema.get("fields") if isinstance(schema, Mapping) else None
    return sorted(json.dumps(f, sort_keys=True) for f in fields or [])


def _schema_difference(function_schema: Any, dataset: Any) -> str:
    mine, theirs = set(_canonical_schema(function_schema)), set(_canonical_schema(dataset))
    only_mine = sorted(json.loads(f)["name"] for f in mine - theirs)
    only_theirs = sorted(json.loads(f)["name"] for f in theirs - mine)
    return f"fields only in the function's: {only_mine or 'none'}; only in the dataset's: {only_theirs or 'none'}"


def local_environment() -> None:
    """Fake credentials, a fixed region and what moto and CDK need; nothing here can reach AWS."""
    os.environ.update(FAKE_CREDENTIALS)
    os.environ.update(
        {
            "AWS_DEFAULT_REGION": DEFAULT_REGION,
            "AWS_REGION": DEFAULT_REGION,
            "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
            "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
            "CDK_DISABLE_VERSION_CHECK": "1",
            "CDK_DISABLE_CLI_TELEMETRY": "true",
        }
    )
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        os.environ.pop(name, None)


def synthesize(outdir: Path = STATE_DIR / "cdk.out") -> Path:
    """Synthesize the real CDK app (cdk.json's context) offline; return the stack's template path."""
    local_environment()
    from infra.synth import synth  # noqa: PLC0415 - aws_cdk takes seconds to import: only when synthesizing

    outdir.mkdir(parents=True, exist_ok=True)
    try:
        return synth(outdir)
    except Exception as exc:
        raise SetupError(f"synth failed: {exc}") from exc


# --------------------------------------------------------------------------------------------------------------
# The local cloud
# --------------------------------------------------------------------------------------------------------------


class LocalCloud:
    """moto server + the Personalize Events emulator + the template provisioned + the ESM runner, in this process."""

    def __init__(
        self,
        template: Path,
        *,
        moto_port: int = 0,
        personalize_port: int = 0,
        tps: float = 10,
        latency_ms: float = 50,
        jitter_ms: float = 10,
        batching_window_s: float | None = None,
        log_dir: Path | None = None,
        throttle_rate: float = 0.0,
        error_rate: float = 0.0,
        slow_rate: float = 0.0,
        slow_ms: float = 0.0,
        env_overrides: Mapping[str, str] | None = None,
        function_overrides: Mapping[str, Any] | None = None,
        mapping_overrides: Mapping[str, Any] | None = None,
        runner_options: Mapping[str, Any] | None = None,
        emulator_options: Mapping[str, Any] | None = None,
        dataset_schema: Path | Mapping[str, Any] | None = None,
        allow_schemaless: bool = False,
        seed: int | None = None,
        on_remove: str | None = None,
        before_runner: Callable[[LocalCloud], None] | None = None,
    ) -> None:
        """``throttle_rate`` ... ``slow_ms``: the emulator's injected faults. ``env_overrides``,
        ``function_overrides``, ``mapping_overrides`` and ``runner_options`` (``kill_worker_probability``,
        ``hang_worker_probability`` ...) go to :class:`EsmRunner`; ``emulator_options`` (``quota_model``,
        ``quota_burst``, ``foreign_share``, ``request_jitter_ms`` ...) go to :class:`PersonalizeEmulator`;
        ``seed`` seeds the emulator's and the runner's fault draws; ``on_remove`` (``"ignore"``) replaces the
        ``onRemove`` of the function's mapping document. ``before_runner`` is called with the provisioned local
        cloud before the event source mappings start (the demo writes a pre-existing catalog then, see
        :meth:`without_stream`)."""
        self.on_remove = on_remove
        self.before_runner = before_runner
        self.runner_started_at: float | None = None  # wall clock (epoch s) when the event source mappings started
        self.emulator_options = dict(emulator_options or {})
        self.dataset_schema, self.allow_schemaless = dataset_schema, allow_schemaless
        self.schema_source = ""  # where the registered dataset schema came from (set on start)
        self.interpreter = ""  # the Python that runs the handler (set on start)
        self.template = template
        self.throttle_rate, self.error_rate = throttle_rate, error_rate
        self.slow_rate, self.slow_ms = slow_rate, slow_ms
        self.env_overrides = dict(env_overrides or {})
        self.function_overrides = dict(function_overrides or {})
        self.mapping_overrides = dict(mapping_overrides or {})
        self.runner_options = dict(runner_options or {})
        self.seed = seed
        self.moto_port = moto_port
        self.personalize_port = personalize_port
        self.tps, self.latency_ms, self.jitter_ms = tps, latency_ms, jitter_ms
        self.batching_window_s = batching_window_s
        self.log_dir = log_dir or STATE_DIR / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.moto: Any = None
        self.emulator: PersonalizeEmulator | None = None
        self.runner: EsmRunner | None = None
        self.resources: dict[str, ProvisionedResource] = {}
        self.moto_url = ""
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> LocalCloud:
        local_environment()
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
        try:
            self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=self.moto_port, verbose=False)
            self.moto.start()
            host, port = self.moto.get_host_and_port()
            self.moto_url = f"http://{host}:{port}"
            # moto's backends are global to the process: forget what an earlier local cloud in it left behind.
            reset = urllib.request.Request(f"{self.moto_url}/moto-api/reset", method="POST")  # noqa: S310 - our moto
            urllib.request.urlopen(reset, timeout=10).close()  # noqa: S310
            emulator_options = {"s3_endpoint_url": self.moto_url, **self.emulator_options}  # import jobs read S3
            self.emulator = PersonalizeEmulator(
                "127.0.0.1",
                self.personalize_port,
                tps=self.tps,
                latency_ms=self.latency_ms,
                jitter_ms=self.jitter_ms,
                throttle_rate=self.throttle_rate,
                error_rate=self.error_rate,
                slow_rate=self.slow_rate,
                slow_ms=self.slow_ms,
                seed=self.seed,
                **emulator_options,
            ).start()
            self.resources = provision(self.template, endpoint_url=self.moto_url)
            overrides = dict(self.mapping_overrides)
            if self.batching_window_s is not None:
                overrides["batching_window_s"] = self.batching_window_s
            self.runner = EsmRunner(
                self.template,
                self.resources,
                moto_endpoint=self.moto_url,
                personalize_endpoint=self.emulator.endpoint_url,
                log_dir=self.log_dir,
                mapping_overrides=overrides or None,
                env_overrides=self.env_overrides or None,
                function_overrides=self.function_overrides or None,
                seed=self.seed,
                **self.runner_options,
            )
            if self.on_remove is not None:
                document = {**self._function_document(), "onRemove": self.on_remove}
                self.runner.add_env_overrides({"CONNECTOR_CONFIG": json.dumps(document), "CONNECTOR_CONFIG_FILE": ""})
            self.emulator.register_dataset(self.dataset_arn, self._schema())
            self.interpreter = self.runner.interpreter()
            if self.before_runner is not None:
                self.before_runner(self)
            self.runner_started_at = time.time()
            self.runner.start()
        except Exception as exc:
            self.stop()
            if isinstance(exc, OSError):
                raise SetupError(f"could not start the local cloud: {exc} (is a port already in use?)") from exc
            raise
        return self

    def stop_runner(self) -> None:
        """Stop polling and the workers, keeping moto and the emulator up (for a consistent final read)."""
        if self.runner is not None:
            self.runner.stop()

    def stop(self) -> None:
        """Stop the runner (and its workers), the emulator and moto; safe to call twice."""
        runner, self.runner = self.runner, None
        emulator, self.emulator = self.emulator, None
        moto, self.moto = self.moto, None
        if runner is not None:
            with contextlib.suppress(Exception):
                runner.stop()
        if emulator is not None:
            with contextlib.suppress(Exception):
                emulator.stop()
        if moto is not None:
            with contextlib.suppress(Exception):
                moto.stop()

    def __enter__(self) -> LocalCloud:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the template made ------------------------------------------------------------------------
    @property
    def personalize_url(self) -> str:
        assert self.emulator is not None
        return self.emulator.endpoint_url

    def _runner(self) -> EsmRunner:
        if self.runner is None:
            raise RuntimeError("the local cloud is not running")
        return self.runner

    @property
    def function(self) -> FunctionConfig:
        return next(iter(self._runner().functions.values()))

    @property
    def environment(self) -> dict[str, str]:
        return self._runner().function_environment(self.function)

    @property
    def dataset_arn(self) -> str:
        return self.function.environment["DATASET_ARN"]

    @property
    def dlq_url(self) -> str:
        return self.environment["DLQ_URL"]

    def ops_environment(self) -> dict[str, str]:
        """The environment for the operator tools (``python -m ops ...``) against this local cloud: the function's
        own settings (``DATASET_ARN``, the mapping document with an absolute ``CONNECTOR_CONFIG_FILE``,
        ``STATE_TABLE``, ``DLQ_URL`` ...), fake credentials, and every endpoint: moto for DynamoDB, Streams, SQS,
        S3 and CloudWatch, the emulator for ``personalize-events`` (PutItems) and ``personalize`` (the control
        plane: import jobs)."""
        env = {
            k: v
            for k, v in self.environment.items()
            if not k.startswith(("AWS_LAMBDA_", "LAMBDA_", "_HANDLER", "AWS_EXECUTION_ENV"))
        }
        config_file = env.get("CONNECTOR_CONFIG_FILE")
        if config_file and not env.get("CONNECTOR_CONFIG") and not Path(config_file).is_absolute():
            env["CONNECTOR_CONFIG_FILE"] = str(self.function.asset_dir / config_file)
        env.update(FAKE_CREDENTIALS)
        env.update(
            {
                "AWS_DEFAULT_REGION": DEFAULT_REGION,
                "AWS_REGION": DEFAULT_REGION,
                "AWS_ENDPOINT_URL": self.moto_url,
                "AWS_ENDPOINT_URL_PERSONALIZE_EVENTS": self.personalize_url,
                "AWS_ENDPOINT_URL_PERSONALIZE": self.personalize_url,
                "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
                "POWERTOOLS_TRACE_DISABLED": "true",
            }
        )
        return env

    @property
    def table_arn(self) -> str:
        name = self.table_name
        if name is None:
            raise SetupError("the stack has no streamed DynamoDB table")
        return str(self.client("dynamodb").describe_table(TableName=name)["Table"]["TableArn"])

    @contextlib.contextmanager
    def without_stream(self, table_name: str) -> Iterator[None]:
        """Writes to ``table_name`` inside this block make no stream records: the table's items then predate its
        stream, as for a catalog that existed before the stack enabled the stream (on AWS, enabling a stream
        on a table does not put its existing items into it). moto creates the table and its stream at once,
        so the local cloud detaches moto's stream shard from the table (moto's server runs in this process)
        for the duration; use it only while nothing else writes to the table."""
        from moto.dynamodb.models import dynamodb_backends  # noqa: PLC0415 - moto's internals, only here

        table = dynamodb_backends[DEFAULT_ACCOUNT_ID][DEFAULT_REGION].tables[table_name]
        shard, table.stream_shard = table.stream_shard, None
        try:
            yield
        finally:
            table.stream_shard = shard

    def mapping(self, source: str) -> MappingConfig | None:
        return next((m for m in self._runner().mappings if m.source == source), None)

    def read_on_failure(self) -> list[dict[str, Any]]:
        """Everything the event source mappings sent to their on-failure destination, whichever kind it is: the
        messages of an SQS queue, or the invocation records (JSON objects) in an S3 bucket."""
        arns = {m.on_failure_arn for m in self._runner().mappings if m.on_failure_arn}
        found: list[dict[str, Any]] = []
        for arn in sorted(arns):
            if arn.startswith("arn:aws:s3:::"):
                bucket = arn.split(":::", 1)[1]
                s3 = self.client("s3")
                for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="aws/lambda/"):
                    for obj in page.get("Contents", []):
                        body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                        try:
                            found.append(json.loads(body))
                        except json.JSONDecodeError:
                            found.append({"unparsable": body.decode(errors="replace")})
        return found + self.read_queue(self.on_failure_url)

    @property
    def on_failure_url(self) -> str | None:
        arns = {m.on_failure_arn for m in self._runner().mappings if m.on_failure_arn}
        for resource in self.resources.values():
            if resource.attributes.get("Arn") in arns and resource.type == "AWS::SQS::Queue":
                return resource.attributes.get("QueueUrl", resource.ref)
        return None

    def _resource(self, kind: str) -> ProvisionedResource | None:
        return next((r for r in self.resources.values() if r.type == kind), None)

    @property
    def table_name(self) -> str | None:
        """The source table: the one whose stream a DynamoDB mapping reads (not, say, the STATE_TABLE)."""
        return streamed_table(self.resources, [m.source_arn for m in self._runner().mappings if m.source == "dynamodb"])

    @property
    def stream(self) -> ProvisionedResource | None:
        return self._resource("AWS::Kinesis::Stream")

    @property
    def function_log(self) -> Path:
        return self._runner().log_dir / f"{self.function.name}.log"

    def _function_document(self) -> dict[str, Any]:
        """The mapping document the *function* is configured with in the template (``{}`` when none)."""
        env = self.function.environment
        document: Any = {}
        if env.get("CONNECTOR_CONFIG"):
            document = json.loads(env["CONNECTOR_CONFIG"])
        elif env.get("CONNECTOR_CONFIG_FILE"):
            path = Path(env["CONNECTOR_CONFIG_FILE"])
            document = json.loads((path if path.is_absolute() else self.function.asset_dir / path).read_text())
        return document if isinstance(document, dict) else {}

    def _function_schema(self) -> Any:
        """The Avro schema the *function* is configured with (its mapping document), or None."""
        return self._function_document().get("schema") or None

    def _schema(self) -> Any:
        """The dataset's schema, from what the *dataset* has -- never from the function's environment.

        In order: ``dataset_schema`` given to the local cloud; the template's ``AWS::Personalize::Schema``
        (``createDataset``); the app's ``schemaFile`` (cdk.json). Without one, the local cloud refuses to start
        unless ``allow_schemaless`` (a schema-less dataset accepts anything, so it would check nothing). When
        the function's own mapping document carries a schema that differs, start fails: the connector would
        be validated against itself.
        """
        schema, source = dataset_schema(self.template, self.dataset_schema)
        if schema is None:
            if not self.allow_schemaless:
                raise SetupError(
                    "the dataset has no schema to register (no createDataset in the template, no schemaFile in "
                    "cdk.json): pass --dataset-schema FILE, or --allow-schemaless to accept any properties"
                )
            self.schema_source = "none (schema-less, as asked)"
            return None
        self.schema_source = source
        mine = self._function_schema()
        if mine is not None and _canonical_schema(mine) != _canonical_schema(schema):
            raise SetupError(
                f"the function's CONNECTOR_CONFIG schema differs from the dataset's ({source}): "
                f"{_schema_difference(mine, schema)}"
            )
        return schema

    # -- clients and reads -----------------------------------------------------------------------------
    def client(self, service: str) -> Any:
        """A boto3 client on moto (one per service and thread)."""
        key = f"{service}@{threading.get_ident()}"
        with self._lock:
            if key not in self._clients:
                self._clients[key] = boto3.client(
                    service,
                    endpoint_url=self.moto_url,
                    region_name=DEFAULT_REGION,
                    config=Config(retries={"mode": "standard", "max_attempts": 5}),
                )
            return self._clients[key]

    def queue_depth(self, url: str | None) -> int:
        if not url:
            return 0
        attrs = self.client("sqs").get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        return int(attrs.get("ApproximateNumberOfMessages", 0)) + int(
            attrs.get("ApproximateNumberOfMessagesNotVisible", 0)
        )

    def read_queue(self, url: str | None) -> list[dict[str, Any]]:
        """Every message body of a queue (JSON-decoded), received with a long visibility timeout."""
        if not url:
            return []
        sqs = self.client("sqs")
        bodies: list[dict[str, Any]] = []
        while True:
            answer = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=600)
            messages = answer.get("Messages", [])
            if not messages:
                return bodies
            for message in messages:
                try:
                    bodies.append(json.loads(message["Body"]))
                except json.JSONDecodeError:
                    bodies.append({"unparsable": message["Body"]})

    def dynamodb_stream_sequence_numbers(self) -> list[str]:
        """Every record of the table's stream, read from TRIM_HORIZON (for the zero-lost-records check)."""
        mapping = self.mapping("dynamodb")
        if mapping is None:
            return []
        streams = self.client("dynamodbstreams")
        shards = streams.describe_stream(StreamArn=mapping.source_arn)["StreamDescription"]["Shards"]
        seqs: list[str] = []
        for shard in shards:
            iterator = streams.get_shard_iterator(
                StreamArn=mapping.source_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            while iterator:
                page = streams.get_records(ShardIterator=iterator, Limit=1000)
                seqs.extend(r["dynamodb"]["SequenceNumber"] for r in page["Records"])
                if not page["Records"]:
                    break
                iterator = page.get("NextShardIterator")
        return seqs


# --------------------------------------------------------------------------------------------------------------
# The convergence check
# --------------------------------------------------------------------------------------------------------------


@dataclass
class HandlerTotals:
    """The function's own accounting, summed from its ``Batch done`` log lines.

    ``by_request`` keeps each line by the request id Powertools logs (``function_request_id``), so that it can
    be matched with the runner's ledger entry of the same invocation; ``emf`` sums the EMF metrics
    (``RecordsIn``, ``RecordsPut`` ...) that ``metrics.log_metrics`` flushed, over ``emf_lines`` documents.
    """

    batches: int = 0
    records: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    put_items_calls: int = 0
    throttles: int = 0
    dead_lettered: int = 0
    by_request: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    emf: Counter[str] = field(default_factory=Counter)
    emf_lines: int = 0


def _emf_value(value: Any) -> float:
    if isinstance(value, list):
        return float(sum(value))
    return float(value) if isinstance(value, int | float) else 0.0


def handler_totals(log_path: Path) -> HandlerTotals:
    totals = HandlerTotals()
    if not log_path.exists():
        return totals
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith('{"_aws"'):
            try:
                document = json.loads(line)
            except json.JSONDecodeError:  # a worker killed while writing it
                continue
            totals.emf_lines += 1
            for directive in document["_aws"].get("CloudWatchMetrics", []):
                for metric in directive.get("Metrics", []):
                    totals.emf[metric["Name"]] += int(_emf_value(document.get(metric["Name"], 0)))
            continue
        if '"Batch done"' not in line:
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry.get("message") != "Batch done":
            continue
        totals.by_request.setdefault(str(entry.get("function_request_id")), []).append(entry)
        totals.batches += 1
        totals.records += int(entry.get("records", 0))
        for outcome in ("put", "poison", "retry", "skipped"):
            totals.outcomes[outcome] += int(entry.get(f"records_{outcome}", 0))
        totals.put_items_calls += int(entry.get("put_items_calls", 0))
        totals.throttles += int(entry.get("throttles", 0))
        totals.dead_lettered += int(entry.get("dead_lettered", 0))
    return totals


def checkpointed(ledger: list[Invocation]) -> set[tuple[str, str]]:
    """``(mapping, sequence number)`` of every record the runner checkpointed (moved past successfully)."""
    done: set[tuple[str, str]] = set()
    for inv in ledger:
        if inv.outcome == "success":
            done.update((inv.mapping, s) for s in inv.sequence_numbers)
        elif inv.outcome == "partial" and inv.detail in inv.sequence_numbers:
            cut = inv.sequence_numbers.index(inv.detail)
            done.update((inv.mapping, s) for s in inv.sequence_numbers[:cut])
    return done


@dataclass
class CheckResult:
    """Everything the convergence check found; ``ok`` when there is no problem."""

    problems: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    different: dict[str, list[str]] = field(default_factory=dict)
    dlq_matched: dict[str, int] = field(default_factory=dict)  # BadRecord.key() -> messages
    dlq_unexpected: list[dict[str, Any]] = field(default_factory=list)
    dlq_missing: list[BadRecord] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _typed(value: Any) -> tuple[str, Any]:
    return (type(value).__name__, value)


def compare_items(expected: Mapping[str, Mapping[str, Any]], actual: Mapping[str, Mapping[str, Any]]) -> CheckResult:
    """Type-aware comparison (``20`` is not ``20.0``, ``1`` is not ``True``) of expected and landed items."""
    result = CheckResult()
    result.missing = sorted(set(expected) - set(actual))
    result.unexpected = sorted(set(actual) - set(expected))
    for item_id in sorted(set(expected) & set(actual)):
        want, got = expected[item_id], actual[item_id]
        diffs = []
        for key in sorted(set(want) | set(got)):
            if key not in got:
                diffs.append(f"{key}: missing (want {want[key]!r})")
            elif key not in want:
                diffs.append(f"{key}: unexpected {got[key]!r}")
            elif _typed(want[key]) != _typed(got[key]):
                diffs.append(f"{key}: want {want[key]!r}, got {got[key]!r}")
        if diffs:
            result.different[item_id] = diffs
    if result.missing:
        result.problems.append(f"{len(result.missing)} expected items are missing, e.g. {result.missing[:5]}")
    if result.unexpected:
        result.problems.append(f"{len(result.unexpected)} unexpected items, e.g. {result.unexpected[:5]}")
    if result.different:
        first = next(iter(result.different.items()))
        result.problems.append(
            f"{len(result.different)} items differ from the expected properties, e.g. {first[0]}: {first[1][:3]}"
        )
    return result


def is_tool_entry(message: Mapping[str, Any]) -> bool:
    """A DLQ entry an operator tool made (``ops.feed`` names its records ``ops-<sequence number>``)."""
    record = message.get("record")
    return isinstance(record, Mapping) and str(record.get("eventID", "")).startswith("ops-")


def dlq_key(message: Mapping[str, Any]) -> str:
    if message.get("source") == "aws:dynamodb":
        return f"dynamodb:{message.get('itemId')}"
    return f"kinesis:{message.get('sequenceNumber')}"


def check(
    workload: Workload,
    *,
    actual_items: Mapping[str, Mapping[str, Any]],
    dlq: list[dict[str, Any]],
    on_failure: list[dict[str, Any]],
    ledger: list[Invocation],
    stats: RunnerStats,
    totals: HandlerTotals,
    source_records: Mapping[str, list[str]],
) -> CheckResult:
    """The convergence check (see the module docstring). ``source_records``: ``{mapping id: [sequence numbers]}``.

    DLQ entries the first act's backfill made (their record's ``eventID`` starts with ``ops-``: a record the tool
    built from a Scan) are checked apart: the backfill may scan a bad DynamoDB item the workload wrote and
    dead-letter it too, so each must be one of the workload's bad DynamoDB items; the rest is checked as before.
    """
    result = compare_items(workload.expected_items(), actual_items)
    by_tool = [m for m in dlq if is_tool_entry(m)]
    dlq = [m for m in dlq if not is_tool_entry(m)]
    bad_ddb = {b.key() for b in workload.bad if b.source == "dynamodb"}
    for message in by_tool:
        if dlq_key(message) not in bad_ddb:
            result.problems.append(
                f"unexpected DLQ entry from the catalog load: item {message.get('itemId')!r}: {message.get('reason')}"
            )

    # The DLQ holds exactly the bad records (a record delivered k times may be there up to k times: an
    # invocation that dead-lettered it and was then killed before it answered counts as a delivery too).
    deliveries: Counter[str] = Counter(s for inv in ledger for s in inv.sequence_numbers)
    expected = {b.key(): b for b in workload.expected_dlq()}
    per_key: Counter[str] = Counter()
    for message in dlq:
        key = dlq_key(message)
        bad = expected.get(key)
        if bad is None or not str(message.get("reason", "")).startswith(bad.reason_prefix):
            result.dlq_unexpected.append(message)
            continue
        per_key[key] += 1
        seq = str(message.get("sequenceNumber"))
        if per_key[key] > max(1, deliveries[seq]):
            result.problems.append(f"{bad.label}: {per_key[key]} DLQ entries, but delivered {deliveries[seq]} times")
    result.dlq_matched = dict(per_key)
    result.dlq_missing = [b for k, b in expected.items() if k not in per_key]
    for message in result.dlq_unexpected:
        result.problems.append(
            f"unexpected DLQ entry: {message.get('source')} item {message.get('itemId')!r} "
            f"seq {message.get('sequenceNumber')}: {message.get('reason')}"
        )
    for bad in result.dlq_missing:
        result.problems.append(f"bad record not in the DLQ: {bad.label} ({bad.key()}, want '{bad.reason_prefix}…')")

    # Nothing went to the on-failure destination.
    if on_failure or stats.records_to_on_failure:
        result.problems.append(
            f"on-failure destination got {len(on_failure)} messages ({stats.records_to_on_failure} records)"
        )

    # Zero lost records: every source record checkpointed; every delivered record got exactly one outcome.
    done = checkpointed(ledger)
    for mapping_id, seqs in source_records.items():
        stuck = [s for s in seqs if (mapping_id, s) not in done]
        if stuck:
            result.problems.append(f"{mapping_id}: {len(stuck)} records never checkpointed, e.g. {stuck[:3]}")
    answered = sum(inv.batch_size for inv in ledger if not inv.failed)
    if sum(totals.outcomes.values()) != totals.records:
        result.problems.append(f"handler outcomes {dict(totals.outcomes)} do not add up to {totals.records} records")
    if not any(inv.failed for inv in ledger):
        if totals.records != answered:
            result.problems.append(
                f"the handler accounted for {totals.records} records, "
                f"the runner delivered {answered} in answered batches"
            )
        if totals.dead_lettered != len(dlq):
            result.problems.append(
                f"the handler dead-lettered {totals.dead_lettered} records; the DLQ holds {len(dlq)}"
            )
    else:
        result.problems.extend(_match_invocations(ledger, totals, dlq))
    return result


def _match_invocations(ledger: list[Invocation], totals: HandlerTotals, dlq: list[dict[str, Any]]) -> list[str]:
    """Per invocation, by request id: the handler's ``Batch done`` line against the runner's ledger entry.

    Used when some invocations failed (killed, timed out): such an invocation may have logged its line (the
    kill came after it) or not, and may have dead-lettered records before it died, so only the answered
    invocations must match exactly. Every answered invocation logged exactly one line, for exactly its batch,
    with one outcome per record and as many retries as it reported in ``batchItemFailures``.
    """
    problems: list[str] = []
    by_request = {inv.request_id: inv for inv in ledger}
    strangers = [rid for rid in totals.by_request if rid not in by_request]
    if strangers:
        problems.append(
            f"{len(strangers)} 'Batch done' lines of invocations the runner never recorded: {strangers[:3]}"
        )
    answered_dead_lettered = 0
    for inv in ledger:
        lines = totals.by_request.get(inv.request_id, [])
        if len(lines) > 1:
            problems.append(f"invocation {inv.request_id}: {len(lines)} 'Batch done' lines")
            continue
        if not lines:
            if not inv.failed:
                problems.append(f"invocation {inv.request_id} ({inv.outcome}) answered without a 'Batch done' line")
            continue
        line = lines[0]
        outcomes = {o: int(line.get(f"records_{o}", 0)) for o in ("put", "poison", "retry", "skipped")}
        if int(line.get("records", -1)) != inv.batch_size or sum(outcomes.values()) != inv.batch_size:
            problems.append(
                f"invocation {inv.request_id}: the runner delivered {inv.batch_size} records, the handler "
                f"accounted for {line.get('records')} with outcomes {outcomes}"
            )
        if inv.failed:
            continue
        answered_dead_lettered += int(line.get("dead_lettered", 0))
        reported = len((inv.response or {}).get("batchItemFailures") or []) if isinstance(inv.response, dict) else 0
        if outcomes["retry"] != reported:
            problems.append(
                f"invocation {inv.request_id}: {outcomes['retry']} retry outcomes, {reported} reported to Lambda"
            )
    if answered_dead_lettered > len(dlq):
        problems.append(
            f"answered invocations dead-lettered {answered_dead_lettered} records; the DLQ holds {len(dlq)}"
        )
    return problems


# --------------------------------------------------------------------------------------------------------------
# The demo
# --------------------------------------------------------------------------------------------------------------


@dataclass
class DemoResult:
    check: CheckResult
    converged: bool
    seconds_to_converge: float | None
    seconds_after_last_write: float | None
    write_seconds: float
    workload: Workload
    stats: RunnerStats
    emulator_stats: dict[str, Any]
    totals: HandlerTotals
    dlq: list[dict[str, Any]]
    on_failure: list[dict[str, Any]]
    ledger: list[Invocation]
    expected_items: int
    actual_items: int
    source_records: dict[str, list[str]]
    schema_source: str = ""  # where the dataset schema the emulator validated against came from
    interpreter: str = ""  # the Python that ran the handler
    catalog: CatalogLoad | None = None  # the first act, when the table held a catalog

    @property
    def ok(self) -> bool:
        return self.converged and self.check.ok


# --------------------------------------------------------------------------------------------------------------
# Act 1: the pre-existing catalog
# --------------------------------------------------------------------------------------------------------------

CatalogMethod = Literal["backfill", "bulk-load"]
BULK_BUCKET = "localcloud-bulk-load"
BULK_ROLE = f"arn:aws:iam::{DEFAULT_ACCOUNT_ID}:role/PersonalizeS3Import"


@contextlib.contextmanager
def _environ(env: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` updated with ``env`` for the block, then restored (the tools build their clients from it)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class CatalogLoad:
    """The first act: load the catalog that existed before the stack, while the stream flows.

    ``backfill``: :class:`ops.backfill.Backfill` in this process (the code of ``python -m ops backfill``, with the
    local cloud's environment: the function's mapping, ``STATE_TABLE`` and ``DLQ_URL``), taking at most ``share``
    of the shared PutItems budget while the stream's invocations take the rest.

    ``bulk-load``: the ordering rule of ``docs/ops/bulk-load.md``: the event source mappings run *before* the
    export's point in time. A point-in-time export of the table (:func:`localcloud.export.export_table`'s steps:
    moto's export completed into AWS's layout), every data file converted by the asset's converter
    (:mod:`connector.bulk`, the bulk Lambda's code) into CSV parts in S3, then ``CreateDatasetImportJob`` (FULL)
    through the emulator's control plane, waited on until ``ACTIVE``. moto reads the table when its export
    thread runs, not at a point in time, so the workload's writer is held for that instant (see
    :attr:`Workload.gate`); the stream keeps being delivered meanwhile.
    """

    method: CatalogMethod
    share: float = 0.5
    segments: int = 4
    total: int = 0
    phase: str = "waiting"
    loaded: int = 0  # items scanned (backfill) or records converted (bulk-load)
    put: int = 0
    poison: int = 0  # backfill: dead-lettered; bulk-load: rejects (records the stream dead-letters too)
    calls: int = 0
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    export_time: float | None = None  # epoch s (bulk-load)
    esm_started: float | None = None  # epoch s
    job_status: str | None = None
    job_arn: str | None = None
    rows: int = 0
    bulk_layer: int = 0  # items in the emulator's bulk layer after the import (bulk-load)
    problems: list[str] = field(default_factory=list)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        return self.finished is not None

    @property
    def seconds(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.monotonic()) - self.started

    def describe(self) -> str:
        rate = self.loaded / self.seconds if self.seconds else 0.0
        if self.method == "backfill":
            text = (
                f"{self.loaded:,} of {self.total:,} catalog items scanned, {self.put:,} put "
                f"({rate:,.0f} items/s, share {self.share:g})"
            )
        else:
            text = f"{self.phase}: {self.loaded:,} records converted, {self.rows:,} CSV rows"
            if self.job_status:
                text += f", import job {self.job_status}"
        if self.error:
            text += f" [red]failed: {self.error}[/]"
        return text

    def start(self, cloud: LocalCloud, workload: Workload) -> None:
        self.started = time.monotonic()
        self.esm_started = cloud.runner_started_at
        target = self._backfill if self.method == "backfill" else self._bulk_load
        prepared = target(cloud, workload)  # built here, so that setup errors surface at once

        def run() -> None:
            try:
                prepared()
            except Exception as exc:  # reported by the check
                self.error = f"{type(exc).__name__}: {exc}"
                self.problems.append(f"the catalog load ({self.method}) failed: {self.error}")
            finally:
                self.finished = time.monotonic()

        self._thread = threading.Thread(target=run, name=f"catalog-{self.method}", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # -- backfill --------------------------------------------------------------------------------------
    def _backfill(self, cloud: LocalCloud, workload: Workload) -> Callable[[], None]:
        from connector.config import load_settings  # noqa: PLC0415 - the runtime, only for this act
        from ops.backfill import Backfill  # noqa: PLC0415

        env = cloud.ops_environment()
        with _environ(env):  # the runtime's clients (PutItems, the DLQ, the shared budget) read the endpoints
            job = Backfill(
                load_settings(env),
                workload.table_name,
                segments=self.segments,
                share=self.share,
                show_progress=False,
                dynamodb=cloud.client("dynamodb"),
            )
        self.phase = f"backfill, share {self.share:g}"

        def run() -> None:
            watcher = threading.Event()

            def watch() -> None:
                while not watcher.wait(0.25):
                    self._backfill_progress(job)

            threading.Thread(target=watch, name="catalog-progress", daemon=True).start()
            try:
                report = job.run()
            finally:
                watcher.set()
                self._backfill_progress(job)
            if report.interrupted:
                raise RuntimeError("the backfill was interrupted")
            self.phase = "backfill done"

        return run

    def _backfill_progress(self, job: Any) -> None:
        tally = job.report.tally
        self.loaded, self.put, self.poison, self.calls = job.report.scanned, tally.put, tally.poison, tally.calls

    # -- bulk load -------------------------------------------------------------------------------------
    def _bulk_load(self, cloud: LocalCloud, workload: Workload) -> Callable[[], None]:
        from connector.bulk import Converter, convert_stream, output_keys  # noqa: PLC0415
        from connector.config import load_settings  # noqa: PLC0415
        from localcloud import export  # noqa: PLC0415

        settings = load_settings(cloud.ops_environment())
        converter = Converter(settings.mapping, ["sku"])
        s3, ddb = cloud.client("s3"), cloud.client("dynamodb")
        personalize = boto3.client("personalize", endpoint_url=cloud.personalize_url, region_name=DEFAULT_REGION)
        table_arn = cloud.table_arn

        def run() -> None:
            s3.create_bucket(Bucket=BULK_BUCKET)
            with contextlib.suppress(Exception):
                ddb.update_continuous_backups(
                    TableName=workload.table_name,
                    PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
                )
            # The stream flows first (the ordering rule), then the export.
            began = time.monotonic()
            while workload.counters.catalog_updates < 10 and time.monotonic() - began < 5:
                time.sleep(0.05)
            self.phase = "export"
            workload.gate.clear()  # hold the writer while moto's export thread reads the table
            try:
                workload.held.wait(timeout=5)
                arn = ddb.export_table_to_point_in_time(TableArn=table_arn, S3Bucket=BULK_BUCKET, S3Prefix="exports")[
                    "ExportDescription"
                ]["ExportArn"]
                export.wait_export(ddb, arn)
            finally:
                workload.gate.set()
            summary = export.complete_export(ddb, s3, arn)
            self.export_time = datetime.fromisoformat(summary["exportTime"]).timestamp()
            if self.esm_started is None or self.esm_started >= self.export_time:
                self.problems.append(
                    "ordering rule broken: the event source mappings started at "
                    f"{self.esm_started}, not before the export time {self.export_time}"
                )
            self.phase = "convert"
            manifest = s3.get_object(Bucket=BULK_BUCKET, Key=summary["manifestFilesS3Key"])["Body"].read().decode()
            job_name = f"catalog-{uuid.uuid4().hex[:8]}"
            prefix = f"csv/{job_name}"
            for line in manifest.splitlines():
                if not line.strip():
                    continue
                data_key = json.loads(line)["dataFileS3Key"]
                body = s3.get_object(Bucket=BULK_BUCKET, Key=data_key)["Body"]
                out, rejects = io.BytesIO(), io.BytesIO()

                def advance(n: int) -> None:
                    self.loaded += n

                stats = convert_stream(converter, body, data_key, out, rejects, progress=advance)
                csv_key, rejects_key = output_keys(prefix, data_key)
                s3.put_object(Bucket=BULK_BUCKET, Key=csv_key, Body=out.getvalue())
                if stats.rejects:
                    s3.put_object(Bucket=BULK_BUCKET, Key=rejects_key, Body=rejects.getvalue())
                self.rows += stats.rows
                self.poison += stats.rejects
            self.phase = "import"
            self.job_arn = personalize.create_dataset_import_job(
                jobName=job_name,
                datasetArn=cloud.dataset_arn,
                dataSource={"dataLocation": f"s3://{BULK_BUCKET}/{prefix}/"},
                roleArn=BULK_ROLE,
                importMode="FULL",
            )["datasetImportJobArn"]
            while True:
                job = personalize.describe_dataset_import_job(datasetImportJobArn=self.job_arn)["datasetImportJob"]
                self.job_status = job["status"]
                if self.job_status in ("ACTIVE", "CREATE FAILED"):
                    break
                time.sleep(0.1)
            if self.job_status != "ACTIVE":
                raise RuntimeError(f"the import job failed: {job.get('failureReason')}")
            self.put = self.rows
            assert cloud.emulator is not None
            self.bulk_layer = len(cloud.emulator.bulk_items(cloud.dataset_arn))
            self.phase = "imported (FULL)"

        return run


def _live_table(
    cloud: LocalCloud, workload: Workload, started: float, phase: str, catalog: CatalogLoad | None = None
) -> Table:
    runner, emulator = cloud._runner(), cloud.emulator
    assert emulator is not None
    stats, emu = runner.stats(), emulator.stats()
    c = workload.counters
    table = Table(title=f"stream-to-personalize on the local cloud — {phase}", show_header=False, min_width=70)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    table.add_row("elapsed", f"{time.monotonic() - started:6.1f} s")
    if catalog is not None:
        act = (
            "act 1: loading the catalog while some of its items change"
            if not catalog.done
            else "act 2: the streaming workload"
        )
        table.add_row("act", act)
        table.add_row(f"catalog ({catalog.method})", catalog.describe())
    table.add_row(
        "changes written",
        f"{c.changes:,}  (DynamoDB {c.ddb_writes:,}, Kinesis docs {c.kinesis_documents:,}, CDC {c.kinesis_cdc:,})",
    )
    table.add_row("records delivered", f"{stats.records_delivered:,} in {stats.invocations:,} invocations")
    table.add_row("PutItems calls", f"{emu['calls']:,} ({emu['accepted']:,} accepted)")
    table.add_row("items per call", f"{emu['items_per_call']:.2f}")
    table.add_row("throttles", f"{emu['throttled']:,} ({emu['throttled_share']:.1%} of calls)")
    table.add_row("items in the dataset", f"{emu['datasets'].get(cloud.dataset_arn, 0):,}")
    table.add_row("DLQ depth", f"{cloud.queue_depth(cloud.dlq_url)}")
    table.add_row("iterator lag", f"{stats.iterator_age_ms / 1000:5.1f} s, {stats.records_pending:,} records pending")
    if stats.function_errors:
        table.add_row(
            "function errors",
            f"{stats.function_errors:,} ({stats.kills} kills, {stats.timeouts} timeouts; {stats.retries:,} retries)",
        )
    return table


def run_demo(
    spec: WorkloadSpec,
    *,
    template: Path | None = None,
    fast: bool = False,
    timeout: float = 180.0,
    console: Console | None = None,
    live: bool = True,
    cloud_options: Mapping[str, Any] | None = None,
    settle_timeout: float = 5.0,
    on_start: Callable[[LocalCloud], None] | None = None,
    catalog_load: CatalogMethod = "backfill",
    catalog_share: float = 0.5,
) -> DemoResult:
    """Boot the local cloud, write the workload, wait for convergence and check it. Always cleans up.

    With ``spec.catalog`` items, the table holds that catalog before the event source mappings start (written
    with no stream records), and the first act loads it while the workload streams (:class:`CatalogLoad`:
    ``catalog_load`` ``"backfill"`` with ``catalog_share`` of the budget, or ``"bulk-load"``).

    ``on_start`` is called with the running local cloud before the first write (to arm faults, say).
    ``settle_timeout``: after convergence, how long to wait for the runner to finish what is in flight (a batch
    whose items all landed may still be retried, e.g. after a kill) before the final read.
    """
    console = console or Console()
    if template is None:
        with console.status("Synthesizing the CDK app (cdk.json) into .localcloud/cdk.out …"):
            began = time.monotonic()
            template = synthesize()
        console.print(f"[green]✓[/] synthesized {template.relative_to(ROOT)} in {time.monotonic() - began:.1f} s")
    options = dict(cloud_options or {})
    if fast:
        options.setdefault("batching_window_s", 0.2)
    if spec.on_remove != "soft":  # examples/mapping.json soft-deletes; the workload's model follows the spec
        options["on_remove"] = spec.on_remove
    holder: dict[str, Workload] = {}

    def write_catalog(cloud: LocalCloud) -> None:
        """Before the mappings start: the workload's model, and the pre-existing catalog in the table."""
        stream, table_name = cloud.stream, cloud.table_name
        if stream is None or table_name is None:
            raise SetupError("the synthesized stack must have a new DynamoDB table and a new Kinesis stream")
        workload = Workload(spec, table_name, stream.ref, stream.arn)
        holder["workload"] = workload
        if spec.catalog:
            with cloud.without_stream(table_name):
                workload.write_catalog(cloud.client("dynamodb"))

    options["before_runner"] = write_catalog
    cloud = LocalCloud(template, **options)
    stop_writing = threading.Event()
    with console.status(
        "Booting moto server, the Personalize emulator and the ESM runner"
        + (f"; writing a catalog of {spec.catalog:,} items before the mappings start" if spec.catalog else "")
        + " …"
    ):
        cloud.start()
    try:
        windows = ", ".join(f"{m.source} {m.batching_window_s:g} s" for m in cloud._runner().mappings)
        faults = (
            f", injected faults: {cloud.throttle_rate:.0%} throttles, {cloud.error_rate:.0%} 5xx"
            if cloud.throttle_rate or cloud.error_rate
            else ""
        )
        console.print(
            f"[green]✓[/] local cloud up: moto {cloud.moto_url}, Personalize {cloud.personalize_url} "
            f"({cloud.tps:g} calls/s {cloud.emulator_options.get('quota_model', 'sliding-window')}, "
            f"{cloud.latency_ms:g} ms{faults}); batching window {windows}"
        )
        stream = cloud.stream
        table_name = cloud.table_name
        if stream is None or table_name is None:
            raise SetupError("the synthesized stack must have a new DynamoDB table and a new Kinesis stream")
        if spec.cdc_late_share and not cloud.environment.get("STATE_TABLE"):
            raise SetupError(
                "CDC versions delivered in a later batch need the version guard: the stack has no STATE_TABLE "
                "(stateTable.enabled); set the workload's cdc_late_share to 0"
            )
        workload = holder["workload"]
        if spec.catalog:
            console.print(
                f"[green]✓[/] the table holds a catalog of {workload.counters.catalog_items:,} items that predate "
                f"the stream (no stream records); act 1 loads it by {catalog_load}"
                + (f" (share {catalog_share:g} of the PutItems budget)" if catalog_load == "backfill" else "")
                + " while the stream flows"
            )
        catalog = CatalogLoad(catalog_load, share=catalog_share, total=spec.catalog) if spec.catalog else None
        if on_start is not None:
            on_start(cloud)
        return _drive(
            cloud,
            workload,
            console=console,
            live=live,
            timeout=timeout,
            stop_writing=stop_writing,
            settle_timeout=settle_timeout,
            catalog=catalog,
        )
    finally:
        stop_writing.set()
        with console.status("Stopping the runner, the emulator and moto …"):
            cloud.stop()


def _drive(
    cloud: LocalCloud,
    workload: Workload,
    *,
    console: Console,
    live: bool,
    timeout: float,
    stop_writing: threading.Event,
    settle_timeout: float = 5.0,
    catalog: CatalogLoad | None = None,
) -> DemoResult:
    runner, emulator = cloud._runner(), cloud.emulator
    assert emulator is not None
    errors: list[BaseException] = []

    def write() -> None:
        try:
            if catalog is not None:  # act 1: the catalog is loaded while some of its items change
                if catalog.method == "backfill":
                    seconds = 0.8 * catalog.total / max(1.0, cloud.tps * 10 * catalog.share)
                else:
                    seconds = 3.0
                workload.write_catalog_updates(
                    cloud.client("dynamodb"), seconds=seconds, stop=lambda: stop_writing.is_set() or catalog.done
                )
                while not catalog.done and not stop_writing.is_set():
                    time.sleep(0.1)
            workload.write(cloud.client("dynamodb"), cloud.client("kinesis"), stop=stop_writing.is_set)
        except BaseException as exc:
            errors.append(exc)

    started = time.monotonic()
    if catalog is not None:
        catalog.start(cloud, workload)
    writer = threading.Thread(target=write, name="workload-writer", daemon=True)
    writer.start()
    last_write: float | None = None
    converged_at: float | None = None
    expected: dict[str, dict[str, Any]] | None = None
    deadline: float | None = None
    phase = "writing the workload"
    live_ctx: Any = Live(console=console, refresh_per_second=4, transient=False) if live else contextlib.nullcontext()
    with live_ctx as display:
        while True:
            if display is not None:
                display.update(_live_table(cloud, workload, started, phase, catalog))
            if errors:
                raise SetupError(f"writing the workload failed: {errors[0]!r}") from errors[0]
            if last_write is None:
                if writer.is_alive():
                    time.sleep(0.25)
                    continue
                last_write = time.monotonic()
                deadline = last_write + timeout
                expected = workload.expected_items()
                phase = f"waiting for convergence ({len(expected):,} items expected)"
            assert deadline is not None and expected is not None
            if time.monotonic() > deadline:
                phase = "timed out"
                break
            if not runner.wait_idle(timeout=0.3):
                continue
            if catalog is not None and not catalog.done:
                time.sleep(0.2)
                continue
            landed = emulator.items(cloud.dataset_arn)
            dlq_depth = cloud.queue_depth(cloud.dlq_url)
            if compare_items(expected, landed).ok and dlq_depth >= len(workload.bad):
                converged_at = time.monotonic()
                phase = "converged"
                if display is not None:
                    display.update(_live_table(cloud, workload, started, phase, catalog))
                break
            time.sleep(0.2)
    if live:
        console.print()
    write_seconds = (last_write or time.monotonic()) - started

    # A consistent final read: let the runner settle, stop it (moto and the emulator stay up), then collect.
    runner.wait_idle(timeout=settle_timeout)
    cloud.stop_runner()
    stats, ledger = runner.stats(), runner.ledger()
    emulator_stats = emulator.stats()
    landed = emulator.items(cloud.dataset_arn)
    dlq = cloud.read_queue(cloud.dlq_url)
    on_failure = cloud.read_on_failure()
    totals = handler_totals(cloud.function_log)
    source_records: dict[str, list[str]] = {}
    kinesis_mapping, ddb_mapping = cloud.mapping("kinesis"), cloud.mapping("dynamodb")
    if kinesis_mapping is not None:
        source_records[kinesis_mapping.logical_id] = list(workload.kinesis_sequence_numbers)
    if ddb_mapping is not None:
        source_records[ddb_mapping.logical_id] = cloud.dynamodb_stream_sequence_numbers()
    result = check(
        workload,
        actual_items=landed,
        dlq=dlq,
        on_failure=on_failure,
        ledger=ledger,
        stats=stats,
        totals=totals,
        source_records=source_records,
    )
    ddb_records = len(source_records.get(ddb_mapping.logical_id, [])) if ddb_mapping else 0
    if ddb_mapping is not None and ddb_records != workload.counters.ddb_writes:
        result.problems.append(
            f"the table's stream holds {ddb_records} records for {workload.counters.ddb_writes} writes"
        )
    result.problems.extend(f"workload model: {p}" for p in workload.verify_table(cloud.client("dynamodb")))
    if catalog is not None:
        catalog.join(timeout=5)
        result.problems.extend(catalog.problems)
        if not catalog.done:
            result.problems.append(f"the catalog load ({catalog.method}) did not finish: {catalog.phase}")
        elif catalog.method == "backfill" and catalog.loaded < workload.counters.catalog_items:
            result.problems.append(
                f"the backfill scanned {catalog.loaded} items, fewer than the catalog's "
                f"{workload.counters.catalog_items}"
            )
    if converged_at is None:
        result.problems.insert(0, f"did not converge within {timeout:g} s after the last write")
    return DemoResult(
        check=result,
        converged=converged_at is not None,
        seconds_to_converge=(converged_at - started) if converged_at else None,
        seconds_after_last_write=(converged_at - last_write) if converged_at and last_write else None,
        write_seconds=write_seconds,
        workload=workload,
        stats=stats,
        emulator_stats=emulator_stats,
        totals=totals,
        dlq=dlq,
        on_failure=on_failure,
        ledger=ledger,
        expected_items=len(workload.expected_items()),
        actual_items=len(landed),
        source_records=source_records,
        schema_source=cloud.schema_source,
        interpreter=cloud.interpreter,
        catalog=catalog,
    )


# --------------------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------------------


def report(result: DemoResult, console: Console) -> None:
    w, c, stats, emu = result.workload, result.workload.counters, result.stats, result.emulator_stats
    table = Table(title="Report", show_header=False, min_width=70)
    table.add_column("metric", style="bold")
    table.add_column("value")
    table.add_row(
        "changes written",
        f"{c.changes:,}: DynamoDB {c.ddb_writes:,} ({c.ddb_inserts:,} inserts, {c.ddb_updates:,} updates, "
        f"{c.ddb_deletes:,} deletes); Kinesis {c.kinesis_documents:,} documents, {c.kinesis_cdc:,} CDC records "
        f"({w.cdc_out_of_order} items out of order, {w.cdc_duplicates} duplicates), {c.kinesis_bad} bad records",
    )
    table.add_row(
        "records delivered",
        f"{stats.records_delivered:,} in {stats.invocations:,} invocations "
        f"({stats.records_delivered / max(1, stats.invocations):.0f} per batch; {stats.retries} retries, "
        f"{stats.function_errors} function errors, {stats.partial_failures} partial)",
    )
    table.add_row(
        "handler outcomes",
        ", ".join(f"{k} {v:,}" for k, v in sorted(result.totals.outcomes.items())) or "-",
    )
    table.add_row("PutItems calls", f"{emu['calls']:,} ({emu['accepted']:,} accepted, {emu['invalid']} rejected)")
    table.add_row("items per call", f"{emu['items_per_call']:.2f} ({emu['items_written']:,} item writes)")
    peak = emu.get("calls_per_second", {})
    table.add_row(
        "throttled share",
        f"{emu['throttled_share']:.2%} ({emu['throttled']} of {emu['calls']} calls"
        + (f"; peak {peak.get('max_accepted_in_1s', '?')} accepted calls in 1 s)" if peak else ")"),
    )
    quota = emu.get("quota") or {}
    if quota:
        foreign = (
            f"; foreign writer {quota['foreign_share']:.0%} ({quota['foreign_calls']} calls, "
            f"{quota['foreign_throttled']} throttled)"
            if quota.get("foreign_share")
            else ""
        )
        table.add_row("quota model", f"{quota['model']} at {quota['rate']} calls/s{foreign}")
    table.add_row("Lambda throttles", f"{stats.throttles} (invokes rejected at the reserved concurrency)")
    cat = result.catalog
    if cat is not None:
        if cat.method == "backfill":
            text = (
                f"{c.catalog_items:,} items by backfill (share {cat.share:g}): {cat.loaded:,} scanned, "
                f"{cat.put:,} put, {cat.poison} dead-lettered, in {cat.seconds:.1f} s "
                f"({cat.loaded / max(cat.seconds, 1e-9):,.1f} items/s) beside the stream"
            )
        else:
            lead = (cat.export_time or 0) - (cat.esm_started or 0)
            text = (
                f"{c.catalog_items:,} items by bulk-load: export → {cat.rows:,} CSV rows ({cat.poison} rejects) → "
                f"FULL import {cat.job_status}, in {cat.seconds:.1f} s; mappings started {lead:.1f} s before the "
                "export time (the ordering rule)"
            )
        table.add_row("act 1: the catalog", text)
        table.add_row("catalog items updated by the stream", f"{c.catalog_updates:,}")
    table.add_row("dataset schema from", result.schema_source or "-")
    if result.interpreter:
        table.add_row("handler interpreter", result.interpreter)
    table.add_row("items in the dataset", f"{result.actual_items:,} (expected {result.expected_items:,})")
    table.add_row("DLQ entries", f"{len(result.dlq)} (expected bad records: {len(w.bad)})")
    table.add_row("on-failure messages", f"{len(result.on_failure)}")
    table.add_row("max iterator age", f"{stats.max_iterator_age_ms / 1000:.1f} s")
    if result.seconds_to_converge is not None:
        table.add_row(
            "time to PutItems accepted",
            f"{result.seconds_to_converge:.1f} s from the first write "
            f"({result.write_seconds:.1f} s writing, "
            f"{result.seconds_after_last_write or 0:.1f} s after the last write)",
        )
    else:
        table.add_row("time to PutItems accepted", "[red]did not converge[/]")
    console.print(table)
    console.print(
        "[dim]Time to PutItems accepted is not visibility in recommendations: filters pick up new data in about "
        "20 minutes, and new items reach User-Personalization campaigns every two hours.[/]"
    )

    dlq_table = Table(title="DLQ entries", min_width=70)
    for column in ("bad record", "source", "item id / seq", "reason"):
        dlq_table.add_column(column, overflow="fold")
    labels = {b.key(): b.label for b in w.bad}
    for message in result.dlq:
        key = dlq_key(message)
        where = message.get("itemId") or f"seq {message.get('sequenceNumber')}"
        label = labels.get(key, "[red]unexpected[/]")
        if is_tool_entry(message):
            label += " (scanned by the catalog backfill too)"
        dlq_table.add_row(label, str(message.get("source")), str(where), str(message.get("reason")))
    console.print(dlq_table)

    if result.ok:
        console.print(
            Panel(
                f"[bold green]CONVERGED[/]: all {result.actual_items:,} items"
                + (f" (the {w.counters.catalog_items:,} catalog items included)" if w.counters.catalog_items else "")
                + " match the sources' final state, "
                f"the DLQ holds exactly the {len(w.bad)} bad records, the on-failure queue is empty, "
                "and no record was lost.",
                title="convergence check",
            )
        )
    else:
        lines = [f"[red]✗[/] {p}" for p in result.check.problems]
        for item_id, diffs in list(result.check.different.items())[:10]:
            lines.append(f"  {item_id}: " + "; ".join(diffs[:4]))
        console.print(Panel(Group(*lines), title="[bold red]convergence check FAILED[/]"))


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C, so that ``finally`` blocks clean up."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(
    *,
    items: int,
    seed: int,
    fast: bool,
    timeout: float,
    write_seconds: float,
    chaos: bool = False,
    on_remove: Literal["soft", "ignore"] = "soft",
    console: Console | None = None,
    emulator_options: Mapping[str, Any] | None = None,
    cloud_options: Mapping[str, Any] | None = None,
    catalog: int = 0,
    catalog_load: CatalogMethod = "backfill",
    catalog_share: float = 0.5,
) -> int:
    """The ``demo`` command: 0 when converged and every check passed, 1 otherwise, 2 on setup errors.

    ``catalog``: items in the table before the mappings start (0: none), loaded by ``catalog_load``.

    ``emulator_options``: quota model and the like, passed to :class:`PersonalizeEmulator`;
    ``cloud_options``: more :class:`LocalCloud` arguments (``dataset_schema``, ``allow_schemaless`` ...)."""
    console = console or Console()
    spec = WorkloadSpec(items=items, seed=seed, write_seconds=write_seconds, on_remove=on_remove, catalog=catalog)
    faults: dict[str, Any] = {"throttle_rate": 0.2, "error_rate": 0.05} if chaos else {}
    faults.update(cloud_options or {})
    if emulator_options:
        faults["emulator_options"] = dict(emulator_options)
    return run_command(
        lambda: run_demo(
            spec,
            fast=fast,
            timeout=timeout,
            console=console,
            cloud_options=faults,
            catalog_load=catalog_load,
            catalog_share=catalog_share,
        ),
        lambda result: report(result, console),
        console,
    )


def run_command(run: Callable[[], R], show: Callable[[R], None], console: Console) -> int:
    """Run a command to completion: 0 when its result is ok, 1 when not, 2 on setup errors, 130 on Ctrl-C/SIGTERM.

    ``run`` must stop the local cloud on its way out (``LocalCloud`` is a context manager)."""
    try:
        with sigterm_as_interrupt():
            result = run()
    except KeyboardInterrupt:
        console.print("\n[yellow]Interrupted: the local cloud was stopped.[/]")
        return 130
    except SetupError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    show(result)
    return 0 if getattr(result, "ok", False) else 1
