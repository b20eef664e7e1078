"""The pipeline: ``source → change → item → putitems → response``, with every client injected.

:func:`run` is what the handler calls and what the tests drive directly with fakes and Stubbers. It keeps the
final-state promise (DESIGN.md): whatever the batch boundaries, partial failures and redeliveries, the dataset
ends equal to the sources' final state minus the records in the DLQ. How:

* **every change is validated**, superseded or not, so every record that can never land is dead-lettered
  whatever the batch boundaries; only the newest change of each item is sent;
* **the newest change that can land is written**: when the newest change of an item is poison (by the mapping,
  or rejected by PutItems on its own), it goes to the DLQ and the next newest is written instead, exactly as if
  the bad change had arrived in a batch of its own;
* removes under ``onRemove: "ignore"`` (and TTL deletes under ``SKIP_TTL_DELETES``) take no part in coalescing:
  they are skipped on their own and never hide an earlier upsert;
* **redeliveries cannot resurrect an older change**: Lambda redelivers everything from the lowest retried
  record. If an item's written change sits before that point but another change of the item sits after it
  (possible for CDC over Kinesis, where the newest change need not arrive last), the redelivered batch would
  hold the older change without the newer one. So the written change is retried too (:func:`_settle`);
* across batches, CDC changes pass the version guard (``versions``) when ``STATE_TABLE`` is set;
* any exception while handling one record or one item makes that record poison with a reason; it never fails
  the invocation.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse

from connector import change, item, source
from connector.change import Change, Kind, Poison, newest_first
from connector.config import Settings
from connector.deadline import Deadline
from connector.putitems import (
    MAX_ITEMS_PER_CALL,
    Group,
    PendingItem,
    PutItemsSink,
    SendReport,
    Submitted,
    check_limits,
    coalesce,
)
from connector.response import Ledger, Outcome, Verdict, dead_letter
from connector.telemetry import logger, tracer
from connector.versions import Stored, VersionGuard, VersionStoreError

LOG_FIELD_MAX = 300
READY_AHEAD = 2 * MAX_ITEMS_PER_CALL  # items built before each call: the call's and the next one's
GUARD_READ = 100  # groups whose stored versions one BatchGetItem reads (its maximum)
WHOLE_BUILD = GUARD_READ  # a batch of at most this many groups is built whole before its first call (below)


@dataclass(slots=True)
class Result:
    response: PartialItemFailureResponse
    records_in: int
    counts: dict[Outcome, int]
    report: SendReport
    dead_lettered: int
    stale: int = 0  # CDC changes the version guard refused
    state_errors: int = 0  # version-guard reads or writes that failed (those records are retried)
    outcomes: list[Outcome] = field(default_factory=list)  # one per record, in delivery order


@dataclass(slots=True)
class _Plan:
    """One item's changes: what can be written (newest first), what cannot, and what happened."""

    group: Group
    candidates: list[PendingItem]  # changes that can be written, newest first
    verdicts: dict[int, Verdict] = field(default_factory=dict)  # by record position, decided so far
    written: PendingItem | None = None  # the candidate sent last (its outcome is put or retry)


@tracer.capture_method(capture_response=False)
def run(
    event: Any,
    *,
    settings: Settings,
    sink: PutItemsSink,
    sqs: Any,
    deadline: Deadline,
    dlq_worst_ms: float = 0,
    guard: VersionGuard | None = None,
    respond: bool = True,
) -> Result:
    """Run one batch; ``dlq_worst_ms`` is the worst case of one SendMessageBatch with the given ``sqs`` client.

    ``respond=False`` (the operator tools, which retry by ``Result.outcomes`` themselves) leaves
    ``Result.response`` empty instead of building Lambda's partial response, which must fail the whole batch
    (:class:`~connector.response.UnreportableRecordError`) when a retried record has no sequence number to report."""
    records = source.parse_event(event)
    verdicts: list[Verdict] = []
    changes: list[Change] = []
    for record in records:
        if record.ttl_delete and settings.skip_ttl_deletes:
            verdicts.append(Verdict(record, Outcome.SKIPPED, "TTL delete skipped (SKIP_TTL_DELETES)"))
            continue
        try:
            parsed = change.from_record(record, settings.mapping)
        except Poison as exc:
            verdicts.append(Verdict(record, Outcome.POISON, str(exc)))
            continue
        if parsed.kind is Kind.REMOVE and settings.mapping.on_remove is None:
            verdicts.append(Verdict(record, Outcome.SKIPPED, "remove ignored", parsed.item_id))
            continue
        changes.append(parsed)

    result = Result({"batchItemFailures": []}, len(records), {}, SendReport(), 0)
    plans = _send(coalesce(changes), settings, sink, deadline=deadline, guard=guard, result=result)
    for plan in plans:
        _decide(plan)
        verdicts.extend(plan.verdicts.values())

    result.dead_lettered = dead_letter(verdicts, sqs, settings.dlq_url, deadline=deadline, batch_worst_ms=dlq_worst_ms)
    for v in verdicts:
        if v.outcome is Outcome.POISON:
            logger.warning(
                "Poison record dead-lettered",
                extra={
                    "item_id": (v.item_id or "")[:LOG_FIELD_MAX],
                    "sequence_number": (v.record.sequence_number or "")[:LOG_FIELD_MAX],
                    "reason": (v.log_reason or "")[:LOG_FIELD_MAX],
                },
            )
    _settle(plans, verdicts)
    ledger = Ledger(records)
    ledger.settle(verdicts)
    result.outcomes = [o for o in ledger.outcomes if o is not None]
    result.counts = ledger.counts()
    if respond:
        result.response = ledger.response()
    return result


