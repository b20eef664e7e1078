"""Attack: calls sent inline or on sender threads depending on PutItems' answer time (helper 22).

``PutItemsSink.submit`` sends a call on a sender thread only while the median of the last attempts' answer times
(``CallCounters.answer_s``) is above the hold; otherwise on the caller's thread. A batch can therefore mix inline and
pooled calls, switch mid-batch, and the answer window persists per client across batches. Every test drives
``pipeline.run`` with a real botocore client answered on the wire (``tests.fakes.Wire``, after the pacer's hook);
botocore's backoff is 0 (``no_backoff``); a test that could hang runs under ``guarded``.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError

from connector.deadline import Deadline
from tests.factories import dynamodb_record
from tests.fakes import Answer, FakeSQS, Wire, moto_state_table
from tests.unit.wire_batches import (
    THROTTLE,
    Script,
    busiest_second,
    failures,
    guarded,
    records_for,
    run,
    run_rt,
    shared_runtime,
    sink_for,
)

pytestmark = pytest.mark.usefixtures("no_backoff")


class Threads:
    """A wire rule wrapper: records, per attempt, whether it was sent on a sink's sender thread."""

    def __init__(self, rule: Callable[[list[dict[str, Any]]], Answer]) -> None:
        self.rule = rule
        self.pooled: list[bool] = []
        self._lock = threading.Lock()

    def __call__(self, items: list[dict[str, Any]]) -> Answer:
        with self._lock:
            self.pooled.append(threading.current_thread().name.startswith("putitems"))
        return self.rule(items)


# --- finds ---------------------------------------------------------------------------------------------------


def test_an_attempt_stopped_after_its_slot_gives_the_slot_back_to_the_shared_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """FIND (counting). Call 1 (on a sender thread: no answer known yet) is out longer than the hold; call 2
    passes the gate's first check and waits for its slot in the shared budget; meanwhile call 1 is throttled. Call
    2 gets its slot, is then held behind call 1's retry, and call 1's retry fails (ResourceNotFound): call 2's
    attempt is stopped (``SendingStopped``) without going out. Its slot was granted and counted
    (``BudgetStats.attempts``, and ``_unsent`` for the rate law) but is never given back (``unused``): the
    ``while held`` loop in ``before_send`` calls ``unused()`` only when the held attempt goes on, not when
    ``held`` raises. Budget attempts then exceed the attempts on the wire."""
    quota = 8  # slots ~129 ms apart; hold ~103 ms
    in_wait = threading.Event()
    wire = Wire(
        Script({"s0": [(0.0, lambda: (in_wait.wait(3.0), THROTTLE)[1]), (0.0, ("ResourceNotFoundException", "gone"))]}),
        attempts=3,
    )
    with moto_state_table("state") as dynamodb:
        rt, budget = shared_runtime(wire, dynamodb, quota)
        real_wait = budget.wait
        waits = {"n": 0}

        def wait() -> float:
            waits["n"] += 1
            if waits["n"] == 2:  # call 2, waiting for its slot: now call 1 is throttled
                in_wait.set()
            return real_wait()

        monkeypatch.setattr(budget, "wait", wait)
        result = guarded(rt.sink, lambda: run_rt(rt, records_for(20)))
        stats = budget.stats
    assert result.report.systemic == "ResourceNotFoundException"
    assert wire.items == {} and len(failures(result)) == 20
    assert result.report.attempts == len(wire.calls) == 2
    assert stats.attempts == len(wire.calls), f"{stats.attempts} budget attempts, {len(wire.calls)} on the wire"


