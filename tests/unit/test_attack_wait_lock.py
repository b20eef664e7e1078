"""Attack on 8a09e63: ``SharedBudget.wait`` checks an attempt's slack under the budget's lock, after re-reading the
clock (an attempt that woke in its slot but then waited for the lock, held by another thread of the same budget
across a DynamoDB request, now counts its slot wasted and takes another instead of leaving late).

The lock is held here by a helper thread (``Hold``) that takes the budget's lock while the attempt sleeps for its
slot and moves the simulated clock while holding it, as a table request of another thread would (a reservation in
``_take``, a grace or a cut in ``throttled``). ``Before`` is the same budget with the check made before the lock
(the code before 8a09e63, without the reverted spacing), for A/B figures.

Helper 27's finds: the counting one is fixed (``wait`` keeps this thread's slot and whether it was a shared one in the
thread-local ``_granted``, and ``throttled`` judges that slot); the throughput one is eased (a miss caused by another
thread's table request no longer halves the block) and stays an xfail: the cure is to hold no lock across a table
request, a larger change than this one.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from typing import Any

import pytest

from connector import pipeline
from connector.budget import BudgetTimeout, SharedBudget
from tests.fakes import Wire, moto_state_table
from tests.unit.test_attack_threads import SlowOnce
from tests.unit.test_budget import GROUP, TABLE, Clock, max_in_window, send, stored
from tests.unit.wire_batches import THROTTLE, records_for, run_rt, shared_runtime


class Before(SharedBudget):
    """``wait`` as before 8a09e63 (minus the reverted own spacing): the slack is checked before taking the lock."""

    def wait(self) -> float:
        t0 = self._clock()
        pause = self.share_pause()
        if pause > 0:
            self._sleep(pause)
            with self._lock:
                self._share_due = 0.0
        while True:
            with self._lock:
                slot = self._take(t0)
            now = self._clock()
            if slot > now:
                self._sleep(slot - now)
                now = max(slot, self._clock())
            if now - slot <= self.slack:
                break
            with self._lock:
                self.stats.wasted += 1
                self._block_clean = False
        waited = max(0.0, now - t0)
        with self._lock:
            self.stats.attempts += 1
            self._granted.counted = slot == self._last_slot and slot >= self._law.settle
            if self._granted.counted:
                self._unsent += 1
            self.stats.waited_s += waited
        return waited


class Hold:
    """A ``sleep`` for the budget: it moves the simulated clock to the slot, then (while ``armed``, ``times`` more
    times) has a helper thread take the budget's lock and hold it for ``hold_s`` simulated seconds, as another
    thread's table request would, and returns once that thread holds it (so the attempt then waits for it)."""

    def __init__(self, clock: Clock, hold_s: float, times: int = 1) -> None:
        self.clock, self.hold_s, self.times = clock, hold_s, times
        self.budget: SharedBudget | None = None
        self.holds = 0
        self.helpers: list[threading.Thread] = []

    def __call__(self, seconds: float) -> None:
        self.clock.now += seconds
        if self.times <= 0 or self.budget is None:
            return
        self.times -= 1
        taken = threading.Event()
        lock = self.budget._lock

        def hold() -> None:
            with lock:
                taken.set()
                time.sleep(0.03)  # real time: the attempt reaches the lock meanwhile
                self.clock.now += self.hold_s
                self.holds += 1

        helper = threading.Thread(target=hold, daemon=True)
        self.helpers.append(helper)
        helper.start()
        assert taken.wait(5)


def held_budget(ddb: Any, clock: Clock, hold: Hold, cls: type[SharedBudget] = SharedBudget, **kw: Any) -> SharedBudget:
    b = cls(ddb, TABLE, GROUP, clock=clock, sleep=hold, **kw)
    hold.budget = b
    return b


def level_sent(b: SharedBudget, ddb: Any) -> float:
    """The attempts the level counts: the item's ``sent`` and this holder's ``_unsent`` not yet added to it."""
    return stored(ddb).get("sent", 0) + b._unsent


