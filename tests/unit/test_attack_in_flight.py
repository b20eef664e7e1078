"""Attack: PUT_ITEMS_IN_FLIGHT (calls in flight together) against the final-state promise.

Every test drives ``pipeline.run`` with a real botocore ``personalize-events`` client answered on the wire
(``tests.fakes.Wire``: at ``before-send``, after the pacer's hook), so the pacer, the retries and the counters
are the real ones. ``Wire`` is thread-safe and answers each call after a latency of its own, so answers arrive
in any order.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from connector import pipeline
from connector.deadline import Deadline
from connector.putitems import SYSTEMIC_REJECTION_STREAK, Pacer, PutItemsSink
from connector.response import Outcome
from connector.versions import VersionGuard
from tests.factories import DATASET_ARN, cdc_payload, dynamodb_record, kinesis_record
from tests.fakes import Answer, FakeSQS, Wire, moto_state_table
from tests.unit.wire_batches import busiest_second, dead_lettered, failures, run, run_rt, shared_runtime, sink_for


def seq(record: dict[str, Any]) -> int:
    if "dynamodb" in record:
        return int(record["dynamodb"]["SequenceNumber"])
    return int(record["kinesis"]["sequenceNumber"])


def drain(records: list[dict[str, Any]], sink: PutItemsSink, sqs: FakeSQS, limit: int = 40) -> int:
    """Lambda's loop over one shard: redeliver from the lowest reported record; return the invocations used."""
    checkpoint, invocations = 0, 0
    while checkpoint < len(records) and invocations < limit:
        invocations += 1
        batch = records[checkpoint : checkpoint + 40]
        result = run(batch, sink, sqs)
        failed = failures(result)
        assert sum(result.counts.values()) == len(batch), "every record of the batch gets exactly one outcome"
        if not failed:
            checkpoint += len(batch)
            continue
        checkpoint += [seq(r) for r in batch].index(min(failed))
    return invocations


def redelivered_or_put(records: list[dict[str, Any]], result: pipeline.Result, wire: Wire) -> None:
    """Lambda redelivers from the lowest failure: every record below it must have landed or been dead-lettered."""
    failed = failures(result)
    lowest = min(failed) if failed else None
    put = {p.change.position for p in result.report.put}
    for record in records:
        if lowest is not None and seq(record) >= lowest:
            continue
        sku = record["dynamodb"]["Keys"]["sku"]["S"]
        assert sku in wire.items, f"{sku} (seq {seq(record)}) is neither in the dataset nor redelivered"
    assert put <= set(range(len(records)))


# --- answers in any order, poison fallbacks chained over rounds: the same end as one call at a time ----------


def mixed_records() -> list[dict[str, Any]]:
    """60 items; some get several changes whose newest ones the dataset refuses (``bad``), so fallbacks chain."""
    rng = random.Random(7)
    records, n = [], 1000
    for i in range(60):
        changes = rng.choice([1, 1, 2, 3, 4])
        for v in range(changes):
            bad = v > 0 and rng.random() < 0.6
            image = {"sku": f"s{i}", "v": v, **({"bad": True} if bad else {})}
            records.append(dynamodb_record("MODIFY", {"sku": f"s{i}"}, image, seq=str(n)))
            n += 1
    rng.shuffle(records)
    for k, record in enumerate(records):  # shuffled order, increasing sequence numbers
        record["dynamodb"]["SequenceNumber"] = str(2000 + k)
    return records


def refuse_bad(items: list[dict[str, Any]]) -> Answer:
    if any(json.loads(i.get("properties", "{}")).get("bad") for i in items):
        return ("InvalidInputException", "Invalid item")
    return None


def _random_latency(seed: int) -> Callable[[int], float]:
    rng = random.Random(seed)
    return lambda _: rng.choice([0.0, 0.002, 0.02])


