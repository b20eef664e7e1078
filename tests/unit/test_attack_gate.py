"""Attack: the throttle gate of calls in flight together (``putitems._Gate``), helper 21.

While a call of the sink is being retried after a throttle, the other calls' attempts wait (``held``) and then
take a new slot; if the batch stopped meanwhile, the attempt is not sent (``SendingStopped``) and its items are
retried. Every test drives ``pipeline.run`` with a real botocore ``personalize-events`` client answered on the wire
(``tests.fakes.Wire``, after the pacer's hook), so the pacer, the gate, the retries and the counters are the real
ones. botocore's jittered backoff is set to 0 (``no_backoff``) so the timelines are deterministic; a test that
could hang runs under :func:`guarded`, which fails it (and frees the gate) instead of hanging the suite.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from botocore.retries.standard import ExponentialBackoff

from connector.deadline import Deadline
from connector.putitems import Pacer, PutItemsSink
from connector.response import Outcome
from tests.factories import DATASET_ARN, dynamodb_record
from tests.fakes import Answer, FakeSQS, Wire, moto_state_table
from tests.unit.wire_batches import (
    THROTTLE,
    Script,
    busiest_second,
    dead_lettered,
    failures,
    guarded,
    records_for,
    run,
    run_rt,
    shared_runtime,
    sink_for,
)

pytestmark = pytest.mark.usefixtures("no_backoff")


# --- hangs -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_flight", [2, 3])
def test_two_calls_throttled_on_the_wire_together_are_both_retried(
    in_flight: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FIND (hang). Calls 1 and 2 are on the wire together (PutItems answers slower than a slot) and both are
    throttled. Each is then marked retried in the gate, and after botocore's backoff (50 ms here; up to 1 s, random,
    in standard mode) each one's retry waits in ``held`` for the other (``self._retried - {id(call)}`` holds the
    other one): neither is ever answered, the invocation hangs until Lambda kills it (the whole batch redelivered,
    again and again under throttling)."""
    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0.05)
    wire = Wire(Script({"s0": [(0.05, THROTTLE)], "s10": [(0.05, THROTTLE)]}), attempts=3)
    sink = sink_for(wire, in_flight)
    result = guarded(sink, lambda: run(records_for(30), sink))
    assert failures(result) == [] and set(wire.items) == {f"s{i}" for i in range(30)}
    assert result.report.attempts == len(wire.calls) == 5 and result.report.throttles == 2


def test_the_retried_call_raising_a_non_botocore_error_frees_the_gate() -> None:
    """Call 1 is throttled; call 2 waits in the gate; call 1's retry raises a RuntimeError (not botocore's). The
    waiting call is released (``done`` in the sender's ``finally``), the batch fails with the error at once, and
    the same sink serves the redelivery."""

    def boom() -> Answer:
        raise RuntimeError("kaboom")

    wire = Wire(Script({"s0": [(0.005, THROTTLE), (0.005, boom)]}), attempts=3)
    sink = sink_for(wire, 3, rate=50.0, worst_call_ms=1_000.0)
    records = records_for(30)
    with pytest.raises(RuntimeError, match="kaboom"):
        guarded(sink, lambda: run(records, sink))
    assert not sink._gate._retried
    wire.rule = Script({})
    result = guarded(sink, lambda: run(records, sink))
    assert failures(result) == [] and set(wire.items) == {f"s{i}" for i in range(30)}


@pytest.mark.parametrize("times", [1, 2])
def test_a_call_retried_and_accepted_then_another_throttled_lands_everything_with_exact_counts(times: int) -> None:
    """Call 1 is throttled ``times`` times and accepted; call 2, which waited in the gate meanwhile, is throttled
    once and accepted. No attempt of another call goes out between a throttle and that call's next attempt; the
    counters match the wire; everything lands."""
    plans = {"s0": [(0.005, THROTTLE)] * times, "s10": [(0.005, THROTTLE)]}
    wire = Wire(Script(plans, default_latency=0.005), attempts=3)
    sink = sink_for(wire, 3, rate=50.0, worst_call_ms=1_000.0)
    result = guarded(sink, lambda: run(records_for(60), sink))
    assert failures(result) == [] and set(wire.items) == {f"s{i}" for i in range(60)}
    assert result.report.attempts == len(wire.calls) == 7 + times and result.report.throttles == 1 + times
    assert not sink._gate._retried
    for first in ("s0", "s10"):
        attempts = sorted(c for c in wire.calls if c[2][0] == first)
        for throttled, retry in itertools.pairwise(attempts):
            between = [c for c in wire.calls if throttled[1] < c[0] < retry[0]]
            assert not between, f"attempts sent while the call of {first} was being retried: {between}"