def in_thread(fn: Any) -> dict[str, Any]:
    """Run ``fn`` on a daemon thread (joined, 10 s at most): its result or error."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "wait() did not return within 10 s of real time"
    return box


class SlowTable:
    """The moto client, every request taking ``lo``..``hi`` s of real time (the local cloud's 30-300 ms replies)."""

    def __init__(self, client: Any, lo: float, hi: float, seed: int) -> None:
        self.client, self.lo, self.hi = client, lo, hi
        self.rng = random.Random(seed)
        self.lock = threading.Lock()

    def update_item(self, **kwargs: Any) -> Any:
        with self.lock:
            delay = self.rng.uniform(self.lo, self.hi)
        time.sleep(delay)
        return self.client.update_item(**kwargs)


def two_waiters(ddb: Any, cls: type[SharedBudget], seconds: float, seed: int) -> tuple[list[float], SharedBudget]:
    """Two threads of one budget (real time), each waiting for slot after slot for ``seconds``: the departures."""
    b = cls(SlowTable(ddb, 0.03, 0.3, seed), TABLE, GROUP + cls.__name__, max_wait_s=5.0)
    departures: list[float] = []
    end = time.time() + seconds

    def loop() -> None:
        while time.time() < end:
            b.wait()
            departures.append(time.time())

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 10)
    return sorted(departures), b


def pipeline_run(
    cls: type[SharedBudget], seed: int, throttle: float, records: int = 150
) -> tuple[Wire, pipeline.Result, float, SharedBudget]:
    """``records`` inserts through the handler's runtime (shared budget, 3 calls in flight, quota 10), PutItems
    answering in 150 ms and throttling ``throttle`` of the attempts, the budget's table requests taking 30-300 ms."""
    rng = random.Random(seed)
    lock = threading.Lock()

    def rule(_: list[dict[str, Any]]) -> Any:
        with lock:
            hit = rng.random() < throttle
        return THROTTLE if hit else None

    wire = Wire(rule, latency=lambda _: 0.15, attempts=3)
    with moto_state_table("state") as dynamodb:
        rt, b = shared_runtime(wire, dynamodb, 10)
        b.__class__ = cls
        b.client = SlowTable(dynamodb, 0.03, 0.3, seed)
        began = time.monotonic()
        result = run_rt(rt, records_for(records))
        took = time.monotonic() - began
    return wire, result, took, b


# --- attacks that held ---------------------------------------------------------------------------------------


# A lock held past the slot at every wake-up: each slot is counted wasted, never used late, and the attempt ends in
# BudgetTimeout once past max_wait_s (at most one lock hold late), without counting an attempt or an unsent one.
def test_a_lock_held_at_every_wake_up_ends_in_budget_timeout_within_max_wait_plus_one_hold(ddb: Any) -> None:
    clock = Clock()
    hold = Hold(clock, hold_s=0.3, times=0)
    b = held_budget(ddb, clock, hold, max_wait_s=1.0)
    send(b, clock, 3)
    before = (b.stats.attempts, b.stats.wasted, b.stats.timeouts, level_sent(b, ddb))
    hold.times = 1000
    t0 = clock.now
    box = in_thread(b.wait)
    assert isinstance(box.get("error"), BudgetTimeout), box
    late = clock.now - t0
    assert late <= b.max_wait_s + hold.hold_s + b.slack, late
    assert b.stats.attempts == before[0] and level_sent(b, ddb) == before[3]  # nothing counted as sent
    assert b.stats.timeouts == before[2] + 1
    assert hold.holds >= 3 and b.stats.wasted - before[1] >= hold.holds  # every miss wasted (and slots passed)


