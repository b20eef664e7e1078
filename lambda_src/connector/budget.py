"""The shared PutItems budget: one timeline of send slots per dataset group, kept in ``STATE_TABLE``.

PutItems allows 10 calls per second per **dataset group**, shared by every concurrent invocation (one per shard
per source) and by the operator tools. Each of them builds a :class:`SharedBudget` and calls :meth:`wait` before
every HTTP attempt (``putitems.instrument`` does it in botocore's ``before-send``, so retries take a token too)
and :meth:`throttled` after a throttled attempt.

Why hand-written: nothing in botocore or Powertools paces *across processes*. botocore's adaptive retry mode
slows one client down after it has been throttled; Powertools has no rate limiting at all.

The item (``pk = "budget#<dataset group ARN>"``), all numbers, times in epoch seconds (to the millisecond):

* ``next_slot``: the end of the shared timeline, the first slot nobody has reserved yet;
* ``base``, ``knee``, ``cut_at``, ``settle``: the shared rate law (below);
* ``grace_at``, ``grace_by``: the last throttle tolerated at the ceiling, and the holder that tolerated it (below);
* ``sent``, ``lost``: attempts sent after a settle and how many were throttled (counters); ``mark_sent``,
  ``mark_lost``: their values at the last change of the law; ``best``, ``best_sent``, ``best_lost``: the level
  that throttled the smallest share (below);
* ``expiresAt``: TTL, pushed a day ahead by every write.

**Reserving.** A holder reserves a block of ``k`` consecutive slots ``1 / rate`` apart with one conditional
``UpdateItem`` that returns the new ``next_slot`` (the block's end): ``SET next_slot = next_slot + k / rate`` if the
timeline is busy (``next_slot`` between a moment one round trip ahead and the latest start this wait allows), else
``SET next_slot = start + k / rate`` (``next_slot`` before ``start``). Both are atomic, need no read, and check
``cut_at`` so a block is never reserved at a rate that was cut meanwhile; a failed check returns the current item
(``ReturnValuesOnConditionCheckFailure``), so the retry is informed. The holder then sends its attempts at its slot
times. Reservations queue FIFO on one timeline, so a hot shard cannot starve a cold one: a holder holds one block at
a time and waits only for the blocks reserved before its own; past ``max_wait_s``, :meth:`wait` raises
:class:`BudgetTimeout` without reserving. Block size: alone on the timeline, ``k`` doubles up to ``block_max`` (8:
one write per 8 calls); as soon as another holder's block sits between two of its own, it drops to a quarter second
of slots (3 at 9.7/s), so concurrent holders get equal blocks (equal shares), the queue stays short (bounded waits,
rate cuts felt quickly) and a backlogged holder still pays one write per two calls; while the shared rate probes
above the knee (below the ceiling), to a single slot: the queue is one block per holder, all reserved before the
probe's answer comes back, and when that answer is a throttle every slot still queued goes out over the limit (under
a sliding window, evenly paced calls just over it lose one in nine), so the queue of unanswered slots stays one per
holder (8 holders beside a foreign writer: about three throttles per congestion event become one, for one write per
call while probing); a holder that misses slots or cannot keep up with them halves ``k``. **Whole batches:** the
pipeline tells its budget how many calls a batch will make (:meth:`expect`: exactly once every item is built, at
most until then); a batch whose exact remaining calls fit in one block (a second of slots) reserves them in one
block if the timeline ahead is shorter than ``WHOLE_QUEUE_S`` (a condition of the reservation itself, so a long
queue is never lengthened by a whole block: the wait of the holders behind stays bounded), and a block never holds
more than the calls still expected. Without it, the equal short blocks of overlapping invocations interleave to the
end, so every one of them lasts as long as all of them together (each is billed for that), they end together, and
their shards' next batches arrive together and overlap again, even far below the quota. Whole small batches finish
one after the other, so their next batches arrive staggered and mostly find the timeline free. A slot missed by more
than ``slack`` is skipped, never used late. A holder built with ``max_share`` < 1 (a backfill beside the stream)
takes at most that share of the rate while others reserve too, and all of it alone (:meth:`share_pause`).

**Never over the quota.** Every rate is capped at ``quota × headroom`` (default 9.7 calls/s for a quota of 10)
and an attempt leaves in ``[slot, slot + slack]``. Slots are ``1 / ceiling`` apart on one timeline, so any
``quota + 1`` consecutive attempts of all holders together span at least ``quota / ceiling − slack`` seconds;
with ``slack = (quota / ceiling − 1) / 2`` (15 ms at 9.7 of 10) that is more than 1 s with 15 ms to spare for
network jitter: at most ``quota`` attempts in any second, under a sliding window, a fixed window or a token
bucket (burst ≥ 1) alike. A larger slack than the minimum spacing allows (``1 / ceiling − 1 / quota``, 3 ms) is
deliberate: a wake-up a few milliseconds late (a busy CPU, a cold start beside) would otherwise waste the slot,
and measured on the local cloud that cost about 15 % of the quota. What it gives up: two attempts can be closer
than ``1 / quota``, so a service that demanded strict spacing would throttle some (network jitter alone does
that at any rate above ``1 / (1 / quota + jitter)``); the AIMD below then lowers the rate if, and only as far
as, that lowers the share throttled.

**Learning the real limit.** The shared rate is a function of time, so recovering costs no writes:
after a cut at ``cut_at`` it climbs fast (``FAST`` calls/s per second) from ``base`` to ``knee``, holds the knee
for ``PLATEAU_S``, then probes upwards, slowly at first (quadratic, like CUBIC), up to the ceiling. On a
throttle (at or below the knee, only as the next paragraph allows), a holder cuts it for everyone with one
conditional ``UpdateItem``: ``base = BETA × r`` where ``r`` is the rate the throttled attempt's block was
reserved at, and ``knee = KNEE × r`` if the attempt came from the probe (the knee was right), ``DEEP × r`` if it
came at or below the knee (the knee was too high). Attempts
reserved before a cut still go out at the old rate and the service's window remembers them, so throttles of
attempts sent before ``settle`` (the timeline's end at the cut + ``settle_s``) are the same congestion event
and cut nothing. The rate thus settles just below what the service allows, a foreign writer's share
included, and climbs back to the ceiling when the foreign writer stops.

**At the ceiling, an isolated throttle is tolerated.** A throttle at the ceiling (a fresh item starts there; the
probe ends there) cuts only if another was tolerated at the same level less than ``GRACE_ATTEMPTS`` (100)
attempts' time ago (10 s at 9.7/s: at most 1 % of attempts, the knee's ``LOSS_THRESH``); else it is tolerated,
with one conditional write (``grace_at``, this holder's token, its counts) that two holders cannot both win, and
:meth:`throttled` says so: the sink retries that attempt at its next slot, without botocore's backoff. Why: under
strict spacing one late wake-up in a cold start put two attempts closer than 100 ms, and the cut it caused cost ten
seconds at the knee and the probe back up (about 5 % of a 4,500-change run, ``bench/results/localcloud-steady.md``).
What it costs: a real drop of the limit at the ceiling (a foreign writer starting) is answered one throttle later
(``bench_learning --foreign-start``). What it does not do: strict spacing throttles about 1 % of attempts at 9.7/s,
at random moments, so two still often come within the window and cut (``bench/results/localcloud-grace.md``).

**Collisions are not congestion.** Under a counting window, cutting below the real limit ends the throttles.
Under strict spacing beside a foreign writer it does the opposite: a foreign call admitted in our gap ``s = 1 /
r`` throttles our next call if that comes less than ``1 / quota`` after it: with a foreign writer at ``f``
calls/s, about ``f (1 / r − 1 / quota)`` of our calls for ``r`` ≥ ``quota / 2`` (at 2/s: 0.6 % at 9.7/s, 6 % at
7.8/s, 20 % at 5/s and below). The share *rises* as we cut, every throttle cut again, and the rate spiralled
down to about 1 call/s with 20 % throttled. So at or below the knee (throttles above it are the probe's
overshoot and cut at once, as above) a throttle is judged by the share of the current *level* (the attempts
sent since the last change's settle, all holders together, in the item's counters):

* at most ``LOSS_THRESH`` (1 %), or a single throttle so far: the level stays, no cut (a tolerable loss, like
  BBR's ``BBRLossThresh`` of 2 %, "the maximum tolerated per-round-trip packet loss rate when probing for
  bandwidth", draft-cardwell-iccrg-bbr-congestion-control-02; one throttle measures nothing). This also spares
  the plateau that an isolated jitter throttle at the knee used to cost;
* more, and a faster level (``best``, more than ``SAME_LEVEL`` faster) throttled a smaller share, itself under
  ``RESTORE_THRESH`` (10 %): go back up to it (base = knee = that rate, then the plateau and the probe as after a
  cut) instead of cutting deeper. The cut that led here did not help: collisions, not congestion. Going back up is
  **on trial**: the level's attempts are a sequential test (Wald's SPRT, judged at each throttle: 5 % false fails,
  10 % false passes) of "it throttles the best's share, as before" against "it throttles the share of the level it
  came from" (at most 25 %), failing only with ``MIN_LOST`` throttles like every other decision. A failed trial cuts
  from the level it came from, as if it had not gone back up, and the trial's share, at least 10 %, replaces the
  best level's, so the rate never goes back to it again; a passed one is an ordinary level. The trial's fields carry
  the level they belong to (``trial_at`` = its ``cut_at``), so a level written by another version is not judged as
  an old trial. When the real limit has dropped, the trial fails within a few attempts; under strict spacing beside
  a foreign writer, where the share rises as the rate falls, it passes and the rate does not spiral down. What it
  costs: after a drop of the limit that follows a long hold at the ceiling, the rate goes back to the ceiling once,
  for about a second (``test_attack_restore_cap.py``: about 5 points more throttled in the first 10 s after the drop
  than cutting straight down, the same steady state). What it replaced: a level throttling over 10 % itself always
  cut, and one unlucky level under strict spacing could start cuts that nothing stopped (``bench_learning``: 1 of 20
  runs of 120 s at 4 holders ended at 1.2 calls/s, 1 of 20 of 600 s at 1 holder at 0.7); going back up from such a
  level without a trial cost 3-8 points for 10-30 s after every drop;
* otherwise cut, as above.

``best`` is the fastest *good* level seen (one that throttled under ``RESTORE_THRESH``), or while none is known the
level with the smallest share; a level's share is pooled over its visits (older visits count half), so one unlucky
second does not move it, and its rate is its knee (the rate it held), not the probe's peak. A slower level never
replaces a good one: under collisions a slower level throttling less by chance used to replace it, and visit by
visit the level to go back to ratcheted down (the 600 s collapse above). The counters cost no request of their own:
each holder adds its attempts and throttles to its next reservation (``ADD``); a throttle that does not cut adds
them at once (one write), so the next decision, by any holder, counts it: at most one extra write per throttle (two
for the one that ends a trial), none per call. What it gives up: under a window model a knee just above the real
limit can now throttle up to 1 % of calls before it is cut; under strict spacing the rate stays near the ceiling and
the foreign writer is the one squeezed (its calls fit only in gaps wider than ``1 / quota``): uncoordinated writers
under strict spacing cannot both be served, and going slower would not help either of them.

**When the table fails** (missing, access denied, timeouts, any error): :meth:`wait` never raises for it. The
holder paces itself locally at ``fallback_rate`` (default ceiling / 4) with the same AIMD, counts it in
``stats.fallbacks``, logs a warning, and tries the table again after ``retry_table_s``.

Thread safety: a budget serves all threads of its process (a lock guards its state; sleeping happens outside
the lock). Table requests happen under the lock, so an attempt whose slot passes while another thread's request
holds it takes the next slot instead of leaving late (the check is made under the lock); each thread keeps its own
last slot (``_granted``), which the level's counts and :meth:`throttled` judge. What that costs: with two threads
waiting on one budget at once and a slow table (30-300 ms), slots pass behind the lock (``test_attack_wait_lock.py``,
an xfail); the sink has one call waiting for a slot at a time, so it does not show there. The module holds no global
state.
"""