# --- counting: pacing and the shared budget -------------------------------------------------------------------


def test_a_gated_attempt_takes_a_new_slot_and_the_pacer_spacing_holds_on_the_wire() -> None:
    """Call 2 takes its slot while call 1 is being retried: it waits, then takes a new slot, so consecutive
    attempts on the wire stay one pacing interval apart; the attempts and throttles are exact."""
    interval = 0.05
    wire = Wire(Script({"s0": [(0.005, THROTTLE)]}, default_latency=0.005), attempts=3)
    sink = sink_for(wire, 3, rate=1 / interval, worst_call_ms=1_000.0)
    time.sleep(interval)
    result = guarded(sink, lambda: run(records_for(60), sink))
    assert failures(result) == [] and len(wire.items) == 60
    assert result.report.attempts == len(wire.calls) == 7 and result.report.throttles == 1
    starts = wire.starts()
    gaps = [round(b - a, 4) for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= interval * 0.9, f"attempts closer than the pacing interval: {gaps}"
    # call 2 did wait: it went out after call 1's retry, not at its first slot
    retry = sorted(c for c in wire.calls if c[2][0] == "s0")[1]
    second = next(c for c in wire.calls if c[2][0] == "s10")
    assert second[0] > retry[0]


def test_an_attempt_made_while_another_call_is_being_retried_waits_before_it_takes_a_slot() -> None:
    """Call 1 is throttled, and its retry takes 200 ms to answer; call 2 is prepared meanwhile. It waits for call
    1 before it takes a slot, so no slot is given up: the pacer grants exactly one slot per attempt on the wire
    (a slot taken first and then held in the gate is skipped, a slot no one used)."""
    waits: list[float] = []

    class Counting(Pacer):
        def wait(self) -> float:
            waits.append(time.monotonic())
            return super().wait()

    wire = Wire(Script({"s0": [(0.005, THROTTLE), (0.2, None)]}, default_latency=0.005), attempts=3)
    sink = PutItemsSink(wire.client, DATASET_ARN, worst_call_ms=1_000.0, pacer=Counting(20.0), in_flight=3)
    result = guarded(sink, lambda: run(records_for(20), sink))
    assert failures(result) == [] and len(wire.items) == 20
    assert result.report.attempts == len(wire.calls) == 3 and result.report.throttles == 1
    assert len(waits) == 3, f"{len(waits)} slots taken for {len(wire.calls)} attempts"


def test_a_call_being_retried_goes_on_when_the_next_calls_deadline_check_stops_the_batch() -> None:
    """Call 1 is throttled once and retried; call 2's deadline check, made while call 1 is being retried, stops
    the batch. Call 1's retry still goes out and lands, as it would one call after the other (its own deadline
    check covered its retries); only call 2's records are retried. Found by the integration deadline test once
    fast answers were sent on the caller's thread: the retry was refused (``SendingStopped``)."""
    interval = 0.2  # hold 160 ms; the deadline check covers 1,000 ms + (3 - 1) x 200 ms x 3 attempts = 2,200 ms
    wire = Wire(Script({"s0": [(0.005, THROTTLE), (0.05, None)]}, default_latency=0.005), attempts=3)
    sink = PutItemsSink(wire.client, DATASET_ARN, worst_call_ms=1_000.0, pacer=Pacer(1 / interval), in_flight=3)
    records = records_for(20)
    end = time.monotonic() + 2.3  # call 1's check passes at once; call 2's, after the hold, does not
    deadline = Deadline(lambda: (end - time.monotonic()) * 1000, margin_ms=0)
    result = guarded(sink, lambda: run(records, sink, deadline=deadline))
    assert result.report.stopped == "deadline"
    assert sorted(wire.items) == sorted(f"s{i}" for i in range(10))
    assert [c[3] for c in sorted(wire.calls)] == ["ThrottlingException", None]
    assert min(failures(result)) == int(records[10]["dynamodb"]["SequenceNumber"])


def test_the_shared_budget_counts_only_attempts_that_went_out_when_one_waits_in_the_gate() -> None:
    """FIND (counting). With the shared budget (moto state table), call 2 takes a token, then waits in the gate
    behind call 1's retry and takes another: two tokens for one attempt. ``BudgetStats.attempts`` ("tokens
    granted (PutItems HTTP attempts)") then exceeds the attempts on the wire, and the token given up is also
    counted in the level's attempts (``_unsent``) that the rate law judges throttles by (a throttled share
    diluted by attempts that were never sent). The quota itself holds (a slot unused only spaces the calls)."""
    quota = 20
    wire = Wire(Script({"s0": [(0.005, THROTTLE)]}, default_latency=0.005), attempts=3)
    records = records_for(60)
    with moto_state_table("state") as dynamodb:
        rt, budget = shared_runtime(wire, dynamodb, quota)
        result = guarded(rt.sink, lambda: run_rt(rt, records))
        stats = budget.stats
    assert failures(result) == [] and len(wire.items) == 60
    assert busiest_second(wire) <= quota
    assert result.report.attempts == len(wire.calls) == 7 and result.report.throttles == 1 == stats.throttles
    assert stats.attempts == len(wire.calls), f"{stats.attempts} tokens counted as attempts, {len(wire.calls)} sent"


# --- outcomes ------------------------------------------------------------------------------------------------


BISECTING = records_for(30, bad=frozenset({"s12", "s27"}))


def _two_bisecting(first: list[tuple[float, Any]]) -> tuple[Wire, list[dict[str, Any]]]:
    """Call 1 (s0..s9) answers ``first`` attempt by attempt; calls 2 and 3 each hold a bad item and are rejected
    after 40 ms, while call 1 is being retried: their bisection attempts wait in the gate."""
    wire = Wire(Script({"s0": first, "s10": [(0.04, None)], "s20": [(0.04, None)]}), attempts=2)
    return wire, BISECTING


@pytest.mark.parametrize(
    ("second", "systemic"),
    [(THROTTLE, None), (("ResourceNotFoundException", "gone"), "ResourceNotFoundException")],
)
def test_a_retried_call_that_fails_stops_the_calls_waiting_in_the_gate_and_retries_them(
    second: Answer, systemic: str | None
) -> None:
    """Call 1 is throttled, then on its retry throttled to failure (or answered ResourceNotFound); calls 2 and 3,
    both bisecting, wait in the gate meanwhile. Their attempts are not sent, their items are retried (not put,
    not poison), and the stop reason and ``systemic`` are call 1's, not ``SendingStopped``."""
    wire, records = _two_bisecting([(0.03, THROTTLE), (0.03, second)])
    sqs = FakeSQS()
    sink = sink_for(wire, 3)
    result = guarded(sink, lambda: run(records, sink, sqs))
    assert second is not None
    assert result.report.stopped == second[0] and result.report.systemic == systemic
    assert sqs.messages == [] and wire.items == {}
    assert result.counts[Outcome.RETRY] == 30
    assert min(failures(result)) == int(records[0]["dynamodb"]["SequenceNumber"])
    assert result.report.attempts == len(wire.calls) == 4  # call 1 twice, calls 2 and 3 once: nothing gated went out
    assert result.report.throttles == (2 if second == THROTTLE else 1)
    assert not sink._gate._retried


def test_calls_accepted_after_waiting_in_the_gate_end_as_one_call_at_a_time() -> None:
    """Call 1 is throttled once, then accepted; calls 2 and 3 bisect behind it, in the gate: the same dataset, DLQ
    and outcomes as one call at a time."""
    ends = {}
    for in_flight in (1, 3):
        wire, records = _two_bisecting([(0.03, THROTTLE), (0.03, None)])
        sqs = FakeSQS()
        sink = sink_for(wire, in_flight)
        result = guarded(sink, lambda sink=sink, records=records, sqs=sqs: run(records, sink, sqs))  # type: ignore[misc]
        assert result.report.stopped is None
        ends[in_flight] = (wire.items, sorted(json.loads(m)["sequenceNumber"] for m in sqs.messages), result.outcomes)
    assert ends[3] == ends[1]
    assert set(ends[3][0]) == {f"s{i}" for i in range(30)} - {"s12", "s27"} and len(ends[3][1]) == 2


def _random_records(seed: int) -> list[dict[str, Any]]:
    """40 items, several changes each; some newer changes are refused (``bad``), so fallbacks chain."""
    rng = random.Random(seed)
    records: list[dict[str, Any]] = []
    for i in range(40):
        for v in range(rng.choice([1, 1, 2, 3])):
            bad = v > 0 and rng.random() < 0.5
            image = {"sku": f"s{i}", "v": v, **({"bad": True} if bad else {})}
            records.append(dynamodb_record("MODIFY", {"sku": f"s{i}"}, image))
    rng.shuffle(records)
    for k, record in enumerate(records):
        record["dynamodb"]["SequenceNumber"] = str(3000 + k)
    return records


def _throttling_rule(seed: int) -> Callable[[list[dict[str, Any]]], Answer]:
    rng = random.Random(seed)
    lock = threading.Lock()

    def rule(items: list[dict[str, Any]]) -> Answer:
        with lock:
            latency, throttled = rng.choice([0.0, 0.005, 0.02]), rng.random() < 0.3
        time.sleep(latency)
        if throttled:
            return THROTTLE
        if any(json.loads(i.get("properties", "{}")).get("bad") for i in items):
            return ("InvalidInputException", "Invalid item")
        return None

    return rule


def _drain(records: list[dict[str, Any]], sink: PutItemsSink, sqs: FakeSQS, limit: int = 60) -> None:
    checkpoint, invocations = 0, 0
    while checkpoint < len(records):
        invocations += 1
        assert invocations <= limit, "the shard does not advance"
        batch = records[checkpoint : checkpoint + 30]
        result = run(batch, sink, sqs)
        assert sum(result.counts.values()) == len(batch)
        assert result.report.systemic is None
        failed = failures(result)
        checkpoint += (
            len(batch) if not failed else [r["dynamodb"]["SequenceNumber"] for r in batch].index(str(min(failed)))
        )


@pytest.mark.parametrize("seed", [3, 4])
def test_throttles_fallback_chains_and_the_gate_end_in_the_same_dataset_as_one_call_at_a_time(seed: int) -> None:
    """Random throttles (30 % of attempts, three attempts a call) over chains of poison fallbacks, drained like a
    shard: the dataset ends the same with three calls in flight as with one (each item's newest good change).
    The DLQ holds only refused changes, and every refused change that is its item's newest is in it (which older
    ones are depends on where throttles cut the batches, so it differs between the two)."""
    records = _random_records(seed)
    ends = {}
    for in_flight in (1, 3):
        wire, sqs = Wire(_throttling_rule(seed), attempts=3), FakeSQS()
        sink = sink_for(wire, in_flight)
        guarded(sink, lambda sink=sink, wire=wire, sqs=sqs: _drain(records, sink, sqs))  # type: ignore[misc]
        ends[in_flight] = (wire.items, dead_lettered(sqs))
    assert ends[3][0] == ends[1][0]
    newest: dict[str, dict[str, Any]] = {}
    last: dict[str, dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: int(r["dynamodb"]["SequenceNumber"])):
        image = {k: next(iter(v.values())) for k, v in record["dynamodb"]["NewImage"].items()}
        last[image["sku"]] = record
        if not image.get("bad"):
            newest[image["sku"]] = {"v": int(image["v"])}
    assert {k: {"v": int(v["v"])} for k, v in ends[3][0].items()} == newest
    bad = {r["dynamodb"]["SequenceNumber"] for r in records if "bad" in r["dynamodb"]["NewImage"]}
    newest_bad = {r["dynamodb"]["SequenceNumber"] for r in last.values()} & bad
    for in_flight, (_, dlq) in ends.items():
        assert newest_bad <= dlq <= bad, f"in_flight={in_flight}"


# --- the deadline --------------------------------------------------------------------------------------------


def test_a_call_that_waited_in_the_gate_does_not_end_past_the_deadline() -> None:
    """FIND (deadline). Every call: its first attempt is throttled at once, its next two take ``slow`` each (the
    second is accepted). ``worst_call_ms`` is a true bound of one call (three attempts, each a slot and ``slow``;
    backoff is 0 here), and the deadline leaves room for it plus the queue margin (``_worst_ms``) when call 2
    checks it. Call 2 then waits in the gate for all of call 1's retries (not covered by the check), takes a new
    slot, and spends its own retries: it ends past the deadline (here 0.1 s), where the Lambda would have been
    killed mid-call. (With a third call, that call's deadline check stops the batch and call 2's retry is then
    refused in ``held``: the last call of a batch is the one that overruns.)"""
    interval, slow = 0.02, 0.25
    plan = [(0.0, THROTTLE), (slow, THROTTLE), (slow, None)]
    wire = Wire(Script({"s0": plan, "s10": plan}), attempts=3)
    worst_ms = 3 * (interval + slow) * 1000 + 5
    sink = sink_for(wire, 3, rate=1 / interval, worst_call_ms=worst_ms)
    time.sleep(interval)
    end = time.monotonic() + (sink._worst_ms + 30) / 1000
    deadline = Deadline(lambda: (end - time.monotonic()) * 1000, margin_ms=0)
    result = guarded(sink, lambda: run(records_for(20), sink, deadline=deadline))
    late = [(c[2][0], round(c[1] - end, 3)) for c in wire.calls if c[1] > end]
    assert not late, f"attempts ended past the deadline (call, seconds late): {late}"
    assert result.report.stopped == "deadline"