def test_a_failing_call_does_not_leave_the_batch_while_other_calls_are_on_the_wire() -> None:
    """FIND (calls left on the wire). Calls 1 and 2 (sender threads) fail with a non-botocore error (a bug, or an
    unexpected error in ``on_accepted``); call 3 is still on the wire, slow. The pipeline's final ``settle(0)``
    re-raises call 2's error as soon as it pops it and never waits for call 3: the invocation fails while call 3
    is still being sent (it lands, and its ``on_accepted`` runs, after the batch was judged; its gate state and
    its slot carry into the next invocation). ``_send``'s contract: every call answered before an error leaves
    the batch."""

    def boom() -> Answer:
        raise RuntimeError("kaboom")

    wire = Wire(Script({"s0": [(0.3, boom)], "s10": [(0.25, boom)], "s20": [(1.0, None)]}), attempts=1)
    sink = sink_for(wire, 3, rate=10.0, worst_call_ms=2_000.0)  # slots 100 ms apart, hold 80 ms
    left: dict[str, float] = {}

    def batch() -> None:
        try:
            run(records_for(30), sink)
        finally:
            left["at"] = time.monotonic()

    with pytest.raises(RuntimeError, match="kaboom"):
        guarded(sink, batch)
    time.sleep(1.2)  # let call 3 end, whatever the code did
    late = [(c[2][0], round(c[1] - left["at"], 3)) for c in wire.calls if c[1] > left["at"]]
    assert not late, f"calls still on the wire after the batch left (call, seconds after): {late}"


# --- checks: mixed inline and pooled calls -------------------------------------------------------------------


def _mixed_rule(throttled: dict[str, int], slow: frozenset[str]) -> Script:
    """Calls keyed by first item: ``throttled[id]`` throttles first, latency 0.12 s for calls in ``slow``, else
    5 ms; a ``bad`` item makes its call an InvalidInputException (bisection, then fallbacks)."""
    plans: dict[str, list[tuple[float, Any]]] = {}
    for first in {*throttled, *slow}:
        latency = 0.12 if first in slow else 0.005
        plans[first] = [(0.005, THROTTLE)] * throttled.get(first, 0) + [(latency, None)]
    return Script(plans, default_latency=0.005)


def _versions(n: int, bad: frozenset[tuple[int, int]]) -> list[dict[str, Any]]:
    """``n`` items with two changes each (v0 then v1); ``bad`` (item, version) are refused by PutItems."""
    records = []
    for v in (0, 1):
        for i in range(n):
            image = {"sku": f"s{i}", "v": v, **({"bad": True} if (i, v) in bad else {})}
            records.append(dynamodb_record("MODIFY", {"sku": f"s{i}"}, image))
    for k, record in enumerate(records):
        record["dynamodb"]["SequenceNumber"] = str(5000 + k)
    return records


def test_fast_slow_fast_answers_mix_inline_and_pooled_calls_and_end_as_one_call_at_a_time() -> None:
    """Answers cross the hold both ways mid-batch (fast, then 120 ms, then fast), with throttles, an
    InvalidInput bisection and a fallback: calls go inline and on sender threads in the same batch. Same dataset,
    DLQ and outcomes as one call at a time; attempts and throttles match the wire; the pacing holds."""
    records = _versions(80, frozenset({(5, 1), (74, 1)}))
    throttled = {"s0": 1, "s20": 1, "s60": 2}
    slow = frozenset({"s10", "s20", "s30", "s40"})
    warm = [dynamodb_record("INSERT", {"sku": f"w{i}"}, {"sku": f"w{i}"}) for i in range(30)]
    ends = {}
    modes = {}
    for in_flight in (1, 3):
        threads = Threads(_mixed_rule(throttled, slow))
        wire, sqs = Wire(threads, attempts=3), FakeSQS()
        sink = sink_for(wire, in_flight, rate=20.0, worst_call_ms=2_000.0)  # slots 50 ms apart, hold 40 ms
        # warm the answer window with fast answers, so the batch starts inline
        guarded(sink, lambda sink=sink: run(warm, sink))  # type: ignore[misc]
        wire.items.clear()
        n0, calls0 = len(threads.pooled), len(wire.calls)
        result = guarded(sink, lambda sink=sink, sqs=sqs: run(records, sink, sqs))  # type: ignore[misc]
        assert result.report.attempts == len(wire.calls) - calls0
        assert result.report.throttles == sum(1 for c in wire.calls[calls0:] if c[3] == "ThrottlingException") == 4
        starts = wire.starts()
        # The Pacer spaces its grants 50 ms apart; a start at the wire also carries the sending thread's wake-up
        # (a clean-clone CI run on a loaded machine measured 42 ms between two starts), so 20 % of room.
        assert min(b - a for a, b in itertools.pairwise(starts)) >= 0.05 * 0.8
        modes[in_flight] = threads.pooled[n0:]
        ends[in_flight] = (
            dict(wire.items),
            sorted(json.loads(m)["sequenceNumber"] for m in sqs.messages),
            result.outcomes,
            failures(result),
        )
    assert not any(modes[1])
    assert any(modes[3]) and not all(modes[3]), f"not mixed: {modes[3]}"
    assert ends[3] == ends[1]
    assert ends[3][0]["s5"] == {"v": 0} and ends[3][0]["s7"] == {"v": 1} and len(ends[3][0]) == 80
    assert len(ends[3][1]) == 2 and ends[3][3] == []


