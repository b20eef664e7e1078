"""The final-state promise as a property (issue 8), for every source kind and ``onRemove`` mode.

Hypothesis draws a stream of upserts and removes over a few keys (some poison by the mapping, some rejected by
the service), batch boundaries, transient PutItems and DLQ failures; a Lambda-like loop delivers the stream
(redelivering from the lowest reported sequence number, compared as a number) until it is done. Then:

* the dataset equals the model: for each item, the newest change that can land, in the sources' true order;
* every record poison by the mapping is in the DLQ, every DLQ entry is a bad record, and every change the
  service rejects that is newer than its item's final state is in the DLQ (by eventSourceARN, sequence number);
* each invocation's outcome counts add up to the records it received.

CDC over Kinesis runs twice: with the version guard (``STATE_TABLE`` in moto), with reordering and duplicates
anywhere in the stream and any batch boundaries; and without it, with reordering and duplicates inside the
batches Lambda first delivers (redeliveries start anywhere in such a batch), which is what the connector alone
promises.
"""

from __future__ import annotations

import base64
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from connector import pipeline
from connector.config import load_settings
from connector.deadline import Deadline
from connector.putitems import Pacer, PutItemsSink
from tests.factories import DATASET_ARN, KINESIS_ARN, TABLE_STREAM_ARN, cdc_payload, dynamodb_record, kinesis_record
from tests.fakes import FakePersonalize, moto_state_table

DLQ_URL = "https://sqs.us-east-1.amazonaws.com/111122223333/poison"
SOFT_DELETE = {"STATUS": "deleted"}
BASE_TS_MS = 1_764_000_000_000
MAX_INVOCATIONS = 2_000
GARBAGE = [
    base64.b64encode(b"%%% not json").decode(),  # data is not JSON
    "***",  # data is not base64
    base64.b64encode(b"[" * 50_000 + b"]" * 50_000).decode(),  # nested too deeply to parse (RecursionError)
    base64.b64encode(json.dumps({"name": "no id"}).encode()).decode(),  # no item id
]


@dataclass
class Op:
    key: str
    kind: str  # "upsert" | "remove" | "garbage"
    flavor: str  # "good" | "poison" (by the mapping) | "reject" (by the service)
    value: int


@dataclass
class Truth:
    """One change as the source made it, in true order, and the record(s) that carry it."""

    key: str
    kind: str
    image: dict[str, Any] | None  # the image the item is built from (new image, or old image for a remove)
    seqs: list[str] = field(default_factory=list)  # the stream records that carry it (duplicates included)


def image(op: Op, id_attr: str) -> dict[str, Any]:
    img: dict[str, Any] = {id_attr: op.key, "v": op.value}
    if op.flavor == "poison":
        img["__"] = 1  # no ASCII letter or digit: the mapping cannot name it
    if op.flavor == "reject":
        img["reject"] = True  # the fake service rejects it
    return img


def props(img: dict[str, Any], id_attr: str) -> dict[str, Any]:
    return {k: v for k, v in img.items() if k != id_attr}


class Seqs:
    """Sequence numbers that cross digit lengths, so a string comparison would get the order wrong."""

    def __init__(self) -> None:
        self.n = 0

    def __next__(self) -> str:
        self.n += 1
        return str(3 + self.n * 7)


# --- building the stream ------------------------------------------------------------------------------------


def dynamodb_stream(ops: list[Op]) -> tuple[list[dict[str, Any]], list[Truth]]:
    table: dict[str, dict[str, Any]] = {}
    records, truth, seqs = [], [], Seqs()
    for op in ops:
        seq = next(seqs)
        if op.kind == "remove" and op.key in table:
            old = table.pop(op.key)
            records.append(dynamodb_record("REMOVE", {"sku": op.key}, old=old, seq=seq))
            truth.append(Truth(op.key, "remove", old, [seq]))
        else:
            new = image(op, "sku")
            name = "MODIFY" if op.key in table else "INSERT"
            records.append(dynamodb_record(name, {"sku": op.key}, new, old=table.get(op.key), seq=seq))
            table[op.key] = new
            truth.append(Truth(op.key, "upsert", new, [seq]))
    return records, truth