@pytest.mark.parametrize("seed", [1, 2])
def test_answers_in_any_order_end_in_the_same_dataset_and_dlq_as_one_call_at_a_time(seed: int) -> None:
    records = mixed_records()
    ends = {}
    for in_flight in (1, 3):
        wire = Wire(refuse_bad, latency=_random_latency(seed))
        sqs = FakeSQS()
        assert drain(records, sink_for(wire, in_flight), sqs) < 40
        ends[in_flight] = (wire.items, dead_lettered(sqs))
    assert ends[3] == ends[1]
    # the final state: each item's newest change without ``bad``; every ``bad`` change dead-lettered
    newest: dict[str, dict[str, Any]] = {}
    for record in sorted(records, key=seq):
        image = {k: next(iter(v.values())) for k, v in record["dynamodb"]["NewImage"].items()}
        if not image.get("bad"):
            newest[image["sku"]] = {"v": int(image["v"])}
    assert {k: {"v": int(v["v"])} for k, v in ends[3][0].items()} == newest
    # only refused changes are dead-lettered (which ones depends on the batch boundaries, the same for both)
    bad = {str(seq(r)) for r in records if "bad" in r["dynamodb"]["NewImage"]}
    assert ends[3][1] <= bad and ends[3][1]


# --- systemic rejection ------------------------------------------------------------------------------------


def refuse_all(_: list[dict[str, Any]]) -> Answer:
    return ("InvalidInputException", "Invalid item")


def test_a_systemic_rejection_with_a_short_last_call_dead_letters_nothing() -> None:
    """The dataset refuses every item (a wrong schema): 12 fresh items, a call of 10 and a call of 2.

    One call at a time, the first call's ten singles make the streak and the batch stops: every record retried,
    nothing dead-lettered. With three in flight, the call of 2 is bisected beside the call of 10 and finishes
    first (3 attempts against 19, here the call of 10 answers a little slower), while the streak holds fewer
    than ten items: its two good items are reported poison and dead-lettered (not redelivered), so a fixed
    schema never gets them: the dataset loses them."""
    records = [dynamodb_record("INSERT", {"sku": f"s{i}"}, {"sku": f"s{i}"}) for i in range(12)]
    for in_flight in (1, 3):
        wire = Wire(refuse_all, latency_by_items=lambda ids: 0.0 if "s10" in ids or "s11" in ids else 0.005)
        sqs = FakeSQS()
        result = run(records, sink_for(wire, in_flight), sqs)
        assert result.report.systemic == "SystemicRejection"
        assert sqs.messages == [], f"in_flight={in_flight}: a systemic rejection must retry, never dead-letter"
        failed = failures(result)
        assert len(failed) == len(records)
        assert wire.items == {}


@pytest.mark.parametrize("code", ["ResourceNotFoundException", "AccessDeniedException", "ThrottlingException"])
def test_a_call_that_fails_while_others_land_stops_the_batch_and_loses_nothing(code: str) -> None:
    """Call 2 (of 9) fails (systemic, or throttled to failure) while calls 1 and 3 are still out; the calls
    already out are answered, nothing is dead-lettered, and every record not put is redelivered."""
    victim = "s15"

    def rule(items: list[dict[str, Any]]) -> Answer:
        return (code, "no") if any(i["itemId"] == victim for i in items) else None

    records = [dynamodb_record("INSERT", {"sku": f"s{i}"}, {"sku": f"s{i}"}) for i in range(90)]
    wire, sqs = Wire(rule, latency=lambda n: 0.03 if n != 1 else 0.0), FakeSQS()
    result = run(records, sink_for(wire, 3), sqs)
    assert result.report.stopped == code
    assert (result.report.systemic == code) == (code != "ThrottlingException")
    assert sqs.messages == []
    assert victim not in wire.items
    assert {i.item_id for i in result.report.put} == set(wire.items)  # put == landed, nothing else
    assert result.response["batchItemFailures"]
    redelivered_or_put(records, result, wire)
    assert result.counts[Outcome.PUT] + result.counts[Outcome.RETRY] == len(records)