def test_an_inline_call_waits_in_the_gate_behind_a_pooled_call_being_retried() -> None:
    """Call 1 goes on a sender thread (no answer yet), is throttled at once (a fast answer: the window's median
    now under the hold), and its retry takes 200 ms. Call 2 is then sent inline, on the caller's thread, and
    waits in the gate for call 1's retry: no hang, nothing sent between call 1's throttle and its retry, one slot
    per attempt."""
    threads = Threads(Script({"s0": [(0.005, THROTTLE), (0.2, None)]}, default_latency=0.005))
    wire = Wire(threads, attempts=3)
    sink = sink_for(wire, 3, rate=10.0, worst_call_ms=2_000.0)
    result = guarded(sink, lambda: run(records_for(20), sink))
    assert failures(result) == [] and len(wire.items) == 20
    assert result.report.attempts == len(wire.calls) == 3 and result.report.throttles == 1
    calls = sorted(wire.calls)
    assert [c[2][0] for c in calls] == ["s0", "s0", "s10"]
    assert threads.pooled == [True, True, False]
    assert calls[2][0] >= calls[1][1] - 0.001  # call 2 went out after call 1's retry was answered
    assert not sink._gate._retried


def test_an_inline_call_raising_a_non_botocore_error_fails_the_batch_and_the_sink_goes_on() -> None:
    """With fast answers (inline calls), a call raising a RuntimeError fails the batch with it, leaves nothing in
    the gate, and the same sink serves the redelivery, every item landed."""

    def boom() -> Answer:
        raise RuntimeError("kaboom")

    threads = Threads(Script({"s10": [(0.0, boom)]}, default_latency=0.002))
    wire = Wire(threads, attempts=3)
    sink = sink_for(wire, 3, rate=50.0, worst_call_ms=1_000.0)
    guarded(sink, lambda: run(records_for(10), sink))  # the window learns fast answers
    records = records_for(30)
    n0 = len(threads.pooled)
    with pytest.raises(RuntimeError, match="kaboom"):
        guarded(sink, lambda: run(records, sink))
    assert not any(threads.pooled[n0:])
    assert not sink._gate._retried
    result = guarded(sink, lambda: run(records, sink))
    assert failures(result) == [] and set(wire.items) == {f"s{i}" for i in range(30)}


def test_the_answer_window_counts_each_attempt_on_the_wire_once_and_not_stopped_ones() -> None:
    """Connection errors (retried by botocore) and throttles record their attempt's time once, on the thread that
    sent it; a slow attempt's time is its own (not the next attempt's); attempts that never went out
    (``SendingStopped``) record nothing."""
    calls = {"n": 0}

    def refused() -> Answer:
        raise EndpointConnectionError(endpoint_url="https://personalize-events")

    wire = Wire(Script({"s0": [(0.0, refused), (0.15, THROTTLE), (0.0, None)]}, default_latency=0.0), attempts=3)
    sink = sink_for(wire, 1, rate=1e6)
    answers: list[float] = []
    real = sink.counters.answered

    def answered(seconds: float) -> None:
        calls["n"] += 1
        answers.append(seconds)
        real(seconds)

    sink.counters.answered = answered  # type: ignore[method-assign]
    result = guarded(sink, lambda: run(records_for(20), sink))
    assert failures(result) == [] and len(wire.items) == 20
    assert result.report.attempts == 4 and len(wire.calls) == 3  # the refused attempt never reached the wire
    assert len(answers) == 4
    assert answers[0] < 0.1 and 0.15 <= answers[1] < 0.5 and answers[2] < 0.1 and answers[3] < 0.1


