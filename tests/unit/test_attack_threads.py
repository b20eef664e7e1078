"""Attacks on the shared budget from helper 26 (2026-12-02), driven like ``test_budget.py``.

Helper 26 attacked two changes that were then reverted (a burst of two tolerated throttles at the ceiling, a leaky
bucket in ``grace_debt``; and "never closer than ``1 / quota`` to the holder's own last attempt"): neither moved the
local cloud's figures, and the attack found three breaks in the first and two in the second
(``bench/results/burst-and-spacing.md``). What applies to the code kept is here: one find older than both changes
(fixed), and an attack that held.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from connector.budget import SharedBudget
from tests.unit.test_budget import GROUP, LATENCY, TABLE, Clock, budget, send

# --- finds ------------------------------------------------------------------------------------------------


class SlowOnce:
    """The moto client; once ``armed``, the next request signals ``entered``, lets real time pass (so that the other
    thread, woken meanwhile, reaches the budget's lock) and takes ``rtt`` simulated seconds."""

    def __init__(self, client: Any, clock: Clock, rtt: float) -> None:
        self.client, self.clock, self.rtt = client, clock, rtt
        self.armed = False
        self.entered = threading.Event()

    def update_item(self, **kwargs: Any) -> Any:
        if self.armed:
            self.armed = False
            self.entered.set()
            time.sleep(0.2)
            self.clock.now += self.rtt
        return self.client.update_item(**kwargs)

    def get_item(self, **kwargs: Any) -> Any:
        return self.client.get_item(**kwargs)


# Find (older than the change it attacked): with several threads on one budget (``PUT_ITEMS_IN_FLIGHT``, 3 by default)
# an attempt that woke in its slot can leave long after it. ``wait`` checked ``now - slot <= slack`` and only then
# took the lock to count the attempt; the lock is held across DynamoDB requests (another thread's reservation in
# ``_take``, a grace or a cut in ``throttled``), so the thread that passed the check waits for that request's round
# trip and returns after it: here 50 ms after its slot (slack 15.5 ms), with ``waited`` saying it left at the slot. A
# round trip longer than the 31 ms of margin the slack leaves (the local cloud's slow replies were 300 ms; a table
# timing out, seconds) puts quota + 1 attempts in one second under a sliding window. Fixed: ``wait`` reads the clock
# and checks the slack under the lock (a miss counts the slot wasted and takes the next).
def test_an_attempt_never_leaves_past_its_slack_behind_another_threads_table_request(ddb: Any) -> None:
    clock = Clock()
    slow = SlowOnce(ddb, clock, rtt=0.05)
    targets: list[float] = []
    other: list[threading.Thread] = []

    def sleep(seconds: float) -> None:
        if threading.current_thread().name != "A":
            return  # the other thread's slot is after A's: its sleep moves no time
        if not other:  # A sleeps until its slot: another call of the batch asks for one meanwhile
            slow.armed = True
            other.append(threading.Thread(target=b.wait, name="B", daemon=True))
            other[0].start()
            assert slow.entered.wait(5)
        clock.now += seconds
        targets.append(clock.now)

    b = SharedBudget(slow, TABLE, GROUP, clock=clock, sleep=sleep, block_max=1)  # each wait reserves its slot
    send(b, clock, 3)
    departed: list[float] = []

    def attempt() -> None:
        b.wait()
        departed.append(clock.now)

    a = threading.Thread(target=attempt, name="A", daemon=True)
    a.start()
    a.join(10)
    other[0].join(10)
    assert departed and targets
    assert departed[0] - targets[-1] <= b.slack, departed[0] - targets[-1]  # observed 0.05


# --- attacks that held ------------------------------------------------------------------------------------


class Broken:
    """A client whose every request fails with an error that is not botocore's."""

    def update_item(self, **_: Any) -> Any:
        raise RuntimeError("boom")


# Errors that are not botocore's (a bug in a wrapper, a MemoryError's cousins aside) from the grace's write, and from
# the cut tried after it, never escape throttled() or wait(): local pacing, the local rate cut.
def test_errors_that_are_not_botocores_never_escape(clock: Clock) -> None:
    b = budget(Broken(), clock)
    b._law.cut_at, b._last_slot = 0.0, clock.now  # as if it held a slot of the shared timeline
    assert b.throttled() is False
    assert (b.stats.cuts, b.stats.fallbacks) == (1, 1)
    clock.now += b.wait() + LATENCY
    assert b.stats.local == 1
