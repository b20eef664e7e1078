"""A realistic catalog workload for the local cloud, and an independent model of the Personalize items it implies.

The workload writes to the two sources of the example stack (cdk.json: a table keyed by ``sku``, a Kinesis
stream) through ordinary boto3 calls, and remembers everything it did:

* **DynamoDB** (ids ``sku-00001`` ...): inserts (``BatchWriteItem``), updates (``UpdateItem`` with ``SET``,
  ``ADD`` and ``REMOVE``, and full ``PutItem`` replaces) that favour a few hot items (Zipf-like weights), deletes
  (a REMOVE becomes a soft delete, ``STATUS=deleted`` over the old image) and a few items deleted then
  re-created.
* **Kinesis JSON documents** (ids ``doc-0001`` ...): one to three versions of each document, in stream order;
  values in the loose forms producers send (numbers as strings, ``"true"``, ISO dates, lists).
* **Kinesis DynamoDB CDC** (ids ``cdc-0001`` ...), shaped like Kinesis Data Streams for DynamoDB, with
  ``ApproximateCreationDateTime`` in milliseconds; some items' versions are delivered out of order within one
  ``PutRecords`` call, some twice, and some items have an older version held back and written with the next
  round, after the newer ones (``cdc_late_share``): across batches, only the version guard (``STATE_TABLE``)
  keeps it from landing last.
* **Bad records**, each known exactly (:class:`BadRecord`): an item whose price cannot be coerced, a categorical
  value over 1,000 characters, an item without its required creation time, data that is not JSON, a document
  without an id, an int field holding a fraction. Each bad item id is written once and never touched again.

The id spaces of the three sources are disjoint, so the final state is well defined.

**The expected items** (:meth:`Workload.expected_items`) are computed here from the final state, with the rules
of DESIGN.md written out again by hand for the example schema (``examples/items-schema.json``) and mapping
(``examples/mapping.json``), not with the connector's code: property keys in camelCase, ``PRICE`` from
``listPrice`` and ``CREATION_TIMESTAMP`` from ``createdAt``, a string set joined with ``|`` in sorted order (a
JSON list in its own order), numbers coerced to the field's type, the creation time in epoch seconds, and a
deleted item written as its old image with ``status: "deleted"``.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Literal

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

__all__ = [
    "BadRecord",
    "Workload",
    "WorkloadSpec",
    "expected_properties",
]

CATEGORICAL_MAX = 1_000
GENRES = (
    "action", "adventure", "animation", "biography", "comedy", "crime", "documentary", "drama", "family",
    "fantasy", "history", "horror", "music", "mystery", "romance", "sci-fi", "sport", "thriller", "war", "western",
)  # fmt: skip
ADJECTIVES = ("Silent", "Golden", "Broken", "Hidden", "Electric", "Crimson", "Last", "Wild", "Quiet", "Endless")
NOUNS = ("River", "Empire", "Garden", "Signal", "Harbor", "Machine", "Summer", "Frontier", "Mirror", "Orbit")
STATUSES = ("active", "preorder", "discontinued")
BASE_EPOCH_S = 1_700_000_000  # 2023-11-14
CHANGES_PER_ITEM = 1.89  # changes written per DynamoDB item with the default WorkloadSpec shares (measured)

_serializer = TypeSerializer()


def _ddb(image: dict[str, Any]) -> dict[str, Any]:
    """A native image (str, int, Decimal, bool, set, list, dict) in DynamoDB JSON."""
    return {k: _serializer.serialize(v) for k, v in image.items()}


# --------------------------------------------------------------------------------------------------------------
# The expectation model (independent of lambda_src/connector)
# --------------------------------------------------------------------------------------------------------------


class Unlandable(ValueError):
    """The image can never become a valid item (the record is poison)."""


def _number(value: Any, what: str) -> int | float:
    if isinstance(value, bool):
        raise Unlandable(f"{what}: a bool is not a number")
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        try:
            parsed = Decimal(value.strip())
        except ArithmeticError:
            raise Unlandable(f"{what}: {value!r} is not a number") from None
        if not parsed.is_finite():
            raise Unlandable(f"{what}: not finite")
        return int(parsed) if parsed == parsed.to_integral_value() else float(parsed)
    raise Unlandable(f"{what}: a {type(value).__name__} is not a number")


def _categorical(value: Any, what: str) -> str:
    if isinstance(value, set | frozenset):
        text = "|".join(sorted(value))  # a string set has no order: sorted
    elif isinstance(value, list):
        text = "|".join(str(v) for v in value)  # a list keeps its order
    elif isinstance(value, str):
        text = value
    else:
        raise Unlandable(f"{what}: a {type(value).__name__} is not a string")
    if len(text) > CATEGORICAL_MAX:
        raise Unlandable(f"{what}: categorical value over {CATEGORICAL_MAX} characters")
    return text


def _epoch_seconds(value: Any) -> int:
    if isinstance(value, str):
        try:
            value = Decimal(value.strip())
        except ArithmeticError:
            moment = datetime.fromisoformat(value)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return int(moment.timestamp())
    number = _number(value, "createdAt")
    if number >= 10**14:
        return int(number // 1_000_000)
    if number >= 10**11:
        return int(number // 1_000)
    return int(number)


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise Unlandable(f"in_stock: {value!r} is not a boolean")


def expected_properties(image: dict[str, Any], *, deleted: bool = False) -> dict[str, Any]:
    """The properties Personalize should hold for an item whose source image is ``image`` (native values).

    The example mapping, by hand: ``title`` → ``title``, ``genres`` → ``genres`` (categorical), ``listPrice`` →
    ``price`` (float), ``number_of_ratings`` → ``numberOfRatings`` (int), ``in_stock`` → ``inStock``,
    ``status`` → ``status`` (categorical), ``createdAt`` → ``creationTimestamp`` (epoch seconds, required).
    Everything else (``sku``, ``internalNotes``, ``dims``, ``tags`` ...) is not in the schema and is dropped.
    ``deleted``: the old image with ``status`` set to ``"deleted"``. Raises :class:`Unlandable` for poison.
    """
    props: dict[str, Any] = {}
    if image.get("title") is not None:
        props["title"] = str(image["title"])
    if image.get("genres"):
        props["genres"] = _categorical(image["genres"], "genres")
    if image.get("listPrice") is not None:
        props["price"] = float(_number(image["listPrice"], "listPrice"))
    if image.get("number_of_ratings") is not None:
        ratings = _number(image["number_of_ratings"], "number_of_ratings")
        if isinstance(ratings, float):
            if not ratings.is_integer():
                raise Unlandable("number_of_ratings: a fraction cannot fill an int")
            ratings = int(ratings)
        props["numberOfRatings"] = ratings
    if image.get("in_stock") is not None:
        props["inStock"] = _boolean(image["in_stock"])
    status = "deleted" if deleted else image.get("status")
    if status is not None:
        props["status"] = _categorical(status, "status")
    if image.get("createdAt") is None:
        raise Unlandable("createdAt: required")
    props["creationTimestamp"] = _epoch_seconds(image["createdAt"])
    return props


# --------------------------------------------------------------------------------------------------------------
# The workload
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkloadSpec:
    """How much to write. ``items`` DynamoDB items; documents and CDC items scale with it unless given."""

    items: int = 2_000
    seed: int = 7
    updates_per_item: float = 0.8  # updates, as a share of items (Zipf-distributed over the items)
    delete_share: float = 0.06
    recreate_share: float = 0.2  # of the deleted items, re-created later
    documents: int | None = None  # default items // 10
    cdc_items: int | None = None  # default items // 20
    rounds: int = 12  # the writes are interleaved across sources in this many rounds
    write_seconds: float = 0.0  # spread the rounds over this long (0: as fast as moto takes them)
    bad_records: bool = True
    # How many bad records to write. None: one of each of the 8 kinds, placed as the demo always did. A number:
    # that many, cycling through the kinds (``bad-price-00002`` ...), spread evenly through every round.
    bad_count: int | None = None
    # The share of CDC items whose last two versions arrive swapped (in one PutRecords call).
    cdc_out_of_order_share: float = 0.4
    # The share of CDC items one of whose older versions is held back and written with the next CDC round (a
    # later PutRecords call, so usually a later batch): only the version guard (STATE_TABLE) keeps it from
    # overwriting the newer version written before it.
    cdc_late_share: float = 0.2
    # What the function's mapping does with REMOVE records: "soft" (examples/mapping.json: STATUS=deleted over
    # the old image) or "ignore" (the demo overrides the mapping; a deleted item keeps its last image).
    on_remove: Literal["soft", "ignore"] = "soft"
    # A catalog that exists before the stack (ids ``cat-00001`` ...): written by :meth:`Workload.write_catalog`
    # before the event source mappings start, with no stream records (the demo's first act loads it). While it
    # is loaded, ``catalog_update_share`` of those items are updated through the stream
    # (:meth:`Workload.write_catalog_updates`); the rest of the workload follows.
    catalog: int = 0
    catalog_update_share: float = 0.1

    @classmethod
    def for_changes(cls, changes: int, *, poison_share: float = 0.01, **options: Any) -> WorkloadSpec:
        """A spec that writes about ``changes`` changes, ``poison_share`` of them bad records (known exactly).

        Calibrated on the default shares: each DynamoDB item makes about 1.9 changes in all (its insert, Zipf
        updates, deletes and re-creations, plus its share of Kinesis documents and CDC records).
        """
        items = max(20, round(changes / CHANGES_PER_ITEM))
        return cls(items=items, bad_count=max(8, round(changes * poison_share)), **options)

    @property
    def n_documents(self) -> int:
        return self.documents if self.documents is not None else max(5, self.items // 10)

    @property
    def n_cdc_items(self) -> int:
        return self.cdc_items if self.cdc_items is not None else max(5, self.items // 20)


@dataclass
class BadRecord:
    """A record written on purpose that can never land; it must end up in the poison DLQ, and nothing else.

    DynamoDB bad records are matched by ``item_id`` (their stream sequence number is not known to the writer);
    Kinesis ones by ``sequence_number`` (filled in when written).
    """

    label: str
    source: Literal["dynamodb", "kinesis"]
    item_id: str | None
    reason_prefix: str
    sequence_number: str | None = None

    def key(self) -> str:
        return f"{self.source}:{self.item_id if self.source == 'dynamodb' else self.sequence_number}"


@dataclass
class Counters:
    ddb_writes: int = 0  # write requests that change an item (each makes one stream record)
    ddb_inserts: int = 0
    ddb_updates: int = 0
    ddb_deletes: int = 0
    kinesis_documents: int = 0
    kinesis_cdc: int = 0
    kinesis_bad: int = 0
    catalog_items: int = 0  # written before the stack's mappings started, with no stream record
    catalog_updates: int = 0  # catalog items updated through the stream (also counted in ddb_updates)
    done: bool = False

    @property
    def changes(self) -> int:
        return self.ddb_writes + self.kinesis_documents + self.kinesis_cdc + self.kinesis_bad


@dataclass
class _CdcRecord:
    item_id: str
    event_name: str
    new: dict[str, Any] | None
    old: dict[str, Any] | None
    ts_ms: int


@dataclass
class Workload:
    """Generates and writes the workload, and models the final state of every source."""

    spec: WorkloadSpec
    table_name: str
    stream_name: str
    stream_arn: str
    table_arn: str = ""
    counters: Counters = field(default_factory=Counters)
    bad: list[BadRecord] = field(default_factory=list)
    # Final state: DynamoDB items (native values), deleted items' last image, documents, CDC items.
    table: dict[str, dict[str, Any]] = field(default_factory=dict)
    tombstones: dict[str, dict[str, Any]] = field(default_factory=dict)
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)
    cdc: dict[str, tuple[dict[str, Any], bool]] = field(default_factory=dict)  # id -> (image, deleted)
    kinesis_sequence_numbers: list[str] = field(default_factory=list)
    cdc_out_of_order: int = 0
    cdc_duplicates: int = 0
    cdc_late: int = 0  # older CDC versions delivered in a later PutRecords call than a newer one
    _late: list[tuple[str, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.spec.seed)
        self._catalog_rng = random.Random(self.spec.seed + 1_000_003)
        self._started = time.monotonic()
        self.catalog_ids: list[str] = []
        # The writer waits between steps while ``gate`` is clear, and sets ``held`` while it waits (the demo
        # holds the writes for the instant moto's export thread reads the table: moto has no point in time).
        self.gate = threading.Event()
        self.gate.set()
        self.held = threading.Event()

    # -- the pre-existing catalog --------------------------------------------------------------------------
    def write_catalog(self, ddb: Any, *, progress: Callable[[int], None] | None = None) -> int:
        """Write the ``spec.catalog`` items of the pre-existing catalog (``BatchWriteItem``); returns how many.

        Its values come from a generator of their own, so ``catalog=0`` leaves the rest of the workload exactly
        as it was. Call it while the table's stream is detached (:meth:`LocalCloud.without_stream`)."""
        ids = [f"cat-{i:05d}" for i in range(1, self.spec.catalog + 1)]
        main_rng, self._rng = self._rng, self._catalog_rng
        try:
            for chunk in _batches(ids, 25):
                items = [self.new_item(sku) for sku in chunk]
                requests = [{"PutRequest": {"Item": _ddb(item)}} for item in items]
                while requests:
                    answer = ddb.batch_write_item(RequestItems={self.table_name: requests})
                    requests = answer.get("UnprocessedItems", {}).get(self.table_name, [])
                for item in items:
                    self.table[item["sku"]] = item
                self.counters.catalog_items += len(items)
                if progress is not None:
                    progress(len(items))
        finally:
            self._catalog_rng, self._rng = self._rng, main_rng
        self.catalog_ids = ids
        return len(ids)

    def write_catalog_updates(self, ddb: Any, *, seconds: float, stop: Callable[[], bool] = lambda: False) -> None:
        """The first act's stream: ``catalog_update_share`` of the catalog items updated (through the stream),
        spread over ``seconds``, until ``stop()``; honours :attr:`gate`. Updates only: a backfill's put-then-verify
        is proved for concurrent updates (see :mod:`ops.feed`), not for concurrent deletes."""
        total = round(len(self.catalog_ids) * self.spec.catalog_update_share)
        picks = self._catalog_rng.sample(self.catalog_ids, min(total, len(self.catalog_ids)))
        began = time.monotonic()
        main_rng, self._rng = self._rng, self._catalog_rng
        try:
            for n, sku in enumerate(picks):
                until = began + seconds * n / max(1, len(picks))
                while not stop() and (time.monotonic() < until or not self.gate.is_set()):
                    if not self.gate.is_set():
                        self.held.set()
                    time.sleep(0.02)
                self.held.clear()
                if stop():
                    return
                self._update_step(sku, catalog=True)(ddb, None)
        finally:
            self._catalog_rng, self._rng = self._rng, main_rng

    # -- generating values ---------------------------------------------------------------------------------
    def _title(self) -> str:
        return f"The {self._rng.choice(ADJECTIVES)} {self._rng.choice(NOUNS)}"

    def _created_at(self) -> Any:
        """Creation time in one of the forms producers use: ISO (naive, Z, offset), epoch s or epoch ms."""
        moment = BASE_EPOCH_S + self._rng.randrange(0, 90 * 86_400)
        form = self._rng.randrange(5)
        if form == 0:
            return datetime.fromtimestamp(moment, UTC).replace(tzinfo=None).isoformat()
        if form == 1:
            return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")
        if form == 2:
            return datetime.fromtimestamp(moment, UTC).astimezone(timezone(timedelta(hours=2))).isoformat()
        if form == 3:
            return moment
        return moment * 1000 + self._rng.randrange(1000)

    def _price(self) -> Decimal:
        return Decimal(self._rng.randrange(199, 9999)) / 100

    def new_item(self, sku: str) -> dict[str, Any]:
        """A catalog item as the table holds it (native values; boto3 serializes them)."""
        rng = self._rng
        item: dict[str, Any] = {
            "sku": sku,
            "title": self._title(),
            "listPrice": self._price(),
            "number_of_ratings": rng.randrange(0, 5000),
            "in_stock": rng.random() < 0.8,
            "createdAt": self._created_at(),
            "internalNotes": "supplier: acme",  # excluded / not in the schema
            "dims": {"width": rng.randrange(1, 50), "height": rng.randrange(1, 50)},  # not in the schema
        }
        genres = set(rng.sample(GENRES, rng.randrange(0, 4)))
        if genres:
            item["genres"] = genres
        if rng.random() < 0.5:
            item["status"] = rng.choice(STATUSES)
        return item

    def new_document(self, sku: str) -> dict[str, Any]:
        """A JSON document about an item, with the loose types real producers send."""
        rng = self._rng
        doc: dict[str, Any] = {"sku": sku, "title": self._title(), "createdAt": self._created_at()}
        price = float(self._price())
        doc["listPrice"] = str(price) if rng.random() < 0.3 else price
        ratings = rng.randrange(0, 500)
        doc["number_of_ratings"] = rng.choice([ratings, str(ratings), float(ratings)])
        stock = rng.random() < 0.7
        doc["in_stock"] = rng.choice([stock, "true" if stock else "false"])
        genres = rng.sample(GENRES, rng.randrange(0, 4))
        if genres:
            doc["genres"] = genres  # a list: joined in its own order
        if rng.random() < 0.3:
            doc["status"] = rng.choice(STATUSES)
        doc["tags"] = ["catalog", "feed"]  # not in the schema
        return doc

    # -- the expected final Personalize items --------------------------------------------------------------
    def expected_items(self) -> dict[str, dict[str, Any]]:
        """``{item id: properties}`` that the dataset must hold once everything has landed."""
        soft = self.spec.on_remove == "soft"  # under "ignore", a deleted item keeps its last image
        expected: dict[str, dict[str, Any]] = {}
        for sku, item in self.table.items():
            expected[sku] = expected_properties(item)
        for sku, image in self.tombstones.items():
            expected[sku] = expected_properties(image, deleted=soft)
        for sku, doc in self.documents.items():
            expected[sku] = expected_properties(doc)
        for sku, (image, deleted) in self.cdc.items():
            expected[sku] = expected_properties(image, deleted=deleted and soft)
        return expected

    def expected_dlq(self) -> list[BadRecord]:
        return list(self.bad)

    # -- writing -------------------------------------------------------------------------------------------
    def write(
        self,
        ddb: Any,
        kinesis: Any,
        *,
        stop: Callable[[], bool] = lambda: False,
    ) -> None:
        """Write the whole workload (blocking); ``counters`` advance as it goes, for live progress."""
        self._started = time.monotonic()
        try:
            for step in self._plan(stop):
                while not self.gate.is_set() and not stop():
                    self.held.set()
                    self.gate.wait(0.05)
                self.held.clear()
                if stop():
                    return
                step(ddb, kinesis)
        finally:
            self.counters.done = True

    def _pace_step(self, share: float, stop: Callable[[], bool]) -> Callable[[Any, Any], None]:
        """Sleep until ``share`` of ``write_seconds`` has passed since the first write (live-stream pacing)."""

        def step(_: Any, __: Any) -> None:
            until = self._started + share * self.spec.write_seconds
            while not stop() and time.monotonic() < until:
                time.sleep(min(0.1, until - time.monotonic()))

        return step

    def _plan(self, stop: Callable[[], bool]) -> Iterator[Callable[[Any, Any], None]]:
        spec, rng = self.spec, self._rng
        skus = [f"sku-{i:05d}" for i in range(1, spec.items + 1)]
        doc_ids = [f"doc-{i:04d}" for i in range(1, spec.n_documents + 1)]
        cdc_ids = [f"cdc-{i:04d}" for i in range(1, spec.n_cdc_items + 1)]
        rounds = max(1, spec.rounds)
        # Zipf-like popularity for updates: the k-th most popular item gets weight 1/k.
        popularity = skus[:]
        rng.shuffle(popularity)
        weights = [1.0 / (k + 1) for k in range(len(popularity))]
        n_updates = round(spec.items * spec.updates_per_item)
        n_deletes = round(spec.items * spec.delete_share)
        if spec.bad_records and spec.bad_count is not None:
            yield from self._plan_spread(
                stop, skus=skus, doc_ids=doc_ids, cdc_ids=cdc_ids, popularity=popularity, weights=weights
            )
            return
        bad = self._bad_steps() if spec.bad_records else []
        for r in range(rounds):
            inserts = _chunk(skus, rounds, r)
            yield from (self._insert_step(chunk) for chunk in _batches(inserts, 25))
            written = skus[: (r + 1) * len(skus) // rounds]
            written_set = set(written)
            for _ in range(_chunk_len(n_updates, rounds, r)):
                sku = rng.choices(popularity, weights)[0]
                if sku in self.table and sku in written_set:
                    yield self._update_step(sku)
            candidates = [s for s in written if s in self.table]
            for sku in rng.sample(candidates, min(len(candidates), _chunk_len(n_deletes, rounds, r))):
                yield self._delete_step(sku)
            if r >= rounds // 2:  # re-create a share of the items deleted earlier
                for sku in list(self.tombstones)[: int(len(self.tombstones) * spec.recreate_share)]:
                    if rng.random() < 0.5:
                        yield self._recreate_step(sku)
            docs = _chunk(doc_ids, rounds, r)
            if docs:
                yield self._documents_step(docs)
            cdc = _chunk(cdc_ids, rounds, r)
            if cdc:
                yield self._cdc_step(cdc)
            if bad and r % max(1, rounds // len(bad)) == 0:
                yield bad.pop(0)
            yield self._pace_step((r + 1) / rounds, stop)
        yield from bad
        yield self._late_cdc_step()

    def _plan_spread(
        self,
        stop: Callable[[], bool],
        *,
        skus: list[str],
        doc_ids: list[str],
        cdc_ids: list[str],
        popularity: list[str],
        weights: list[float],
    ) -> Iterator[Callable[[Any, Any], None]]:
        """The same rounds as :meth:`_plan`, with ``spec.bad_count`` bad records spread evenly through each."""
        spec, rng = self.spec, self._rng
        rounds = max(1, spec.rounds)
        n_updates = round(spec.items * spec.updates_per_item)
        n_deletes = round(spec.items * spec.delete_share)
        bad = self._bad_steps(spec.bad_count or 0)
        total_bad = len(bad)
        for r in range(rounds):
            steps: list[Callable[[Any, Any], None]] = []
            inserts = _chunk(skus, rounds, r)
            steps.extend(self._insert_step(chunk) for chunk in _batches(inserts, 25))
            written = skus[: (r + 1) * len(skus) // rounds]
            written_set = set(written)
            for _ in range(_chunk_len(n_updates, rounds, r)):
                sku = rng.choices(popularity, weights)[0]
                if sku in written_set:
                    steps.append(self._update_step(sku))
            # Generated a round ahead of execution: this round's inserts are not in the table model yet.
            fresh = set(inserts)
            deletable = [s for s in written if s in self.table or s in fresh]
            steps.extend(
                self._delete_step(sku)
                for sku in rng.sample(deletable, min(len(deletable), _chunk_len(n_deletes, rounds, r)))
            )
            if r >= rounds // 2:
                steps.extend(
                    self._recreate_step(sku)
                    for sku in list(self.tombstones)[: int(len(self.tombstones) * spec.recreate_share)]
                    if rng.random() < 0.5
                )
            docs = _chunk(doc_ids, rounds, r)
            if docs:
                steps.append(self._documents_step(docs))
            cdc = _chunk(cdc_ids, rounds, r)
            if cdc:
                steps.append(self._cdc_step(cdc))
            mine = _chunk_len(total_bad, rounds, r)
            round_bad, bad = bad[:mine], bad[mine:]
            every = max(1, len(steps) // max(1, len(round_bad)))
            for i, step in enumerate(steps):
                yield step
                if round_bad and i % every == every - 1:
                    yield round_bad.pop(0)
            yield from round_bad
            yield self._pace_step((r + 1) / rounds, stop)
        yield from bad
        yield self._late_cdc_step()

    # -- DynamoDB steps ------------------------------------------------------------------------------------
    def _insert_step(self, chunk: list[str]) -> Callable[[Any, Any], None]:
        def step(ddb: Any, _: Any) -> None:
            items = [self.new_item(sku) for sku in chunk]
            requests = [{"PutRequest": {"Item": _ddb(item)}} for item in items]
            while requests:
                answer = ddb.batch_write_item(RequestItems={self.table_name: requests})
                requests = answer.get("UnprocessedItems", {}).get(self.table_name, [])
            for item in items:
                self.table[item["sku"]] = item
                self.tombstones.pop(item["sku"], None)
            self.counters.ddb_inserts += len(items)
            self.counters.ddb_writes += len(items)

        return step

    def _update_step(self, sku: str, *, catalog: bool = False) -> Callable[[Any, Any], None]:
        def step(ddb: Any, _: Any) -> None:
            item = self.table.get(sku)
            if item is None:
                return
            rng = self._rng
            kind = rng.random()
            if kind < 0.2:  # a full replace, keeping the identity and creation time
                fresh = self.new_item(sku)
                fresh["createdAt"] = item["createdAt"]
                ddb.put_item(TableName=self.table_name, Item=_ddb(fresh))
                self.table[sku] = fresh
            else:
                sets: dict[str, Any] = {"listPrice": self._price()}
                removes: list[str] = []
                if rng.random() < 0.5:
                    sets["in_stock"] = not item.get("in_stock", False)
                if rng.random() < 0.2:
                    if "status" in item and rng.random() < 0.5:
                        removes.append("status")
                    else:
                        sets["status"] = rng.choice(STATUSES)
                names = {f"#a{i}": name for i, name in enumerate([*sets, *removes, "number_of_ratings"])}
                by_name = {v: k for k, v in names.items()}
                values = {f":v{i}": _serializer.serialize(v) for i, v in enumerate(sets.values())}
                values[":one"] = {"N": "1"}
                expr = "SET " + ", ".join(f"{by_name[n]} = :v{i}" for i, n in enumerate(sets))
                expr += f" ADD {by_name['number_of_ratings']} :one"
                if removes:
                    expr += " REMOVE " + ", ".join(by_name[n] for n in removes)
                ddb.update_item(
                    TableName=self.table_name,
                    Key={"sku": {"S": sku}},
                    UpdateExpression=expr,
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues=values,
                )
                item.update(sets)
                item["number_of_ratings"] = item.get("number_of_ratings", 0) + 1
                for name in removes:
                    item.pop(name, None)
            self.counters.ddb_updates += 1
            self.counters.ddb_writes += 1
            self.counters.catalog_updates += int(catalog)

        return step

    def _delete_step(self, sku: str) -> Callable[[Any, Any], None]:
        def step(ddb: Any, _: Any) -> None:
            item = self.table.pop(sku, None)
            if item is None:
                return
            ddb.delete_item(TableName=self.table_name, Key={"sku": {"S": sku}})
            self.tombstones[sku] = item
            self.counters.ddb_deletes += 1
            self.counters.ddb_writes += 1

        return step

    def _recreate_step(self, sku: str) -> Callable[[Any, Any], None]:
        def step(ddb: Any, _: Any) -> None:
            if sku not in self.tombstones:
                return
            item = self.new_item(sku)
            ddb.put_item(TableName=self.table_name, Item=_ddb(item))
            del self.tombstones[sku]
            self.table[sku] = item
            self.counters.ddb_inserts += 1
            self.counters.ddb_writes += 1

        return step

    # -- Kinesis steps -------------------------------------------------------------------------------------
    def _put_records(self, kinesis: Any, payloads: list[tuple[str, bytes]]) -> list[str]:
        """PutRecords in order (retrying failed entries in order is not possible, so one at a time then)."""
        sequence_numbers: list[str] = []
        for start in range(0, len(payloads), 500):
            chunk = payloads[start : start + 500]
            answer = kinesis.put_records(
                StreamName=self.stream_name, Records=[{"Data": data, "PartitionKey": key} for key, data in chunk]
            )
            if answer.get("FailedRecordCount"):
                raise RuntimeError(f"PutRecords failed for {answer['FailedRecordCount']} records")
            sequence_numbers.extend(r["SequenceNumber"] for r in answer["Records"])
        self.kinesis_sequence_numbers.extend(sequence_numbers)
        return sequence_numbers

    def _documents_step(self, ids: list[str]) -> Callable[[Any, Any], None]:
        def step(_: Any, kinesis: Any) -> None:
            rng = self._rng
            queues: dict[str, list[bytes]] = {}
            for sku in ids:
                versions: list[dict[str, Any]] = []
                for _version in range(rng.choice([1, 1, 2, 3])):
                    doc = self.new_document(sku)
                    if versions:
                        doc["createdAt"] = versions[0]["createdAt"]
                    versions.append(doc)
                queues[sku] = [json.dumps(doc).encode() for doc in versions]
                self.documents[sku] = versions[-1]
            # Documents of different items interleave at random; one item's versions stay in their order.
            payloads: list[tuple[str, bytes]] = []
            while queues:
                sku = rng.choice(list(queues))
                payloads.append((sku, queues[sku].pop(0)))
                if not queues[sku]:
                    del queues[sku]
            self._put_records(kinesis, payloads)
            self.counters.kinesis_documents += len(payloads)

        return step

    def _cdc_history(self, sku: str) -> list[_CdcRecord]:
        rng = self._rng
        ts = (BASE_EPOCH_S + 100 * 86_400) * 1000 + rng.randrange(10**7)
        image = self.new_item(sku)
        history = [_CdcRecord(sku, "INSERT", dict(image), None, ts)]
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            old = dict(image)
            image = {**image, "listPrice": self._price(), "number_of_ratings": image["number_of_ratings"] + 1}
            ts += rng.randrange(1, 2000)
            history.append(_CdcRecord(sku, "MODIFY", dict(image), old, ts))
        if rng.random() < 0.15:
            ts += rng.randrange(1, 2000)
            history.append(_CdcRecord(sku, "REMOVE", None, dict(image), ts))
        return history

    def _cdc_payload(self, record: _CdcRecord) -> bytes:
        body: dict[str, Any] = {
            "ApproximateCreationDateTime": record.ts_ms,
            "Keys": {"sku": {"S": record.item_id}},
            "SizeBytes": 200,
        }
        if record.new is not None:
            body["NewImage"] = _ddb(record.new)
        if record.old is not None:
            body["OldImage"] = _ddb(record.old)
        message = {
            "awsRegion": "us-east-1",
            "eventID": f"{record.item_id}-{record.ts_ms}",
            "eventName": record.event_name,
            "userIdentity": None,
            "recordFormat": "application/json",
            "tableName": "catalog-mirror",
            "dynamodb": body,
            "eventSource": "aws:dynamodb",
        }
        return json.dumps(message, default=_json_default).encode()

    def _cdc_step(self, ids: list[str]) -> Callable[[Any, Any], None]:
        def step(_: Any, kinesis: Any) -> None:
            rng = self._rng
            payloads, self._late = self._late, []  # older versions held back by the previous round go first
            for sku in ids:
                history = self._cdc_history(sku)
                delivery = list(history)
                if len(delivery) > 1 and rng.random() < self.spec.cdc_late_share:  # an older version, later
                    late = delivery.pop(rng.randrange(len(delivery) - 1))
                    self._late.append((sku, self._cdc_payload(late)))
                    self.cdc_late += 1
                if len(delivery) > 1 and rng.random() < self.spec.cdc_out_of_order_share:  # the last two swapped
                    delivery[-1], delivery[-2] = delivery[-2], delivery[-1]
                    self.cdc_out_of_order += 1
                if rng.random() < 0.25:  # an at-least-once duplicate of some version, right after the original
                    i = rng.randrange(len(delivery))
                    delivery.insert(i + 1, delivery[i])
                    self.cdc_duplicates += 1
                payloads.extend((sku, self._cdc_payload(r)) for r in delivery)
                last = history[-1]
                image = last.new if last.new is not None else last.old
                assert image is not None
                self.cdc[sku] = (image, last.event_name == "REMOVE")
            # One PutRecords call, each item's records contiguous (but for the late ones).
            self._put_records(kinesis, payloads)
            self.counters.kinesis_cdc += len(payloads)

        return step

    def _late_cdc_step(self) -> Callable[[Any, Any], None]:
        """Write the older CDC versions still held back (after the last round)."""

        def step(_: Any, kinesis: Any) -> None:
            late, self._late = self._late, []
            if late:
                self._put_records(kinesis, late)
                self.counters.kinesis_cdc += len(late)

        return step

    # -- bad records ---------------------------------------------------------------------------------------
    def _bad_steps(self, count: int = 8) -> list[Callable[[Any, Any], None]]:
        """``count`` bad records, cycling through the 8 kinds; the n-th record of a kind gets ids ``...-0000n``."""
        steps: list[Callable[[Any, Any], None]] = []
        for n in range(1, count // 8 + 2):
            steps.extend(self._bad_kinds(n))
        return steps[:count]

    def _bad_kinds(self, n: int) -> list[Callable[[Any, Any], None]]:
        """One bad record of each kind; ``n`` numbers the ids (``n=1``: the demo's original ids)."""
        suffix = "" if n == 1 else f"-{n:05d}"

        def ddb_bad(label: str, item: dict[str, Any], reason: str) -> Callable[[Any, Any], None]:
            def step(ddb: Any, _: Any) -> None:
                ddb.put_item(TableName=self.table_name, Item=_ddb(item))
                self.bad.append(BadRecord(label, "dynamodb", item["sku"], reason))
                self.counters.ddb_writes += 1
                self.counters.ddb_inserts += 1

            return step

        def kinesis_bad(label: str, item_id: str | None, data: bytes, reason: str) -> Callable[[Any, Any], None]:
            def step(_: Any, kinesis: Any) -> None:
                (seq,) = self._put_records(kinesis, [(item_id or label, data)])
                self.bad.append(BadRecord(label, "kinesis", item_id, reason, seq))
                self.counters.kinesis_bad += 1

            return step

        price = self.new_item(f"bad-price-{n:05d}")
        price["listPrice"] = "N/A"
        long_genres = self.new_item(f"bad-genres-{n:05d}")
        long_genres["genres"] = {f"{g}-{i:03d}-subgenre" for i, g in enumerate(GENRES * 4)}
        undated = self.new_item(f"bad-undated-{n:05d}")
        del undated["createdAt"]
        doc_price = self.new_document(f"doc-bad-price{suffix}")
        doc_price["listPrice"] = "cheap"
        doc_status = self.new_document(f"doc-bad-status{suffix}")
        doc_status["status"] = "x" * 1_500
        no_id = self.new_document("doc-no-id")
        del no_id["sku"]
        cdc_id = f"cdc-bad-ratings{suffix}"
        cdc_record = _CdcRecord(cdc_id, "INSERT", self.new_item(cdc_id), None, 1_700_000_000_000)
        assert cdc_record.new is not None
        cdc_record.new["number_of_ratings"] = Decimal("3.5")
        return [
            ddb_bad("DynamoDB item, listPrice 'N/A'", price, "field PRICE:"),
            kinesis_bad(
                "Kinesis data that is not JSON", None, b'{"sku": "doc-truncated", "title": "Th', "data is not JSON"
            ),
            ddb_bad("DynamoDB item, genres over 1,000 characters", long_genres, "field GENRES: categorical value over"),
            kinesis_bad("document without sku", None, json.dumps(no_id).encode(), "no item id"),
            ddb_bad("DynamoDB item without createdAt", undated, "field CREATION_TIMESTAMP: required"),
            kinesis_bad(
                "document, listPrice 'cheap'", f"doc-bad-price{suffix}", json.dumps(doc_price).encode(), "field PRICE:"
            ),
            kinesis_bad(
                "document, status over 1,000 characters",
                f"doc-bad-status{suffix}",
                json.dumps(doc_status).encode(),
                "field STATUS: categorical value over",
            ),
            kinesis_bad(
                "CDC record, number_of_ratings 3.5",
                cdc_id,
                self._cdc_payload(cdc_record),
                "field NUMBER_OF_RATINGS:",
            ),
        ]

    # -- checks of the model itself ------------------------------------------------------------------------
    def verify_table(self, ddb: Any) -> list[str]:
        """Compare the model of the table with a scan of it (the model must be the source's real final state)."""
        deserializer = TypeDeserializer()
        actual: dict[str, dict[str, Any]] = {}
        for page in ddb.get_paginator("scan").paginate(TableName=self.table_name):
            for raw in page["Items"]:
                item = {k: deserializer.deserialize(v) for k, v in raw.items()}
                actual[item["sku"]] = item
        problems: list[str] = []
        bad_ids = {b.item_id for b in self.bad if b.source == "dynamodb" and b.item_id}
        model_ids = set(self.table) | bad_ids
        if set(actual) != model_ids:
            problems.append(f"table ids differ from the model: {sorted(set(actual) ^ model_ids)[:10]}")
        differing = [
            sku
            for sku, item in self.table.items()
            if sku in actual and _normalise(actual[sku]) != _normalise(_roundtrip(deserializer, item))
        ]
        if differing:
            problems.append(f"{len(differing)} table items differ from the model, e.g. {differing[:5]}")
        return problems


def _roundtrip(deserializer: TypeDeserializer, item: dict[str, Any]) -> dict[str, Any]:
    return {k: deserializer.deserialize(v) for k, v in _ddb(item).items()}


def _normalise(item: dict[str, Any]) -> str:
    return json.dumps(item, sort_keys=True, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(type(value).__name__)


def _chunk(values: list[str], parts: int, index: int) -> list[str]:
    return values[index * len(values) // parts : (index + 1) * len(values) // parts]


def _chunk_len(total: int, parts: int, index: int) -> int:
    return (index + 1) * total // parts - index * total // parts


def _batches(values: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]