def test_the_answer_window_persists_across_batches_and_switches_both_ways() -> None:
    """One sink over several batches: slow answers (first batch) send calls on sender threads; once the service
    answers fast, the next batches go inline; slow again, pooled again. Each batch's attempts and throttles are
    exact and everything lands."""
    latency = {"s": 0.12}
    threads = Threads(lambda items: None)
    wire = Wire(threads, latency=lambda _: latency["s"], attempts=3)
    sink = sink_for(wire, 3, rate=20.0, worst_call_ms=2_000.0)
    seen = []
    for batch, slow in enumerate([True, False, False, True, True]):
        latency["s"] = 0.12 if slow else 0.005
        n0, calls0 = len(threads.pooled), len(wire.calls)
        records = [dynamodb_record("INSERT", {"sku": f"b{batch}-{i}"}, {"sku": f"b{batch}-{i}"}) for i in range(60)]
        result = guarded(sink, lambda records=records: run(records, sink))  # type: ignore[misc]
        assert failures(result) == [] and result.report.attempts == len(wire.calls) - calls0 == 6
        seen.append(sum(threads.pooled[n0:]))
    assert len(wire.items) == 300
    assert seen[0] == 6  # unknown, then slow: all on sender threads
    assert seen[1] <= 3 and seen[2] == 0  # fast answers learned within a few calls: inline
    assert seen[4] == 6  # slow again


def test_mixed_inline_and_pooled_calls_keep_the_shared_budget_exact_and_under_the_quota() -> None:
    """Shared budget (moto state table), answers alternating across the hold (slow and fast calls, one call
    throttled): the dataset is complete, the attempts and throttles match the wire and the budget's counters, and
    the busiest second on the wire stays within the quota."""
    quota = 20
    slow = {f"s{i}" for i in range(0, 120, 20)}

    def latency(ids: list[str]) -> float:
        return 0.09 if ids[0] in slow else 0.004

    threads = Threads(Script({"s50": [(0.0, THROTTLE)]}))
    wire = Wire(threads, latency_by_items=latency, attempts=3)
    with moto_state_table("state") as dynamodb:
        rt, budget = shared_runtime(wire, dynamodb, quota)
        result = guarded(rt.sink, lambda: run_rt(rt, records_for(120)), timeout=15.0)
        stats = budget.stats
    assert failures(result) == [] and len(wire.items) == 120
    assert any(threads.pooled) and not all(threads.pooled), threads.pooled
    assert busiest_second(wire) <= quota
    assert result.report.attempts == len(wire.calls) == 13 and result.report.throttles == 1 == stats.throttles
    assert stats.attempts == len(wire.calls)


def test_an_inline_call_that_waited_in_the_gate_checks_the_deadline_again() -> None:
    """Call 1 (sender thread) is throttled at once (a fast answer: call 2 then goes inline) and its retry takes
    300 ms. Call 2's deadline check passes on the caller's thread right after the hold; it then waits in the gate
    for call 1's retry, checks the deadline again and stops: call 1 lands, call 2's records are retried, no
    attempt ends past the deadline."""
    threads = Threads(Script({"s0": [(0.005, THROTTLE), (0.3, None)]}, default_latency=0.005))
    wire = Wire(threads, attempts=3)
    sink = sink_for(wire, 3, rate=10.0, worst_call_ms=500.0)  # the check covers 500 + 2 x 100 x 3 = 1,100 ms
    records = records_for(20)
    end = time.monotonic() + 1.25  # call 2's check passes until ~150 ms, not after call 1's retry (~400 ms)
    deadline = Deadline(lambda: (end - time.monotonic()) * 1000, margin_ms=0)
    result = guarded(sink, lambda: run(records, sink, deadline=deadline))
    assert result.report.stopped == "deadline"
    assert sorted(wire.items) == sorted(f"s{i}" for i in range(10))
    assert [c[3] for c in sorted(wire.calls)] == ["ThrottlingException", None]
    assert threads.pooled == [True, True]
    assert all(c[1] <= end for c in wire.calls)
    assert min(failures(result)) == int(records[10]["dynamodb"]["SequenceNumber"])
    assert not sink._gate._retried