def document_stream(ops: list[Op]) -> tuple[list[dict[str, Any]], list[Truth]]:
    records, truth, seqs = [], [], Seqs()
    for op in ops:
        seq = next(seqs)
        if op.kind == "garbage":
            records.append(kinesis_record(GARBAGE[op.value % len(GARBAGE)], seq=seq))
            truth.append(Truth("", "garbage", None, [seq]))
            continue
        doc = image(op, "itemId")
        records.append(kinesis_record(doc, seq=seq))
        truth.append(Truth(op.key, "upsert", doc, [seq]))
    return records, truth


def cdc_stream(
    ops: list[Op], arrival: list[int], duplicates: list[int], *, spread: bool = True
) -> tuple[list[dict[str, Any]], list[Truth]]:
    """CDC payloads in true order, delivered in ``arrival`` order, with a copy of each of ``duplicates`` arriving
    after it (right after it unless ``spread``)."""
    table: dict[str, dict[str, Any]] = {}
    payloads, truth = [], []
    for n, op in enumerate(ops):
        ts = BASE_TS_MS + n * 1_000
        if op.kind == "remove" and op.key in table:
            old = table.pop(op.key)
            payloads.append(cdc_payload("REMOVE", {"sku": op.key}, old=old, ts=ts))
            truth.append(Truth(op.key, "remove", old))
        else:
            new = image(op, "sku")
            payloads.append(cdc_payload("MODIFY", {"sku": op.key}, new, old=table.get(op.key), ts=ts))
            table[op.key] = new
            truth.append(Truth(op.key, "upsert", new))
    order = list(arrival)
    for d in duplicates:
        order.insert(order.index(d) + 1 + (d % 3 if spread else 0), d)
    records, seqs = [], Seqs()
    for n in order:
        seq = next(seqs)
        records.append(kinesis_record(payloads[n], seq=seq))
        truth[n].seqs.append(seq)
    return records, truth


# --- the model ----------------------------------------------------------------------------------------------


def relevant(t: Truth, on_remove: str) -> bool:
    return t.kind == "upsert" or (t.kind == "remove" and on_remove == "soft")


def flavor(t: Truth) -> str:
    if t.kind == "garbage" or (t.image is not None and "__" in t.image):
        return "poison"
    return "reject" if t.image is not None and "reject" in t.image else "good"


def model(truth: list[Truth], on_remove: str, id_attr: str) -> dict[str, dict[str, Any]]:
    state: dict[str, dict[str, Any]] = {}
    for t in truth:
        if not relevant(t, on_remove) or flavor(t) != "good":
            continue
        assert t.image is not None
        built = props(t.image, id_attr)
        if t.kind == "remove":
            built["status"] = "deleted"
        state[t.key] = built
    return state


# --- the Lambda-like loop -----------------------------------------------------------------------------------


class FlakySQS:
    """SendMessageBatch that fails whole calls as ``failures`` says, then always works."""

    def __init__(self, failures: list[bool]) -> None:
        self.failures = iter(failures)
        self.messages: list[dict[str, Any]] = []

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        if next(self.failures, False):
            raise ClientError({"Error": {"Code": "InternalError", "Message": "down"}}, "SendMessageBatch")
        for entry in Entries:
            assert len(entry["MessageBody"].encode()) < 262_144
            self.messages.append(json.loads(entry["MessageBody"]))
        return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}


def throttling_rule(failures: list[bool], *, jitter_s: float = 0.0) -> Any:
    """``jitter_s``: each call is answered after up to that long, so calls in flight together finish in any order."""
    pending = iter(failures)
    rng = random.Random(len(failures))

    def rule(items: list[dict[str, Any]]) -> tuple[str, str] | None:
        if jitter_s:
            time.sleep(rng.uniform(0, jitter_s))
        if next(pending, False):
            return ("ThrottlingException", "Rate exceeded")
        if any(json.loads(i.get("properties", "{}")).get("reject") for i in items):
            return ("InvalidInputException", "Invalid item")
        return None

    return rule