def test_bisection_in_one_call_while_others_land() -> None:
    """One poison item in call 1: bisected (4 more attempts) while calls 2 and 3 land; only it is dead-lettered."""
    records = [dynamodb_record("INSERT", {"sku": f"s{i}"}, {"sku": f"s{i}"}) for i in range(30)]
    bad = "s3"

    def rule(items: list[dict[str, Any]]) -> Answer:
        return ("InvalidInputException", "Invalid") if any(i["itemId"] == bad for i in items) else None

    wire, sqs = Wire(rule, latency=lambda n: 0.01 * (n % 3)), FakeSQS()
    result = run(records, sink_for(wire, 3), sqs)
    assert result.response == {"batchItemFailures": []}
    assert dead_lettered(sqs) == {records[3]["dynamodb"]["SequenceNumber"]}
    assert set(wire.items) == {f"s{i}" for i in range(30)} - {bad}
    assert result.counts[Outcome.PUT] == 29 and result.counts[Outcome.POISON] == 1


# --- the poison list read by the main thread while sender threads extend it ------------------------------


class _SlowSlice(list[Any]):
    """A list whose slices take a moment: the main thread's two reads of ``report.poison`` in ``settle`` (the
    slice, then ``len``) are no longer back to back, as a GIL switch can make them."""

    def __getitem__(self, index: Any) -> Any:
        value = super().__getitem__(index)
        if isinstance(index, slice):
            time.sleep(0.05)
        return value


class _Spy(PutItemsSink):
    def submit(self, call: Any, deadline: Any, report: Any, on_accepted: Any = None) -> Any:
        if not isinstance(report.poison, _SlowSlice):
            report.poison = _SlowSlice(report.poison)
        return super().submit(call, deadline, report, on_accepted)


def test_a_rejection_added_between_the_two_reads_of_report_poison_is_not_lost() -> None:
    """``settle`` does ``rejected, seen = report.poison[seen:], len(report.poison)``: a sender thread that adds
    a rejection between the slice and the ``len`` makes ``seen`` skip it. That item's verdict is never set (its
    written change is reported retry, not poison) and its older change is never sent: the item is retried on
    every redelivery although its own good change could land. Fix: ``rejected = report.poison[seen:]; seen +=
    len(rejected)``."""
    bad = {"s0", "s10"}  # one per call: call 1 answers first, call 2 while the main thread reads
    records = []
    for i in range(20):
        records.append(dynamodb_record("INSERT", {"sku": f"s{i}"}, {"sku": f"s{i}", "v": 0}))
    for sku in sorted(bad):
        records.append(dynamodb_record("MODIFY", {"sku": sku}, {"sku": sku, "v": 1, "bad": True}))

    wire = Wire(refuse_bad, latency=lambda n: 0.0 if n in (0, 2) else 0.02)
    sink = _Spy(wire.client, DATASET_ARN, worst_call_ms=1, pacer=Pacer(1e6, sleep=lambda _: None), in_flight=3)
    sqs = FakeSQS()
    result = run(records, sink, sqs)
    assert dead_lettered(sqs) == {r["dynamodb"]["SequenceNumber"] for r in records[20:]}
    assert result.response == {"batchItemFailures": []}
    assert wire.items == {f"s{i}": {"v": 0} for i in range(20)}


# --- the deadline ------------------------------------------------------------------------------------------


