"""Step 4, PutItems: coalesce the batch's changes, pack full calls, pace them, send them, and sort out failures.

The quota is 10 PutItems calls per second per dataset group with at most 10 items each, so every call that
carries fewer than 10 items, or that is sent only to be throttled, costs throughput. In order:

1. :func:`coalesce`: changes to the same item collapse into one :class:`Group`; ``change.newest_first`` orders
   them (stream position; for CDC over Kinesis the change's version). The pipeline writes the newest change that
   can land and dead-letters the newer ones that cannot.
2. :func:`check_limits`: itemId ≤ 256 and properties ≤ 32,000 characters. botocore checks only the
   minimums, so an over-limit item would otherwise fail the whole call it rides in.
3. :class:`PutItemsSink` packs items in first-seen order, 10 per call, and sends them:

   * **pacing**: every HTTP attempt (botocore's own retries included, through its ``before-send`` event)
     waits for the pacer: the shared budget in ``STATE_TABLE`` (``budget``), or else :class:`Pacer`, which
     spaces this container's attempts at ``MAX_CALLS_PER_SECOND``. Either is kept per container, so
     back-to-back invocations do not burst. Nothing in botocore or Powertools paces proactively (botocore's
     adaptive mode only slows down after throttles), hence these few lines;
   * **calls in flight**: :meth:`PutItemsSink.submit` sends each call on a sender thread, so up to
     ``PUT_ITEMS_IN_FLIGHT`` calls (default 3) wait for their answers at once, each having waited for its own
     slot; the next call is prepared once the previous one has its slot, so only one at a time waits for a
     slot. Sent one after the other, an invocation makes at most 1 / latency calls a second: AWS documents no
     PutItems latency, and on the local cloud at 150 ms one shard made half the quota (88 % of it in flight).
     Calls in flight together hold different items (a round's items are distinct; the next older candidates of
     rejected items go in a later round, once every call of the round is answered). While one of them is being
     retried after a throttle, the others' attempts wait (``_Gate``), so under throttling the sink sends as it
     would one call after the other;
   * **throttles and 5xx** are retried by botocore's ``standard`` retry mode with jittered backoff; the
     sink counts throttles, through the ``needs-retry`` event, and tells the shared budget. A throttle the
     budget tolerates (isolated: the shared rate holds) is retried at once, that is at the call's next slot,
     without the backoff, which would only leave the sender idle (up to 1 s for a first retry). If a call still
     fails, that call and everything not yet sent are **retry**: Lambda redelivers from the lowest of them
     anyway, so sending more would spend quota on items that will come back;
   * ``InvalidInputException`` rejects the whole call without saying which item is bad, so the call is
     **bisected** until the bad item stands alone: it is **poison** with the service's message, the rest land;
   * a **systemic rejection**: when every item of a call is rejected on its own, and
     :data:`SYSTEMIC_REJECTION_STREAK` distinct items in a row have been (across the container's
     invocations, with no call accepted in between), the rejection is not about the items (a USERS dataset, a
     dataset schema that differs from the mapping): the sink stops, and that call's items and everything
     unsent are **retry**, not poison. A call is always bisected to the end first, so a call holding one good
     item lands it and resets the streak, and a bad item among good ones is dead-lettered as usual. At the
     onset of a systemic rejection, up to ``SYSTEMIC_REJECTION_STREAK - 1`` items rejected in earlier batches may
     already be in the DLQ (those rejected earlier in the same batch, in calls where nothing landed, are retried
     with it); and ten or more distinct bad items in a row with no good one between them look the same as a
     systemic rejection, so they stop the stream (and raise the alarm) instead of filling the DLQ;
   * ``ResourceNotFoundException``, ``ResourceInUseException`` and authorization errors are **systemic**:
     logged once, and everything unsent is **retry**;
   * the **deadline**: before each call the sink checks that the worst case of that call (every attempt
     timing out, plus backoff, plus the slots of the other calls in flight) still ends ``DEADLINE_MARGIN_MS``
     before the Lambda deadline; if not, it stops.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from connector.change import Change
from connector.deadline import Deadline
from connector.telemetry import logger

MAX_ITEMS_PER_CALL = 10
# Items rejected on their own in a row, with no call accepted in between, that make a rejection systemic: a
# whole call's worth, so one bad item (or a few) among good ones is never mistaken for it.
SYSTEMIC_REJECTION_STREAK = 10
# With calls in flight together, the caller prepares the next call only once the last one is answered or has been
# out this share of a slot interval: preparing it (building items, serializing and signing) at the moment the last
# call takes its slot competes with that call's send for the CPU and delays it on the wire (measured under the
# strict-spacing quota model: more throttles and missed slots at 50 ms latency); the rest of the interval is left
# to prepare the next call before its own slot. While PutItems answers within the hold (the median of the last
# ANSWER_WINDOW attempts), calls are sent on the caller's thread, one after the other: overlapping them would gain
# nothing and costs the CPU of handing them to sender threads.
HOLD_SHARE = 0.8
ANSWER_WINDOW = 5
ITEM_ID_MAX = 256
PROPERTIES_MAX = 32_000
SYSTEMIC_ERRORS = frozenset(
    {
        "ResourceNotFoundException",
        "ResourceInUseException",
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "MissingAuthenticationTokenException",
    }
)
THROTTLE_ERRORS = frozenset({"ThrottlingException", "Throttling", "TooManyRequestsException", "LimitExceededException"})


@dataclass(slots=True)
class Group:
    """All changes of the batch to one item, in delivery order."""

    item_id: str
    changes: list[Change]


def coalesce(changes: Iterable[Change]) -> list[Group]:
    """Group changes by item id, in order of first appearance."""
    groups: dict[str, Group] = {}
    for change in changes:
        group = groups.get(change.item_id)
        if group is None:
            groups[change.item_id] = Group(change.item_id, [change])
        else:
            group.changes.append(change)
    return list(groups.values())


@dataclass(slots=True)
class PendingItem:
    """An item ready to send: the change it writes, its group, and its ``properties`` JSON text."""

    group: Group
    change: Change
    properties: str | None  # JSON text, or None for an item with no properties
    fallback: bool = False  # sent because the item's newer changes were rejected

    @property
    def item_id(self) -> str:
        return self.group.item_id

    def entry(self) -> dict[str, str]:
        if self.properties is None:
            return {"itemId": self.item_id}
        return {"itemId": self.item_id, "properties": self.properties}


def check_limits(item: PendingItem) -> str | None:
    """The reason ``item`` can never be accepted, or ``None``."""
    if len(item.item_id) > ITEM_ID_MAX:
        return f"itemId is {len(item.item_id)} characters; the limit is {ITEM_ID_MAX}"
    if item.properties is not None and len(item.properties) > PROPERTIES_MAX:
        return f"properties are {len(item.properties)} characters; the limit is {PROPERTIES_MAX}"
    return None


class PacerLike(Protocol):
    """What paces PutItems attempts: :class:`Pacer`, or the shared budget (``budget``), which also has
    ``throttled()`` (called on every throttled attempt; True if the throttle was isolated and the rate holds)."""

    def wait(self) -> float: ...


class Pacer:
    """Spaces events at least ``1 / rate`` seconds apart (a token bucket of depth one)."""

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> float:
        """Block until the next slot; return the seconds waited."""
        with self._lock:
            now = self._clock()
            delay = max(0.0, self._next - now)
            self._next = max(now, self._next) + self.interval
        if delay:
            self._sleep(delay)
        return delay


class CallCounters:
    """What botocore did on the wire for one client: attempts sent and throttled responses (counted from every
    thread that sends)."""

    def __init__(self) -> None:
        self.attempts = 0
        self.throttles = 0
        self._answers: deque[float] = deque(maxlen=ANSWER_WINDOW)  # seconds from slot to answer, last attempts
        self._lock = threading.Lock()

    def attempted(self) -> None:
        with self._lock:
            self.attempts += 1

    def throttled(self) -> None:
        with self._lock:
            self.throttles += 1

    def answered(self, seconds: float) -> None:
        with self._lock:
            self._answers.append(seconds)

    def answer_s(self) -> float:
        """The median time PutItems took to answer an attempt (from its slot), over the last ``ANSWER_WINDOW``
        attempts; infinite before the first answer (unknown: taken as slow, so that calls overlap from the first)."""
        with self._lock:
            return statistics.median(self._answers) if self._answers else math.inf


_instrumented: weakref.WeakKeyDictionary[Any, CallCounters] = weakref.WeakKeyDictionary()


def total_attempts(client: Any) -> int:
    """The HTTP attempts botocore makes per call of ``client`` (its retry config's ``total_max_attempts``; 1 if the
    client was built without it: the handler always sets it, from ``PUT_ITEMS_MAX_ATTEMPTS``)."""
    return int((getattr(client.meta.config, "retries", None) or {}).get("total_max_attempts", 1))


def instrument(client: Any, pacer: PacerLike) -> CallCounters:
    """Pace every PutItems HTTP attempt of ``client`` and count throttles; idempotent per client."""
    counters = _instrumented.get(client)
    if counters is not None:
        return counters
    counters = CallCounters()

    def before_send(**_: Any) -> None:
        call: Submitted | None = getattr(_sending, "call", None)  # a call submitted to a sink
        if call is not None:
            call.gate.held(call)  # another call in flight is being retried: wait it out before taking a slot
        pacer.wait()
        try:
            while call is not None and call.gate.held(call):  # one was throttled while this attempt waited: its slot
                if unused is not None:  # passed while held, unused: not an attempt
                    unused()
                pacer.wait()  # take a new one
        except SendingStopped:  # the batch stopped while this attempt held its slot: the slot passed unused
            if unused is not None:
                unused()
            raise
        counters.attempted()
        _sending.slot_at = time.monotonic()
        if call is not None:  # this attempt has its slot: the next call may prepare
            call.sent.set()

    on_throttle = getattr(pacer, "throttled", None)
    max_attempts = total_attempts(client)
    unused = getattr(pacer, "unused", None)

    def needs_retry(response: Any = None, attempts: int = 0, **_: Any) -> float | None:
        slot_at: float | None = getattr(_sending, "slot_at", None)
        if slot_at is not None:  # an attempt answered (or failed on the wire)
            counters.answered(time.monotonic() - slot_at)
            _sending.slot_at = None
        if response is not None and response[1].get("Error", {}).get("Code") in THROTTLE_ERRORS:
            counters.throttled()
            call: Submitted | None = getattr(_sending, "call", None)
            if call is not None:
                call.gate.retrying(call)
            if on_throttle is not None and on_throttle() is True and attempts < max_attempts:
                # Isolated (the shared rate holds): retry at the next slot. botocore's backoff would only stall
                # the batch, every attempt waits for a slot anyway. This handler is on the operation's event, so
                # botocore calls it before its retry handler (on the service's) and takes its answer: a delay.
                # That also skips standard mode's retry quota for these retries; attempts stay capped here.
                return 0.0
        return None  # botocore's retry handler decides, with its backoff

    events = client.meta.events
    events.register("before-send.personalize-events.PutItems", before_send, unique_id="connector-pacer")
    events.register("needs-retry.personalize-events.PutItems", needs_retry, unique_id="connector-throttles")
    _instrumented[client] = counters
    return counters


_sending = threading.local()  # on a sending thread: the call it sends (``Submitted``), its attempt's slot time


class SendingStopped(BotoCoreError):
    """An attempt not sent: the batch stopped while it waited behind a call being retried (its items are retry)."""

    fmt = "the batch stopped sending while this call waited behind a retried call"


class _Gate:
    """Calls in flight together go out only while none of them is being retried after a throttle: a call's
    attempt waits (``held``) until the throttled calls are answered, so that under throttling the sink sends as
    it would one call after the other, and a call that fails after its retries stops the batch before the others
    spend slots on items that will come back. A call being retried itself never waits, not even for another
    retried call (two calls throttled together would otherwise wait for each other forever). An attempt that waited
    checks the deadline again: its call's deadline check did not cover the wait."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._retried: set[int] = set()

    def held(self, call: Submitted) -> bool:
        """Wait while another call is being retried; True if it waited (its slot has passed). Raise
        :class:`SendingStopped` if the batch stopped meanwhile. A call being retried goes on whatever happened
        meanwhile, as it would one call after the other: its deadline check covered its retries."""
        with self._cond:
            if id(call) in self._retried:
                return False
            waited = False
            while self._retried and call.report.stopped is None:
                waited = True
                self._cond.wait()
        if waited and call.report.stopped is None and not call.deadline.allows(call.worst_ms):
            call.report.stopped = "deadline"  # the wait was not covered by the call's deadline check
            logger.warning("Deadline near: not sending more", extra={"remaining_ms": call.deadline.remaining_ms()})
        if call.report.stopped is not None:
            raise SendingStopped
        return waited

    def retrying(self, call: Submitted) -> None:
        with self._cond:
            self._retried.add(id(call))

    def done(self, call: Submitted) -> None:
        with self._cond:
            self._retried.discard(id(call))
            self._cond.notify_all()


