"""Local-cloud benchmark: the connector against the naive per-record baseline, at the quota, in the same run.

Everything runs on this machine: moto server, the Personalize Events emulator (10 PutItems calls/s per dataset
group, about 50 ms latency, with its accepted-items log on) and the event source mapping runner of
:mod:`localcloud.esm_runner`, which invokes the handler in warm worker processes. The stack is synthesized with
``infra.synth`` (one variant per source / shard count); the connector runs the synthesized asset, the baseline
(``bench/naive_handler/naive.py``: Powertools' ``BatchProcessor``, data class → ``new_image`` → ``json.dumps`` →
one PutItems call per record, no pacing) runs from the same template with the runner pointed at its directory.

Workloads (generated once, written identically for every system; each change carries a unique version in
``numberOfRatings``, so the emulator's log tells which version of an item a call carried):

* **unique keys**: every change is a new item (DynamoDB);
* **Zipf hot keys**: updates over a catalog with Zipf(1.2) weights (DynamoDB);
* **1 % poison**: unique keys, one change in a hundred has a price that can never be coerced (DynamoDB);
* **shards**: unique keys on a Kinesis stream with several shards, i.e. as many concurrent invocations sharing one
  dataset group's quota, under each of the emulator's quota models (sliding window, token bucket, fixed window,
  strict spacing), with three strategies: (a) the **shared budget** (``STATE_TABLE``, no reserved concurrency:
  the stack's default), (b) **reserved concurrency 1**, one invocation at a time paced at 9.7 calls/s (the
  earlier default; a rejected invoke is retried with backoff, as on AWS), and (c) **each invocation alone** at
  9.7 / shards calls/s, no table; plus the shared budget with a foreign writer using 20 % of the quota. On
  request (``--strategies capped``), (d) the shared budget **at reserved concurrency** ``CAP`` (2): at most two
  invocations billed at once, the other shards' invokes rejected and retried with backoff.

The writer offers changes faster than the quota ceiling (``OFFERED_PER_S``), so throughput is measured saturated;
``--offered`` sets a lower rate, for what a steady, sub-quota load costs (then the items/s goal does not apply:
the writer, not the quota, sets the pace, and the verdicts speak of throttles and cost only).
The baseline is time-boxed: it gets as much wall time as the connector needed for the same workload.

Figures, per run: sustained items/s (items in accepted calls ÷ the time at least one invocation was running,
from the runner's ledger: this leaves out the runner's batching-window waits, when no handler runs; also shown
for the second half of the accepted calls' span, ``late_rate``, which leaves out the cold starts) and the
end-to-end items/s (÷ the span from the first to the last accepted call), items per accepted call, accepted
calls ÷ the minimum (Σ over delivered batches of ⌈distinct item ids / 10⌉, first deliveries only), the
throttled share of all PutItems calls (and, for the concurrent-invocation cells, of those in the second half of
the PutItems span: a fresh shared rate learns a foreign writer's share in its first seconds, so the whole run's
share also measures how short the run is), change-to-visible latency p50/p99 (from the return of the write that
made a change to the first accepted call carrying that item in this version or a newer one; poison excluded; a
change not visible when the run ends counts as "more than the run took"), and the summed handler time per
1,000 checkpointed changes (the runner's ledger; a Lambda cost proxy, pacing sleeps included; for a time-boxed
run, "≈": the invocations still in flight count as busy until the box ended, per change put).

With ``--repeats N`` every concurrent-invocation cell runs N times (the repeats interleaved, so a slow spell of
the machine does not land on one cell), and the tables, the chart and the verdicts show each cell's medians, with
the range of items/s and the worst throttled share beside them: one run is noisy here (a single throttle costs a
rate plateau of several seconds in a 30 s run).

Run ``.venv/bin/python -m bench.bench_localcloud [--quick]``; it writes ``bench/results/localcloud.md``,
``localcloud.png`` and ``README-section.md``. Each cell's function logs and the emulator's call log
(``emulator-calls.json``: every PutItems call's arrival time and outcome) stay in ``.localcloud/bench/logs/``.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import math
import pickle
import random
import statistics
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
from boto3.dynamodb.types import TypeSerializer  # noqa: E402
from botocore.config import Config  # noqa: E402

from localcloud.demo import local_environment  # noqa: E402
from localcloud.esm_runner import EsmRunner  # noqa: E402
from localcloud.personalize_emulator import PersonalizeEmulator  # noqa: E402
from localcloud.provision import DEFAULT_REGION, ProvisionedResource, provision  # noqa: E402

RESULTS = ROOT / "bench" / "results"
STATE = ROOT / ".localcloud" / "bench"
LAST_RUN = STATE / "last-run.pickle"
NAIVE_DIR = ROOT / "bench" / "naive_handler"
NAIVE_HANDLER = "naive.handler"
SCHEMA_FILE = ROOT / "examples" / "items-schema.json"
TPS, LATENCY_MS, JITTER_MS = 10.0, 50.0, 10.0
CEILING = TPS * 10  # items/s: 10 calls/s x 10 items
EXTRA_ENV: dict[str, str] = {}  # set for every deployment (--log-level)
OFFERED_PER_S = 150.0  # changes/s the writer offers: above the ceiling, so throughput is measured saturated
HEADROOM = 0.97  # the "headroom" pacing mode: MAX_CALLS_PER_SECOND = 10 x 0.97 / shards
# Prices (us-east-1, list prices as published by AWS; check the pricing pages before relying on them): Lambda arm64
# per GB-second, DynamoDB on-demand per write request unit (every budget request is one small UpdateItem).
LAMBDA_ARM_USD_PER_GB_S = 0.0000133334
DDB_USD_PER_WRITE = 0.625 / 1e6
GENRES = ("action", "comedy", "drama", "horror", "romance", "sci-fi", "thriller", "western")
STATUSES = ("active", "preorder", "discontinued")

System = Literal["connector", "naive"]
Source = Literal["dynamodb", "kinesis"]


# --------------------------------------------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChangeSpec:
    item_id: str
    version: int  # unique over the workload, increasing in write order; the item's numberOfRatings
    image: dict[str, Any]  # native values (DynamoDB) / JSON values (Kinesis)
    poison: bool = False


@dataclass(frozen=True)
class WorkloadSpec:
    key: str  # unique | zipf | poison | shards
    title: str
    source: Source
    changes: tuple[ChangeSpec, ...]
    shards: int = 1

    @property
    def distinct_items(self) -> int:
        return len({c.item_id for c in self.changes})


def _image(item_id: str, version: int, rng: random.Random, source: Source, *, poison: bool) -> dict[str, Any]:
    """An item in the schema's property names, so that the naive handler's ``json.dumps`` is valid as is."""
    genres = set(rng.sample(GENRES, rng.randint(1, 3)))
    price: Any = round(rng.uniform(2, 99), 2)
    image: dict[str, Any] = {
        "sku": item_id,
        "title": f"Product {item_id} " + "x" * rng.randint(5, 40),
        "genres": genres if source == "dynamodb" else "|".join(sorted(genres)),
        "price": Decimal(str(price)) if source == "dynamodb" else price,
        "numberOfRatings": version,
        "inStock": rng.random() < 0.8,
        "status": rng.choice(STATUSES),
        "creationTimestamp": 1_700_000_000 + rng.randrange(90 * 86_400),
    }
    if poison:
        image["price"] = "n/a"  # never a float: the connector dead-letters it, PutItems rejects it
    return image


def make_workload(key: str, n: int, *, seed: int = 7, shards: int = 1) -> WorkloadSpec:
    rng = random.Random(f"{seed}-{key}-{n}-{shards}")
    source: Source = "kinesis" if key == "shards" else "dynamodb"
    changes: list[ChangeSpec] = []
    if key == "zipf":
        universe = max(50, n // 3)
        weights = [1 / (k**1.2) for k in range(1, universe + 1)]
        keys = rng.choices(range(universe), weights=weights, k=n)
        for version, k in enumerate(keys, start=1):
            item_id = f"hot-{k:05d}"
            changes.append(ChangeSpec(item_id, version, _image(item_id, version, rng, source, poison=False)))
        title = f"Zipf hot keys ({n:,} changes, {len(set(keys)):,} items)"
    else:
        poison_at = set(rng.sample(range(n), max(1, n // 100))) if key == "poison" else set()
        prefix = {"unique": "u", "poison": "p", "shards": "k"}[key]
        for version in range(1, n + 1):
            item_id = f"{prefix}-{version:06d}"
            bad = version - 1 in poison_at
            changes.append(ChangeSpec(item_id, version, _image(item_id, version, rng, source, poison=bad), bad))
        title = {
            "unique": f"unique keys ({n:,} changes)",
            "poison": f"1 % poison ({n:,} changes, {len(poison_at)} poison)",
            "shards": f"{shards} shards, unique keys ({n:,} changes)",
        }[key]
    return WorkloadSpec(key, title, source, tuple(changes), shards)


# --------------------------------------------------------------------------------------------------------------
# Deployments: synthesized variants
# --------------------------------------------------------------------------------------------------------------


def mapping_file() -> Path:
    """The bench's mapping document: the item id is ``sku``; the schema (cdk.json's schemaFile) does the rest."""
    STATE.mkdir(parents=True, exist_ok=True)
    path = STATE / "mapping.json"
    path.write_text(json.dumps({"itemId": "sku"}))
    return path


_templates: dict[tuple[Source, int, int | None, bool, int], Path] = {}


def template_for(source: Source, shards: int, reserved: int | None, state_table: bool, memory_mb: int = 1024) -> Path:
    """Synthesize the real app (cdk.json's context, overridden for the source) once per source, shard count,
    reserved concurrency (``None``: none, the stack's default) and state table (on by default)."""
    key = (source, shards, reserved, state_table, memory_mb)
    if key not in _templates:
        from infra.synth import synth

        if source == "dynamodb":
            sources: dict[str, Any] = {
                "dynamodb": {"source": "new", "partitionKey": "sku"},
                "kinesis": {"source": "none"},
            }
        else:
            sources = {
                "kinesis": {"source": "new", "capacity": "provisioned", "shards": shards},
                "dynamodb": {"source": "none"},
            }
        function: dict[str, Any] = {"timeoutSeconds": 300, "memoryMb": memory_mb}
        if reserved is not None:
            function["reservedConcurrency"] = reserved
        context = {
            **sources,
            "mappingFile": str(mapping_file()),
            "lambda": function,
            "stateTable": {"enabled": state_table},
        }
        began = time.monotonic()
        name = f"cdk.out-{source}-{shards}-{reserved or 'none'}-{'state' if state_table else 'nostate'}-{memory_mb}"
        _templates[key] = synth(STATE / name, context, nag=False)
        print(f"  synthesized the {source} stack ({shards} shard(s)) in {time.monotonic() - began:.1f} s", flush=True)
    return _templates[key]


@dataclass(frozen=True)
class Deployment:
    system: System
    label: str  # what the table shows
    pacing: str  # "shared" | "capped" | "serial" | "alone" | "-"
    env: Mapping[str, str] = field(default_factory=dict)
    reserved: int | None = None  # reserved concurrency (None: none)
    state_table: bool = True  # STATE_TABLE: the shared budget
    memory_mb: int = 1024  # the function's memory (Lambda gives CPU in proportion; billed GB-seconds)


def connector(pacing: str, shards: int, memory_mb: int = 1024, in_flight: int | None = None) -> Deployment:
    """The connector deployed with one pacing strategy; ``in_flight`` sets ``PUT_ITEMS_IN_FLIGHT`` (None: the
    runtime's default) and is then named in the label, so that an A/B of it keeps its cells apart."""
    env = {} if in_flight is None else {"PUT_ITEMS_IN_FLIGHT": str(in_flight)}
    suffix = "" if in_flight is None else f", {in_flight} in flight"
    if pacing == "shared":  # the stack's default: the shared budget in STATE_TABLE, no reserved concurrency
        label = "connector, shared budget (STATE_TABLE)"
        return Deployment("connector", label + suffix, "shared", env, memory_mb=memory_mb)
    if pacing == "capped":  # the shared budget with at most CAP invocations at once (reserved concurrency)
        label = f"shared budget, reserved concurrency {CAP}"
        return Deployment("connector", label + suffix, "capped", env, reserved=CAP, memory_mb=memory_mb)
    if pacing == "serial":  # the earlier default: reserved concurrency 1, one invocation paced 3 % under the quota
        label = f"reserved concurrency 1, {TPS * HEADROOM:.3g}/s"
        return Deployment(
            "connector", label + suffix, "serial", env, reserved=1, state_table=False, memory_mb=memory_mb
        )
    if pacing == "alone":  # no coordination: each invocation paces itself at its share of the quota
        rate = TPS * HEADROOM / shards
        env["MAX_CALLS_PER_SECOND"] = f"{rate:.4g}"
        label = f"each invocation alone, {rate:.3g}/s"
        return Deployment("connector", label + suffix, "alone", env, state_table=False, memory_mb=memory_mb)
    raise ValueError(f"unknown pacing {pacing!r}")


NAIVE = Deployment("naive", "naive per-record (Powertools)", "-", {"_HANDLER": NAIVE_HANDLER}, state_table=False)
QUOTA_MODELS: tuple[str, ...] = ("sliding-window", "token-bucket", "fixed-window", "strict-spacing")
STRATEGIES: tuple[str, ...] = ("shared", "capped", "serial", "alone")
DEFAULT_STRATEGIES: tuple[str, ...] = ("shared", "serial", "alone")  # capped on request
CAP = 2  # the "capped" strategy's reserved concurrency: at most this many invocations billed at once


# --------------------------------------------------------------------------------------------------------------
# The local cloud, booted once and reset between runs
# --------------------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, latency_ms: float = LATENCY_MS) -> None:
        from moto.server import ThreadedMotoServer

        local_environment()
        import logging

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        logging.getLogger("localcloud.esm").setLevel(logging.ERROR)
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.moto.start()
        host, port = self.moto.get_host_and_port()
        self.moto_url = f"http://{host}:{port}"
        self.emulator = PersonalizeEmulator(
            tps=TPS, latency_ms=latency_ms, jitter_ms=JITTER_MS, log_items=True, seed=7
        ).start()
        self.schema = json.loads(SCHEMA_FILE.read_text())
        cfg = Config(retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=4)
        self.ddb = boto3.client("dynamodb", endpoint_url=self.moto_url, region_name=DEFAULT_REGION, config=cfg)
        self.kinesis = boto3.client("kinesis", endpoint_url=self.moto_url, region_name=DEFAULT_REGION, config=cfg)
        self.streams = boto3.client(
            "dynamodbstreams", endpoint_url=self.moto_url, region_name=DEFAULT_REGION, config=cfg
        )
        self.sqs = boto3.client("sqs", endpoint_url=self.moto_url, region_name=DEFAULT_REGION, config=cfg)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.emulator.stop()
        with contextlib.suppress(Exception):
            self.moto.stop()

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.moto_url}/moto-api/reset", method="POST")  # noqa: S310 - our moto
        urllib.request.urlopen(request, timeout=10).close()  # noqa: S310
        self.emulator.reset(datasets=True)


# --------------------------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    workload: WorkloadSpec
    deployment: Deployment
    seconds: float  # from the first write to convergence (or the time box)
    converged: bool
    visible: int  # changes (non-poison) whose version (or a newer one) became visible
    expected: int
    items_per_s: float  # items accepted ÷ the time at least one invocation was running
    items_per_s_span: float  # items accepted ÷ (last accepted call − first accepted call)
    items_per_call: float
    calls_over_min: float
    accepted_calls: int
    minimum_calls: int
    throttled_share: float
    throttled: int
    calls: int
    p50_s: float
    p99_s: float
    handler_s_per_1k: float
    handler_estimated: bool  # a time-boxed run: in-flight invocations counted as busy until the box ended
    redeliveries: int
    function_errors: int
    dlq: int
    max_attempts_in_1s: int  # PutItems calls that arrived within the busiest 1 s (accepted or not)
    lambda_throttles: int = 0  # invokes rejected at the reserved concurrency (Lambda's Throttles metric)
    quota_model: str = "sliding-window"
    foreign_share: float = 0.0
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (seconds from the first write, items)
    memory_mb: int = 1024
    state_requests: int = 0  # state-table requests of the shared budget (the handler's budget_requests)
    runs: int = 1  # > 1: this row is the per-field median of that many repeats of one cell (see ``medians``)
    items_per_s_range: tuple[float, float] = (math.nan, math.nan)  # the repeats' lowest and highest items/s
    throttled_max: float = math.nan  # the repeats' highest throttled share
    offered_per_s: float = OFFERED_PER_S  # changes/s the writer offered
    throttled_late: float = math.nan  # the throttled share in the second half of the PutItems span (``late_share``)
    items_per_s_late: float = math.nan  # items/s while invoked in the second half of the accepted calls (``late_rate``)

    @property
    def saturated(self) -> bool:
        """The writer offered more than the quota ceiling takes: throughput is the quota's, not the writer's."""
        return self.offered_per_s > CEILING * HEADROOM

    @property
    def gb_s_per_million(self) -> float:
        """Billed Lambda GB-seconds per million changes settled."""
        return self.handler_s_per_1k * 1000 * self.memory_mb / 1024

    @property
    def state_per_call(self) -> float:
        return self.state_requests / self.calls if self.calls else 0.0

    @property
    def cost_per_million(self) -> float:
        """USD per million changes: Lambda arm64 GB-seconds plus the state table's on-demand writes."""
        writes_per_million = self.state_requests / max(1, self.visible) * 1e6
        return self.gb_s_per_million * LAMBDA_ARM_USD_PER_GB_S + writes_per_million * DDB_USD_PER_WRITE

    @property
    def label(self) -> str:
        return self.deployment.label


# the fields a cell's repeats are summarized by (per-field medians; the derived figures follow from them)
_MEDIAN_FIELDS = (
    "seconds",
    "visible",
    "items_per_s",
    "items_per_s_span",
    "items_per_call",
    "calls_over_min",
    "throttled_share",
    "throttled",
    "calls",
    "p50_s",
    "p99_s",
    "handler_s_per_1k",
    "redeliveries",
    "lambda_throttles",
    "state_requests",
    "throttled_late",
    "items_per_s_late",
)


def _cell(r: RunResult) -> tuple[int, str, float, float, str]:
    return (r.workload.shards, r.quota_model, r.foreign_share, r.offered_per_s, r.deployment.label)


def medians(runs: Sequence[RunResult]) -> list[RunResult]:
    """One row per cell (shards, quota model, foreign writer, strategy), in first-run order. A cell run once is
    itself; a cell run several times is its first run with every field of ``_MEDIAN_FIELDS`` replaced by its
    median over the runs (the lower median, a value one of the runs had: use an odd number of repeats),
    ``converged`` only if all runs converged, and the spread kept beside (``items_per_s_range``,
    ``throttled_max``)."""
    cells: dict[tuple[int, str, float, float, str], list[RunResult]] = {}
    for r in runs:
        cells.setdefault(_cell(r), []).append(r)
    rows = []
    for group in cells.values():
        if len(group) == 1:
            rows.append(group[0])
            continue
        rates = [r.items_per_s for r in group]
        rows.append(
            replace(
                group[0],
                **{f: statistics.median_low(getattr(r, f) for r in group) for f in _MEDIAN_FIELDS},
                converged=all(r.converged for r in group),
                runs=len(group),
                items_per_s_range=(min(rates), max(rates)),
                throttled_max=max(r.throttled_share for r in group),
            )
        )
    return rows


def late_share(calls: Sequence[Mapping[str, Any]], dataset_arn: str) -> float:
    """The throttled share of the PutItems attempts to ``dataset_arn`` in the second half of their span (the
    emulator's call log: ``ts``, ``operation``, ``dataset_arn``, ``outcome``); NaN without calls. A fresh shared
    rate learns a foreign writer's share in its first seconds (one throttle per level at least, on the way down):
    the whole run's share depends on how long the run is, this half on the level it settled on."""
    ours = [c for c in calls if c["operation"] == "PutItems" and c["dataset_arn"] == dataset_arn]
    if not ours:
        return math.nan
    middle = (ours[0]["ts"] + ours[-1]["ts"]) / 2
    late = [c for c in ours if c["ts"] >= middle]
    return sum(c["outcome"] == "throttled" for c in late) / len(late)


def late_rate(accepted: Sequence[Mapping[str, Any]], intervals: Sequence[tuple[float, float]]) -> float:
    """Items/s while invoked in the second half of the accepted calls' span: the items of the calls accepted from
    its middle on ÷ the time from the middle on during which at least one handler ran (``intervals``); NaN
    without two accepted calls. The first half holds every container's cold start and first invocation (clients
    built, a first slot reserved): over a long backlog those weigh nothing, so this half is the steady rate."""
    if len(accepted) < 2:
        return math.nan
    middle = (accepted[0]["ts"] + accepted[-1]["ts"]) / 2
    busy = _union_seconds([(max(start, middle), end) for start, end in intervals if end > middle])
    items = sum(len(e["items"]) for e in accepted if e["ts"] >= middle)
    return items / busy if busy > 0 else math.nan


def _resource(resources: Mapping[str, ProvisionedResource], kind: str) -> ProvisionedResource:
    return next(r for r in resources.values() if r.type == kind)


def _source_table(resources: Mapping[str, ProvisionedResource]) -> ProvisionedResource:
    """The streamed table (the template also has the state table, which has no stream)."""
    return next(r for r in resources.values() if r.type == "AWS::DynamoDB::Table" and r.attributes.get("StreamArn"))


def _pace(started: float, written: int, offered_per_s: float) -> None:
    delay = started + written / offered_per_s - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def write_dynamodb(
    bench: Bench,
    table: str,
    changes: Sequence[ChangeSpec],
    written_at: dict[int, float],
    offered_per_s: float = OFFERED_PER_S,
) -> None:
    """BatchWriteItem, 25 distinct keys at most per request, paced at ``offered_per_s``."""
    serializer = TypeSerializer()
    started = time.monotonic()
    i = 0
    while i < len(changes):
        chunk: list[ChangeSpec] = []
        seen: set[str] = set()
        while i < len(changes) and len(chunk) < 25 and changes[i].item_id not in seen:
            seen.add(changes[i].item_id)
            chunk.append(changes[i])
            i += 1
        requests = [{"PutRequest": {"Item": {k: serializer.serialize(v) for k, v in c.image.items()}}} for c in chunk]
        pending = {table: requests}
        while pending:
            answer = bench.ddb.batch_write_item(RequestItems=pending)
            pending = answer.get("UnprocessedItems") or {}
        now = time.time()
        for c in chunk:
            written_at[c.version] = now
        _pace(started, i, offered_per_s)


SeqKey = tuple[str, str]  # (shard id, sequence number): sequence numbers are unique per shard only


def write_kinesis(
    bench: Bench,
    stream: str,
    changes: Sequence[ChangeSpec],
    written_at: dict[int, float],
    seq_to_change: dict[SeqKey, tuple[str, int]],
    *,
    offered_per_s: float = OFFERED_PER_S,
) -> None:
    """PutRecords, 100 records per request (partition key: the item id), paced at ``offered_per_s``."""
    started = time.monotonic()
    for start in range(0, len(changes), 100):
        chunk = changes[start : start + 100]
        records = [{"Data": json.dumps(c.image).encode(), "PartitionKey": c.item_id} for c in chunk]
        answer = bench.kinesis.put_records(StreamName=stream, Records=records)
        if answer.get("FailedRecordCount"):
            raise RuntimeError(f"PutRecords failed for {answer['FailedRecordCount']} records")
        now = time.time()
        for c, result in zip(chunk, answer["Records"], strict=True):
            written_at[c.version] = now
            seq_to_change[(result["ShardId"], result["SequenceNumber"])] = (c.item_id, c.version)
        _pace(started, start + len(chunk), offered_per_s)


def ddb_stream_changes(bench: Bench, stream_arn: str) -> dict[SeqKey, tuple[str, int]]:
    """(shard, sequence number) → (item id, version) for every record of the table's stream."""
    out: dict[SeqKey, tuple[str, int]] = {}
    shards = bench.streams.describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"]
    for shard in shards:
        iterator = bench.streams.get_shard_iterator(
            StreamArn=stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            page = bench.streams.get_records(ShardIterator=iterator, Limit=1000)
            for r in page["Records"]:
                change = r["dynamodb"]
                version = int(change.get("NewImage", {}).get("numberOfRatings", {}).get("N", 0))
                out[(shard["ShardId"], change["SequenceNumber"])] = (change["Keys"]["sku"]["S"], version)
            if not page["Records"]:
                break
            iterator = page.get("NextShardIterator")
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; ``inf`` entries stand for "not visible when the run ended"."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def run_once(
    bench: Bench,
    workload: WorkloadSpec,
    deployment: Deployment,
    *,
    time_box: float,
    log: Callable[[str], None],
    batching_window_s: float | None = None,
    quota_model: str = "sliding-window",
    foreign_share: float = 0.0,
    sandbox: bool = True,
    offered_per_s: float = OFFERED_PER_S,
) -> RunResult:
    template = template_for(
        workload.source, workload.shards, deployment.reserved, deployment.state_table, deployment.memory_mb
    )
    bench.reset()
    bench.emulator.configure(quota_model=quota_model, foreign_share=foreign_share)
    resources = provision(template, endpoint_url=bench.moto_url)
    log_dir = STATE / "logs" / f"{time.strftime('%H%M%S')}-{workload.key}-{workload.shards}-{deployment.pacing}"
    runner = EsmRunner(
        template,
        resources,
        moto_endpoint=bench.moto_url,
        personalize_endpoint=bench.emulator.endpoint_url,
        asset_dir=NAIVE_DIR if deployment.system == "naive" else None,
        env_overrides={**deployment.env, **EXTRA_ENV},
        log_dir=log_dir,
        mapping_overrides={"batching_window_s": batching_window_s} if batching_window_s is not None else None,
        sandbox=sandbox,
    )
    function = next(iter(runner.functions.values()))
    dataset_arn = function.environment["DATASET_ARN"]
    bench.emulator.register_dataset(dataset_arn, bench.schema)
    dlq_url = runner.function_environment(function).get("DLQ_URL")

    final_version: dict[str, int] = {}
    for c in workload.changes:
        if not c.poison:
            final_version[c.item_id] = c.version
    written_at: dict[int, float] = {}
    seq_to_change: dict[SeqKey, tuple[str, int]] = {}
    errors: list[BaseException] = []

    def write() -> None:
        try:
            if workload.source == "dynamodb":
                write_dynamodb(bench, _source_table(resources).ref, workload.changes, written_at, offered_per_s)
            else:
                stream = _resource(resources, "AWS::Kinesis::Stream").ref
                write_kinesis(bench, stream, workload.changes, written_at, seq_to_change, offered_per_s=offered_per_s)
        except BaseException as exc:
            errors.append(exc)

    runner.start()
    began_wall, began = time.time(), time.monotonic()
    writer = threading.Thread(target=write, name="bench-writer", daemon=True)
    writer.start()
    converged = False
    next_report = began + 3.0
    newest: dict[str, int] = {}  # item id -> the newest version an accepted call carried
    since = 0
    try:
        while True:
            time.sleep(0.25)
            now = time.monotonic()
            if errors:
                raise RuntimeError(f"writing the workload failed: {errors[0]!r}") from errors[0]
            for entry in bench.emulator.accepted(since):
                since = entry["seq"] + 1
                for item_id, props in entry["items"]:
                    newest[item_id] = max(newest.get(item_id, 0), int(props.get("numberOfRatings") or 0))
            visible = sum(1 for item_id, v in final_version.items() if newest.get(item_id, 0) >= v)
            if not writer.is_alive() and visible == len(final_version) and runner.wait_idle(timeout=2.0):
                converged = True
                break
            if now - began > time_box:
                break
            if now >= next_report:
                next_report = now + 3.0
                emu = bench.emulator.stats()
                log(
                    f"    {now - began:5.1f} s  written {len(written_at):>6,}/{len(workload.changes):,}  "
                    f"items final {visible:>6,}/{len(final_version):,}  calls {emu['calls']:>5,} "
                    f"({emu['throttled']:,} throttled)  items/call {emu['items_per_call']:.2f}"
                )
    finally:
        seconds = time.monotonic() - began
        runner.stop()
    writer.join(timeout=30)

    ledger = runner.ledger()
    stats = runner.stats()
    emu = bench.emulator.stats()
    accepted = [e for e in bench.emulator.accepted() if e["dataset_arn"] == dataset_arn]
    calls = bench.emulator.calls()
    throttled_late = late_share(calls, dataset_arn)
    if log_dir.is_dir():  # beside the function's logs: every call as the emulator answered it (arrival, outcome)
        (log_dir / "emulator-calls.json").write_text(json.dumps(calls), encoding="utf-8")
    dlq = _queue_depth(bench, dlq_url)

    # sustained items/s over the accepted calls
    items = sum(len(e["items"]) for e in accepted)
    span = accepted[-1]["ts"] - accepted[0]["ts"] if len(accepted) > 1 else 0.0
    items_per_s = items / span if span > 0 else 0.0

    # calls ÷ the minimum: Σ ⌈distinct items / 10⌉ over the batches the runner delivered (first deliveries only);
    # what was put from a batch still in flight when a time box ended counts as batches of BatchSize changes
    if workload.source == "dynamodb":
        stream_arn = _source_table(resources).get_att("StreamArn")
        seq_to_change = ddb_stream_changes(bench, stream_arn)
    poison_ids = {c.item_id for c in workload.changes if c.poison}
    delivered: set[SeqKey] = set()
    covered: set[tuple[str, int]] = set()
    minimum = 0
    for inv in ledger:
        fresh = [(inv.shard_id, s) for s in inv.sequence_numbers if (inv.shard_id, s) not in delivered]
        delivered.update(fresh)
        changes = [seq_to_change[k] for k in fresh if k in seq_to_change]
        covered.update(changes)
        minimum += math.ceil(len({item for item, _ in changes} - poison_ids) / 10)
    uncovered: list[tuple[str, int]] = []
    for e in accepted:
        for item_id, props in e["items"]:
            change = (item_id, int(props.get("numberOfRatings") or 0))
            if change not in covered:
                covered.add(change)
                uncovered.append(change)
    batch_size = runner.mappings[0].batch_size
    for start in range(0, len(uncovered), batch_size):
        minimum += math.ceil(len({item for item, _ in uncovered[start : start + batch_size]}) / 10)
    accepted_calls = len(accepted)

    # change-to-visible latency
    seen: dict[str, tuple[list[float], list[int]]] = defaultdict(lambda: ([], []))
    for e in accepted:
        for item_id, props in e["items"]:
            times, running_max = seen[item_id]
            version = int(props.get("numberOfRatings") or 0)
            times.append(e["ts"])
            running_max.append(max(version, running_max[-1]) if running_max else version)
    latencies: list[float] = []
    for c in workload.changes:
        if c.poison or c.version not in written_at:
            if not c.poison:
                latencies.append(math.inf)
            continue
        times, running_max = seen.get(c.item_id, ([], []))
        k = bisect.bisect_left(running_max, c.version)
        latencies.append(times[k] - written_at[c.version] if k < len(times) else math.inf)
    visible_changes = sum(1 for x in latencies if math.isfinite(x))

    # billed time: the handler, plus the init of a cold start (billed for managed runtimes since August 2025);
    # "while invoked" is while a handler runs (the init, before the handler, can send nothing; the end-to-end
    # figure includes it)
    handler_ms = sum(inv.duration_ms + (inv.init_ms or 0) for inv in ledger)
    intervals = [
        (start, start + inv.duration_ms / 1000)
        for inv in ledger
        for start in [inv.started_at + (inv.init_ms or 0) / 1000]
    ]
    settled = stats.records_succeeded
    estimated = not converged
    if estimated:  # the naive baseline in its time box: an invocation per shard was busy until the box ended
        ended = began_wall + seconds
        first_put = accepted[0]["ts"] if accepted else ended
        last_end: dict[str, float] = {}
        for inv in ledger:
            last_end[inv.shard_id] = max(last_end.get(inv.shard_id, 0.0), inv.started_at + inv.duration_ms / 1000)
        starts = [*last_end.values(), *[first_put] * max(0, workload.shards - len(last_end))]
        handler_ms += sum(ended - start for start in starts) * 1000
        intervals += [(start, ended) for start in starts]
        settled = len({(i, v) for i, v in covered if i not in poison_ids})
    busy = _union_seconds(intervals)
    timeline = _timeline(accepted, began_wall)
    return RunResult(
        offered_per_s=offered_per_s,
        throttled_late=throttled_late,
        items_per_s_late=late_rate(accepted, intervals),
        memory_mb=deployment.memory_mb,
        state_requests=_budget_requests(log_dir),
        workload=workload,
        deployment=deployment,
        seconds=seconds,
        converged=converged,
        visible=visible_changes,
        expected=len(latencies),
        items_per_s=items / busy if busy > 0 else 0.0,
        items_per_s_span=items_per_s,
        items_per_call=float(emu["items_per_call"]),
        calls_over_min=accepted_calls / minimum if minimum else math.nan,
        accepted_calls=accepted_calls,
        minimum_calls=minimum,
        throttled_share=float(emu["throttled_share"]),
        throttled=int(emu["throttled"]),
        calls=int(emu["calls"]),
        p50_s=percentile(latencies, 50),
        p99_s=percentile(latencies, 99),
        handler_s_per_1k=handler_ms / max(1, settled),
        handler_estimated=estimated,
        redeliveries=stats.records_delivered - len(delivered),
        function_errors=stats.function_errors,
        dlq=dlq,
        max_attempts_in_1s=int(emu["calls_per_second"]["max_in_1s"]),
        lambda_throttles=stats.throttles,
        quota_model=quota_model,
        foreign_share=foreign_share,
        timeline=timeline,
    )


def _budget_requests(log_dir: Path) -> int:
    """The shared budget's state-table requests, summed from the handler's ``Batch done`` lines."""
    total = 0
    for path in log_dir.glob("*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if '"Batch done"' in line:
                with contextlib.suppress(ValueError):
                    total += int(json.loads(line).get("budget_requests", 0))
    return total


def _union_seconds(intervals: Sequence[tuple[float, float]]) -> float:
    total, reach = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def _queue_depth(bench: Bench, url: str | None) -> int:
    if not url:
        return 0
    attrs = bench.sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs.get("ApproximateNumberOfMessages", 0)) + int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0))