# One miss under the lock, then the next slot: one attempt, one wasted slot, counted once in _unsent; unused() then
# takes exactly that attempt back (the thread-local _granted points at the slot that was sent, not the missed one).
def test_a_miss_under_the_lock_counts_one_attempt_one_waste_and_unused_undoes_only_the_attempt(ddb: Any) -> None:
    clock = Clock()
    hold = Hold(clock, hold_s=0.05, times=0)
    b = held_budget(ddb, clock, hold)
    send(b, clock, 3)
    attempts, wasted, unsent = b.stats.attempts, b.stats.wasted, level_sent(b, ddb)
    hold.times = 1
    t0 = clock.now
    seen: list[tuple[int, int, float]] = []

    def attempt_then_unused() -> float:  # unused() on the thread that was granted the slot, as the sink calls it
        waited = b.wait()
        seen.append((b.stats.attempts, b.stats.wasted, level_sent(b, ddb)))
        seen.append((b.stats.attempts, b.stats.wasted, level_sent(b, ddb)) if b._granted.counted else (0, 0, 0.0))
        b.unused()
        seen.append((b.stats.attempts, b.stats.wasted, level_sent(b, ddb)))
        return waited

    waited = in_thread(attempt_then_unused)["value"]
    assert hold.holds == 1
    assert seen[0] == (attempts + 1, wasted + 1, unsent + 1)  # one attempt, one waste, counted once in the level
    assert seen[1] == seen[0]  # ... and the thread-local says so
    assert seen[2] == (attempts, wasted + 2, unsent)  # unused(): the attempt taken back, its slot wasted
    assert waited == pytest.approx(clock.now - t0, abs=b.slack)  # it says when it left
    assert b._last_slot <= clock.now <= b._last_slot + b.slack  # ... within the slack of the slot it used


# A lock held less than the slack: the attempt goes at its slot, nothing wasted (the check does not over-trigger).
def test_a_lock_held_within_the_slack_costs_nothing(ddb: Any) -> None:
    clock = Clock()
    hold = Hold(clock, hold_s=0.01, times=0)
    b = held_budget(ddb, clock, hold)
    send(b, clock, 3)
    wasted = b.stats.wasted
    hold.times = 1
    in_thread(b.wait)
    assert hold.holds == 1 and b.stats.wasted == wasted


class Down:
    """A table that is down: every request fails (botocore's kind of error is not needed: any error falls back)."""

    def update_item(self, **_: Any) -> Any:
        raise RuntimeError("table down")


# The table down (local pacing): a slot missed behind the lock is retaken from the local timeline, the attempt still
# leaves within the slack of its (local) slot, and the attempts after it keep the local spacing.
def test_local_pacing_with_the_table_down_retakes_a_slot_missed_behind_the_lock(ddb: Any) -> None:
    clock = Clock()
    hold = Hold(clock, hold_s=0.2, times=0)
    b = SharedBudget(Down(), TABLE, GROUP, clock=clock, sleep=hold)
    hold.budget = b
    send(b, clock, 2)
    assert b.stats.fallbacks == 1 and b.stats.local == 2
    hold.times = 1
    box = in_thread(b.wait)
    assert "value" in box
    assert b._last_local <= clock.now <= b._last_local + b.slack
    assert (b.stats.attempts, b.stats.wasted) == (3, 1)
    departures = [clock.now]
    for _ in range(5):
        clock.now += b.wait()
        departures.append(clock.now)
    gaps = [y - x for x, y in itertools.pairwise(departures)]
    assert min(gaps) >= 1 / b._local_law.rate(clock.now) - 1e-6, gaps


# The in-flight pipeline (PUT_ITEMS_IN_FLIGHT=3, PutItems answering in 150 ms, 10 % of attempts throttled, table
# requests taking 30-300 ms): only one call waits for a slot at a time (the caller waits for ``sent``), so the lock is
# contended only by throttled()'s writes; the change costs no throughput there (observed: 18 attempts for 15 calls in
# 4.84 s after, 4.90 s before; the slow table's reservation gaps dominate both) and the quota holds.
def test_the_in_flight_pipeline_loses_no_throughput_to_the_check_under_the_lock(no_backoff: None) -> None:
    took = {}
    for cls in (SharedBudget, Before):
        wire, _, took[cls], b = pipeline_run(cls, seed=1, throttle=0.1)
        assert len(wire.items) == 150 and max_in_window(wire.starts()) <= 10
        assert b.stats.attempts == len(wire.calls)
    assert took[SharedBudget] <= took[Before] * 1.15, took


# --- finds --------------------------------------------------------------------------------------------------