def test_no_call_ends_past_the_deadline_when_senders_queue_for_slots() -> None:
    """``worst_call_ms`` covers one pacing interval (``put_items_worst_call_ms``: ``1 / MAX_CALLS_PER_SECOND``),
    enough one call at a time. With three senders, all three check the deadline at once and then queue for
    their slots: the third waits two intervals, so its worst case is two intervals longer than the one checked.
    Here the deadline leaves room for the checked worst case of each call, and the third ends past it."""
    interval, latency = 0.1, 0.05
    wire = Wire(latency=lambda _: latency)
    worst_ms = (interval + latency) * 1000 + 5
    sink = sink_for(wire, 3, rate=1 / interval, worst_call_ms=worst_ms)
    records = [dynamodb_record("INSERT", {"sku": f"s{i}"}, {"sku": f"s{i}"}) for i in range(90)]
    time.sleep(interval)  # the pacer's first slot is free now
    end = time.monotonic() + (worst_ms + 30) / 1000
    deadline = Deadline(lambda: (end - time.monotonic()) * 1000, margin_ms=0)
    result = run(records, sink, FakeSQS(), deadline=deadline)
    late = [round(e - end, 3) for _, e, _, _ in wire.calls if e > end]
    assert not late, f"calls ended past the deadline by {late} s"
    assert result.report.stopped == "deadline"


# --- an exception that is not a ClientError, raised in a sender thread ------------------------------------


def test_an_unexpected_exception_in_a_sender_fails_the_batch_and_the_pool_serves_the_next() -> None:
    boom = {"on": True}

    def rule(items: list[dict[str, Any]]) -> Answer:
        if boom["on"] and any(i["itemId"] == "s12" for i in items):
            raise RuntimeError("kaboom")
        return None

    records = [dynamodb_record("INSERT", {"sku": f"s{i}"}, {"sku": f"s{i}"}) for i in range(60)]
    wire = Wire(rule, latency=lambda _: 0.01)
    sink = sink_for(wire, 3)
    began = time.monotonic()
    with pytest.raises(RuntimeError, match="kaboom"):
        run(records, sink, FakeSQS())
    assert time.monotonic() - began < 5
    assert "s12" not in wire.items
    boom["on"] = False
    sqs = FakeSQS()
    result = run(records, sink, sqs)  # the redelivery, on the same sink (its pool)
    assert result.response == {"batchItemFailures": []} and sqs.messages == []
    assert set(wire.items) == {f"s{i}" for i in range(60)}


# --- the version guard's record() failing for some calls while others succeed -----------------------------

T = 1_764_000_000_000


