"""The shared PutItems budget against a real DynamoDB (moto, in-process) and a simulated clock.

Holders are driven by a small discrete-event loop: ``wait()`` runs at the holder's simulated "now" and returns
how long it would sleep; the attempt then reaches a fake quota meter at that slot time and its answer comes back
one latency later, when a throttle calls ``throttled()``. So a 60 s scenario runs in well under a second, and
every property (spacing, fairness, convergence) is checked on exact times.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from botocore.exceptions import BotoCoreError, ClientError, ReadTimeoutError

from connector.budget import BudgetTimeout, SharedBudget, _Memory, from_settings
from connector.config import ConfigError, dataset_group_arn, load_settings
from tests.fakes import create_state_table

TABLE = "state"
GROUP = "arn:aws:personalize:us-east-1:123456789012:dataset-group/shop"
T0 = 1_800_000_000.0
LATENCY = 0.05


class Clock:
    """Simulated epoch time; ``sleep`` only records (the event loop moves time)."""

    def __init__(self, now: float = T0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)


def budget(client: Any, clock: Clock, **kwargs: Any) -> SharedBudget:
    return SharedBudget(client, TABLE, GROUP, clock=clock, sleep=clock.sleep, **kwargs)


def stored(client: Any) -> dict[str, Any]:
    item = client.get_item(TableName=TABLE, Key={"pk": {"S": f"budget#{GROUP}"}}).get("Item", {})
    return {k: float(v["N"]) for k, v in item.items() if "N" in v}


# --- the discrete-event loop ----------------------------------------------------------------------------------


class Meter:
    """A quota: at most ``limit`` accepted calls in any 1 s sliding window (the strictest model)."""

    def __init__(self, limit: float = 10) -> None:
        self.limit = limit
        self.accepted: deque[float] = deque()
        self.log: list[tuple[float, bool]] = []

    def __call__(self, t: float) -> bool:
        while self.accepted and self.accepted[0] <= t - 1.0:
            self.accepted.popleft()
        ok = len(self.accepted) < self.limit
        if ok:
            self.accepted.append(t)
        self.log.append((t, ok))
        return ok


@dataclass
class Holder:
    budget: SharedBudget
    period: float | None = None  # None: backlogged (next attempt as soon as the last answer is back)
    start: float = T0
    sends: list[float] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)
    throttled: int = 0


def simulate(clock: Clock, holders: list[Holder], seconds: float, meter: Callable[[float], bool]) -> None:
    seq = itertools.count()
    events: list[tuple[float, int, Callable[[], None]]] = []

    def at(t: float, action: Callable[[], None]) -> None:
        heapq.heappush(events, (t, next(seq), action))

    def ready(h: Holder, t: float) -> None:
        pause = h.budget.share_pause()  # wait() would sleep it first; here the event loop moves time
        if pause > 0:
            at(t + pause, lambda: ready(h, t + pause))
            return
        waited = h.budget.wait()
        h.waits.append(waited)
        h.sends.append(t + waited)
        at(t + waited, lambda: arrive(h, t + waited))

    def arrive(h: Holder, t: float) -> None:
        ok = meter(t)
        at(t + LATENCY, lambda: answer(h, t + LATENCY, ok, t))

    def answer(h: Holder, t: float, ok: bool, sent: float) -> None:
        if not ok:
            h.throttled += 1
            h.budget.throttled()
        nxt = t if h.period is None else max(t, sent + h.period)
        at(nxt, lambda: ready(h, nxt))

    for h in holders:
        at(h.start, lambda h=h: ready(h, h.start))  # type: ignore[misc]
    end = T0 + seconds
    while events and events[0][0] <= end:
        t, _, action = heapq.heappop(events)
        clock.now = t
        action()


def beside_foreign(
    ddb: Any,
    meter: Callable[[float], bool],
    *,
    holders: int,
    seconds: float,
    foreign: float,
    start: float = 0.0,
    stop: float = math.inf,
    seed: int,
    jitter: float = 0.002,
    **budget_kwargs: Any,
) -> tuple[list[tuple[float, bool]], list[Holder]]:
    """``holders`` backlogged holders (budgets built with ``budget_kwargs``) beside a foreign writer at ``foreign``
    calls/s (evenly spaced, not retried, from ``T0 + start`` at a random phase until ``T0 + stop``; none at 0), our
    calls with 0 to ``jitter`` s of request jitter: our (time, accepted) log and the holders."""
    rng = random.Random(seed)
    clock = Clock()
    nxt = [T0 + start + rng.uniform(0, 1 / foreign)] if foreign > 0 else [math.inf]
    ours: list[tuple[float, bool]] = []

    def service(t: float) -> bool:
        while nxt[0] <= t:
            if nxt[0] < T0 + stop:
                meter(nxt[0])
            nxt[0] += 1 / foreign
        ok = bool(meter(t + rng.uniform(0, jitter)))
        ours.append((t, ok))
        return ok

    hs = [Holder(budget(ddb, clock, **budget_kwargs), start=T0 + i * 0.011) for i in range(holders)]
    simulate(clock, hs, seconds, service)
    return ours, hs


def max_in_window(times: list[float], window: float = 1.0) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def min_gap(times: list[float]) -> float:
    times = sorted(times)
    return min((b - a for a, b in itertools.pairwise(times)), default=float("inf"))


# --- blocks -----------------------------------------------------------------------------------------------


def test_first_wait_creates_the_item_and_reserves_one_slot(ddb: Any, clock: Clock) -> None:
    b = budget(ddb, clock)
    waited = b.wait()
    item = stored(ddb)
    assert 0 < waited <= 0.03  # the block starts one round trip ahead of now
    assert item["next_slot"] == pytest.approx(T0 + waited + 1 / 9.7, abs=0.002)
    assert item["expiresAt"] > T0 + 3600
    assert (b.stats.requests, b.stats.reservations, b.stats.fallbacks) == (1, 1, 0)


def test_a_backlogged_holder_takes_blocks_that_grow_to_block_max(ddb: Any, clock: Clock) -> None:
    b = budget(ddb, clock, block_max=8)
    h = Holder(b)
    simulate(clock, [h], 30, Meter())
    rate = (len(h.sends) - 1) / (h.sends[-1] - h.sends[0])
    assert rate == pytest.approx(9.7, rel=0.01)
    assert b.stats.requests / b.stats.attempts < 0.15  # ≈ 1/8 once k has grown
    assert b.stats.wasted == 0
    assert min_gap(h.sends) >= 1 / 9.7 - 1e-3


def test_a_slow_holder_shrinks_its_block_instead_of_wasting_slots(ddb: Any, clock: Clock) -> None:
    b = budget(ddb, clock)
    h = Holder(b, period=0.5)  # 2 calls/s: a block of consecutive slots would go mostly unused
    simulate(clock, [h], 20, Meter())
    assert b.stats.wasted <= 2
    assert len(h.sends) >= 38


def test_release_gives_back_the_tail_of_the_timeline(ddb: Any, clock: Clock) -> None:
    b = budget(ddb, clock, block_max=8)
    h = Holder(b)
    simulate(clock, [h], 3, Meter())  # k has grown: the current block runs ahead of the last slot granted
    assert stored(ddb)["next_slot"] - h.sends[-1] > 0.3
    b.release()
    assert stored(ddb)["next_slot"] - h.sends[-1] == pytest.approx(1 / 9.7, abs=0.002)
    nxt = clock.now + budget(ddb, clock).wait()  # the next holder is not kept waiting behind unused slots
    assert nxt == pytest.approx(h.sends[-1] + 1 / 9.7, abs=0.003)


# --- fairness and the quota -------------------------------------------------------------------------------


def test_two_backlogged_holders_share_fifo_and_fill_the_quota(ddb: Any, clock: Clock) -> None:
    a, b = Holder(budget(ddb, clock)), Holder(budget(ddb, clock))
    meter = Meter()
    simulate(clock, [a, b], 30, meter)
    sends = a.sends + b.sends
    assert abs(len(a.sends) - len(b.sends)) <= 0.1 * len(sends)
    assert len(sends) / 30 >= 9.5
    assert max(a.waits + b.waits) < 1.0  # at most the other holder's block (≤ ~1 s) ahead of us
    assert not [t for t, ok in meter.log if not ok]


def test_a_hot_shard_does_not_starve_a_cold_one(ddb: Any, clock: Clock) -> None:
    hot = [Holder(budget(ddb, clock)) for _ in range(3)]
    cold = Holder(budget(ddb, clock), period=2.0, start=T0 + 0.3)
    simulate(clock, [*hot, cold], 30, Meter())
    # FIFO on one timeline: the cold holder waits only for the blocks already queued, which stay short
    # (blocks stop growing once the timeline ahead is longer than 1 s), never for the hot holders' backlog.
    assert max(cold.waits) < 1.0 + 8 / 9.7
    assert sorted(cold.waits)[len(cold.waits) // 2] < 1.0
    assert len(cold.sends) >= 30 / (2 + 1.0)
    assert sum(len(h.sends) for h in hot) + len(cold.sends) >= 9.5 * 30


def test_a_holder_that_was_contended_reserves_from_the_table_again_once_the_timeline_is_idle(
    ddb: Any, clock: Clock
) -> None:
    # Found while building max_share: a holder whose last block was contended kept guessing "busy", failed its
    # condition on an idle timeline every time, and fell back to uncoordinated local pacing at a quarter rate.
    a, b = Holder(budget(ddb, clock)), Holder(budget(ddb, clock))
    meter = Meter()
    simulate(clock, [a, b], 10, meter)
    assert a.budget._contended
    again = Holder(a.budget, start=clock.now + 2)  # b's shard went quiet; a's next batch comes 2 s later
    simulate(clock, [again], 20, meter)
    assert a.budget.stats.local == 0
    assert (len(again.sends) - 1) / (again.sends[-1] - again.sends[0]) == pytest.approx(9.7, rel=0.02)


@pytest.mark.parametrize("share", [0.25, 0.5])
def test_a_holder_with_max_share_yields_to_the_others_and_takes_everything_alone(
    ddb: Any, clock: Clock, share: float
) -> None:
    stream = Holder(budget(ddb, clock))
    backfill = Holder(budget(ddb, clock, max_share=share), start=T0 + 0.2)
    meter = Meter()
    simulate(clock, [stream, backfill], 30, meter)
    both = [t for t in backfill.sends if t > T0 + 5]
    total = [t for t in stream.sends + backfill.sends if t > T0 + 5]
    # a cap while the stream is busy (the stream's blocks queue while it pauses: it gets about half to all of it)
    assert share / 2 - 0.05 <= len(both) / len(total) <= share + 0.03
    assert len(total) / 25 >= 9.5  # and the stream takes the rest: the quota stays full
    assert not [t for t, ok in meter.log if not ok]

    alone = Holder(backfill.budget, start=clock.now + 2)  # the stream stops: the backfill takes everything
    backfill.budget.release()
    simulate(clock, [alone], 55, meter)  # until T0 + 55
    late = [t for t in alone.sends if t > alone.start + 5]
    assert len(late) / (late[-1] - late[0]) == pytest.approx(9.7, rel=0.03)


def test_max_share_must_be_a_share(ddb: Any, clock: Clock) -> None:
    with pytest.raises(ValueError, match="max_share"):
        budget(ddb, clock, max_share=0)


@pytest.mark.parametrize("holders", [1, 3, 8])
def test_the_aggregate_never_exceeds_the_quota(ddb: Any, clock: Clock, holders: int) -> None:
    hs = [Holder(budget(ddb, clock), start=T0 + i * 0.013) for i in range(holders)]
    meter = Meter(limit=10_000)  # count only
    simulate(clock, hs, 20, meter)
    sends = [t for h in hs for t in h.sends]
    assert min_gap(sends) >= 1 / 10 - 1e-6  # strict spacing at the quota holds
    assert max_in_window(sends) <= 10  # and so does any 1 s window
    assert len(sends) / 20 >= 9.4


def test_a_holder_late_for_its_slot_skips_it_rather_than_send_close_to_the_next(ddb: Any, clock: Clock) -> None:
    b = budget(ddb, clock, block_max=8)
    simulate(clock, [Holder(b)], 2, Meter())  # a backlogged holder: k has grown
    while len(b._slots) < 2:
        clock.now += b.wait()
    missed = b._slots[0]
    clock.now = missed + b.slack + 0.005  # beyond the slack
    sent = clock.now + b.wait()
    assert b.stats.wasted == 1
    assert sent == pytest.approx(missed + 1 / 9.7, abs=1e-6)  # the next slot of the block, not the missed one


@pytest.mark.parametrize("quota", [10.0, 1000.0])
def test_late_sends_within_the_slack_plus_10ms_of_network_jitter_never_put_quota_plus_1_in_a_second(
    ddb: Any, clock: Clock, quota: float
) -> None:
    import random

    b = budget(ddb, clock, quota=quota)
    rng = random.Random(7)
    slots = [T0 + i / b.ceiling for i in range(int(60 * quota))]  # one timeline, as the holders share it
    n = int(quota) + 1
    at_random = [t + rng.uniform(0, b.slack) + rng.uniform(0, 0.01) for t in slots]
    # the worst case: the first of every quota + 1 consecutive attempts as late as allowed, the rest on time
    worst = [t + (b.slack + 0.01 if i % n == 0 else 0.0) for i, t in enumerate(slots)]
    assert max_in_window(at_random) <= quota
    assert max_in_window(worst) <= quota


# --- AIMD: learning the real limit ------------------------------------------------------------------------


def test_a_throttle_cuts_the_shared_rate_once_per_event_then_it_recovers_to_the_ceiling(ddb: Any, clock: Clock) -> None:
    a, b = budget(ddb, clock), budget(ddb, clock)
    a.wait()
    b.wait()
    a.throttled()  # at the ceiling, an isolated throttle: tolerated (below)
    a.throttled()  # a second one soon after: a congestion event, cut
    requests = a.stats.requests
    a.throttled()  # the same congestion event: no second cut, no request
    assert (a.stats.cuts, a.stats.requests) == (1, requests)
    assert a.rate() == pytest.approx(0.8 * 9.7, abs=0.05)
    assert stored(ddb)["cut_at"] == pytest.approx(T0, abs=0.01)
    clock.now += 1.0
    b.wait()  # b's reservation is refused once (stale cut_at) and learns the new law
    assert b.stats.conflicts >= 1
    assert b.rate() < 9.7
    b.throttled()  # within hold_s of a's cut: ignored
    assert b.stats.cuts == 0
    clock.now += 30
    assert a.rate() == pytest.approx(9.7)
    assert b.rate() == pytest.approx(9.7)


def test_an_isolated_throttle_at_the_ceiling_keeps_the_rate_and_a_second_soon_after_cuts(
    ddb: Any, clock: Clock
) -> None:
    """At the ceiling (a fresh item, or the probe got there) the first throttle used to cut at once: under strict
    spacing one late wake-up in a cold start cost a cut, ten seconds at the knee and the probe back up
    (``bench/results/localcloud-steady.md``). Now one throttle in ``GRACE_ATTEMPTS`` attempts' time (1 %, the knee's
    loss threshold) is tolerated, and a second within that time is a congestion event: a cut, as before."""
    b = budget(ddb, clock)
    send(b, clock, 20)
    b.throttled()
    assert (b.stats.cuts, b.rate()) == (0, pytest.approx(9.7))
    item = stored(ddb)
    assert item["grace_at"] == pytest.approx(clock.now, abs=0.002)
    assert (item["lost"], item["sent"] + b._unsent) == (1, 20)  # the write that tolerates it carries the counts
    send(b, clock, 20)  # about 2 s later: within 100 attempts' time
    b.throttled()
    assert b.stats.cuts == 1
    assert b.rate() == pytest.approx(0.8 * 9.7, abs=0.05)


def test_a_throttle_at_the_ceiling_long_after_the_last_tolerated_one_is_tolerated_too(ddb: Any, clock: Clock) -> None:
    b = budget(ddb, clock)
    send(b, clock, 20)
    b.throttled()
    send(b, clock, 110)  # more than GRACE_ATTEMPTS attempts' time at 9.7/s
    b.throttled()
    assert (b.stats.cuts, b.rate()) == (0, pytest.approx(9.7))
    send(b, clock, 5)
    b.throttled()
    assert b.stats.cuts == 1


def test_two_holders_never_both_tolerate_a_throttle_at_the_ceiling(ddb: Any, clock: Clock) -> None:
    """The tolerating write is conditional on the last tolerated throttle: b, which has not seen a's, learns it from
    the failed condition and cuts."""
    a, b = budget(ddb, clock), budget(ddb, clock)
    a.wait()
    b.wait()
    clock.now += 0.5
    a.throttled()
    conflicts = b.stats.conflicts
    b.throttled()
    assert (a.stats.cuts, b.stats.cuts, b.stats.conflicts - conflicts) == (0, 1, 1)
    a.wait()  # a learns the cut at its next reservation
    assert a.rate() == pytest.approx(b.rate()) and b.rate() < 0.85 * 9.7


def test_a_throttle_tolerated_before_a_cut_does_not_spend_the_grace_of_the_level_after_it(
    ddb: Any, clock: Clock
) -> None:
    """The grace belongs to a level: a level that starts (a cut, or going back up) within the grace time of a
    throttle tolerated before it may tolerate its own first throttle at the ceiling. At the default grace (10.3 s)
    the law cannot get there (a cut climbs back to the ceiling in 10.8 s or more, and a level gone back up is on
    trial, which the grace leaves alone), so the level is set up by hand: the clause matters for a longer grace."""
    b = budget(ddb, clock)
    send(b, clock, 5)
    b.throttled()  # tolerated
    send(b, clock, 5)
    b.throttled()  # cut: a new level, whose rate is below the ceiling for the plateau and the probe
    b._law.restore(clock.now, b.ceiling, clock.now)  # going back up to the ceiling at once (as a restore does)
    b._memory.trial_from = 0.0
    b.client.update_item(  # as stored by the restore's write
        TableName=TABLE,
        Key=b.key,
        UpdateExpression="SET cut_at = :c, #base = :r, knee = :r",
        ExpressionAttributeNames={"#base": "base"},
        ExpressionAttributeValues={":c": {"N": f"{clock.now:.3f}"}, ":r": {"N": "9.7"}},
    )
    send(b, clock, 3)
    b.throttled()
    assert (b.stats.cuts, b.rate()) == (1, pytest.approx(9.7))


def test_a_table_failure_while_tolerating_a_throttle_never_raises_is_no_grace_and_cuts_the_local_rate(
    clock: Clock,
) -> None:
    """Helper 24's find: a grace whose write failed left no trace, so the next holder's throttle was "isolated" too
    (and the throttle said isolated with the table down). Now a failed grace write is no grace: the cut is tried,
    and when its write fails too, the local rate is cut."""
    b = budget(FailingClient(DENIED), clock)
    b._law.cut_at, b._last_slot = 0.0, clock.now  # as if it held a slot of the shared timeline
    assert b.throttled() is False
    assert (b.stats.cuts, b.stats.fallbacks) == (1, 1)
    assert b.rate() == pytest.approx(0.8 * 9.7 / 4)


def test_with_the_table_down_every_congestion_event_cuts_the_local_rate(clock: Clock) -> None:
    """Helper 24's note: local pacing never moved the holder's last slot, so after the first local cut every later
    throttle read as "sent before the settle" and the local rate climbed back whatever the throttles said."""
    b = budget(FailingClient(DENIED), clock, retry_table_s=1_000)
    for _ in range(4):
        clock.now += 1.5  # past the last cut's settle
        clock.now += b.wait() + 0.05  # an attempt paced locally, and its throttle
        b.throttled()
    assert (b.stats.local, b.stats.cuts) == (4, 4)


@pytest.mark.parametrize(("limit", "holders"), [(8, 1), (8, 4), (6, 3)])
def test_holders_converge_on_a_lower_real_limit(ddb: Any, clock: Clock, limit: float, holders: int) -> None:
    """A foreign writer (or a lower quota) leaves ``limit`` calls/s: learn it, fill it, throttle rarely."""
    hs = [Holder(budget(ddb, clock), start=T0 + i * 0.011) for i in range(holders)]
    meter = Meter(limit)
    simulate(clock, hs, 120, meter)
    late = [(t, ok) for t, ok in meter.log if t > T0 + 30]
    accepted = sum(ok for _, ok in late)
    assert accepted / 90 >= 0.9 * limit
    assert sum(not ok for _, ok in late) / len(late) < 0.05


def test_the_rate_climbs_back_to_the_ceiling_when_the_foreign_writer_stops(ddb: Any, clock: Clock) -> None:
    limit = [7.0]
    meter = Meter(7)

    def service(t: float) -> bool:
        meter.limit = limit[0] if t < T0 + 40 else 10
        return meter(t)

    h = Holder(budget(ddb, clock))
    simulate(clock, [h], 90, service)
    assert h.budget.rate() == pytest.approx(9.7)
    tail = [t for t, ok in meter.log if ok and t > T0 + 80]
    assert len(tail) / 10 >= 9.5


def test_eight_holders_beside_a_foreign_writer_lose_few_attempts_per_congestion_event(ddb: Any, clock: Clock) -> None:
    """Eight backlogged holders queue eight blocks ahead of the probe's answer: when it comes back throttled, the
    slots reserved meanwhile still go out over the limit for as long as the queue (2 slots each: about 2 s), and
    under a sliding window evenly paced calls just over the limit lose one in nine. One slot per block while the
    rate probes keeps that tail as short as the holders' count allows: about as few throttles as one holder."""
    meter, foreign = Meter(10), [T0 + 0.42]  # a foreign writer: 2 calls/s, evenly spaced, not retried

    def service(t: float) -> bool:
        while foreign[0] <= t:
            meter(foreign[0])
            foreign[0] += 0.5
        return meter(t)

    hs = [Holder(budget(ddb, clock), start=T0 + i * 0.011) for i in range(8)]
    simulate(clock, hs, 80, service)
    ours = {round(t, 6) for h in hs for t in h.sends if t > T0 + 20}
    late = [ok for t, ok in meter.log if round(t, 6) in ours]
    assert sum(late) / 60 >= 0.95 * 8  # the rest of the quota is used
    assert sum(not ok for ok in late) / len(late) < 0.015  # was 2.5 %: three throttles per congestion event