@dataclass(frozen=True, slots=True, eq=False)
class Submitted:
    """One call given to :meth:`PutItemsSink.submit`: ``sent`` once its first attempt has its slot (or once it
    ended without one); ``future`` once it is answered. Its sender thread's hooks read ``report`` and ``gate``."""

    future: Future[None]
    sent: threading.Event
    report: SendReport
    gate: _Gate
    deadline: Deadline
    worst_ms: float  # the worst case the call's deadline check covers


@dataclass(slots=True)
class SendReport:
    put: list[PendingItem] = field(default_factory=list)
    poison: list[tuple[PendingItem, str]] = field(default_factory=list)  # rejected alone, with the service's reason
    retry: list[PendingItem] = field(default_factory=list)
    calls: int = 0  # accepted PutItems calls
    items_sent: int = 0  # items in accepted calls
    rejected_calls: int = 0  # calls answered with InvalidInputException
    attempts: int = 0  # HTTP attempts, botocore retries included
    throttles: int = 0
    stopped: str | None = None  # why sending stopped early, if it did
    systemic: str | None = None  # the systemic error or rejection that stopped it, if any
    first_call_at: float | None = None  # time.monotonic() when the first call was made (before its slot)
    last_call_done_at: float | None = None  # time.monotonic() when the last call returned