class _FlakyGuard(VersionGuard):
    def __init__(self, *args: Any, fail: set[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fail = fail
        self.recorded: list[str] = []
        self._lock2 = threading.Lock()

    def record(self, written: list[Any]) -> list[str]:
        ok = [w for w in written if w[0] not in self.fail]
        failed = super().record(ok)
        with self._lock2:
            self.recorded += [w[0] for w in ok if w[0] not in failed]
        return failed + [w[0] for w in written if w[0] in self.fail]


def test_unrecorded_versions_are_retried_never_reported_put() -> None:
    records = [
        kinesis_record(cdc_payload("MODIFY", {"sku": f"s{i}"}, {"sku": f"s{i}", "v": 1}, ts=T + i), seq=str(100 + i))
        for i in range(40)
    ]
    fail = {"s0", "s13", "s14", "s27"}
    with moto_state_table("state") as client:
        guard = _FlakyGuard(client, "state", DATASET_ARN, fail=fail)
        wire = Wire(latency=lambda n: 0.02 * (n % 2))
        result = run(records, sink_for(wire, 3), FakeSQS(), guard=guard)
    failed = failures(result)
    assert failed and min(failed) == 100  # s0 unrecorded: everything from it redelivered
    assert result.state_errors == len(fail)
    assert set(guard.recorded) == {f"s{i}" for i in range(40)} - fail
    assert set(wire.items) == {f"s{i}" for i in range(40)}  # every call landed
    for i, outcome in enumerate(result.outcomes):
        if f"s{i}" in fail:
            assert outcome is Outcome.RETRY, f"s{i} was written but not recorded: it must be retried"
    assert result.report.attempts == 4


def test_systemic_rejection_streak_is_still_detected_with_full_calls() -> None:
    """Thirty fresh items, all refused: three full calls bisected together; the batch stops and retries."""
    records = [dynamodb_record("INSERT", {"sku": f"s{i}"}, {"sku": f"s{i}"}) for i in range(30)]
    wire, sqs = Wire(refuse_all, latency=lambda n: 0.001 * (n % 4)), FakeSQS()
    result = run(records, sink_for(wire, 3), sqs)
    assert result.report.systemic == "SystemicRejection"
    assert sqs.messages == [] and wire.items == {}
    failed = failures(result)
    assert min(failed) == seq(records[0])
    assert SYSTEMIC_REJECTION_STREAK <= 10  # three full calls make the streak


# --- the shared budget (STATE_TABLE) with three sender threads -----------------------------------------------


def test_the_shared_budget_with_three_senders_keeps_the_quota_and_counts_exactly() -> None:
    """Three senders take their slots from one ``SharedBudget`` (moto state table) while PutItems answers in
    150 ms; one call is throttled once and retried by botocore while the others wait for their slots. On the
    wire: never more than the quota in any 1 s window; the counters (attempts, throttles) match the wire; no
    ``BudgetTimeout`` escapes; everything lands."""
    quota = 20
    throttled = {"done": False}
    lock = threading.Lock()

    def rule(items: list[dict[str, Any]]) -> Answer:
        with lock:
            if not throttled["done"] and any(i["itemId"] == "s55" for i in items):
                throttled["done"] = True
                return ("ThrottlingException", "Rate exceeded")
        return None

    wire = Wire(rule, latency=lambda _: 0.15, attempts=3)
    records = [dynamodb_record("INSERT", {"sku": f"s{i}"}, {"sku": f"s{i}"}) for i in range(300)]
    with moto_state_table("state") as dynamodb:
        rt, budget = shared_runtime(wire, dynamodb, quota)
        result = run_rt(rt, records)
        stats = budget.stats
    assert result.response == {"batchItemFailures": []}
    assert set(wire.items) == {f"s{i}" for i in range(300)}
    assert len(wire.calls) == 31 and result.report.calls == 30
    assert result.report.attempts == len(wire.calls) == stats.attempts
    assert result.report.throttles == 1 == stats.throttles
    assert stats.timeouts == 0
    busiest = busiest_second(wire)
    assert busiest <= quota, f"{busiest} calls in one second (quota {quota})"
    spans = sorted((s, e) for s, e, _, _ in wire.calls)
    overlap = max(sum(1 for s2, e2 in spans if s2 <= s < e2) for s, _ in spans)
    assert 2 <= overlap <= 3  # calls were in flight together, never more than three


def test_no_other_call_goes_out_while_a_throttled_call_is_being_retried() -> None:
    """Found by the integration deadline test (every call throttled): the calls in flight beside a throttled call
    each spent their own retries, 6 attempts where one call after the other spends 3. Now an attempt waits (on a
    new slot) while another call is being retried: here the call holding s0 is throttled once, and the next
    call, already waiting for its slot, does not go out between that throttle and the retry; everything lands."""
    throttled: set[str] = set()

    def once(items: list[dict[str, Any]]) -> Answer:
        if any(i["itemId"] == "s0" for i in items) and "s0" not in throttled:
            throttled.add("s0")
            return ("ThrottlingException", "Rate exceeded")
        return None

    wire = Wire(once, latency=lambda _: 0.02, attempts=3)  # answered before the next slot, 50 ms on
    records = [dynamodb_record("INSERT", {"sku": f"s{i}"}, {"sku": f"s{i}", "v": i}) for i in range(60)]
    result = run(records, sink_for(wire, 3, rate=20.0, worst_call_ms=1_000.0), FakeSQS())
    assert result.response == {"batchItemFailures": []} and len(wire.items) == 60
    assert result.report.attempts == len(wire.calls) == 7 and result.report.throttles == 1
    first, retry = sorted(c for c in wire.calls if "s0" in c[2])
    between = [c for c in wire.calls if first[1] < c[0] < retry[0]]
    assert not between, f"attempts sent while s0 was being retried: {between}"