def send(b: SharedBudget, clock: Clock, n: int) -> None:
    """``n`` attempts of one backlogged holder, each answered (accepted) one latency after its slot."""
    for _ in range(n):
        clock.now += b.wait() + LATENCY


def test_the_counters_ride_on_the_reservations(ddb: Any, clock: Clock) -> None:
    b = budget(ddb, clock, grace_attempts=0)  # the ceiling's first throttle cuts
    send(b, clock, 40)
    b.throttled()  # the first throttle: a cut (from the ceiling), which carries this holder's counts
    clock.now += 3  # past settle
    send(b, clock, 30)
    item = stored(ddb)
    assert (item["sent"] + b._unsent, item["lost"]) == (40 + 30, 1)  # the rest rides on the next reservation
    assert b._unsent < 8  # at most a block's worth
    assert b.stats.requests == b.stats.reservations + b.stats.cuts  # nothing else was written


def test_an_isolated_throttle_at_the_knee_keeps_the_level(ddb: Any, clock: Clock) -> None:
    """At or below the knee, one throttle in a level measures nothing (and a share of 1 % or less is tolerable):
    the level stays, where it used to cut (and cost a plateau); a second one soon after cuts."""
    b = budget(ddb, clock, grace_attempts=0)  # the ceiling's first throttle cuts
    send(b, clock, 5)
    b.throttled()  # at the ceiling: cut at once, as before
    clock.now += 3  # settled, back at the knee
    knee = b.rate()
    send(b, clock, 10)
    b.throttled()
    assert (b.stats.cuts, b.rate()) == (1, pytest.approx(knee))
    assert stored(ddb)["lost"] == 2  # counted at once, for every holder's next decision
    send(b, clock, 10)
    b.throttled()  # 2 in 20 attempts: 10 %, and the ceiling did worse (1 in 5): congestion, cut deeper
    assert (b.stats.cuts, b.stats.restores) == (2, 0)
    assert b.rate() < 0.9 * knee


