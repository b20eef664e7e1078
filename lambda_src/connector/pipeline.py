"""The pipeline: ``source → change → item → putitems → response``, with every client injected.

:func:`run` is what the handler calls and what the tests drive directly with fakes and Stubbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse

from connector import change, item, source
from connector.change import Poison
from connector.config import Settings
from connector.deadline import Deadline
from connector.putitems import Group, PendingItem, PutItemsSink, SendReport, coalesce
from connector.response import Ledger, Outcome, Verdict, dead_letter
from connector.telemetry import logger, tracer


@dataclass(slots=True)
class Result:
    response: PartialItemFailureResponse
    records_in: int
    counts: dict[Outcome, int]
    report: SendReport
    dead_lettered: int


@tracer.capture_method(capture_response=False)
def run(
    event: Any, *, settings: Settings, sink: PutItemsSink, sqs: Any, deadline: Deadline, dlq_worst_ms: float = 0
) -> Result:
    """Run one batch; ``dlq_worst_ms`` is the worst case of one SendMessageBatch with the given ``sqs`` client."""
    records = source.parse_event(event)
    verdicts: list[Verdict] = []

    changes = []
    for record in records:
        try:
            changes.append(change.from_record(record, settings.mapping))
        except Poison as exc:
            verdicts.append(Verdict(record, Outcome.POISON, str(exc)))

    pending: list[PendingItem] = []
    for group in coalesce(changes):
        try:
            props = item.build(group.winner, settings.mapping)
        except Poison as exc:
            verdicts.append(_verdict(group, Outcome.POISON, str(exc)))
            continue
        if props is None:
            verdicts.append(_verdict(group, Outcome.SKIPPED, "remove ignored"))
            continue
        pending.append(PendingItem(group, item.serialize(props) if props else None))

    report = sink.send(pending, deadline)
    for outcome, items in ((Outcome.PUT, report.put), (Outcome.RETRY, report.retry)):
        verdicts.extend(_verdict(p.group, outcome) for p in items)
    verdicts.extend(_verdict(p.group, Outcome.POISON, reason) for p, reason in report.poison)

    sent = dead_letter(verdicts, sqs, settings.dlq_url, deadline=deadline, batch_worst_ms=dlq_worst_ms)
    for v in verdicts:
        if v.outcome is Outcome.POISON:
            logger.warning(
                "Poison record dead-lettered",
                extra={"item_id": v.item_id, "sequence_number": v.record.sequence_number, "reason": v.reason},
            )

    ledger = Ledger(records)
    ledger.settle(verdicts)
    return Result(ledger.response(), len(records), ledger.counts(), report, sent)


def _verdict(group: Group, outcome: Outcome, reason: str | None = None) -> Verdict:
    return Verdict(group.winner.record, outcome, reason, group.item_id, group.superseded)