@dataclass
class Delivery:
    fake: FakePersonalize
    sqs: FlakySQS
    invocations: int = 0


def deliver(
    records: list[dict[str, Any]],
    batches: list[int],
    *,
    on_remove: str,
    put_failures: list[bool],
    dlq_failures: list[bool],
    guard: Any = None,
    blocks: list[int] | None = None,
    in_flight: int = 1,
) -> Delivery:
    """Run the stream through the pipeline as Lambda would; ``blocks`` caps every batch at a block's end;
    ``in_flight`` > 1 has that many calls on the wire at once, answered in any order."""
    mapping = {"onRemove": "ignore" if on_remove == "ignore" else SOFT_DELETE}
    config = load_settings({"DATASET_ARN": DATASET_ARN, "DLQ_URL": DLQ_URL, "CONNECTOR_CONFIG": json.dumps(mapping)})
    fake = FakePersonalize(throttling_rule(put_failures, jitter_s=0.002 if in_flight > 1 else 0.0))
    pacer = Pacer(1e6, sleep=lambda _: None)
    sink = PutItemsSink(fake.client, DATASET_ARN, worst_call_ms=1, pacer=pacer, in_flight=in_flight)
    out = Delivery(fake, FlakySQS(dlq_failures))
    ends = _block_ends(blocks, len(records))
    sizes = _cycle(batches)
    checkpoint = 0
    while checkpoint < len(records):
        out.invocations += 1
        assert out.invocations <= MAX_INVOCATIONS, "the stream never drains"
        end = min(checkpoint + next(sizes), ends[checkpoint])
        batch = records[checkpoint:end]
        kwargs = {"guard": guard} if guard is not None else {}
        result = pipeline.run(
            {"Records": batch},
            settings=config,
            sink=sink,
            sqs=out.sqs,
            deadline=Deadline.unbounded(),
            dlq_worst_ms=0,
            **kwargs,
        )
        assert sum(result.counts.values()) == len(batch)
        failed = [int(str(f["itemIdentifier"])) for f in result.response["batchItemFailures"]]
        if failed:
            lowest = str(min(failed))
            checkpoint += next(n for n, r in enumerate(batch) if _seq(r) == lowest)
        else:
            checkpoint = end
    return out


def _seq(record: dict[str, Any]) -> str:
    return str(record["dynamodb"]["SequenceNumber"] if "dynamodb" in record else record["kinesis"]["sequenceNumber"])


def _cycle(values: list[int]) -> Iterator[int]:
    while True:
        yield from values


def _block_ends(blocks: list[int] | None, n: int) -> list[int]:
    """For each position, the end of the batch Lambda first delivered it in (``n`` when unbounded)."""
    if not blocks:
        return [n] * n
    ends, start, sizes = [], 0, _cycle(blocks)
    while start < n:
        end = min(start + next(sizes), n)
        ends += [end] * (end - start)
        start = end
    return ends


# --- checking -----------------------------------------------------------------------------------------------


def check(out: Delivery, truth: list[Truth], *, on_remove: str, id_attr: str, arn: str) -> None:
    assert out.fake.items == model(truth, on_remove, id_attr)
    dlq = {(m["eventSourceARN"], m["sequenceNumber"]) for m in out.sqs.messages}
    for m in out.sqs.messages:
        assert m["reason"], m
    counted = [t for t in truth if relevant(t, on_remove) or t.kind == "garbage"]
    bad = {(arn, s) for t in counted for s in t.seqs if flavor(t) != "good"}
    poison = {(arn, s) for t in counted for s in t.seqs if flavor(t) == "poison"}
    assert dlq <= bad, f"dead-lettered but not bad: {sorted(dlq - bad)}"
    assert poison <= dlq, f"poison but not dead-lettered: {sorted(poison - dlq)}"
    # A rejected change newer than every good change of its item is dead-lettered (it was always sent).
    for n, t in enumerate(truth):
        if relevant(t, on_remove) and flavor(t) == "reject":
            later_good = any(u.key == t.key and relevant(u, on_remove) and flavor(u) == "good" for u in truth[n + 1 :])
            if not later_good:
                assert {(arn, s) for s in t.seqs} <= dlq, f"rejected newest change of {t.key} not dead-lettered"