def _timeline(accepted: Sequence[Mapping[str, Any]], began: float) -> list[tuple[float, int]]:
    """Items accepted per whole second since the first write."""
    per_second: dict[int, int] = defaultdict(int)
    for e in accepted:
        per_second[int(e["ts"] - began)] += len(e["items"])
    if not per_second:
        return []
    return [(float(s), per_second.get(s, 0)) for s in range(max(per_second) + 1)]


# --------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------


def _latency(result: RunResult) -> str:
    def one(x: float) -> str:
        return f"> {result.seconds:.0f} s" if math.isinf(x) else f"{x:.1f} s"

    return f"{one(result.p50_s)} / {one(result.p99_s)}"


def _visible(result: RunResult) -> str:
    share = result.visible / result.expected if result.expected else 1.0
    text = f"{result.visible:,}/{result.expected:,}"
    return text if share == 1.0 else f"{text} ({share:.0%})"


def main_table(results: Sequence[RunResult]) -> str:
    header = (
        "| workload | system | visible | run s | items/s | end-to-end items/s | items/call | calls ÷ min | "
        "throttled | latency p50 / p99 | billed s / 1k changes |"
    )
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(
            f"| {r.workload.title} | {r.label} | {_visible(r)} | {r.seconds:.0f}"
            f"{'' if r.converged else ' (box)'} | {r.items_per_s:.1f} | {r.items_per_s_span:.1f} | "
            f"{r.items_per_call:.2f} | "
            f"{r.calls_over_min:.2f} | {r.throttled_share:.1%} ({r.throttled:,}) | {_latency(r)} | "
            f"{'≈ ' if r.handler_estimated else ''}{r.handler_s_per_1k:.0f} |"
        )
    return "\n".join(lines)


