"""The lead (how far ahead of asking a block starts) and the gaps it leaves between a lone holder's blocks.

Found measuring where the shared budget loses against serial pacing at 1 shard (``bench_localcloud --shards 1
--models sliding-window``, issue 10): a lone holder chains its next block onto its last one only if that block's
end is at least ``lead`` ahead when it asks (about 48 ms: a slot interval minus the call's latency), else the block
starts ``lead`` after asking and the difference is a gap without calls. The lead tracked 2 × the table's round trip
as a mean, so one slow reply (344 ms on the local cloud) raised it for the next ten blocks: gaps of 106, 91, 68,
49, 37, 28, 20, 14 ms..., about 0.6 s of a 10 s batch. The table's round trip is simulated by a client that moves
the simulated clock (the loop of ``test_budget_batches``: a 50 ms call latency, a sliding-window meter).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from connector.budget import SharedBudget
from tests.unit.test_budget import GROUP, TABLE, Clock, Meter
from tests.unit.test_budget_batches import Batch, run_batches

CALLS = 90
IDEAL = (CALLS - 1) / 9.7  # the batch's span at the ceiling, slots back to back


class SlowTable:
    """The state table's client, each ``update_item`` taking ``rtt(n)`` seconds of simulated time (the n-th)."""

    def __init__(self, client: Any, clock: Clock, rtt: Callable[[int], float]) -> None:
        self.client, self.clock, self.rtt, self.calls = client, clock, rtt, 0

    def update_item(self, **kwargs: Any) -> Any:
        rtt = self.rtt(self.calls)
        self.calls += 1
        self.clock.now += rtt / 2
        try:
            return self.client.update_item(**kwargs)
        finally:
            self.clock.now += rtt / 2


def lone_batch(ddb: Any, rtt: Callable[[int], float]) -> Batch:
    clock = Clock()
    holder = SharedBudget(SlowTable(ddb, clock, rtt), TABLE, GROUP, clock=clock, sleep=clock.sleep)
    batch = Batch(holder, CALLS, clock.now)
    run_batches(clock, [batch], Meter(), hint=True)  # fails on any throttle
    return batch


def span(batch: Batch) -> float:
    return batch.sends[-1] - batch.sends[0]


def test_a_lone_holder_chains_its_blocks(ddb: Any) -> None:
    batch = lone_batch(ddb, lambda n: 0.015)
    assert span(batch) < IDEAL + 0.02, span(batch)
    assert batch.budget.stats.wasted == 0


def test_one_slow_reply_costs_its_own_slots_not_the_next_blocks(ddb: Any) -> None:
    # The 5th reservation's reply takes 344 ms: its slots have passed when it comes back (skipped, never used
    # late), which costs about the reply itself. Before the median, the next ten blocks each started late too:
    # +663 ms in all; now +316 ms.
    batch = lone_batch(ddb, lambda n: 0.344 if n == 4 else 0.015)
    assert span(batch) < IDEAL + 0.4, span(batch) - IDEAL


def test_the_lead_follows_a_table_that_stays_slow(ddb: Any) -> None:
    # From the 4th request on every reply takes 150 ms: the median follows within three replies, then no slot is
    # missed any more (a block starts 300 ms after asking: gaps, but the calls are spaced as before).
    batch = lone_batch(ddb, lambda n: 0.15 if n >= 3 else 0.015)
    assert batch.budget.stats.wasted <= 8, batch.budget.stats.wasted
    assert batch.budget._lead == pytest.approx(0.3)  # the quantity under test