from __future__ import annotations

import math
import re
import statistics
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from connector.config import Settings
from connector.telemetry import logger

DEFAULT_QUOTA = 10.0
HEADROOM = 0.97  # rate ceiling = quota × HEADROOM
BETA = 0.8  # multiplicative cut
KNEE = 0.97  # fast recovery up to KNEE × the rate that was throttled, held there PLATEAU_S
DEEP = 0.9  # a throttle at or below the knee: the knee was too high, lower it by this factor
PLATEAU_S = 10.0
FAST = 2.0  # calls/s gained per second below the knee
PROBE = 0.01  # calls/s² of the quadratic probe above the knee
MIN_RATE = 0.2  # calls/s: never cut below
LOSS_THRESH = 0.01  # at or below the knee, a level that throttles at most this share of its attempts stays
RESTORE_THRESH = 0.1  # go back up only to a level that throttled less than this
TRIAL_PASS = math.log(0.1 / 0.95)  # a restored level's trial (Wald's SPRT): passed below this log-likelihood ratio
TRIAL_FAIL = math.log(0.9 / 0.05)  # ... and failed above it (5 % false fails, 10 % false passes)
TRIAL_FLOOR = 0.005  # the share a restored level is expected to throttle is at least this
TRIAL_P1_MAX = 0.25  # ... and if going back up was wrong, at most this (a larger one would pass it on one success)
MIN_LOST = 2  # at or below the knee, act on a level's share once it has this many throttles (one says little)
GRACE_ATTEMPTS = 1 / LOSS_THRESH  # at the ceiling, one throttle per this many attempts' time is tolerated
SAME_LEVEL = 0.015  # levels closer than this (relative) are one level
SETTLE_S = (
    1.0  # the service's counting window (assumed ≤ 1 s): throttles until it has passed after the cut are old news
)
TTL_S = 86_400
SHARED_BLOCK_S = 0.25  # block length while other holders reserve too (equal blocks: equal shares, short queue)
WHOLE_QUEUE_S = 1.0  # the rest of a batch goes in one block only behind a queue shorter than this (see expect)
LEAD_SAMPLES = 5  # the lead is 2 × the median of the table's last round trips (one slow reply does not move it)
MAX_TRIES = 4  # conditional-update attempts per reservation before pacing this attempt locally