class PutItemsSink:
    def __init__(
        self,
        client: Any,
        dataset_arn: str,
        *,
        worst_call_ms: float,
        pacer: PacerLike,
        in_flight: int = 1,
    ) -> None:
        """``in_flight``: the calls :meth:`submit` may have on the wire at once (1: one after the other)."""
        if in_flight < 1:
            raise ValueError(f"in_flight must be at least 1, not {in_flight}")
        self._client = client
        self._dataset_arn = dataset_arn
        self._worst_call_ms = worst_call_ms
        self.counters = instrument(client, pacer)
        self._expect: Callable[..., None] | None = getattr(pacer, "expect", None)
        # Distinct items rejected on their own since the last accepted call, across the container's invocations
        # (an item redelivered, or its older changes sent as fallbacks, count once): the evidence for a
        # systemic rejection.
        self._rejected: set[str] = set()
        self.in_flight = in_flight
        # Each attempt may queue behind the other senders' slots (a retry beside a call waiting for its slot):
        # the deadline check covers that too (``_worst_ms``: what every deadline check before a call allows for).
        # The shared budget bounds every wait by itself (budget_max_wait_s).
        attempts = total_attempts(client)
        self._worst_ms = worst_call_ms + (in_flight - 1) * getattr(pacer, "interval", 0.0) * 1000 * attempts
        # How long the caller waits for a call's answer before it prepares the next call beside it (HOLD_SHARE):
        # a faster answer leaves the calls one after the other; only a slower one is overlapped.
        ceiling = getattr(pacer, "ceiling", None)  # the shared budget's best rate (its slots' closest spacing)
        interval = getattr(pacer, "interval", None) or (1.0 / ceiling if ceiling else 0.0)
        self.hold_s = HOLD_SHARE * interval if in_flight > 1 else 0.0
        # Items rejected alone by calls that had nothing accepted, since the last accepted call: if another call in
        # flight beside them then completes a systemic rejection, they are retried with the batch, not poison.
        self._suspects: list[tuple[PendingItem, SendReport]] = []
        self._gate = _Gate()
        self._pool: ThreadPoolExecutor | None = None  # started on the first call submitted with in_flight > 1
        self._lock = threading.Lock()  # a report's counters and the rejection streak, updated by every sender

    def expect(self, calls: int, *, exact: bool) -> None:
        """Tell the pacer how many calls the batch will still make (``exact``, or at most): the shared budget
        reserves the rest of a batch whole (:meth:`connector.budget.SharedBudget.expect`); a pacer without
        ``expect`` needs no hint."""
        if self._expect is not None:
            self._expect(calls, exact=exact)

    def send(
        self,
        items: list[PendingItem],
        deadline: Deadline,
        report: SendReport | None = None,
        on_accepted: Callable[[list[PendingItem]], None] | None = None,
    ) -> SendReport:
        """Send ``items`` (already within :func:`check_limits`), 10 per call, one call after the other; add what
        happened to ``report`` (its attempts and throttles included).

        ``on_accepted`` is called with the items of each accepted call, right after it (the version guard
        records versions there, while the pacer would have the next call wait anyway)."""
        report = report if report is not None else SendReport()
        attempts0, throttles0 = self.counters.attempts, self.counters.throttles
        for start in range(0, len(items), MAX_ITEMS_PER_CALL):
            chunk = items[start : start + MAX_ITEMS_PER_CALL]
            if report.stopped is None:
                self._send_call(chunk, report, deadline, on_accepted)
            else:
                report.retry.extend(chunk)
        report.attempts += self.counters.attempts - attempts0
        report.throttles += self.counters.throttles - throttles0
        return report

    def submit(
        self,
        call: list[PendingItem],
        deadline: Deadline,
        report: SendReport,
        on_accepted: Callable[[list[PendingItem]], None] | None = None,
    ) -> Submitted:
        """Send one call's items (at most 10) like :meth:`send`, on a sender thread when ``in_flight`` > 1 and
        PutItems answers slower than ``hold_s``, so that the next call can take its slot while this one waits for
        its answer; at once, on the caller's thread, otherwise. The caller waits for ``sent`` before it submits
        the next call (so that only one call at a time waits for a slot, as when sending one after the other),
        then for the answer up to ``hold_s`` (so that preparing the next call does not delay this one's send),
        keeps at most ``in_flight`` calls unanswered, waits for every answer (``future``) before it reads
        ``report``, and counts attempts and throttles itself (``counters``), since calls on the wire together
        cannot tell theirs apart. ``on_accepted`` runs on the thread that sent the call."""
        if len(call) > MAX_ITEMS_PER_CALL:
            raise ValueError(f"a call holds at most {MAX_ITEMS_PER_CALL} items, not {len(call)}")
        submitted = Submitted(Future(), threading.Event(), report, self._gate, deadline, self._worst_ms)
        if self.in_flight > 1 and self.counters.answer_s() > self.hold_s:  # slow answers: overlap them
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.in_flight, thread_name_prefix="putitems")
            self._pool.submit(self._sender, submitted, call, deadline, on_accepted)
        else:
            self._sender(submitted, call, deadline, on_accepted)
        return submitted

    def _sender(
        self,
        submitted: Submitted,
        call: list[PendingItem],
        deadline: Deadline,
        on_accepted: Callable[[list[PendingItem]], None] | None,
    ) -> None:
        _sending.call = submitted
        try:
            self._send_call(call, submitted.report, deadline, on_accepted)
        except BaseException as exc:  # raised by future.result() in the caller's thread
            submitted.future.set_exception(exc)
        else:
            submitted.future.set_result(None)
        finally:
            _sending.call = None
            self._gate.done(submitted)
            submitted.sent.set()  # answered, or never sent (stopped before it): either way, the next may go

    def _send_call(
        self,
        chunk: list[PendingItem],
        report: SendReport,
        deadline: Deadline,
        on_accepted: Callable[[list[PendingItem]], None] | None,
    ) -> None:
        """One call, bisected while the service rejects it; items rejected alone are poison unless systemic."""
        parts, rejected, accepted = [chunk], [], 0
        while parts:
            part = parts.pop()
            if report.stopped is None and not deadline.allows(self._worst_ms):
                report.stopped = "deadline"
                logger.warning("Deadline near: not sending more", extra={"remaining_ms": deadline.remaining_ms()})
            if report.stopped is not None:
                report.retry.extend(part)
                continue
            error = self._put(part, report, on_accepted)
            if error is None:
                accepted += len(part)
                continue
            code, message = error
            if code == SendingStopped.__name__:  # another call stopped the batch: retry, keep its reason
                report.retry.extend(part)
                continue
            if code != "InvalidInputException":
                report.retry.extend(part)
                report.stopped = code
                if code in SYSTEMIC_ERRORS:
                    report.systemic = code
                continue
            with self._lock:
                report.rejected_calls += 1
            if len(part) > 1:
                half = len(part) // 2
                parts += [part[half:], part[:half]]  # the first half is sent first
                continue
            rejected.append((part[0], message))
            with self._lock:
                if not part[0].fallback and len(self._rejected) < SYSTEMIC_REJECTION_STREAK:
                    self._rejected.add(part[0].item_id)
        suspects: list[PendingItem] = []
        with self._lock:
            systemic = bool(rejected) and not accepted and len(self._rejected) >= SYSTEMIC_REJECTION_STREAK
            if systemic:
                suspects = [item for item, owner in self._suspects if owner is report]
                self._suspects.clear()
            elif rejected and not accepted:
                self._suspects += [(item, report) for item, _ in rejected]
        if systemic:
            report.retry.extend(suspects)
            # Every item of this call was rejected on its own, and so were the items before it.
            report.stopped = report.systemic = "SystemicRejection"
            report.retry.extend(item for item, _ in rejected)
            logger.error(
                "PutItems rejects every item on its own: the dataset does not accept this mapping's items "
                "(wrong dataset type or schema?); every record of the batch is retried",
                extra={"dataset_arn": self._dataset_arn, "rejected_in_a_row": len(self._rejected)},
            )
            return
        report.poison.extend((item, f"PutItems rejected the item: {message}") for item, message in rejected)

    def _put(
        self,
        part: list[PendingItem],
        report: SendReport,
        on_accepted: Callable[[list[PendingItem]], None] | None,
    ) -> tuple[str, str] | None:
        """One PutItems call; ``None`` when accepted, else ``(error code, message)``."""
        if report.first_call_at is None:
            report.first_call_at = time.monotonic()
        try:
            self._client.put_items(datasetArn=self._dataset_arn, items=[i.entry() for i in part])
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code, message = str(error.get("Code", "Unknown")), str(error.get("Message", ""))
            if code in SYSTEMIC_ERRORS:
                # Logged once: the sink stops. The message names the resource or the permission, never an item.
                logger.error(
                    "PutItems failed with a systemic error: every record of the batch is retried",
                    extra={"error_code": code, "error_message": message[:500], "dataset_arn": self._dataset_arn},
                )
            elif code != "InvalidInputException":  # its message may quote property values: never logged
                logger.warning("PutItems failed after retries", extra={"error_code": code, "items": len(part)})
            return code, message
        except BotoCoreError as exc:
            if not isinstance(exc, SendingStopped):
                logger.warning("PutItems failed after retries", extra={"error": type(exc).__name__, "items": len(part)})
            return type(exc).__name__, ""
        finally:
            report.last_call_done_at = time.monotonic()
        with self._lock:
            report.calls += 1
            report.items_sent += len(part)
            report.put.extend(part)
            self._rejected.clear()
            self._suspects.clear()
        if on_accepted is not None:
            on_accepted(part)
        return None
