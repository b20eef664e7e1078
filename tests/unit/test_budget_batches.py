"""Whole batches: invocations that overlap with small batches finish one after the other, not all at the end.

Found measuring cost below the quota (``bench_localcloud --offered 50 --shards 4``): with the equal short blocks of
contended holders, invocations that arrive together interleave their calls to the end, so each one lasts (and is
billed) as long as all of them together, they end together, and their shards' next batches arrive together again.
Driven like ``test_budget.py``: a simulated clock, moto's DynamoDB, a discrete-event loop.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from connector import budget as budget_module
from connector.budget import BudgetTimeout, SharedBudget
from tests.unit.test_budget import GROUP, LATENCY, TABLE, Clock, Meter

QUIET = 5.0  # seconds between scenarios: the timeline is idle again


@dataclass
class Batch:
    """One invocation: ``calls`` calls one after the other's answer, from ``start``; it tells its budget
    ``expect`` calls (``None``: no hint), releases at the end, and stops on a BudgetTimeout (the pipeline
    reports the rest as retry)."""

    budget: SharedBudget
    calls: int
    start: float
    expect: int | None = None
    exact: bool = True  # the pipeline's expect(): exact once every item is built, an upper bound before
    sends: list[float] = field(default_factory=list)
    done: float = 0.0
    timeouts: int = 0

    @property
    def billed(self) -> float:
        return self.done - self.start


def run(clock: Clock, batches: list[Batch], meter: Callable[[float], bool], late: float = 0.0, seed: int = 0) -> None:
    """``late``: every attempt reaches the service up to this many seconds after its slot (a late wake-up)."""
    rng = random.Random(seed)
    seq = itertools.count()
    events: list[tuple[float, int, Callable[[], None]]] = []

    def at(t: float, action: Callable[[], None]) -> None:
        heapq.heappush(events, (t, next(seq), action))

    def ready(b: Batch, t: float) -> None:
        if len(b.sends) == b.calls:
            b.done = t
            b.budget.release()
            return
        try:
            waited = b.budget.wait()
        except BudgetTimeout:
            b.timeouts += 1
            b.done = t
            b.budget.release()
            return
        sent = t + waited + rng.uniform(0, late)
        b.sends.append(sent)
        at(sent, lambda: arrive(b, sent))

    def arrive(b: Batch, t: float) -> None:
        ok = meter(t)
        at(t + LATENCY, lambda: answer(b, t + LATENCY, ok))

    def answer(b: Batch, t: float, ok: bool) -> None:
        if not ok:
            b.budget.throttled()
        ready(b, t)

    def begin(b: Batch) -> None:
        if b.expect is not None:
            b.budget.expect(b.expect, exact=b.exact)
        ready(b, b.start)

    for b in batches:
        at(b.start, lambda b=b: begin(b))  # type: ignore[misc]
    while events:
        t, _, action = heapq.heappop(events)
        clock.now = t
        action()


def run_batches(clock: Clock, batches: list[Batch], meter: Callable[[float], bool], *, hint: bool) -> None:
    """:func:`run`, each batch telling its budget its calls if ``hint``; a throttle fails the test."""

    def strict(t: float) -> bool:
        if not meter(t):
            pytest.fail("throttled")
        return True

    for b in batches:
        b.expect = b.calls if hint else None
    run(clock, batches, strict)


def scenario(ddb: Any, clock: Clock, *, hint: bool, holders: int = 4, calls: int = 7) -> list[Batch]:
    """``holders`` invocations, each with a batch of ``calls`` calls, the second one of each holder arriving
    as the ESM would deliver it: after its first batch ended plus a batching window."""
    budgets = [SharedBudget(ddb, TABLE, GROUP, clock=clock, sleep=clock.sleep) for _ in range(holders)]
    meter = Meter()
    first = [Batch(b, calls, clock.now + 0.005 * i) for i, b in enumerate(budgets)]
    run_batches(clock, first, meter, hint=hint)
    second = [Batch(b.budget, calls, b.done + 2.0) for b in first]
    run_batches(clock, second, meter, hint=hint)
    clock.now += QUIET
    return first + second


def test_overlapping_small_batches_run_whole_and_are_billed_far_less(ddb: Any) -> None:
    clock = Clock()
    interleaved = scenario(ddb, clock, hint=False)
    whole = scenario(ddb, clock, hint=True)
    billed_before, billed_after = sum(b.billed for b in interleaved), sum(b.billed for b in whole)
    # Four 7-call batches arriving together: interleaved, each lasts about as long as all four (~2.9 s); whole,
    # they end at 0.7, 1.4, 2.2 and 2.9 s: about (4 + 1) / 2 / 4 of it. Their second batches then arrive staggered.
    assert billed_after < 0.7 * billed_before, (billed_before, billed_after)
    # The same calls in about the same time: the quota is used as fully as before, never exceeded.
    span = max(b.done for b in whole[:4]) - min(b.start for b in whole[:4])
    assert span < 28 / 9.7 + 0.5
    # The first batch runs in one turn (its calls are consecutive slots, nobody else's in between); behind a queue
    # of a second or more the others reserve ordinary short blocks.
    first_batches = sorted(whole[:4], key=lambda b: b.sends[0])
    assert all(first_batches[0].sends[-1] < b.sends[0] for b in first_batches[1:])


@pytest.mark.parametrize("bound", [True, False])
def test_whole_blocks_never_make_a_long_queue(ddb: Any, bound: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # Eight 9-call batches at once: whole blocks back to back would queue 7 x 0.93 s ahead of the last one, past
    # BUDGET_MAX_WAIT_S (5 s: a BudgetTimeout, the rest of its batch retried). Behind a queue of a second or more
    # the others take ordinary short blocks, so the longest wait for a first slot is at most WHOLE_QUEUE_S, one whole
    # block and the others' short blocks: 1 + 0.93 + 6 x 0.31 s (before whole batches: 7 x 0.31 s).
    if not bound:
        monkeypatch.setattr(budget_module, "WHOLE_QUEUE_S", 60.0)
    clock = Clock()
    batches = [Batch(SharedBudget(ddb, TABLE, GROUP, clock=clock, sleep=clock.sleep), 9, clock.now) for _ in range(8)]
    run_batches(clock, batches, Meter(), hint=True)
    first_wait = max(b.sends[0] - b.start for b in batches)
    if bound:
        assert first_wait < 3.8, first_wait
    else:
        assert first_wait > 5.0, first_wait  # what the bound prevents


def test_a_block_never_holds_more_than_the_calls_still_expected(ddb: Any) -> None:
    clock = Clock()
    (batch,) = [Batch(SharedBudget(ddb, TABLE, GROUP, clock=clock, sleep=clock.sleep), 3, clock.now)]
    run_batches(clock, [batch], Meter(), hint=True)
    assert batch.budget.stats.reservations == 1  # all three in one block
    assert batch.budget.stats.wasted == 0  # and nothing more to give back or waste


def test_a_big_batch_still_shares_in_short_blocks_and_takes_its_tail_whole(ddb: Any) -> None:
    clock = Clock()
    budgets = [SharedBudget(ddb, TABLE, GROUP, clock=clock, sleep=clock.sleep) for _ in range(2)]
    big, small = Batch(budgets[0], 60, clock.now), Batch(budgets[1], 60, clock.now + 0.3)
    run_batches(clock, [big, small], Meter(), hint=True)
    # Both backlogged: equal shares while both run (neither finishes long before the other) ...
    assert abs(big.done - small.done) < 2.0
    # ... and the quota stays full.
    assert 120 / (max(big.done, small.done) - big.start) >= 9.0