def _restored_on_trial(b: SharedBudget, clock: Clock) -> float:
    """The ceiling's probe cut at its first throttle (1 in 200: the best level), then 2 in 60 at the knee: worse
    than the best's 0.5 %, which is under 10 %, so it goes back up to the ceiling, on trial. Returns the knee."""
    send(b, clock, 200)
    b.throttled()
    clock.now += 3
    knee = b.rate()
    assert knee == pytest.approx(0.97 * 9.7) and stored(b.client)["best"] == pytest.approx(9.7)
    send(b, clock, 40)
    b.throttled()
    send(b, clock, 19)
    b.throttled()
    assert b.rate() == pytest.approx(9.7) and b.stats.restores == 1
    assert stored(b.client)["trial_from"] == pytest.approx(knee, abs=0.01)
    return knee


def test_a_level_that_throttles_more_than_a_faster_one_goes_back_up_to_it_on_trial(
    ddb: Any, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """Under strict spacing beside a foreign writer the share rises as the rate falls: going back to the faster
    level that throttled less, instead of cutting deeper, is what stops the spiral. The level it goes back to is on
    trial until its share tells (Wald's SPRT): here it throttles as it did before, passes, and stays."""
    b = budget(ddb, clock, grace_attempts=0)  # the ceiling's first throttle cuts
    knee = _restored_on_trial(b, clock)
    changes = [
        (r.getMessage(), *(r.__dict__[k] for k in ("from_rate", "knee", "probing", "level_share")))
        for r in caplog.records
        if "PutItems rate" in r.getMessage()
    ]
    assert changes == [  # each change is logged, with the share of the level it left
        ("Shared PutItems rate cut", 9.7, pytest.approx(knee, abs=0.01), True, 0.005),
        ("Shared PutItems rate restored", pytest.approx(knee, abs=0.01), 9.7, False, pytest.approx(2 / 60, abs=1e-3)),
    ]
    clock.now += 2
    send(b, clock, 90)
    b.throttled()  # 1 in 91: as the level did before; the trial passed before this throttle
    assert stored(ddb)["trial_from"] == 0 and b.rate() == pytest.approx(9.7)
    assert (b.stats.cuts, b.stats.restores) == (1, 1)
    send(b, clock, 3)
    b.throttled()  # an ordinary level again: at the ceiling, a probe's throttle cuts at once
    assert b.stats.cuts == 2


def test_a_level_gone_back_up_to_that_throttles_like_the_one_below_fails_its_trial(ddb: Any, clock: Clock) -> None:
    """Going back up was wrong (the real limit is lower now): the trial fails within a few attempts, the rate is cut
    from the level it came from, as without going back, and the trial's share replaces the best level's, so it does
    not go back up to it again."""
    b = budget(ddb, clock, grace_attempts=0)  # the ceiling's first throttle cuts
    knee = _restored_on_trial(b, clock)
    clock.now += 2
    send(b, clock, 1)
    b.throttled()  # 1 in 1: undecided (one throttle at a level expected to throttle 3 % is no proof), it stays
    assert b.rate() == pytest.approx(9.7) and stored(ddb)["trial_from"] > 0
    send(b, clock, 1)
    b.throttled()  # 2 in 2: failed
    assert b.rate() == pytest.approx(0.8 * knee, abs=0.01)
    item = stored(ddb)
    assert item["trial_from"] == 0 and item["knee"] == pytest.approx(0.9 * knee, abs=0.01)
    assert item["best_lost"] / item["best_sent"] == 1  # the trial's share: no longer a level to go back to
    clock.now += 3
    send(b, clock, 20)
    b.throttled()
    send(b, clock, 20)
    b.throttled()  # 2 in 40 below: a cut, not a second trip up
    assert (b.stats.cuts, b.stats.restores) == (3, 1)


def test_a_slower_level_never_replaces_a_good_best_level() -> None:
    """Under collisions a slower level can throttle less than the best by chance; if it replaced a good best level
    (under 10 %), noise would ratchet the level to go back to down with every visit (the 600 s strict-spacing
    collapse). A faster good level, or any less-throttled level while the best is not good, does replace it."""
    good = _Memory(best=9.4, best_sent=100, best_lost=3)  # 3 %
    assert good.left(8.5, 0.01, 0, 0)[0] == 9.4  # slower, throttled less: kept
    assert good.left(9.7, 0.05, 0, 0)[0] == 9.7  # faster and good: replaces
    assert good.left(9.7, 0.2, 0, 0)[0] == 9.4  # faster, not good: kept
    bad = _Memory(best=9.4, best_sent=10, best_lost=3)  # 30 %
    assert bad.left(8.5, 0.2, 0, 0)[0] == 8.5  # no good level known: the least throttled


class Spacing:
    """Strict spacing: a call is accepted only ``1 / limit`` or more after the last accepted call."""

    def __init__(self, limit: float = 10) -> None:
        self.gap = 1 / limit
        self.last = float("-inf")

    def __call__(self, t: float) -> bool:
        ok = t - self.last >= self.gap - 1e-9
        if ok:
            self.last = t
        return ok


@pytest.mark.parametrize("holders", [1, 4])
def test_strict_spacing_beside_a_foreign_writer_does_not_spiral_down(ddb: Any, clock: Clock, holders: int) -> None:
    """Under strict spacing, a foreign call admitted in our gap throttles our next call if that comes < 100 ms
    after it: about 0.6 % of our calls at 9.7/s, 6 % at 7.8/s, 20 % at 5/s. Cutting raises the share, so a cut
    per throttle spiralled down (was about 2 calls/s and 15-20 % throttled after two minutes). At or below the
    knee a level now stays while it throttles at most 2 %, and goes back up to a faster level that throttled
    less instead of cutting deeper."""
    import random

    rng = random.Random(holders)
    meter, foreign, ours = Spacing(10), [T0 + 0.42], []  # the foreign writer: 2 calls/s, evenly spaced

    def service(t: float) -> bool:
        while foreign[0] <= t:
            meter(foreign[0])
            foreign[0] += 0.5
        # a millisecond or two of network jitter, and now and then a wake-up up to 15 ms late
        ok = meter(t + rng.uniform(0, 0.002) + (rng.uniform(0, 0.015) if rng.random() < 0.03 else 0.0))
        ours.append((t, ok))
        return ok

    hs = [Holder(budget(ddb, clock), start=T0 + i * 0.011) for i in range(holders)]
    simulate(clock, hs, 150, service)
    late = [ok for t, ok in ours if t > T0 + 60]
    assert sum(late) / 90 >= 6.5  # the rest of the quota is about 8 calls/s
    assert sum(not ok for ok in late) / len(late) < 0.08  # own jitter collisions included (about 3 % at 9.7/s)
    # it went back up rather than cut deeper (once at least: with the grace at the ceiling, fewer cuts come first)
    assert sum(h.budget.stats.restores for h in hs) >= 1


# --- the table unavailable --------------------------------------------------------------------------------


class FailingClient:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc
        self.calls = 0

    def update_item(self, **_: Any) -> dict[str, Any]:
        self.calls += 1
        raise self.exc


DENIED = ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "UpdateItem")