# Item attributes, always through placeholders (several are DynamoDB reserved words).
_NAMES = {
    "#next": "next_slot",
    "#base": "base",
    "#knee": "knee",
    "#cut": "cut_at",
    "#settle": "settle",
    "#exp": "expiresAt",
    "#sent": "sent",
    "#lost": "lost",
    "#msent": "mark_sent",
    "#mlost": "mark_lost",
    "#best": "best",
    "#bsent": "best_sent",
    "#blost": "best_lost",
    "#tfrom": "trial_from",
    "#tp0": "trial_p0",
    "#tp1": "trial_p1",
    "#tat": "trial_at",
    "#grace": "grace_at",
    "#gby": "grace_by",
}


class BudgetTimeout(BotoCoreError):
    """No PutItems token within ``max_wait_s``: the caller reports the rest of its batch as retry."""

    fmt = "No PutItems token for {dataset_group} within {max_wait_s:g} s: the shared budget is saturated"


@dataclass(slots=True)
class RateLaw:
    """AIMD as a function of time: ``base`` after the cut at ``cut_at``, fast up to ``knee``, then probing."""

    ceiling: float
    base: float
    knee: float
    cut_at: float
    settle: float = 0.0  # attempts sent before this (the timeline's end at the cut + SETTLE_S) do not cut again

    def rate(self, now: float) -> float:
        d = max(0.0, now - self.cut_at)
        fast = self.base + FAST * d
        if fast < self.knee:
            return min(self.ceiling, fast)
        probe = d - max(0.0, (self.knee - self.base) / FAST) - PLATEAU_S
        return min(self.ceiling, max(self.knee, self.base) + PROBE * max(0.0, probe) ** 2)

    def probing(self, current: float) -> bool:
        """Whether ``current`` is above the knee (or at the ceiling): a throttle there means the probe overshot (at
        the ceiling, once it is not isolated: :meth:`SharedBudget._grace`)."""
        return current > self.knee * 1.001 or current >= self.ceiling * 0.999

    def cut(self, now: float, throttled_rate: float, settle: float) -> None:
        """Cut below ``throttled_rate``, the rate of the block whose attempt was throttled."""
        current = min(self.rate(now), throttled_rate)
        # Above the knee (or at the ceiling): the probe overshot and the knee was about right; at or below the
        # knee, the knee itself is too high: cut it as deep as the rate.
        probing = self.probing(current)
        self.base = max(MIN_RATE, BETA * current)
        self.knee = max(self.base, (KNEE if probing else DEEP) * current)
        self.cut_at = now
        self.settle = settle

    def restore(self, now: float, rate: float, settle: float) -> None:
        """Undo a cut: hold ``rate`` (the rate the cut was made from) for ``PLATEAU_S``, then probe as usual."""
        self.base = self.knee = min(self.ceiling, rate)
        self.cut_at = now
        self.settle = settle


@dataclass(slots=True)
class _Memory:
    """What the item remembers of the last rate change, to tell whether it lowered the throttled share."""

    sent: int = 0  # the item's counters: attempts sent after a settle, and how many of them were throttled
    lost: int = 0
    mark_sent: int = 0  # the counters at the last change: the share since then is the current level's
    mark_lost: int = 0
    best: float = 0.0  # the rate of the level that throttled least (0: none yet)
    best_sent: float = 0.0  # its attempts and throttles, pooled over its visits (older visits count half)
    best_lost: float = 0.0
    trial_from: float = 0.0  # a restored level on trial: the rate it was restored from (0: no trial)
    trial_p0: float = 0.0  # the share the restored level is expected to throttle if going back was right
    trial_p1: float = 0.0  # ... and if it was wrong (the share that made the level below go back)
    grace_at: float = 0.0  # the last throttle tolerated at the ceiling (this level's if after its cut_at)

    def trial(self, unsent: int, unlost: int) -> int:
        """A restored level's trial, by Wald's sequential probability ratio test on its attempts so far: +1 failed
        (it throttles like the congested level it was restored from), -1 passed (as it did before), 0 undecided.
        Called at each throttle, with this throttle counted: the ratio only rises at throttles and falls between
        them, so the test passed if it had fallen below ``TRIAL_PASS`` just before this throttle."""
        lost = self.lost + unlost - self.mark_lost
        sent = max(lost, self.sent + unsent - self.mark_sent)
        up, down = math.log(self.trial_p1 / self.trial_p0), math.log((1 - self.trial_p1) / (1 - self.trial_p0))
        if (lost - 1) * up + (sent - lost) * down <= TRIAL_PASS:
            return -1
        return 1 if lost >= MIN_LOST and lost * up + (sent - lost) * down >= TRIAL_FAIL else 0

    def share(self, unsent: int, unlost: int) -> float:
        """The throttled share of the current level (attempts sent after its settle)."""
        return (self.lost + unlost - self.mark_lost) / max(1, self.sent + unsent - self.mark_sent)

    def best_share(self) -> float:
        return self.best_lost / max(1.0, self.best_sent)

    def left(self, rate: float, share: float, unsent: int, unlost: int) -> tuple[float, float, float]:
        """The best level after leaving a level held at ``rate`` with ``share`` throttled: the same level again
        pools its counts (halving the older ones); a faster good level (under ``RESTORE_THRESH``) replaces it, and
        so does any level that throttled less while no good level is known. A slower level never replaces a good
        one, so noise cannot ratchet the best level down."""
        sent = max(1, self.sent + unsent - self.mark_sent)
        lost = self.lost + unlost - self.mark_lost
        if not self.best or abs(rate - self.best) <= SAME_LEVEL * self.best:
            return rate, self.best_sent / 2 + sent, self.best_lost / 2 + lost
        good = self.best_share() < RESTORE_THRESH
        if (share < RESTORE_THRESH and (rate > self.best or not good)) or (not good and share < self.best_share()):
            return rate, sent, lost
        return self.best, self.best_sent, self.best_lost

    def tried(self, unsent: int, unlost: int) -> tuple[float, float, float]:
        """The best level after its trial failed: measured again, by the trial alone (the limit changed), and at
        least ``RESTORE_THRESH`` throttled, so that the rate never goes back up to it again."""
        sent = max(1, self.sent + unsent - self.mark_sent)
        return self.best, sent, max(self.lost + unlost - self.mark_lost, RESTORE_THRESH * sent)