def pacing_table(results: Sequence[RunResult]) -> str:
    lines = [
        "| shards | quota model | strategy | run s | items/s | end-to-end items/s | throttled | Lambda throttles | "
        "latency p50 / p99 | redelivered | billed s / 1k changes | GB-s / M | state req / call | $ / M | verdict |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        foreign = r.foreign_share > 0
        fast_enough = r.items_per_s >= 95 or not r.saturated  # below the quota, the writer sets the pace
        ok = r.converged and (r.throttled_share < 0.05 if foreign else r.throttled_share < 0.03 and fast_enough)
        good = "✅ within quota, ≥ 95 items/s" if r.saturated else "✅ < 3 % throttled (sub-quota load)"
        verdict = ("✅ < 5 % throttled" if foreign else good) if ok else _why_not(r)
        model = r.quota_model + (f" + {r.foreign_share:.0%} foreign writer" if foreign else "")
        model += "" if r.saturated else f", {r.offered_per_s:g} changes/s offered"
        rate, throttled = f"{r.items_per_s:.1f}", f"{r.throttled_share:.1%}"
        if r.runs > 1:
            low, high = r.items_per_s_range
            rate += f" ({low:.1f}-{high:.1f})"
            throttled += f" (≤ {r.throttled_max:.1%})"
        if not math.isnan(r.items_per_s_late):
            rate += f"; 2nd half {r.items_per_s_late:.1f}"
        if not math.isnan(r.throttled_late):
            throttled += f"; 2nd half {r.throttled_late:.1%}"
        lines.append(
            f"| {r.workload.shards} | {model} | {r.label} | {r.seconds:.0f} | {rate} | "
            f"{r.items_per_s_span:.1f} | {throttled} | "
            f"{r.lambda_throttles:,} | {_latency(r)} | {r.redeliveries:,} | {r.handler_s_per_1k:.0f} | "
            f"{r.gb_s_per_million:,.0f} | {r.state_per_call:.2f} | {r.cost_per_million:.2f} | {verdict} |"
        )
    return "\n".join(lines)


def _why_not(r: RunResult) -> str:
    reasons = []
    limit = 0.05 if r.foreign_share else 0.03
    if r.throttled_share >= limit:
        reasons.append(f"throttles ≥ {limit:.0%}")
    if r.items_per_s < 95 and not r.foreign_share and r.saturated:
        reasons.append("< 95 items/s")
    if not r.converged:
        reasons.append("not converged in the box")
    return "❌ " + ", ".join(reasons)


def chart(results: Sequence[RunResult], pacing: Sequence[RunResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    workloads = list(dict.fromkeys(r.workload.title for r in results))
    short = [w.split(" (")[0] for w in workloads]
    by: dict[tuple[str, str], RunResult] = {(r.workload.title, r.deployment.system): r for r in results}
    x = range(len(workloads))
    width = 0.38
    colors = {"connector": "#2a7ab9", "naive": "#d9822b"}

    ax = axes[0][0]
    for offset, system in ((-width / 2, "connector"), (width / 2, "naive")):
        values = [by[(w, system)].items_per_s if (w, system) in by else 0 for w in workloads]
        bars = ax.bar([i + offset for i in x], values, width, label=system, color=colors[system])
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.axhline(CEILING, color="grey", linestyle="--", linewidth=1, label="ceiling 100")
    ax.axhline(95, color="green", linestyle=":", linewidth=1, label="goal 95")
    ax.set_xticks(list(x), short, fontsize=8)
    ax.set_ylabel("items/s while invoked")
    ax.set_title("Throughput at the quota (10 calls/s, ~50 ms)")
    ax.legend(fontsize=8)

    ax = axes[0][1]
    quarter = width / 2
    for offset, system in ((-width / 2, "connector"), (width / 2, "naive")):
        for j, (name, pick) in enumerate((("p50", lambda r: r.p50_s), ("p99", lambda r: r.p99_s))):
            runs = [by.get((w, system)) for w in workloads]
            values = [_finite(pick(r), r.seconds) if r else 0.0 for r in runs]
            censored = [bool(r and math.isinf(pick(r))) for r in runs]
            xs = [i + offset + (j - 0.5) * quarter for i in x]
            bars = ax.bar(
                xs,
                values,
                quarter,
                color=colors[system],
                alpha=1.0 if name == "p50" else 0.5,
                label=f"{system} {name}",
            )
            for bar, cut in zip(bars, censored, strict=True):
                if cut:
                    bar.set_hatch("//")
            ax.bar_label(
                bars, labels=[f"{'>' if c else ''}{v:.0f}" for v, c in zip(values, censored, strict=True)], fontsize=7
            )
    ax.set_xticks(list(x), short, fontsize=8)
    ax.set_ylabel("seconds (hatched: not visible when the run ended)")
    ax.set_title("Change-to-visible latency, p50 and p99")
    ax.legend(fontsize=8)

    ax = axes[1][0]
    labels = [
        f"{r.workload.shards} sh · {r.deployment.pacing} · {r.quota_model.split('-')[0]}"
        + ("" if r.saturated else f" · {r.offered_per_s:g}/s")
        + (" · foreign" if r.foreign_share else "")
        for r in pacing
    ]
    positions = list(range(len(pacing)))
    bars = ax.bar(positions, [r.items_per_s for r in pacing], color=[_pacing_color(r) for r in pacing])
    ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.axhline(CEILING, color="grey", linestyle="--", linewidth=1)
    ax.axhline(95, color="green", linestyle=":", linewidth=1)
    ax.set_xticks(positions, labels, fontsize=6, rotation=60)
    ax.set_ylabel("items/s")
    ax2 = ax.twinx()
    ax2.plot(positions, [100 * r.throttled_share for r in pacing], "ko-", label="throttled %")
    ax2.axhline(3, color="red", linestyle=":", linewidth=1, label="3 % goal")
    ax2.set_ylabel("throttled share of calls, %")
    ax2.legend(fontsize=8, loc="upper left")
    ax.set_title("Concurrent invocations sharing one quota")

    ax = axes[1][1]
    for r in pacing:
        if r.timeline and r.quota_model == "sliding-window" and not r.foreign_share:
            ax.plot(
                [t for t, _ in r.timeline],
                [v for _, v in r.timeline],
                label=f"{r.workload.shards} sh · {r.deployment.pacing}",
                linewidth=1,
            )
    ax.axhline(CEILING, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("seconds since the first write")
    ax.set_ylabel("items accepted per second")
    ax.set_title("Accepted items per second, concurrent invocations")
    ax.legend(fontsize=7)

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _finite(value: float, cap: float) -> float:
    return cap if math.isinf(value) else value


def _pacing_color(r: RunResult) -> str:
    colors = {"shared": "#2a7ab9", "capped": "#7b4fa0", "serial": "#d9822b", "alone": "#999999"}
    return colors.get(r.deployment.pacing, "#6aa84f")


def conclusion(pacing: Sequence[RunResult]) -> str:
    if not pacing:
        return ""
    lines = []
    for mode in STRATEGIES:
        runs = [r for r in pacing if r.deployment.pacing == mode and not r.foreign_share]
        saturated = [r for r in runs if r.saturated]
        if saturated:
            worst_throttle = max(r.throttled_share for r in saturated)
            worst_rate = min(r.items_per_s for r in saturated)
            goals = [("< 3 % throttled", worst_throttle < 0.03), ("≥ 95 items/s", worst_rate >= 95)]
            met = [g for g, ok in goals if ok]
            missed = [g for g, ok in goals if not ok]
            verdict = (
                "meets both goals"
                if not missed
                else f"meets {' and '.join(met)}, misses {' and '.join(missed)}"
                if met
                else "misses both goals (< 3 % throttled, ≥ 95 items/s)"
            )
            late = [r.items_per_s_late for r in saturated if not math.isnan(r.items_per_s_late)]
            steady = f" (in the second half of each run at least {min(late):.1f} items/s)" if late else ""
            span = min(r.items_per_s_span for r in saturated)
            lines.append(
                f"- **{mode}** ({_shards(saturated)} shards): throttled at most {worst_throttle:.1%}, "
                f"at least {worst_rate:.1f} items/s{steady}, end to end at least {span:.1f} → {verdict}."
            )
        for offered in sorted({r.offered_per_s for r in runs if not r.saturated}):
            light = [r for r in runs if r.offered_per_s == offered]
            worst_throttle = max(r.throttled_share for r in light)
            lines.append(
                f"- **{mode}** at {offered:g} changes/s offered, below the quota ({_shards(light)} shards): throttled "
                f"at most {worst_throttle:.1%} → {'meets' if worst_throttle < 0.03 else 'misses'} < 3 % throttled."
            )
    serial = {_cost_key(r): r for r in pacing if r.deployment.pacing == "serial"}
    for mode, name in (("shared", "shared budget"), ("capped", f"shared budget at reserved concurrency {CAP}")):
        runs = [r for r in pacing if r.deployment.pacing == mode and not r.foreign_share and _cost_key(r) in serial]
        for offered in sorted({r.offered_per_s for r in runs}, reverse=True):
            ratios = [
                (r, r.cost_per_million / serial[_cost_key(r)].cost_per_million)
                for r in runs
                if r.offered_per_s == offered
            ]
            worst, ratio = max(ratios, key=lambda x: x[1])
            load = "saturated" if worst.saturated else f"{offered:g} changes/s offered, below the quota"
            lines.append(
                f"- **cost** ({load}; Lambda GB-seconds + state-table writes per million changes, same memory): the "
                f"{name} costs {min(x for _, x in ratios):.2f}-{ratio:.2f}x the serial design (worst: "
                f"{worst.workload.shards} shards, {worst.quota_model}) → "
                + ("within 2x." if ratio <= 2 else "over 2x: concurrent invocations are billed while they wait.")
            )
    return "\n".join(lines)


def _shards(runs: Sequence[RunResult]) -> str:
    return ", ".join(str(n) for n in sorted({r.workload.shards for r in runs}))


def _cost_key(r: RunResult) -> tuple[int, str, float]:
    return (r.workload.shards, r.quota_model, r.offered_per_s)


def section(results: Sequence[RunResult], pacing: Sequence[RunResult], header: str) -> str:
    return f"""### Performance on the local cloud

{header}

{main_table(results)}

Concurrent invocations (a Kinesis stream with several shards; one invocation per shard, all sharing the dataset
group's 10 calls/s):

{pacing_table(pacing)}

{conclusion(pacing)}

![local-cloud benchmark](bench/results/localcloud.png)

**Sharing one quota.** The PutItems quota is 10 calls per second per *dataset group*, shared by every concurrent
invocation: one per shard (times the parallelization factor) of every source wired to the function, and the
operator tools. With `STATE_TABLE` (the stack's default) every attempt takes a slot from one timeline per dataset
group in DynamoDB (`connector/budget.py`): reservations are first-in first-out in small blocks, capped at 9.7 calls/s
each sent within 15 ms of its slot (any 11 attempts span more than a second), and a throttle lowers the shared
rate for everyone until it recovers.
Reserved concurrency 1 (the earlier default) cannot be deployed on a new account, leaves shards waiting on rejected
invokes, and fires the Throttles metric all day; independent pacers (each invocation alone) drift into phase.

Reproduce with `.venv/bin/python -m bench.bench_localcloud` (`--quick` for a smoke run, `--repeats 3` for
medians); {_runs_note(pacing)} on a 2-core machine, ratios matter more than absolute values.
"""


def _runs_note(pacing: Sequence[RunResult]) -> str:
    runs = max((r.runs for r in pacing), default=1)
    return "figures are from one run" if runs == 1 else f"figures are medians of {runs} runs per cell"


# --------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="much smaller workloads (a smoke run, under 2 minutes)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite the Markdown and the chart from the last run's saved results",
    )
    parser.add_argument("--save", type=Path, help="also save this run's results to this file (for --combine)")
    parser.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        metavar="SAVED",
        help="render one report from several runs saved with --save (their rows in the order given); run nothing",
    )
    parser.add_argument("--shards", help="comma-separated shard counts (default 1,2,4,8; --quick: 2,4)")
    parser.add_argument("--models", help=f"comma-separated quota models (default all: {','.join(QUOTA_MODELS)})")
    parser.add_argument(
        "--strategies",
        help=f"comma-separated: {','.join(STRATEGIES)} (default {','.join(DEFAULT_STRATEGIES)}; capped: the shared "
        f"budget at reserved concurrency {CAP})",
    )
    parser.add_argument(
        "--skip-single", action="store_true", help="skip the single-shard workloads against the naive baseline"
    )
    parser.add_argument(
        "--memory-mb", type=int, help="the function's memory for every strategy (default: cdk.json's lambda.memoryMb)"
    )
    parser.add_argument("--changes", type=int, help="changes per shard-count workload (default 1,500)")
    parser.add_argument("--no-foreign", action="store_true", help="skip the runs with a foreign writer")
    parser.add_argument(
        "--foreign-only", action="store_true", help="only the shared budget's runs with a foreign writer"
    )
    parser.add_argument(
        "--offered",
        type=float,
        default=OFFERED_PER_S,
        help=f"changes/s the writer offers (default {OFFERED_PER_S:g}: above the quota, saturated; lower: what a "
        "steady sub-quota load costs)",
    )
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=LATENCY_MS,
        help=f"the emulator's PutItems latency before its 0-{JITTER_MS:g} ms jitter (default {LATENCY_MS:g}; AWS "
        "documents none): with PUT_ITEMS_IN_FLIGHT=1 an invocation sends one call at a time and cannot fill the "
        "quota above about 90 ms",
    )
    parser.add_argument(
        "--in-flight",
        help="comma-separated PUT_ITEMS_IN_FLIGHT values to deploy each connector cell with, side by side in the "
        "same run (an A/B, e.g. 1,3; default: the runtime's default, unnamed)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs per concurrent-invocation cell, interleaved; the tables show each cell's medians (use an odd N)",
    )
    parser.add_argument(
        "--log-level", help="the function's POWERTOOLS_LOG_LEVEL (DEBUG logs every PutItems slot the budget misses)"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.offered <= 0:
        parser.error("--offered must be positive")
    if args.latency_ms < 0:
        parser.error("--latency-ms must not be negative")
    if args.foreign_only and (args.no_foreign or args.strategies not in (None, "shared")):
        parser.error("--foreign-only runs the shared budget beside a foreign writer: drop --no-foreign / --strategies")
    if args.render_only or args.combine:
        paths = args.combine or [LAST_RUN]
        if missing := [str(path) for path in paths if not path.is_file()]:
            parser.error(f"no saved run at {', '.join(missing)}")
        runs = [pickle.loads(path.read_bytes()) for path in paths]  # noqa: S301 - our own files
        header = runs[0]["header"] if len(runs) == 1 else "\n\n".join(f"- {run['header']}" for run in runs)
        write_outputs([r for run in runs for r in run["results"]], [r for run in runs for r in run["pacing"]], header)
        return 0
    shard_counts: tuple[int, ...]
    if args.quick:  # a smoke run: small workloads, a 1 s batching window instead of the stack's
        n_single, n_shards, shard_counts, models, min_box, window = 300, 400, (2, 4), QUOTA_MODELS[::3], 6.0, 1.0
    else:
        n_single, n_shards, shard_counts, models, min_box, window = 2_500, 1_500, (1, 2, 4, 8), QUOTA_MODELS, 15.0, None
    if args.shards:
        shard_counts = tuple(int(x) for x in args.shards.split(","))
    if args.changes:
        n_shards = args.changes
    if args.log_level:
        EXTRA_ENV["POWERTOOLS_LOG_LEVEL"] = args.log_level.upper()
    if args.models:
        models = tuple(args.models.split(","))
        if unknown := set(models) - set(QUOTA_MODELS):
            parser.error(f"unknown quota model(s) {sorted(unknown)}; choose from {', '.join(QUOTA_MODELS)}")
    in_flights: tuple[int | None, ...] = (None,)
    if args.in_flight:
        try:
            in_flights = tuple(int(x) for x in args.in_flight.split(","))
        except ValueError:
            parser.error(f"--in-flight takes whole numbers, e.g. 1,3 (got {args.in_flight!r})")
        if bad := [n for n in in_flights if not 1 <= (n or 0) <= 10]:
            parser.error(f"--in-flight values must be 1-10 (PUT_ITEMS_IN_FLIGHT), got {bad}")
    memory = args.memory_mb or int(json.loads((ROOT / "cdk.json").read_text())["context"]["lambda"]["memoryMb"])
    strategies = tuple(args.strategies.split(",")) if args.strategies else DEFAULT_STRATEGIES
    if unknown := set(strategies) - set(STRATEGIES):
        parser.error(f"unknown strateg(ies) {sorted(unknown)}; choose from {', '.join(STRATEGIES)}")
    max_box = 150.0
    began = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - began:6.1f} s] {message}", flush=True)

    log(
        f"local-cloud benchmark ({'quick' if args.quick else 'full'}): emulator {TPS:g} calls/s, "
        f"{args.latency_ms:g} ms (+0-{JITTER_MS:g} ms), writer offers {args.offered:g} changes/s"
    )
    bench = Bench(args.latency_ms)
    results: list[RunResult] = []
    pacing: list[RunResult] = []

    def one(workload: WorkloadSpec, deployment: Deployment, model: str, foreign: float = 0.0) -> RunResult:
        extra = f" + {foreign:.0%} foreign writer" if foreign else ""
        log(f"{workload.title}, {model}{extra}: {deployment.label}")
        run = run_once(
            bench,
            workload,
            deployment,
            time_box=max_box,
            log=log,
            batching_window_s=window,
            quota_model=model,
            foreign_share=foreign,
            offered_per_s=args.offered,
        )
        _summary(run, log)
        return run

    try:
        keys = () if args.skip_single else ("unique", "zipf", "poison")
        single = [make_workload(k, n_single, seed=args.seed) for k in keys]
        for workload in single:
            conn = one(workload, connector("shared", 1, memory), "sliding-window")
            results.append(conn)
            box = min(max_box, max(min_box, conn.seconds))
            log(f"{workload.title}: naive baseline (time box {box:.0f} s, the connector's time)")
            naive = run_once(
                bench, workload, NAIVE, time_box=box, log=log, batching_window_s=window, offered_per_s=args.offered
            )
            results.append(naive)
            _summary(naive, log)
        for repeat in range(args.repeats):
            if args.repeats > 1:
                log(f"repeat {repeat + 1} of {args.repeats}")
            for shards in shard_counts:
                workload = make_workload("shards", n_shards, seed=args.seed, shards=shards)
                for n in in_flights:
                    for model in () if args.foreign_only else models:
                        for mode in strategies:
                            pacing.append(one(workload, connector(mode, shards, memory, n), model))
                    if "shared" in strategies and not args.no_foreign:
                        shared = connector("shared", shards, memory, n)
                        pacing.append(one(workload, shared, models[0], foreign=0.2))
                        if not args.quick and "strict-spacing" in models[1:]:
                            pacing.append(one(workload, shared, "strict-spacing", foreign=0.2))
    finally:
        bench.close()

    header = (
        f"Local-cloud benchmark ({'quick' if args.quick else 'full'} run, {time.strftime('%Y-%m-%d')}, "
        f"Python {sys.version.split()[0]}): emulator at {TPS:g} PutItems calls/s per dataset group, "
        f"{args.latency_ms:g} ms + 0-{JITTER_MS:g} ms latency; the writer offers {args.offered:g} changes/s; "
        f"ESM batch size and window from cdk.json; the baseline is time-boxed to the connector's time on the same "
        f"workload (“box”: it had not finished)"
        + (f"; concurrent-invocation cells: median of {args.repeats} runs each" if args.repeats > 1 else "")
        + f". Total {time.monotonic() - began:.0f} s."
    )
    LAST_RUN.parent.mkdir(parents=True, exist_ok=True)
    saved = pickle.dumps({"results": results, "pacing": pacing, "header": header})
    LAST_RUN.write_bytes(saved)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_bytes(saved)
    write_outputs(results, pacing, header)
    log(f"wrote {RESULTS / 'localcloud.md'}, {RESULTS / 'localcloud.png'}, {RESULTS / 'README-section.md'}")
    return 0