# --- strategies -------------------------------------------------------------------------------------------


def ops_strategy(*, removes: bool, garbage: bool = False, keys: int = 4, most: int = 30) -> st.SearchStrategy[list[Op]]:
    kinds = ["upsert", "upsert", "remove"] if removes else ["upsert"]
    if garbage:
        kinds.append("garbage")
    op = st.builds(
        Op,
        key=st.sampled_from([f"k{n}" for n in range(keys)]),
        kind=st.sampled_from(kinds),
        flavor=st.sampled_from(["good"] * 6 + ["poison", "reject"]),
        value=st.integers(0, 10**6),
    )
    # At most five rejected changes, so ten distinct rejections in a row (a systemic rejection) cannot happen.
    return st.lists(op, min_size=1, max_size=most).filter(lambda ops: sum(o.flavor == "reject" for o in ops) <= 5)


COMMON = {
    "batches": st.lists(st.integers(1, 12), min_size=1, max_size=8),
    "on_remove": st.sampled_from(["ignore", "soft"]),
    "put_failures": st.lists(st.booleans(), max_size=25),
    "dlq_failures": st.lists(st.booleans(), max_size=6),
}
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(ops=ops_strategy(removes=True), **COMMON)
def test_dynamodb_streams_converge(
    ops: list[Op], batches: list[int], on_remove: str, put_failures: list[bool], dlq_failures: list[bool]
) -> None:
    records, truth = dynamodb_stream(ops)
    out = deliver(records, batches, on_remove=on_remove, put_failures=put_failures, dlq_failures=dlq_failures)
    check(out, truth, on_remove=on_remove, id_attr="sku", arn=TABLE_STREAM_ARN)


@SETTINGS
@given(ops=ops_strategy(removes=False, garbage=True), **COMMON)
def test_kinesis_documents_converge(
    ops: list[Op], batches: list[int], on_remove: str, put_failures: list[bool], dlq_failures: list[bool]
) -> None:
    records, truth = document_stream(ops)
    out = deliver(records, batches, on_remove=on_remove, put_failures=put_failures, dlq_failures=dlq_failures)
    check(out, truth, on_remove=on_remove, id_attr="itemId", arn=KINESIS_ARN)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=ops_strategy(removes=True, keys=40, most=90),
    batches=st.lists(st.integers(20, 90), min_size=1, max_size=4),
    on_remove=COMMON["on_remove"],
    put_failures=COMMON["put_failures"],
    dlq_failures=COMMON["dlq_failures"],
    in_flight=st.sampled_from([2, 3]),
)
def test_dynamodb_streams_converge_with_calls_in_flight_together(  # noqa: PLR0917 - hypothesis passes keywords
    ops: list[Op],
    batches: list[int],
    on_remove: str,
    put_failures: list[bool],
    dlq_failures: list[bool],
    in_flight: int,
) -> None:
    """Batches of up to 40 items: several calls per round on the wire at once, answered in any order, with
    rejections (fallbacks), throttles that stop a batch while other calls are still out, and redeliveries."""
    records, truth = dynamodb_stream(ops)
    out = deliver(
        records,
        batches,
        on_remove=on_remove,
        put_failures=put_failures,
        dlq_failures=dlq_failures,
        in_flight=in_flight,
    )
    check(out, truth, on_remove=on_remove, id_attr="sku", arn=TABLE_STREAM_ARN)