@dataclass(slots=True)
class BudgetStats:
    """Counters since the budget was built (per container); read deltas per invocation."""

    attempts: int = 0  # tokens granted (PutItems HTTP attempts)
    requests: int = 0  # DynamoDB requests made
    conflicts: int = 0  # conditional checks that failed (each is a request, billed as a write)
    reservations: int = 0  # blocks reserved
    wasted: int = 0  # reserved slots never used
    throttles: int = 0  # throttled() calls
    cuts: int = 0  # shared (or local) rate cuts this holder made
    restores: int = 0  # times this holder went back up to a level that had throttled less
    graces: int = 0  # throttles this holder tolerated at the ceiling (isolated: the rate held)
    fallbacks: int = 0  # times the table failed and local pacing took over
    local: int = 0  # tokens granted by local pacing
    timeouts: int = 0  # BudgetTimeout raised
    waited_s: float = 0.0


class SharedBudget:
    """The PutItems budget of one dataset group, shared through one DynamoDB item (see the module docstring)."""

    def __init__(
        self,
        client: Any,
        table: str,
        dataset_group: str,
        *,
        quota: float = DEFAULT_QUOTA,
        headroom: float = HEADROOM,
        max_wait_s: float = 10.0,
        fallback_rate: float | None = None,
        block_max: int = 8,
        settle_s: float = SETTLE_S,
        retry_table_s: float = 30.0,
        max_share: float = 1.0,
        grace_attempts: float = GRACE_ATTEMPTS,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if quota <= 0:
            raise ValueError("quota must be positive")
        if not 0 < max_share <= 1:
            raise ValueError("max_share must be in (0, 1]")
        if not (math.isfinite(grace_attempts) and grace_attempts >= 0):
            raise ValueError("grace_attempts must be a finite number >= 0 (0: every throttle at the ceiling cuts)")
        if not 0 < headroom <= 0.99:
            raise ValueError("headroom must be in (0, 0.99]: slots need some slack for late wake-ups")
        self.client = client
        self.table = table
        self.dataset_group = dataset_group
        self.key = {"pk": {"S": f"budget#{dataset_group}"}}
        self.quota = quota
        self.ceiling = quota * headroom
        self.slack = (quota / self.ceiling - 1) / 2  # seconds; see "Never over the quota"
        self.max_wait_s = max_wait_s
        self.block_max = max(1, block_max)
        self.settle_s = settle_s
        self.retry_table_s = retry_table_s
        self.max_share = max_share
        self.grace_attempts = grace_attempts  # 0: every throttle at the ceiling cuts at once
        self._token = uuid.uuid4().hex  # this holder, in the grace it writes (its own write sent twice is its own)
        self.stats = BudgetStats()
        # This thread's last granted slot: ``counted``, whether it counted in ``_unsent``; ``slot``, its time if it
        # was a shared one (several threads of one budget hold slots at once: ``_last_slot`` is only the latest taken).
        self._granted = threading.local()
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        # What this holder knows of the shared item (refreshed by every reply).
        self._law = RateLaw(self.ceiling, self.ceiling, self.ceiling, 0.0)
        self._next_slot = 0.0
        self._memory = _Memory()
        self._unsent, self._unlost = 0, 0  # counted here since settle, not yet added to the item's counters
        # This holder's block.
        self._slots: deque[float] = deque()
        self._block_end = "0"  # the stored next_slot right after this holder's block
        self._k = 1
        self._expected = 0  # calls this holder still expects to make in its batch (0: unknown)
        self._whole = False  # the next block is the rest of the batch: reserve it only behind a short queue
        self._exact = False  # _expected is the exact count (every item built), not only an upper bound
        self._block_clean = True  # every slot of the block used, each within one interval of the last
        self._contended = False  # another holder's block sits between this holder's last two blocks
        self._last_slot = 0.0
        self._block_rate = self.ceiling  # the rate the current block was reserved at
        self._share_tokens, self._share_at, self._share_due = 0.0, 0.0, 0.0  # max_share < 1: a token bucket
        self._paused = 0.0  # share pauses since the last attempt
        # The table's last round trips. The lead (``_lead``: seconds between asking for a block and its first slot)
        # is 2 × their median (seeded with 10 ms, so a cold start's slow first reply does not set it either). A
        # mean would let one slow reply (300 ms on the local cloud) raise it for the next ten blocks, and every
        # block that starts ``lead`` after asking instead of chaining onto this holder's last one leaves a gap.
        self._rtts: deque[float] = deque((0.01, 0.01), maxlen=LEAD_SAMPLES)
        # Local pacing, while the table is unavailable.
        fallback = self.ceiling / 4 if fallback_rate is None else min(fallback_rate, self.ceiling)
        self._local_law = RateLaw(fallback, fallback, fallback, 0.0)
        self._local_next = 0.0
        self._last_local = 0.0  # the last slot paced locally (a throttle after the local settle cuts the local rate)
        self._table_down_until: float | None = None

    # --- the interface putitems.instrument uses --------------------------------------------------------------

    def wait(self) -> float:
        """Block until this attempt may be sent; return the seconds waited. Raise :class:`BudgetTimeout` rather
        than wait longer than ``max_wait_s``; never raise because the table is unavailable."""
        t0 = self._clock()
        pause = self.share_pause()
        if pause > 0:
            self._sleep(pause)
            with self._lock:
                self._share_due = 0.0
        while True:
            with self._lock:
                slot = self._take(t0)
                shared = slot == self._last_slot  # from the shared timeline, not paced locally
            woke = self._clock()
            if slot > woke:
                self._sleep(slot - woke)
                woke = max(slot, self._clock())
            # The clock is read again under the lock: another thread of this budget may hold it across a table
            # request (a reservation, a cut), and an attempt that passed the check before waiting for it left that late.
            with self._lock:
                now = max(slot, self._clock())
                if now - slot <= self.slack:
                    waited = max(0.0, now - t0)
                    self.stats.attempts += 1
                    self._granted.counted = shared and slot >= self._law.settle
                    self._granted.slot = slot if shared else self._last_slot
                    if self._granted.counted:  # a shared slot, in the current level
                        self._unsent += 1
                    self.stats.waited_s += waited
                    return waited
                # too late for the slot (a busy CPU, a lock held): sending now could crowd the next one
                logger.debug("PutItems slot missed: woke up late", extra={"late_ms": round((now - slot) * 1000, 1)})
                self.stats.wasted += 1
                if woke - slot > self.slack:  # this holder woke late (not another thread's table request): it is
                    self._block_clean = False  # slower than its slots, so smaller blocks

    def unused(self) -> None:
        """The slot this thread was last granted passed unused (the attempt waited behind a retried call and
        takes a new one): not an attempt; a wasted slot."""
        with self._lock:
            self.stats.attempts -= 1
            self.stats.wasted += 1
            if getattr(self._granted, "counted", False) and self._unsent > 0:  # not flushed meanwhile
                self._unsent -= 1
                self._granted.counted = False

    def throttled(self) -> bool:
        """A throttled attempt: cut the shared rate for everyone, once per congestion event. True if the throttle
        was isolated and the rate holds (tolerated at the ceiling, or a tolerable share at or below the knee): the
        caller may retry at its next slot, without backing off; False after a cut, going back up, during a trial,
        for a congestion event already answered, or with the table down.

        Slots reserved before a cut still go out at the old rate, and the service remembers them for its
        counting window, so a throttle of an attempt sent before ``settle`` (the timeline's end at the last
        cut + ``settle_s``) is the same event and cuts nothing."""
        now = self._clock()
        with self._lock:
            self.stats.throttles += 1
            sent = getattr(self._granted, "slot", self._last_slot)  # this thread's attempt (the sink's hook)
            if self._table_down(now):
                if self._last_local >= self._local_law.settle:
                    self._cut_locally(now)
                return False
            if sent >= self._law.settle:
                self._unlost += 1
            flushed = judged = False
            for _ in range(MAX_TRIES):
                if sent < self._law.settle:
                    return False  # answered by the last cut
                law = RateLaw(self.ceiling, self._law.base, self._law.knee, self._law.cut_at)
                memory, settle = self._memory, max(self._next_slot, now) + self.settle_s
                share = memory.share(self._unsent, self._unlost)  # the current level's, since the last change
                current = min(law.rate(now), self._block_rate)
                restore, probing = False, law.probing(current)
                on_trial = bool(memory.trial_from) and current <= law.knee * 1.001  # a restored level (the ceiling too)
                tolerable = share <= LOSS_THRESH or memory.lost + self._unlost - memory.mark_lost < MIN_LOST
                if probing and not on_trial and current >= self.ceiling * 0.999 and not judged:
                    graced = self._grace(now)  # at the ceiling: an isolated throttle is tolerated
                    if graced is None:
                        continue  # the item changed meanwhile: decide again on it
                    if graced:
                        return True
                    judged = True  # not isolated: cut, as a probe's overshoot
                if (on_trial or (not probing and tolerable)) and not flushed:
                    if not self._flush(now):
                        return False
                    flushed = True
                    continue  # decide again with every holder's counts, this throttle's included
                verdict = memory.trial(self._unsent, self._unlost) if on_trial else 0
                if on_trial and verdict == 0:
                    return False  # undecided: the level stays, on trial
                failed = verdict > 0
                if not failed and (on_trial or not probing):  # at or below the knee: congestion, or collisions?
                    if tolerable:
                        if verdict < 0:
                            return self._end_trial(now)  # passed; not isolated if the law changed meanwhile
                        return True  # a tolerable share (BBR's loss_thresh), or too little evidence: the level stays
                    best_share = memory.best_share()
                    restore = memory.best > current * (1 + SAME_LEVEL) and best_share < min(share, RESTORE_THRESH)
                trial = (0.0, 0.0, 0.0)
                if failed:  # going back up was wrong: cut from the level it came from; the trial measures the best
                    law.cut(now, memory.trial_from, settle)
                    best = memory.tried(self._unsent, self._unlost)
                else:
                    if restore:  # a faster level throttled less: cutting did not help here, go back to it, on trial
                        law.restore(now, memory.best, settle)
                        p0 = max(TRIAL_FLOOR, best_share)
                        trial = (current, p0, min(TRIAL_P1_MAX, max(share, 2 * p0)))
                    else:
                        law.cut(now, self._block_rate, settle)
                    best = memory.left(min(current, self._law.knee), share, self._unsent, self._unlost)
                sent_total, lost_total = memory.sent + self._unsent, memory.lost + self._unlost
                try:  # optimistic: cut from the law, timeline and counters this holder knows, which must be current
                    self._update(
                        "SET #base = :base, #knee = :knee, #cut = :now, #settle = :settle, #exp = :exp,"
                        " #msent = :msent, #mlost = :mlost, #best = :best, #bsent = :bsent, #blost = :blost,"
                        " #tfrom = :tfrom, #tp0 = :tp0, #tp1 = :tp1, #tat = :now ADD #sent :sent, #lost :lost",
                        "(attribute_not_exists(#cut) OR #cut = :known)"
                        " AND (attribute_not_exists(#next) OR #next <= :next)",
                        {
                            ":base": _n(law.base),
                            ":knee": _n(law.knee),
                            ":now": _n(now),
                            ":settle": _n(law.settle),
                            ":known": _n(self._law.cut_at),
                            ":next": _n(self._next_slot),
                            ":exp": _n(int(now + TTL_S)),
                            ":msent": _n(sent_total),
                            ":mlost": _n(lost_total),
                            ":best": _n(best[0]),
                            ":bsent": {"N": f"{best[1]:.2f}"},
                            ":blost": {"N": f"{best[2]:.2f}"},
                            ":tfrom": _n(trial[0]),
                            ":tp0": {"N": f"{trial[1]:.4f}"},
                            ":tp1": {"N": f"{trial[2]:.4f}"},
                            ":sent": _n(self._unsent),
                            ":lost": _n(self._unlost),
                        },
                    )
                except _Conflict as conflict:
                    self._learn(conflict.item)  # someone cut or reserved meanwhile: decide again on fresh data
                    continue
                except Exception as exc:  # any table failure: local pacing, never an error
                    self._fall_back(now, exc)
                    self._cut_locally(now)
                else:
                    self._law = law
                    self._memory = _Memory(sent_total, lost_total, sent_total, lost_total, *best, *trial)
                    self._unsent = self._unlost = 0
                    if restore:
                        self.stats.restores += 1
                    else:
                        self.stats.cuts += 1
                    message = "restored" if restore else "cut after a failed trial" if failed else "cut"
                    logger.info(
                        f"Shared PutItems rate {message}",
                        extra={
                            "from_rate": round(current, 2),
                            "base": round(law.base, 2),
                            "knee": round(law.knee, 2),
                            "level_share": round(share, 4),
                            "level_attempts": sent_total - memory.mark_sent,
                            "probing": probing,
                        },
                    )
                return False
            return False  # the item kept changing under this holder: no decision

    def expect(self, calls: int, *, exact: bool = True) -> None:
        """The calls this holder's batch will still make (the pipeline's count of fresh calls; fallbacks and
        retries come on top): ``exact``, or at most that many (the items are not all built yet). Blocks never hold
        more than the calls still expected, and an exact rest that fits in one block (a second of slots) is
        reserved whole. See "Whole batches" in the module docstring."""
        with self._lock:
            self._expected, self._exact = max(0, calls), exact
            if calls > 0 and not self._slots:
                self._whole = exact and calls <= self._law.rate(self._clock())
                self._k = calls if self._whole else min(self._k, calls)

    def release(self) -> None:
        """Optional, at the end of a batch: give back this holder's unused slots if its block is still the end
        of the timeline (one conditional write; if someone reserved after it, the slots are simply wasted)."""
        now = self._clock()
        with self._lock:
            unused = [s for s in self._slots if s >= now + self._lead]
            self.stats.wasted += len(self._slots) - len(unused)
            self._slots.clear()
            self._expected, self._whole, self._exact = 0, False, False
            if not unused or self._table_down(now):
                self.stats.wasted += len(unused)
                return
            try:
                self._update(
                    "SET #next = :first",
                    "#next = :end",
                    {":first": _n(math.ceil(unused[0] * 1000) / 1000), ":end": {"N": self._block_end}},
                )
            except _Conflict as conflict:
                self._learn(conflict.item)
                self.stats.wasted += len(unused)
            except Exception:  # releasing is best effort
                self.stats.wasted += len(unused)
            else:
                self._next_slot = math.ceil(unused[0] * 1000) / 1000

    def share_pause(self) -> float:
        """Seconds a holder with ``max_share`` < 1 stays off the timeline before its next attempt (:meth:`wait`
        sleeps them first): while others reserve too, a local token bucket at ``max_share`` of the shared rate
        (burst: one block) caps it at that share; alone, it takes everything. It waits before reserving, never
        inside the timeline, so the slots it leaves go to the others. It is a cap, not a reservation: while it
        pauses, backlogged holders queue more blocks, so beside them it gets between about half of
        ``max_share`` and all of it (``tests/unit/test_budget.py`` measures it)."""
        if self.max_share >= 1:
            return 0.0
        now = self._clock()
        with self._lock:
            if self._share_due:  # a pause was already given for the next attempt (and its token taken)
                if now < self._share_due:
                    return self._share_due - now
                self._share_due = 0.0
                return 0.0
            rate = self.max_share * self._law.rate(now)
            burst = float(max(1, self._k))
            if not self._contended or self._table_down(now):
                self._share_tokens, self._share_at = burst, now
                return 0.0
            self._share_tokens = min(burst, self._share_tokens + (now - self._share_at) * rate)
            self._share_at = now
            if self._slots or self._share_tokens >= 1:  # a slot already held is used, never skipped
                self._share_tokens -= 1
                return 0.0
            pause = (1 - self._share_tokens) / rate
            self._share_tokens, self._share_at = 0.0, now + pause  # the token it waits for is taken now
            self._share_due = now + pause
            self._paused += pause  # a gap of its own making: not a sign that it cannot keep up
            return pause

    def rate(self) -> float:
        """The shared rate as this holder last saw it, in calls/s (local pacing's while the table is down)."""
        now = self._clock()
        with self._lock:
            return (self._local_law if self._table_down(now) else self._law).rate(now)

    # --- internals (called with the lock held) ---------------------------------------------------------------

    @property
    def _lead(self) -> float:
        return max(0.002, 2 * statistics.median(self._rtts))

    def _take(self, t0: float) -> float:
        """The slot time for one attempt that asked at ``t0``."""
        latest = t0 + self.max_wait_s
        while True:
            now = self._clock()
            if self._slots and self._slots[0] + self.slack < now:
                while self._slots and self._slots[0] + self.slack < now:
                    logger.debug(
                        "PutItems slot missed: asked late",
                        extra={"late_ms": round((now - self._slots[0]) * 1000, 1), "block_left": len(self._slots)},
                    )
                    self._slots.popleft()
                    self.stats.wasted += 1
                self._block_clean = False
                if not self._slots:
                    self._k = max(1, self._k // 2)
            if self._slots:
                if self._slots[0] > latest:
                    break
                slot = self._slots.popleft()
                if t0 - self._last_slot > 1 / self._law.rate(t0) + self.slack + self._paused:
                    self._block_clean = False  # this holder is slower than the slots: larger blocks would be wasted
                self._paused = 0.0
                self._last_slot = slot
                self._expected = max(0, self._expected - 1)
                if not self._slots:
                    self._k, self._whole = self._next_k(t0)
                return slot
            if now > latest:
                break
            if self._table_down(now) or not self._reserve(now, latest):
                return self._take_local(now, latest)
        self.stats.timeouts += 1
        raise BudgetTimeout(dataset_group=self.dataset_group, max_wait_s=self.max_wait_s)

    def _reserve(self, now: float, latest: float) -> bool:
        """Reserve a block into ``self._slots``; False if the table failed (pace locally instead)."""
        guess_busy = self._contended  # others were reserving: guess the timeline is still busy (once)
        for _ in range(MAX_TRIES):
            start = now + self._lead
            rate = self._law.rate(start)
            k = max(1, min(self._k, int(rate)))  # a block lasts at most about a second (when the rate is low)
            duration = math.ceil(k / rate * 1000) / 1000  # whole ms, rounded up: never closer than 1 / rate
            values = {
                ":start": _n(start),
                ":cut": _n(self._law.cut_at),
                ":exp": _n(int(now + TTL_S)),
            }
            cut_ok = "(attribute_not_exists(#cut) OR #cut = :cut)"
            busy = self._next_slot >= start or guess_busy  # a guess; a wrong one costs a retry
            if busy:
                update = "SET #next = #next + :dur, #exp = :exp"
                condition = f"#next BETWEEN :start AND :latest AND {cut_ok}"
                values[":dur"] = _n(duration)
                values[":latest"] = _n(min(latest, start + WHOLE_QUEUE_S) if self._whole else latest)
            else:
                update = "SET #next = :end, #exp = :exp"
                condition = f"(attribute_not_exists(#next) OR #next < :start) AND {cut_ok}"
                values[":end"] = _n(start + duration)
            # This holder's attempts and throttles since its last write ride along: no request of their own.
            update += " ADD #sent :sent, #lost :lost"
            values[":sent"], values[":lost"] = _n(self._unsent), _n(self._unlost)
            sent = self._clock()
            try:
                reply = self._update(update, condition, values, return_new=True)
                attributes = reply["Attributes"]
                end = Decimal(attributes["next_slot"]["N"])  # atomic: the end of this holder's block
                first = end - Decimal(values[":dur"]["N"]) if busy else Decimal(values[":start"]["N"])
            except _Conflict as conflict:
                self._learn(conflict.item)  # from now on the stored timeline decides, not the guess
                guess_busy = False
                if self._whole and self._next_slot > start + WHOLE_QUEUE_S:  # a long queue: one slot, decide again
                    self._whole, self._k = False, 1
                if self._next_slot > latest:
                    self.stats.timeouts += 1
                    raise BudgetTimeout(dataset_group=self.dataset_group, max_wait_s=self.max_wait_s) from None
                now = self._clock()
                continue
            except Exception as exc:  # any table failure: local pacing, never an error
                self._fall_back(now, exc)
                return False
            self._rtts.append(self._clock() - sent)
            self._memory.sent = int(attributes.get("sent", {}).get("N", 0))
            self._memory.lost = int(attributes.get("lost", {}).get("N", 0))
            self._unsent = self._unlost = 0
            self._slots.extend(float(first) + i / rate for i in range(k))
            self._contended = busy and first != Decimal(self._block_end)
            self._block_end = str(end)
            self._next_slot = float(end)
            self._block_clean = True
            self._block_rate = rate
            self.stats.reservations += 1
            if self._table_down_until is not None:
                logger.info("Shared PutItems budget: state table reachable again", extra={"table": self.table})
                self._table_down_until = None
            return True
        return False  # persistent contention: pace this attempt locally

    def _next_k(self, now: float) -> tuple[int, bool]:
        """The next block's size, and whether it is the rest of the batch: halve it if this holder missed or could
        not keep up with a slot; while others reserve too, a short block (fair shares, a short queue, quick
        reaction to cuts), or the rest of the batch if it fits in a second of slots (behind a short queue only:
        :meth:`_reserve`); alone, double it; never more than the calls still expected."""
        if not self._block_clean:
            return max(1, self._k // 2), False
        expected = self._expected or math.inf
        if self._contended:
            rate = self._law.rate(now)
            if self._law.knee * 1.001 < rate < self.ceiling * 0.999:
                return 1, False  # probing: one slot per holder, so few slots go out at a rate not yet answered
            if self._exact and self._shared_k(rate) < self._expected <= rate:
                return self._expected, True  # the rest of the batch in one turn (whole batches)
            return int(min(self._shared_k(rate), expected)), False
        return int(min(self.block_max, self._k * 2, expected)), False

    def _shared_k(self, rate: float) -> int:
        return min(self.block_max, max(1, math.ceil(rate * SHARED_BLOCK_S)))

    def _cut_locally(self, now: float) -> None:
        self._local_law.cut(now, self._local_law.rate(now), max(self._local_next, now) + self.settle_s)
        self.stats.cuts += 1

    def _take_local(self, now: float, latest: float) -> float:
        slot = max(now, self._local_next)
        if slot > latest:
            self.stats.timeouts += 1
            raise BudgetTimeout(dataset_group=self.dataset_group, max_wait_s=self.max_wait_s)
        self._local_next = slot + 1 / self._local_law.rate(slot)
        self._last_local = slot
        self.stats.local += 1
        return slot

    def _table_down(self, now: float) -> bool:
        return self._table_down_until is not None and now < self._table_down_until

    def _fall_back(self, now: float, exc: Exception) -> None:
        if self._table_down_until is None:
            self.stats.fallbacks += 1
            code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else type(exc).__name__
            logger.warning(
                "Shared PutItems budget unavailable: pacing locally",
                extra={"table": self.table, "error": code, "local_rate": round(self._local_law.rate(now), 2)},
            )
        self._table_down_until = now + self.retry_table_s

    def _learn(self, item: Mapping[str, Any] | None) -> None:
        if not item:
            return
        self._next_slot = _number(item, "next_slot")

        def number(name: str) -> float:
            return _number(item, name)

        if number("cut_at") != self._law.cut_at:  # a new level: what this holder counted belongs to the old one
            self._unsent = self._unlost = 0
        self._memory = _Memory(
            int(number("sent")),
            int(number("lost")),
            int(number("mark_sent")),
            int(number("mark_lost")),
            number("best"),
            number("best_sent"),
            number("best_lost"),
            number("trial_from") if number("trial_at") == number("cut_at") else 0.0,  # this level's trial only
            number("trial_p0"),
            number("trial_p1"),
            number("grace_at"),
        )
        if "cut_at" in item:
            self._law = RateLaw(
                self.ceiling,
                float(item["base"]["N"]),
                float(item["knee"]["N"]),
                float(item["cut_at"]["N"]),
                number("settle"),
            )

    def _flush(self, now: float) -> bool:
        """Add this holder's counts to the item's and learn everyone's (one write, for a throttle that does not
        cut: the next decision, by any holder, counts it), only if the law is still the one they were counted under:
        after someone else's change they belong to the old level, and are dropped (``_learn``). False if the table
        failed."""
        try:
            reply = self._update(
                "SET #exp = :exp ADD #sent :sent, #lost :lost",
                "attribute_not_exists(#cut) OR #cut = :known",
                {
                    ":exp": _n(int(now + TTL_S)),
                    ":sent": _n(self._unsent),
                    ":lost": _n(self._unlost),
                    ":known": _n(self._law.cut_at),
                },
                return_new=True,
            )
        except _Conflict as conflict:  # the law changed meanwhile: learn it; these counts were the old level's
            self._learn(conflict.item)
            self._unsent = self._unlost = 0
            return True
        except Exception as exc:  # any table failure: local pacing, never an error
            self._fall_back(now, exc)
            return False
        self._unsent = self._unlost = 0
        self._learn(reply.get("Attributes"))
        return True

    def _grace(self, now: float) -> bool | None:
        """A throttle at the ceiling: tolerate it (True) if no other was tolerated at this level within the time of
        ``grace_attempts`` attempts (one write, that also adds this holder's counts, conditional on the law and on
        the last tolerated throttle, so two holders never both tolerate theirs; it carries this holder's token, so
        the same write applied twice by botocore's retry is known as its own), else False (cut). None: the item
        changed meanwhile (learned: decide again). A table failure is no grace: False, so the cut is tried (a
        transient failure still cuts the shared rate; if its write fails too, the local rate is cut)."""
        since = now - self.grace_attempts / self.ceiling
        if self.grace_attempts <= 0 or (
            self._law.cut_at < self._memory.grace_at and self._memory.grace_at >= _ms(since)  # as the condition
        ):
            return False
        try:
            reply = self._update(
                "SET #grace = :now, #gby = :me, #exp = :exp ADD #sent :sent, #lost :lost",
                "(attribute_not_exists(#cut) OR #cut = :known)"
                " AND (attribute_not_exists(#grace) OR #grace <= :known OR #grace < :since)",
                {
                    ":now": _n(now),
                    ":me": {"S": self._token},
                    ":since": _n(since),
                    ":exp": _n(int(now + TTL_S)),
                    ":sent": _n(self._unsent),
                    ":lost": _n(self._unlost),
                    ":known": _n(self._law.cut_at),
                },
                return_new=True,
            )
        except _Conflict as conflict:
            item = conflict.item or {}
            mine = item.get("grace_by", {}).get("S") == self._token
            same_law = _number(item, "cut_at") == _ms(self._law.cut_at)
            if not (mine and same_law and _number(item, "grace_at") == _ms(now)):
                self._learn(conflict.item)
                return None
            reply = {"Attributes": item}  # this write, applied by an attempt whose reply was lost (a retry)
        except Exception:  # any table failure: no grace, never an error; the cut's write tells if the table is down
            return False
        self._unsent = self._unlost = 0
        self._learn(reply.get("Attributes"))
        self.stats.graces += 1
        logger.debug("Shared PutItems rate held at the ceiling: an isolated throttle", extra={"rate": self.ceiling})
        return True

    def _end_trial(self, now: float) -> bool:
        """A restored level passed its trial: an ordinary level from now on (one write, only if it is still the
        current level; a table failure leaves the trial on, to be judged again at the next throttle). The throttle
        that passed it was tolerated: it is the level's last grace (``grace_at``), as if tolerated at the ceiling. True
        if the level is still the current one (the throttle was isolated)."""
        try:
            self._update(
                "SET #tfrom = :zero, #grace = :now, #gby = :me, #exp = :exp",
                "#cut = :known",
                {
                    ":zero": _n(0),
                    ":now": _n(now),
                    ":me": {"S": self._token},
                    ":exp": _n(int(now + TTL_S)),
                    ":known": _n(self._law.cut_at),
                },
            )
        except _Conflict as conflict:
            self._learn(conflict.item)
            return False
        except Exception as exc:  # any table failure: local pacing, never an error
            self._fall_back(now, exc)
            return False
        self._memory.trial_from = 0.0
        self._memory.grace_at = _ms(now)  # the throttle that passed the trial spent the level's grace
        return True

    def _update(
        self, update: str, condition: str, values: dict[str, Any], *, return_new: bool = False
    ) -> dict[str, Any]:
        self.stats.requests += 1
        used = set(re.findall(r"#\w+", update + condition))
        try:
            reply: dict[str, Any] = self.client.update_item(
                TableName=self.table,
                Key=self.key,
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames={n: a for n, a in _NAMES.items() if n in used},
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW" if return_new else "NONE",  # ALL_NEW: moto omits unchanged values
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                self.stats.conflicts += 1
                raise _Conflict(exc.response.get("Item")) from None
            raise
        return reply


class _Conflict(Exception):
    """A conditional check failed; ``item`` is the current item (or None if it does not exist)."""

    def __init__(self, item: Mapping[str, Any] | None) -> None:
        super().__init__("conditional check failed")
        self.item = item


def _number(item: Mapping[str, Any], name: str) -> float:
    """A number attribute of an item as the table returned it (0 if absent)."""
    return float(item.get(name, {}).get("N", 0))


def _ms(value: float) -> float:
    """``value`` as the table stores it (:func:`_n`: times to the millisecond)."""
    return float(_n(value)["N"])


def _n(value: float) -> dict[str, str]:
    """A DynamoDB number; times to the millisecond (epoch seconds with more digits exceed a float's precision)."""
    return {"N": f"{value:.3f}" if isinstance(value, float) else str(value)}


def from_settings(settings: Settings, client: Any, **kwargs: Any) -> SharedBudget | None:
    """The budget the settings ask for, or ``None`` without ``STATE_TABLE`` (then pace per invocation).

    ``QUOTA_CALLS_PER_SECOND`` is the ceiling, ``BUDGET_MAX_WAIT_S`` the longest wait for one slot. While the
    table is unavailable each holder paces itself at a quarter of the ceiling. ``client`` is the state table's
    plain boto3 DynamoDB client (the handler builds it with short timeouts and two attempts, so an outage of the
    table costs an attempt at most a few seconds before local pacing takes over).
    """
    if not settings.state_table:
        return None
    return SharedBudget(
        client,
        settings.state_table,
        settings.dataset_group_arn,
        quota=settings.quota_calls_per_second,
        max_wait_s=settings.budget_max_wait_s,
        **kwargs,
    )