@pytest.mark.parametrize(
    "client",
    [
        FailingClient(DENIED),
        FailingClient(ReadTimeoutError(endpoint_url="https://dynamodb")),
        FailingClient(ClientError({"Error": {"Code": "ResourceNotFoundException"}}, "UpdateItem")),
    ],
    ids=["denied", "timeout", "missing"],
)
def test_an_unavailable_table_means_conservative_local_pacing_counted_once(client: Any, clock: Clock) -> None:
    b = budget(client, clock)
    times = []
    for _ in range(10):
        times.append(clock.now + b.wait())
        clock.now = times[-1] + 0.01
    assert b.stats.fallbacks == 1
    assert client.calls == 1  # the table is not hammered while it is down
    assert b.stats.local == 10
    assert min_gap(times) == pytest.approx(1 / (9.7 / 4), rel=0.01)


def test_the_real_table_missing_then_created_is_used_again_after_retry_table_s(ddb: Any, clock: Clock) -> None:
    b = SharedBudget(ddb, "not-yet", GROUP, clock=clock, sleep=clock.sleep, retry_table_s=30, fallback_rate=2)
    b.wait()
    assert (b.stats.fallbacks, b.stats.local) == (1, 1)
    clock.now += 1
    assert b.wait() <= 0.5  # local pacing at 2 calls/s
    create_state_table(ddb, "not-yet")
    clock.now += 31
    b.wait()
    assert b.stats.reservations == 1
    assert b.stats.fallbacks == 1


