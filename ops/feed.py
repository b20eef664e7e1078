"""One way into the dataset for the operator tools: Lambda-shaped records through the runtime's own pipeline.

``backfill``, ``redrive`` and ``replay`` never call PutItems themselves. They build stream records shaped exactly
like Lambda's (for a DynamoDB image: an ``INSERT`` record with ``Keys`` and ``NewImage``, or a ``REMOVE`` with
``Keys`` and ``OldImage`` for an item that no longer exists, the table's ARN as ``eventSourceARN`` and a synthetic
increasing sequence number) and hand them to :func:`connector.pipeline.run` with a runtime from
:func:`connector.handler.build_runtime`. So every path gets the same mapping, coalescing, 10-item packing,
budget pacing (the runtime's PutItems client takes its slots from the shared budget in ``STATE_TABLE``, which the
tools require), poison → DLQ with the reason, and retry outcomes. The deadline is
:meth:`connector.deadline.Deadline.unbounded`: a tool has no Lambda deadline.

**Retries.** The pipeline reports what did not land yet in ``batchItemFailures``. Every record built or replayed
here carries its own sequence number, so those are exactly the retried records; :meth:`Feeder.feed` sends them
again after a backoff (0.5 s doubling up to 30 s) until they land or the operator stops (Ctrl-C): nothing is
dropped. A retried record is counted once, by its final outcome (put / poison / skipped); ``retries`` counts the
re-sends.

**Never regress an item (DynamoDB sources): put, then verify.** The stream keeps writing while a tool runs, and a
tool writes an image it read earlier, so its PutItems can land *after* the stream wrote a newer image of the same
item. :meth:`Feeder.feed_table` therefore re-reads every item it has just written (``BatchGetItem``,
``ConsistentRead``) and writes again each item whose current image differs from the image written (an item now
missing becomes a ``REMOVE``: the mapping's ``onRemove`` properties, or nothing under ``"ignore"``), and repeats
until every verifying read equals what was written last. Why that converges to the table's final state: let
``P`` be the tool's last PutItems of an item, of image ``I``, and ``R`` the verifying read after it, which
returned ``I``. (a) Every change made to the item after ``R`` goes through the stream, and the stream's PutItems
of it happens after the change, so after ``R``, so after ``P``: it wins (PutItems replaces the whole item).
(b) Every change made before ``R`` ended in ``I`` (the consistent read says so). The stream may write some of
those older images after ``P``, but it writes an item's changes in order, so its last write of a change made
before ``R`` is ``I`` itself (or something newer, by (a)). So once the stream has caught up, the dataset holds
the image of the item's last change, or ``I`` if nothing changed after ``R``: the table's final state, whatever
the interleaving. Without the verifying read, an image read before a concurrent update could land last and stay.
A key that keeps changing makes the loop run again for as long as it changes; each round costs one slot.

**Kinesis.** For CDC over Kinesis the records replayed are the original ones: the runtime's version guard
(``STATE_TABLE``) refuses a version older than the one already written, so a replay cannot regress. A plain Kinesis
JSON document carries no version: replaying an old document *can* regress an item that the stream has updated
since. The callers refuse such records unless the operator passes ``--force`` (see :func:`is_unversioned`).

**Threads.** The backfill scans segments in parallel threads; they share one runtime, and :meth:`Feeder.feed`
runs one pipeline batch at a time (the sink keeps per-call state). PutItems is paced at about ten calls a second
anyway, so this costs nothing while one call takes less than the slot interval (about 100 ms); the scans and the
verifying reads run in parallel.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from connector import change, item, pipeline, source
from connector.change import Kind, Poison
from connector.config import Settings
from connector.deadline import Deadline
from connector.handler import Runtime, build_runtime
from connector.putitems import PendingItem, check_limits, coalesce
from connector.response import Outcome
from ops.common import OpsError

BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
BATCH_GET_MAX = 100  # keys per BatchGetItem
FEED_BATCH = 100  # records per pipeline batch (ten PutItems calls of ten items)

Image = dict[str, Any]  # a DynamoDB item in DynamoDB JSON
KeyTuple = tuple[tuple[str, str], ...]  # a hashable form of an item's key


SYSTEMIC_ROUNDS = 4  # rounds in a row stopped by a systemic error before a tool gives up (about 3.5 s of backoff)


class Systemic(OpsError):
    """PutItems keeps failing for the whole dataset (permission, dataset, schema): an operator must fix it."""


class Stopped(Exception):
    """The operator stopped the tool while records were still waiting to be retried."""

    def __init__(self, pending: int) -> None:
        super().__init__(f"stopped with {pending} record(s) not landed yet")
        self.pending = pending


@dataclass(slots=True)
class Tally:
    """What the tool did, summed over every batch (thread-safe through :meth:`add`)."""

    put: int = 0
    poison: int = 0
    skipped: int = 0
    retries: int = 0  # records sent again after a retry outcome
    rewritten: int = 0  # items written again because the verifying read differed (concurrent stream writes)
    calls: int = 0  # accepted PutItems calls
    items_sent: int = 0
    throttles: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


@dataclass(frozen=True, slots=True)
class Table:
    """A source table: its name, ARN, key attribute names (DescribeTable) and approximate item count."""

    name: str
    arn: str
    keys: tuple[str, ...]
    item_count: int = 0

    def key_of(self, image: Image) -> Image:
        return {k: image[k] for k in self.keys}


class TableMissing(OpsError):
    """The table a record came from does not exist (any more, or in this account and region)."""


def describe_table(dynamodb: Any, name: str) -> Table:
    try:
        t = dynamodb.describe_table(TableName=name)["Table"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            raise TableMissing(f"table {name!r} does not exist (in this account and region)") from None
        raise
    keys = tuple(k["AttributeName"] for k in t["KeySchema"])
    return Table(t["TableName"], t["TableArn"], keys, int(t.get("ItemCount", 0)))


def table_name_from_arn(arn: str) -> str | None:
    """``arn:aws:dynamodb:<region>:<account>:table/<name>[/stream/<label>]`` → ``<name>``."""
    parts = arn.split(":", 5)
    if len(parts) == 6 and parts[2] == "dynamodb" and parts[5].startswith("table/"):
        return parts[5].split("/")[1] or None
    return None


def key_tuple(key: Mapping[str, Any]) -> KeyTuple:
    """A hashable, order-free form of a DynamoDB key (DynamoDB JSON)."""
    return tuple(sorted((name, repr(sorted(value.items()))) for name, value in key.items()))


def normalized(value: Any) -> Any:
    """DynamoDB JSON with set members sorted (a set's order is not part of the item) for comparisons."""
    if isinstance(value, dict):
        return {
            k: sorted(v) if k in ("SS", "NS", "BS") and isinstance(v, list) else normalized(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [normalized(v) for v in value]
    return value


class SequenceNumbers:
    """Synthetic, increasing sequence numbers (digits, like the stream's), unique across runs of the tools."""

    def __init__(self) -> None:
        self._next = itertools.count(time.time_ns())
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            return str(next(self._next))


def table_record(
    table: Table, key: Image, image: Image | None, seq: str, *, old: Image | None = None
) -> dict[str, Any]:
    """A DynamoDB Streams record as Lambda delivers it: ``INSERT`` of ``image``, or ``REMOVE`` (``image`` None)
    with ``old`` (the last image written) as the ``OldImage``."""
    body: dict[str, Any] = {
        "ApproximateCreationDateTime": int(time.time()),
        "Keys": key,
        "SequenceNumber": seq,
        "SizeBytes": 0,
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    }
    if image is not None:
        body["NewImage"] = image
    elif old is not None:
        body["OldImage"] = old
    return {
        "eventID": f"ops-{seq}",
        "eventName": "INSERT" if image is not None else "REMOVE",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": table.arn.split(":")[3] if table.arn.count(":") >= 5 else "",
        "dynamodb": body,
        "eventSourceARN": table.arn,
    }


def is_unversioned(record: Mapping[str, Any]) -> bool:
    """A plain Kinesis JSON document: no version, so replaying it may regress the item (needs ``--force``)."""
    parsed = source.parse_event({"Records": [record]})[0]
    return parsed.format is source.Format.KINESIS_DOCUMENT


def preview(records: list[dict[str, Any]], settings: Settings) -> Counter[str]:
    """What the current mapping makes of ``records`` without writing anything (``--dry-run``): the runtime's own
    parse → change → item → limits steps, counted as ``put`` / ``poison`` / ``skipped``. PutItems' own checks
    (the dataset's schema on the service side) cannot be previewed."""
    counts: Counter[str] = Counter()
    changes = []
    for record in source.parse_event({"Records": records}):
        if record.ttl_delete and settings.skip_ttl_deletes:
            counts["skipped"] += 1
            continue
        try:
            parsed = change.from_record(record, settings.mapping)
        except Poison:
            counts["poison"] += 1
            continue
        if parsed.kind is Kind.REMOVE and settings.mapping.on_remove is None:
            counts["skipped"] += 1
            continue
        changes.append(parsed)
    for group in coalesce(changes):
        for c in group.changes:
            try:
                props = item.build(c, settings.mapping)
                pending = PendingItem(group, c, item.serialize(props) if props else None)
                bad = check_limits(pending)
            except Poison:
                bad = "poison"
            except Exception:  # the pipeline makes any build failure poison too
                bad = "poison"
            counts["poison" if bad else "put"] += 1
    return counts


class Feeder:
    """The runtime, built once, and the retry loop around :func:`connector.pipeline.run`."""

    def __init__(
        self,
        settings: Settings,
        *,
        dynamodb: Any,
        personalize: Any = None,
        sqs: Any = None,
        state_dynamodb: Any = None,
        max_share: float = 1.0,
        stop: threading.Event | None = None,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        require_dlq: bool = True,
    ) -> None:
        if not settings.state_table:
            raise OpsError(
                "STATE_TABLE is not set: the operator tools share the PutItems quota with the stream through it "
                "(pass --state-table, the stack's StateTableName output)"
            )
        if require_dlq and not settings.dlq_url:
            raise OpsError(
                "DLQ_URL is not set: a record that can never land would be retried forever "
                "(pass --dlq-url, the stack's DLQ URL)"
            )
        if not 0 < max_share <= 1:
            raise OpsError(f"--share {max_share:g} must be in (0, 1]")
        self.settings = settings
        self.dynamodb = dynamodb  # reads of the source table (not the state table)
        self.runtime: Runtime = build_runtime(
            settings, personalize=personalize, sqs=sqs, dynamodb=state_dynamodb, max_share=max_share
        )
        if self.runtime.budget is None:  # build_runtime wires budget.from_settings when STATE_TABLE is set
            raise OpsError("the shared PutItems budget could not be built from STATE_TABLE")
        self.stop = stop or threading.Event()
        self.tally = Tally()
        self.seq = SequenceNumbers()
        self._backoff = (backoff_base_s, backoff_max_s)
        self._lock = threading.Lock()

    @property
    def budget(self) -> Any:
        return self.runtime.budget

    # --- any records -----------------------------------------------------------------------------------------

    def feed(self, records: list[dict[str, Any]], tally: Tally | None = None) -> None:
        """Put ``records`` through the pipeline; send the retried ones again, with a backoff, until every record
        is put, poison (dead-lettered by the pipeline) or skipped. Raise :class:`Stopped` if the operator stops
        first."""
        todo = records
        delay = self._backoff[0]
        rounds = 0  # rounds in a row stopped by a systemic error
        while todo:
            with self._lock:
                result = pipeline.run(
                    {"Records": todo},
                    settings=self.settings,
                    sink=self.runtime.sink,
                    sqs=self.runtime.sqs,
                    deadline=Deadline.unbounded(),
                    dlq_worst_ms=self.runtime.dlq_worst_ms,
                    guard=self.runtime.guard,
                    respond=False,  # retried by outcome below, not by Lambda's sequence-number report
                )
                if self.runtime.budget is not None:
                    self.runtime.budget.release()
            counts = result.counts
            outcome = {
                "put": counts.get(Outcome.PUT, 0),
                "poison": counts.get(Outcome.POISON, 0),
                "skipped": counts.get(Outcome.SKIPPED, 0),
            }
            for t in (self.tally, tally):
                if t is not None:
                    t.add(**outcome)
            self.tally.add(
                calls=result.report.calls, items_sent=result.report.items_sent, throttles=result.report.throttles
            )
            todo = [r for r, o in zip(todo, result.outcomes, strict=True) if o is Outcome.RETRY]
            if not todo:
                return
            systemic = result.report.systemic
            rounds = rounds + 1 if systemic else 0
            if systemic and rounds >= SYSTEMIC_ROUNDS:  # unlike an outage, waiting does not fix it
                raise Systemic(
                    f"PutItems fails for the whole dataset ({systemic}), {rounds} times in a row: check the dataset "
                    "ARN, this identity's personalize:PutItems permission and that the mapping's schema is the "
                    "dataset's; nothing was lost, run the command again once it is fixed"
                )
            self.tally.add(retries=len(todo))
            if self.stop.wait(delay):
                raise Stopped(len(todo))
            delay = min(delay * 2, self._backoff[1])

    # --- DynamoDB items: put, then verify -------------------------------------------------------------------

    def feed_table(
        self,
        table: Table,
        images: Iterable[Image | tuple[Image, None]],
        tally: Tally | None = None,
        *,
        old: Mapping[KeyTuple, Image] | None = None,
    ) -> None:
        """Write the current state of items of ``table``: each element is an item image (DynamoDB JSON, as
        Scan returns it), or ``(key, None)`` for an item known to be gone, written as a ``REMOVE`` whose
        ``OldImage`` is ``old[key]`` if given. Put, then verify (module docstring)."""
        written: dict[KeyTuple, tuple[Image, Image | None]] = {}  # key → (key, image written or None)
        for entry in images:
            if isinstance(entry, tuple):
                key, image = entry[0], None
            else:
                key, image = table.key_of(entry), entry
            written[key_tuple(key)] = (key, image)
        last_image: dict[KeyTuple, Image] = dict(old or {})
        last_image.update({k: img for k, (_, img) in written.items() if img is not None})
        todo = dict(written)
        first = True
        while todo:
            records = [
                table_record(table, key, image, self.seq(), old=last_image.get(k)) for k, (key, image) in todo.items()
            ]
            for start in range(0, len(records), FEED_BATCH):
                self.feed(records[start : start + FEED_BATCH], tally if first else None)
            if not first:
                self.tally.add(rewritten=len(todo))
            first = False
            current = self.read_current(table, [key for key, _ in todo.values()])
            changed: dict[KeyTuple, tuple[Image, Image | None]] = {}
            for k, (key, image) in todo.items():
                now = current.get(k)
                if (now is None) != (image is None) or (
                    now is not None and image is not None and normalized(now) != normalized(image)
                ):
                    changed[k] = (key, now)
                if image is not None:
                    last_image[k] = image
            todo = changed

    def read_current(self, table: Table, keys: list[Image]) -> dict[KeyTuple, Image]:
        return read_current(self.dynamodb, table, keys, self.stop)


def read_current(
    dynamodb: Any, table: Table, keys: list[Image], stop: threading.Event | None = None
) -> dict[KeyTuple, Image]:
    """The current images of ``keys`` (BatchGetItem, ConsistentRead), by key; a missing item is absent."""
    stop = stop or threading.Event()
    found: dict[KeyTuple, Image] = {}
    for start in range(0, len(keys), BATCH_GET_MAX):
        chunk = keys[start : start + BATCH_GET_MAX]
        request: dict[str, Any] = {table.name: {"Keys": chunk, "ConsistentRead": True}}
        delay = 0.05
        while request:
            answer = dynamodb.batch_get_item(RequestItems=request)
            for image in answer.get("Responses", {}).get(table.name, []):
                found[key_tuple(table.key_of(image))] = image
            request = answer.get("UnprocessedKeys") or {}
            if request:
                if stop.wait(delay):
                    raise Stopped(len(request[table.name]["Keys"]))
                delay = min(delay * 2, 5.0)
    return found


def _sequence_number(record: Mapping[str, Any]) -> str | None:
    body = record.get("dynamodb") if "dynamodb" in record else record.get("kinesis")
    if isinstance(body, dict):
        seq = body.get("SequenceNumber") or body.get("sequenceNumber")
        return seq if isinstance(seq, str) else None
    return None


def rate_text(done: float, started: float, clock: Callable[[], float] = time.monotonic) -> str:
    elapsed = max(1e-9, clock() - started)
    return f"{done / elapsed:,.1f}/s"


# --- records that failed once (DLQ, on-failure destination): what to feed for each ---------------------------


@dataclass(slots=True)
class Plan:
    """What to feed for a set of original records (``redrive``, ``replay``).

    * a DynamoDB Streams record: the table's **current** item, re-read by its keys (never the old image, which
      may be older than what the stream has written since); a missing item becomes a ``REMOVE`` with the
      record's image as ``OldImage``;
    * CDC over Kinesis: the original record (the version guard refuses it if a newer version was written);
    * a plain Kinesis document: the original record with ``force``, else it is left (no version: it may regress);
    * a record that cannot be parsed: the original record, so the pipeline dead-letters it with its reason.
    """

    tables: dict[str, dict[KeyTuple, tuple[Image, Image | None]]] = field(
        default_factory=dict
    )  # name → key → (key, old)
    records: list[dict[str, Any]] = field(default_factory=list)
    left: list[tuple[int, str]] = field(default_factory=list)  # (index in the input, why it is not fed)
    accepted: list[int] = field(default_factory=list)  # indexes of the input that the plan feeds
    table_of: dict[int, str] = field(default_factory=dict)  # index in the input → its table (DynamoDB records)

    def unfed(self, missing: Mapping[str, str]) -> list[tuple[int, str]]:
        """The accepted records whose table :func:`feed_plan` found missing, with the reason."""
        return [(i, missing[self.table_of[i]]) for i in self.accepted if self.table_of.get(i) in missing]


UNVERSIONED = (
    "a Kinesis JSON document carries no version: replaying it can overwrite a newer update of the item that the "
    "stream has written since; pass --force to replay it anyway"
)


def plan(records: list[Any], *, force: bool = False) -> Plan:
    out = Plan()
    for index, raw in enumerate(records):
        if not isinstance(raw, dict) or raw.get("truncated") is True:
            out.left.append(
                (
                    index,
                    "the record was too big for the message and was truncated: read it from the stream by its "
                    "eventSourceARN and sequenceNumber while the stream retains it",
                )
            )
            continue
        parsed = source.parse_event({"Records": [raw]})[0]
        if parsed.error is None and parsed.format is source.Format.DYNAMODB_STREAM:
            name = table_name_from_arn(parsed.event_source_arn or "")
            if name and parsed.keys:
                old = parsed.new_image or parsed.old_image
                out.tables.setdefault(name, {})[key_tuple(parsed.keys)] = (parsed.keys, old)
                out.accepted.append(index)
                out.table_of[index] = name
                continue
        if parsed.error is None and parsed.format is source.Format.KINESIS_DOCUMENT and not force:
            out.left.append((index, UNVERSIONED))
            continue
        out.records.append(raw)
        out.accepted.append(index)
    return out


def _by_stream_order(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Original records grouped by source, each in stream order (the pipeline's order within a batch)."""
    return sorted(records, key=lambda r: (str(r.get("eventSourceARN", "")), change.sequence_value(_sequence_number(r))))


def feed_plan(feeder: Feeder, p: Plan, tally: Tally | None = None) -> dict[str, str]:
    """Feed everything ``p`` accepted (see :class:`Plan`); raise :class:`Stopped` if the operator stops.

    Returns the tables that no longer exist, with the reason: their records were not fed (:meth:`Plan.unfed`),
    and one such record must not stop the others."""
    missing: dict[str, str] = {}
    for name, keys in p.tables.items():
        try:
            table = describe_table(feeder.dynamodb, name)
        except TableMissing as exc:
            missing[name] = str(exc)
            continue
        wanted = [key for key, _ in keys.values()]
        current = feeder.read_current(table, wanted)
        entries: list[Image | tuple[Image, None]] = [current.get(k) or (key, None) for k, (key, _) in keys.items()]
        old = {k: img for k, (_, img) in keys.items() if img is not None}
        feeder.feed_table(table, entries, tally, old=old)
    ordered = _by_stream_order(p.records)
    for start in range(0, len(ordered), FEED_BATCH):
        feeder.feed(ordered[start : start + FEED_BATCH], tally)
    return missing


def preview_plan(p: Plan, settings: Settings, dynamodb: Any) -> Counter[str]:
    """``--dry-run``: what :func:`feed_plan` would do with the current mapping and the current table items."""
    counts: Counter[str] = Counter()
    seq = SequenceNumbers()
    for name, keys in p.tables.items():
        try:
            table = describe_table(dynamodb, name)
        except TableMissing:
            counts["left: the table no longer exists"] += len(keys)
            continue
        current = read_current(dynamodb, table, [key for key, _ in keys.values()])
        records = [
            table_record(table, key, current.get(k), seq(), old=None if k in current else old)
            for k, (key, old) in keys.items()
        ]
        counts.update(preview(records, settings))
    counts.update(preview(_by_stream_order(p.records), settings))
    return counts