def _plan(group: Group, settings: Settings) -> _Plan:
    """Build every change of ``group``: the ones that can be written become candidates (newest first, ordered
    among themselves only, so a poison change cannot change their order), the others poison."""
    plan = _Plan(group, [])
    built: dict[int, PendingItem] = {}
    for candidate in group.changes:
        try:
            props = item.build(candidate, settings.mapping)
            if props is None:  # removes under "ignore" never reach a group
                raise Poison("nothing to write")
            pending = PendingItem(group, candidate, item.serialize(props) if props else None)
            reason = check_limits(pending)
        except Poison as exc:
            reason = str(exc)
        except Exception as exc:  # one malformed image must never fail the batch
            reason = f"the item cannot be built: unexpected {type(exc).__name__}"
        if reason is None:
            built[candidate.position] = pending
        else:
            plan.verdicts[candidate.position] = Verdict(candidate.record, Outcome.POISON, reason, group.item_id)
    plan.candidates = [built[c.position] for c in newest_first([p.change for p in built.values()])]
    for fallback in plan.candidates[1:]:
        fallback.fallback = True
    return plan


class _Versions:
    """The version guard's reads, one consistent BatchGetItem per ``GUARD_READ`` groups, made just before the
    first of those groups is built. After a failed read (or with the deadline too near) no more are made:
    every CDC candidate from there on is retried, as the state table cannot say what was written."""

    def __init__(self, guard: VersionGuard, groups: list[Group], deadline: Deadline, result: Result) -> None:
        self.guard, self.groups, self.deadline, self.result = guard, groups, deadline, result
        self.stored: dict[str, Stored] = {}
        self.read_to = 0  # groups[:read_to] have been read (or need no read)
        self.failed = False

    def check(self, plan: _Plan, index: int) -> None:
        """Drop ``plan``'s CDC candidates that are not newer than the version already written (or retry them all)."""
        if all(c.change.version is None for c in plan.candidates):  # an older change may carry one: a fallback
            return
        if index >= self.read_to and not self.failed:
            window = self.groups[index : index + GUARD_READ]
            self.read_to = index + len(window)
            try:
                self.stored = self.guard.stored(
                    (g.item_id for g in window if any(c.version is not None for c in g.changes)), self.deadline
                )
            except VersionStoreError as exc:
                logger.error("The state table cannot be read: CDC changes are retried", extra={"error": str(exc)})
                self.result.state_errors += 1
                self.failed = True
        if self.failed:
            for candidate in plan.candidates:
                plan.verdicts[candidate.change.position] = Verdict(
                    candidate.change.record, Outcome.RETRY, "state table unavailable", plan.group.item_id
                )
            plan.candidates = []
            return
        last = self.stored.get(plan.group.item_id)
        if last is None:
            return
        fresh = []
        for candidate in plan.candidates:
            version = candidate.change.version
            # A CDC change without a timestamp cannot be guarded.
            if version is None or not last.supersedes(version, candidate.change.record.cdc_event_id):
                fresh.append(candidate)
            else:
                self.result.stale += 1
                plan.verdicts[candidate.change.position] = Verdict(
                    candidate.change.record,
                    Outcome.SKIPPED,
                    "stale: a newer change was already written",
                    plan.group.item_id,
                )
        plan.candidates = fresh