@pytest.mark.xfail(
    strict=False,  # real time and threads: a lucky run may keep 80 %
    reason="known limit: the budget's lock is held across table requests, so with two threads waiting on one budget "
    "and a 30-300 ms table, slots pass behind it (17 attempts against 26 before 8a09e63, which sent them late)",
)
def test_two_threads_waiting_together_on_a_slow_table_keep_most_of_the_throughput(ddb: Any) -> None:
    """FIND (throughput, two waiters on one budget). The lock is still held across every table request, and now an
    attempt whose slot passes while another thread of the budget holds it wastes the slot. Two threads waiting for
    slots together (the docstring: "a budget serves all threads of its process"; in the sink: a botocore retry of a
    5xx or a connection error beside the next call) feed each other: each miss marks the block unclean, so ``k`` halves
    to 1, so every wait reserves (one 30-300 ms request under the lock), and each reservation spans the other
    thread's slot whenever the two round trips exceed the lead (2 x their median) plus the slack, about half the time.
    Observed (real time, 4 s, moto replies 30-300 ms): 13 attempts, 11 wasted slots, 15 reservations after the change,
    26 attempts, 3 wasted, 10 reservations before it (its busiest second 9 <= 10: the late sends fitted the quota
    here). Suggested fix: do not hold the budget's lock across table requests (reserve under a "reserving" flag and
    a Condition that other takers wait on, so a thread with its slot in hand only needs the short lock to count it);
    at least, do not count a miss caused by the lock as the holder's own slowness (``_block_clean``), which is what
    keeps ``k`` at 1 and every wait a reservation. Done, the second: 13 -> 17 attempts (26 before 8a09e63); the
    first is not done (``_take`` still finds slots passed behind the lock and halves the block)."""
    deps: dict[type[SharedBudget], list[float]] = {}
    for cls in (SharedBudget, Before):
        deps[cls], _ = two_waiters(ddb, cls, 4.0, seed=1)
        assert max_in_window(deps[cls]) <= 10
    assert len(deps[SharedBudget]) >= 0.8 * len(deps[Before]), (len(deps[SharedBudget]), len(deps[Before]))


def test_an_attempt_sent_while_another_thread_holds_a_later_slot_is_counted_in_the_level(ddb: Any) -> None:
    """FIND (counting; older than 8a09e63, which neither causes nor fixes it). ``wait`` counts an attempt in the
    level's attempts (``_unsent``, then the item's ``sent``) only if its slot is the holder-wide ``_last_slot``; with
    two threads holding slots at once, the one whose slot was taken first is never counted. Here A sleeps for its
    slot while B reserves (50 ms, under the lock); A misses and retakes a slot (after) or leaves late (before); B's
    slot, taken before A's retake, then fails the test (after), or A's does (before): 5 attempts sent, 4 counted,
    either way. The level's throttled share is then overestimated (every decision at or below the knee). Suggested
    fix: let ``_take`` say whether the slot it returns is a shared one (and keep it in the thread-local), instead of
    comparing with ``_last_slot``; the same for ``throttled()``'s ``sent = self._last_slot``. Fixed so (the wait of
    8a09e63's parent counted 4)."""
    clock = Clock()
    slow = SlowOnce(ddb, clock, rtt=0.05)
    other: list[threading.Thread] = []
    a_moved, b_done = threading.Event(), threading.Event()  # A retook a slot (or left); B left

    def sleep(seconds: float) -> None:  # time moves in slot order: A's first slot, B's, A's second
        target = clock.now + seconds
        name = threading.current_thread().name
        if name == "B":
            assert a_moved.wait(5)  # B's slot comes after A's retake (made right after B's reservation)
        elif name == "A" and not other:
            slow.armed = True
            other.append(threading.Thread(target=b_wait, name="B", daemon=True))
            other[0].start()
            assert slow.entered.wait(5)
        elif name == "A":  # A's second slot, after B's
            a_moved.set()
            assert b_done.wait(5)
        clock.now = max(clock.now, target)

    def b_wait() -> None:
        b.wait()
        b_done.set()

    b = SharedBudget(slow, TABLE, GROUP, clock=clock, sleep=sleep, block_max=1)
    send(b, clock, 3)

    def attempt() -> None:
        b.wait()
        a_moved.set()

    a = threading.Thread(target=attempt, name="A", daemon=True)
    a.start()
    a.join(10)
    other[0].join(10)
    assert b_done.is_set() and not a.is_alive()
    assert b.stats.attempts == 5
    assert level_sent(b, ddb) == b.stats.attempts
