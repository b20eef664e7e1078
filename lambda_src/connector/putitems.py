"""Step 4, PutItems: coalesce the batch's changes, pack full calls, pace them, send them, and sort out failures.

The quota is 10 PutItems calls per second per dataset group with at most 10 items each, so every call that
carries fewer than 10 items, or that is sent only to be throttled, costs throughput. In order:

1. :func:`coalesce`: changes to the same item collapse into one :class:`Group`; the last write wins (order
   key: ``ApproximateCreationDateTime`` for CDC over Kinesis, else stream position). Only the winner's image
   is ever converted.
2. :func:`check_limits`: itemId ≤ 256 and properties ≤ 32,000 characters. botocore checks only the
   minimums, so an over-limit item would otherwise fail the whole call it rides in.
3. :class:`PutItemsSink` packs items in first-seen order, 10 per call, and sends them:

   * **pacing**: :class:`Pacer` spaces HTTP attempts (botocore's own retries included, through its
     ``before-send`` event) at ``MAX_CALLS_PER_SECOND``. It is kept per container, so back-to-back
     invocations do not burst. Nothing in botocore or Powertools paces proactively (botocore's adaptive mode
     only slows down after throttles), hence these few lines;
   * **throttles and 5xx** are retried by botocore's ``standard`` retry mode with jittered backoff; the
     sink only counts throttles, through the ``needs-retry`` event. If a call still fails, that call and
     everything not yet sent are **retry**: Lambda redelivers from the lowest of them anyway, so sending
     more would spend quota on items that will come back;
   * ``InvalidInputException`` rejects the whole call without saying which item is bad, so the call is
     **bisected** until the bad item stands alone: it is **poison** with the service's message, the rest land;
   * ``ResourceNotFoundException``, ``ResourceInUseException`` and authorization errors are **systemic**:
     logged once, and everything unsent is **retry**;
   * the **deadline**: before each call the sink checks that the worst case of that call (every attempt
     timing out, plus backoff) still ends ``DEADLINE_MARGIN_MS`` before the Lambda deadline; if not, it stops.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from connector.change import Change
from connector.deadline import Deadline
from connector.source import SourceRecord
from connector.telemetry import logger

MAX_ITEMS_PER_CALL = 10
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
    """All changes of the batch to one item; ``winner`` is the last write."""

    item_id: str
    winner: Change
    changes: list[Change]

    @property
    def superseded(self) -> list[SourceRecord]:
        """The records of the changes the winner replaced."""
        return [c.record for c in self.changes if c is not self.winner]


def coalesce(changes: Iterable[Change]) -> list[Group]:
    """Group changes by item id, in order of first appearance; the highest ``order_key`` wins."""
    groups: dict[str, Group] = {}
    for change in changes:
        group = groups.get(change.item_id)
        if group is None:
            groups[change.item_id] = Group(change.item_id, change, [change])
        else:
            group.changes.append(change)
            if change.order_key >= group.winner.order_key:
                group.winner = change
    return list(groups.values())


@dataclass(slots=True)
class PendingItem:
    """An item ready to send: its PutItems entry and the group of changes it settles."""

    group: Group
    properties: str | None  # JSON text, or None for an item with no properties

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
    """What botocore did on the wire for one client: attempts sent and throttled responses."""

    def __init__(self) -> None:
        self.attempts = 0
        self.throttles = 0


_instrumented: weakref.WeakKeyDictionary[Any, CallCounters] = weakref.WeakKeyDictionary()


def instrument(client: Any, pacer: Pacer) -> CallCounters:
    """Pace every PutItems HTTP attempt of ``client`` and count throttles; idempotent per client."""
    counters = _instrumented.get(client)
    if counters is not None:
        return counters
    counters = CallCounters()

    def before_send(**_: Any) -> None:
        pacer.wait()
        counters.attempts += 1

    def needs_retry(response: Any = None, **_: Any) -> None:
        if response is not None and response[1].get("Error", {}).get("Code") in THROTTLE_ERRORS:
            counters.throttles += 1

    events = client.meta.events
    events.register("before-send.personalize-events.PutItems", before_send, unique_id="connector-pacer")
    events.register("needs-retry.personalize-events.PutItems", needs_retry, unique_id="connector-throttles")
    _instrumented[client] = counters
    return counters


@dataclass(slots=True)
class SendReport:
    put: list[PendingItem] = field(default_factory=list)
    poison: list[tuple[PendingItem, str]] = field(default_factory=list)
    retry: list[PendingItem] = field(default_factory=list)
    calls: int = 0  # accepted PutItems calls
    items_sent: int = 0  # items in accepted calls
    rejected_calls: int = 0  # calls answered with InvalidInputException
    attempts: int = 0  # HTTP attempts, botocore retries included
    throttles: int = 0
    stopped: str | None = None  # why sending stopped early, if it did


class PutItemsSink:
    def __init__(
        self,
        client: Any,
        dataset_arn: str,
        *,
        worst_call_ms: float,
        pacer: Pacer,
    ) -> None:
        self._client = client
        self._dataset_arn = dataset_arn
        self._worst_call_ms = worst_call_ms
        self._counters = instrument(client, pacer)

    def send(self, items: list[PendingItem], deadline: Deadline) -> SendReport:
        report = SendReport()
        attempts0, throttles0 = self._counters.attempts, self._counters.throttles
        sendable = []
        for item in items:
            reason = check_limits(item)
            if reason is None:
                sendable.append(item)
            else:
                report.poison.append((item, reason))
        queue = deque(sendable[i : i + MAX_ITEMS_PER_CALL] for i in range(0, len(sendable), MAX_ITEMS_PER_CALL))
        while queue:
            chunk = queue.popleft()
            if report.stopped is None and not deadline.allows(self._worst_call_ms):
                report.stopped = "deadline"
                logger.warning("Deadline near: not sending more", extra={"remaining_ms": deadline.remaining_ms()})
            if report.stopped is not None:
                report.retry.extend(chunk)
                continue
            self._send_chunk(chunk, queue, report)
        report.attempts = self._counters.attempts - attempts0
        report.throttles = self._counters.throttles - throttles0
        return report

    def _send_chunk(self, chunk: list[PendingItem], queue: deque[list[PendingItem]], report: SendReport) -> None:
        try:
            self._client.put_items(datasetArn=self._dataset_arn, items=[i.entry() for i in chunk])
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code, message = error.get("Code", "Unknown"), error.get("Message", "")
            if code == "InvalidInputException":
                report.rejected_calls += 1
                if len(chunk) == 1:
                    report.poison.append((chunk[0], f"PutItems rejected the item: {message}"))
                    logger.warning("PutItems rejected an item", extra={"item_id": chunk[0].item_id})
                else:
                    half = len(chunk) // 2
                    queue.appendleft(chunk[half:])
                    queue.appendleft(chunk[:half])
                return
            report.retry.extend(chunk)
            report.stopped = code
            if code in SYSTEMIC_ERRORS:
                logger.error(
                    "PutItems failed with a systemic error: every record of the batch is retried",
                    extra={"error_code": code, "error_message": message, "dataset_arn": self._dataset_arn},
                )
            else:
                logger.warning("PutItems failed after retries", extra={"error_code": code, "items": len(chunk)})
        except BotoCoreError as exc:
            report.retry.extend(chunk)
            report.stopped = type(exc).__name__
            logger.warning("PutItems failed after retries", extra={"error": type(exc).__name__, "items": len(chunk)})
        else:
            report.calls += 1
            report.items_sent += len(chunk)
            report.put.extend(chunk)