def _send(
    groups: list[Group],
    settings: Settings,
    sink: PutItemsSink,
    *,
    deadline: Deadline,
    guard: VersionGuard | None,
    result: Result,
) -> list[_Plan]:
    """Build every group's plan and send each item's newest candidate; when PutItems rejects one on its own,
    send the next newest. Return the plans, in group order.

    Calls go out through ``sink.submit``: up to ``sink.in_flight`` of them on the wire at once, each in its own
    slot, the next one prepared once the last is answered or has been out for ``sink.hold_s``; a round's
    rejections are settled (their fallbacks queued) once every call of the round is answered, and every call is
    answered before the batch is judged.

    Items are built as they are sent, one call ahead (``READY_AHEAD``), not all before the first call: building
    a 1,000-record batch takes a few hundred milliseconds at 512 MB, while a call leaves tens of milliseconds
    idle before the next slot, so building in those gaps makes the first call leave at once. The calls are
    the ones building everything first would make: fresh items in calls of 10, then the fallbacks in rounds of
    their own (a fallback rejected inside a full call of good items would cost a bisection; and fallbacks do not
    count towards a systemic rejection, so a call carrying one could dead-letter good items at its onset).
    Once the sink has stopped (deadline, outage, systemic rejection), the groups not built yet are not built
    (no deadline check reserved time for them): their records are retried, and validated when redelivered.

    The sink's pacer is told the calls to come (``sink.expect``): an upper bound at first (groups can still turn
    out stale or unbuildable), the exact count once every group is built. A batch of at most ``WHOLE_BUILD`` groups
    (one version read) is built whole before its first call, a few milliseconds: its count is exact at once, so
    the shared budget can reserve it as one block (whole batches), and a block is never reserved for calls that
    will not be made."""
    plans: list[_Plan] = []
    by_item: dict[str, _Plan] = {}
    ready: deque[PendingItem] = deque()  # newest candidates, built and not sent yet
    fallbacks: list[PendingItem] = []  # the next older candidates of items rejected in this round
    versions = _Versions(guard, groups, deadline, result) if guard is not None else None
    unrecorded: set[int] = set()
    recording = threading.Lock()
    report = result.report

    def build(wanted: int) -> None:
        while len(ready) < wanted and len(plans) < len(groups):
            index = len(plans)
            plan = _plan(groups[index], settings)
            if versions is not None:
                versions.check(plan, index)
            plans.append(plan)
            by_item[plan.group.item_id] = plan
            if plan.candidates:
                ready.append(plan.candidates[0])

    def record_versions(accepted: list[PendingItem]) -> None:
        if guard is None:
            return
        versioned = [p for p in accepted if p.change.version is not None]
        if not versioned:
            return
        if deadline.allows(guard.worst_ms):
            failed = set(
                guard.record([(p.item_id, p.change.version, _instant_ids(p)) for p in versioned if p.change.version])
            )
        else:  # written, but too late to record: retried, and written again next time (PutItems replaces)
            failed = {p.item_id for p in versioned}
        if failed:
            with recording:  # on the sink's sender threads, several calls at once
                result.state_errors += len(failed)
                unrecorded.update(p.change.position for p in versioned if p.item_id in failed)
            logger.error(
                "Versions not recorded in the state table: those items are retried", extra={"items": len(failed)}
            )

    def announce() -> None:  # the fresh calls still to make; fallbacks and retries come on top
        built = len(plans) == len(groups)
        sink.expect(-(-(len(ready) if built else len(groups)) // MAX_ITEMS_PER_CALL), exact=built)

    in_flight: deque[Submitted] = deque()  # calls submitted and not answered yet, oldest first
    seen = 0  # the rejections already handled (report.poison[:seen])

    def settle(keep: int, hold_s: float = 0.0) -> None:
        """Wait for the answers in flight up to ``hold_s``, then until at most ``keep`` calls are in flight; queue
        the next older candidate of each item that PutItems rejected on its own (answered calls first)."""
        nonlocal seen
        if hold_s > 0 and in_flight:
            futures.wait([c.future for c in in_flight], timeout=hold_s)
        while in_flight and (len(in_flight) > keep or in_flight[0].future.done()):
            in_flight.popleft().future.result()
            rejected = report.poison[seen:]  # one read: a sender may add to it meanwhile
            seen += len(rejected)
            for pending, reason in rejected:
                plan = by_item[pending.item_id]
                plan.verdicts[pending.change.position] = Verdict(
                    pending.change.record,
                    Outcome.POISON,
                    reason,
                    pending.item_id,
                    log_reason="PutItems rejected the item (InvalidInputException)",
                )
                plan.written = None
                rest = plan.candidates[plan.candidates.index(pending) + 1 :]
                if rest:
                    fallbacks.append(rest[0])

    attempts0, throttles0 = sink.counters.attempts, sink.counters.throttles
    build(len(groups) if len(groups) <= WHOLE_BUILD else READY_AHEAD)
    announce()
    try:
        while report.stopped is None:
            if not ready:  # every group built and sent: once they are answered, the next round of fallbacks
                settle(0)
                if not fallbacks or report.stopped is not None:
                    break
                ready, fallbacks = deque(fallbacks), []
            call = [ready.popleft() for _ in range(min(MAX_ITEMS_PER_CALL, len(ready)))]
            for pending in call:
                by_item[pending.item_id].written = pending
            submitted = sink.submit(call, deadline, report, on_accepted=record_versions)
            in_flight.append(submitted)
            if report.stopped is None:
                was_built = len(plans) == len(groups)
                build(READY_AHEAD)  # while the call waits for its slot and its answer
                if not was_built and len(plans) == len(groups):  # the last group built now: the count is exact
                    announce()
            submitted.sent.wait()  # one call at a time waits for a slot; the next is prepared once this one is out,
            settle(sink.in_flight - 1, sink.hold_s)  # and answered, or out for longer than the hold
    finally:
        futures.wait([c.future for c in in_flight])  # every call answered, even when one of them raised
        settle(0)  # every call answered before the batch is judged (or before an error leaves the batch)
        report.attempts += sink.counters.attempts - attempts0
        report.throttles += sink.counters.throttles - throttles0
    if report.systemic == "SystemicRejection":
        # Items rejected alone by calls that ended before another call in flight completed the streak belong to
        # the same systemic rejection: the sink returned them for a retry too (PutItemsSink._suspects).
        for pending in report.retry:
            plan = by_item.get(pending.item_id)
            verdict = plan.verdicts.get(pending.change.position) if plan else None
            if plan and verdict is not None and verdict.outcome is Outcome.POISON:
                plan.verdicts[pending.change.position] = Verdict(
                    verdict.record, Outcome.RETRY, None, plan.group.item_id
                )
    for group in groups[len(plans) :]:  # never built: sending stopped before them
        plan = _Plan(group, [])
        plan.verdicts = {c.position: Verdict(c.record, Outcome.RETRY, None, group.item_id) for c in group.changes}
        plans.append(plan)
    put = {id(p) for p in report.put}
    for plan in plans:
        written = plan.written
        if written is not None:
            ok = id(written) in put and written.change.position not in unrecorded
            plan.verdicts[written.change.position] = Verdict(
                written.change.record, Outcome.PUT if ok else Outcome.RETRY, None, plan.group.item_id
            )
    return plans


def _instant_ids(written: PendingItem) -> frozenset[str]:
    """The eventIDs of the changes of the written change's instant (it superseded them, or is one of them)."""
    assert written.change.version is not None
    ts = written.change.version[0]
    return frozenset(
        c.record.cdc_event_id
        for c in written.group.changes
        if c.version and c.version[0] == ts and c.record.cdc_event_id
    )


def _decide(plan: _Plan) -> None:
    """Candidates older than the written change share its outcome; without one, they were never sent (retry)."""
    written = plan.verdicts.get(plan.written.change.position) if plan.written else None
    for candidate in plan.candidates:
        if candidate.change.position not in plan.verdicts:
            outcome = written.outcome if written is not None else Outcome.RETRY
            plan.verdicts[candidate.change.position] = Verdict(
                candidate.change.record, outcome, None, plan.group.item_id
            )


def _settle(plans: list[_Plan], verdicts: list[Verdict]) -> None:
    """Retry a written change when a later record of its item will be redelivered without it (see above)."""
    retried = [v.record.position for v in verdicts if v.outcome is Outcome.RETRY]
    if not retried:
        return
    lowest = min(retried)
    moved = True
    while moved:
        moved = False
        for plan in plans:
            if plan.written is None:
                continue
            positions = [c.position for c in plan.group.changes]
            if plan.written.change.position < lowest <= max(positions):
                for v in plan.verdicts.values():
                    if v.outcome is Outcome.PUT:
                        v.outcome = Outcome.RETRY
                        lowest = min(lowest, v.record.position)
                        moved = True