@st.composite
def cdc_scenario(draw: st.DrawFn, *, anywhere: bool) -> tuple[list[Op], list[int], list[int], list[int]]:
    """Ops, arrival order, duplicated ops, and the blocks Lambda first delivers (empty: any boundaries)."""
    ops = draw(ops_strategy(removes=True))
    n = len(ops)
    if anywhere:
        arrival, blocks = draw(st.permutations(range(n))), []
    else:
        blocks = draw(st.lists(st.integers(1, 10), min_size=1, max_size=6))
        ends = _block_ends(blocks, n)
        arrival, start = [], 0
        while start < n:  # reorder inside each block only
            arrival += draw(st.permutations(range(start, ends[start])))
            start = ends[start]
    duplicates = draw(st.lists(st.integers(0, n - 1), max_size=4, unique=True))
    if not anywhere:  # a duplicate stays in its block: recompute the blocks around the copies
        blocks = _blocks_with_copies(blocks, n, arrival, duplicates)
    return ops, list(arrival), duplicates, blocks


def _blocks_with_copies(blocks: list[int], n: int, arrival: list[int], duplicates: list[int]) -> list[int]:
    ends = _block_ends(blocks, n)
    sizes, start = [], 0
    while start < n:
        members = set(arrival[start : ends[start]])
        sizes.append(ends[start] - start + sum(1 for d in duplicates if d in members))
        start = ends[start]
    return sizes


@pytest.fixture(scope="module")
def state_table() -> Iterator[Any]:
    with moto_state_table("state") as client:
        yield client


_example = iter(range(10**9))


@SETTINGS
@given(scenario=cdc_scenario(anywhere=True), **COMMON)
def test_cdc_over_kinesis_converges_with_the_version_guard(  # noqa: PLR0917 - hypothesis passes keywords
    state_table: Any,
    scenario: tuple[list[Op], list[int], list[int], list[int]],
    batches: list[int],
    on_remove: str,
    put_failures: list[bool],
    dlq_failures: list[bool],
) -> None:
    from connector.versions import VersionGuard

    ops, arrival, duplicates, _ = scenario
    records, truth = cdc_stream(ops, arrival, duplicates)
    # A dataset of its own per example, so that versions from earlier examples do not apply.
    arn = DATASET_ARN.replace("/catalog/", f"/g{next(_example)}/")
    guard = VersionGuard(state_table, "state", arn)
    out = deliver(
        records, batches, on_remove=on_remove, put_failures=put_failures, dlq_failures=dlq_failures, guard=guard
    )
    check(out, truth, on_remove=on_remove, id_attr="sku", arn=KINESIS_ARN)


@SETTINGS
@given(scenario=cdc_scenario(anywhere=False), **{k: v for k, v in COMMON.items() if k != "batches"})
# The newest change of k0 arrives first, then a poison record whose DLQ send fails (retried), then the older
# change: unless the written change is retried too, the redelivery lands the older one alone.
@example(
    scenario=(
        [Op("k0", "upsert", "good", 1), Op("k0", "upsert", "good", 2), Op("k1", "upsert", "poison", 3)],
        [1, 2, 0],
        [],
        [3],
    ),
    on_remove="ignore",
    put_failures=[],
    dlq_failures=[True],
)
def test_cdc_over_kinesis_converges_without_a_state_table_when_reordering_stays_in_a_batch(
    scenario: tuple[list[Op], list[int], list[int], list[int]],
    on_remove: str,
    put_failures: list[bool],
    dlq_failures: list[bool],
) -> None:
    ops, arrival, duplicates, blocks = scenario
    records, truth = cdc_stream(ops, arrival, duplicates, spread=False)
    out = deliver(
        records,
        [10**6],  # each first delivery is a whole block; redeliveries start anywhere inside it
        on_remove=on_remove,
        put_failures=put_failures,
        dlq_failures=dlq_failures,
        blocks=blocks,
    )
    check(out, truth, on_remove=on_remove, id_attr="sku", arn=KINESIS_ARN)