def test_throttles_while_the_table_is_down_cut_the_local_rate(clock: Clock) -> None:
    b = budget(FailingClient(DENIED), clock, fallback_rate=4)
    b.wait()
    b.throttled()
    assert b.rate() == pytest.approx(3.2)


# --- bounded wait ------------------------------------------------------------------------------------------


def test_wait_raises_budget_timeout_instead_of_reserving_beyond_max_wait(ddb: Any, clock: Clock) -> None:
    ddb.put_item(
        TableName=TABLE,
        Item={"pk": {"S": f"budget#{GROUP}"}, "next_slot": {"N": str(T0 + 60)}},
    )
    b = budget(ddb, clock, max_wait_s=5)
    with pytest.raises(BudgetTimeout) as info:
        b.wait()
    assert isinstance(info.value, BotoCoreError)
    assert "within 5 s" in str(info.value)
    assert stored(ddb)["next_slot"] == T0 + 60  # nothing reserved
    assert b.stats.timeouts == 1
    assert b.stats.attempts == 0


def test_budget_timeout_in_before_send_fails_the_call_without_botocore_retrying_it(clock: Clock) -> None:
    client = boto3.client("personalize-events", region_name="us-east-1", endpoint_url="http://127.0.0.1:9")
    attempts = []

    def before_send(**_: Any) -> None:
        attempts.append(1)
        raise BudgetTimeout(dataset_group=GROUP, max_wait_s=1)

    client.meta.events.register("before-send.personalize-events.PutItems", before_send)
    with pytest.raises(BudgetTimeout):
        client.put_items(datasetArn=GROUP.replace("dataset-group/shop", "dataset/shop/ITEMS"), items=[{"itemId": "a"}])
    assert attempts == [1]