def write_outputs(results: Sequence[RunResult], runs: Sequence[RunResult], header: str) -> None:
    pacing = medians(runs)
    text = f"{header}\n\n{main_table(results)}\n\n{pacing_table(pacing)}\n\n{conclusion(pacing)}\n"
    print("\n" + text, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "localcloud.md").write_text(text + "\n![local-cloud benchmark](localcloud.png)\n")
    chart(results, pacing, RESULTS / "localcloud.png")
    (RESULTS / "README-section.md").write_text(section(results, pacing, header))


def _summary(r: RunResult, log: Callable[[str], None]) -> None:
    late = "" if math.isnan(r.throttled_late) else f" (2nd half {r.throttled_late:.1%})"
    late_rate = "" if math.isnan(r.items_per_s_late) else f" (2nd half {r.items_per_s_late:.1f})"
    log(
        f"  → {r.seconds:.1f} s{'' if r.converged else ' (time box)'}: {r.items_per_s:.1f} items/s{late_rate}, "
        f"{r.items_per_call:.2f} items/call, calls ÷ min {r.calls_over_min:.2f}, "
        f"throttled {r.throttled_share:.1%}{late}, "
        f"latency p50/p99 {_latency(r)}, visible {_visible(r)}, billed {r.handler_s_per_1k:.1f} s/1k, "
        f"redelivered {r.redeliveries:,}, DLQ {r.dlq}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