# --- configuration ----------------------------------------------------------------------------------------


def test_dataset_group_arn() -> None:
    assert dataset_group_arn("arn:aws:personalize:us-east-1:123456789012:dataset/shop/ITEMS") == GROUP
    with pytest.raises(ConfigError, match="not an Items dataset ARN"):
        dataset_group_arn("arn:aws:s3:::bucket")


def test_from_settings(ddb: Any) -> None:
    arn = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/ITEMS"
    assert from_settings(load_settings({"DATASET_ARN": arn}), ddb) is None
    settings = load_settings(
        {"DATASET_ARN": arn, "STATE_TABLE": TABLE, "QUOTA_CALLS_PER_SECOND": "5", "BUDGET_MAX_WAIT_S": "2"}
    )
    b = from_settings(settings, ddb)
    assert b is not None
    assert (b.table, b.dataset_group, b.quota, b.ceiling, b.max_wait_s) == (TABLE, GROUP, 5.0, pytest.approx(4.85), 2)
    assert b.key == {"pk": {"S": f"budget#{GROUP}"}}
    b.throttled()  # through the given client: moto answers
    assert b.stats.fallbacks == 0
    with pytest.raises(ConfigError, match="QUOTA_CALLS_PER_SECOND"):
        load_settings({"DATASET_ARN": arn, "STATE_TABLE": TABLE, "QUOTA_CALLS_PER_SECOND": "0"})
