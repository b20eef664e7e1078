"""Step 5, batch response: give every record exactly one outcome, dead-letter the poison, answer Lambda.

Why not Powertools' ``BatchProcessor``: it calls a handler once per record and turns each record's exception
into a failure. This connector's unit of work is the whole batch: changes to one item are coalesced across
records, ten items share one PutItems call, and one rejected call is bisected across records. Bending that
into per-record callbacks would hide the packing. So the pipeline keeps Powertools' response contract
instead: the answer is a ``PartialItemFailureResponse`` (``{"batchItemFailures": [{"itemIdentifier": …}]}``),
built from a ledger that must account for every record.

Outcomes (DESIGN.md, "Outcome of each record"):

* ``put`` — landed, possibly coalesced with later changes to the same item (a superseded change shares the
  outcome of the change written in its place);
* ``poison`` — can never land; the original record is in the DLQ with the reason. If the DLQ is not
  configured or the send fails, the record becomes ``retry``: nothing is dropped silently;
* ``retry`` — not landed yet; reported so that Lambda redelivers from the lowest such sequence number;
* ``skipped`` — a deliberate no-op: a remove under ``"ignore"``, a TTL delete under ``SKIP_TTL_DELETES``, or a
  CDC change older than the version already written (the version guard).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse, PartialItemFailures
from botocore.exceptions import BotoCoreError, ClientError

from connector.deadline import Deadline
from connector.source import SourceRecord
from connector.telemetry import logger

# SQS: at most 10 entries and 256 KiB per SendMessageBatch, 256 KiB per message.
SQS_BATCH_ENTRIES = 10
SQS_MAX_BYTES = 262_144


class Outcome(StrEnum):
    PUT = "put"
    POISON = "poison"
    RETRY = "retry"
    SKIPPED = "skipped"


@dataclass(slots=True)
class Verdict:
    """The outcome of one record. ``reason`` goes to the DLQ; ``log_reason`` (default: ``reason``) to the logs,
    for reasons that may quote property values (the service's ``InvalidInputException`` message)."""

    record: SourceRecord
    outcome: Outcome
    reason: str | None = None
    item_id: str | None = None
    log_reason: str | None = None

    def __post_init__(self) -> None:
        if self.log_reason is None:
            self.log_reason = self.reason


class UnreportableRecordError(RuntimeError):
    """A record must be retried but has no sequence number to report; the whole batch has to fail."""


def dead_letter(
    verdicts: list[Verdict], sqs: Any, dlq_url: str | None, *, deadline: Deadline, batch_worst_ms: float
) -> int:
    """Send each poison verdict's record to the DLQ; turn those that cannot be sent into retry.

    Before each SendMessageBatch the deadline must leave ``batch_worst_ms`` (that call's worst case); the
    records of batches that no longer fit are retry. Returns the number of messages sent.
    """
    poison = [v for v in verdicts if v.outcome is Outcome.POISON]
    if not poison:
        return 0
    if dlq_url is None:
        _keep_for_retry(poison, "no DLQ is configured (DLQ_URL)")
        return 0
    sent = 0
    for batch in _sqs_batches(poison):
        if not deadline.allows(batch_worst_ms):
            _keep_for_retry([v for v, _ in batch], "the deadline is too near to send")
            continue
        entries = [{"Id": str(i), "MessageBody": body} for i, (_, body) in enumerate(batch)]
        try:
            answer = sqs.send_message_batch(QueueUrl=dlq_url, Entries=entries)
            failed = {f["Id"]: f.get("Code", "unknown") for f in answer.get("Failed", [])}
        except (ClientError, BotoCoreError) as exc:
            code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else type(exc).__name__
            failed = {e["Id"]: str(code) for e in entries}
        for i, (verdict, _) in enumerate(batch):
            if str(i) in failed:
                verdict.outcome = Outcome.RETRY
                verdict.reason = f"poison ({verdict.reason}), but the DLQ send failed: {failed[str(i)]}"
            else:
                sent += 1
        if failed:
            logger.error("DLQ send failed; those records will be retried", extra={"records": len(failed)})
    return sent


def _keep_for_retry(poison: list[Verdict], why: str) -> None:
    logger.warning(f"Poison records kept for retry: {why}", extra={"records": len(poison)})
    for v in poison:
        v.outcome, v.reason = Outcome.RETRY, f"poison ({v.reason}), but {why}"


# Caps on the fields of a DLQ message (the original lengths are kept beside them), so that every message fits.
_FIELD_CAPS = {"reason": 4_000, "itemId": 1_024, "eventSourceARN": 2_048, "sequenceNumber": 256}


def dlq_message(verdict: Verdict) -> str:
    """The DLQ message: the original record, why it can never land, and where it came from; always < 256 KiB."""
    record = verdict.record
    body: dict[str, Any] = {
        "reason": verdict.reason,
        "source": record.event_source[:100],
        "format": record.format.value if record.format else None,
        "eventSourceARN": record.event_source_arn,
        "sequenceNumber": record.sequence_number,
        "itemId": verdict.item_id,
    }
    for name, cap in _FIELD_CAPS.items():
        value = body[name]
        if isinstance(value, str) and len(value) > cap:
            body[name] = value[:cap]
            body[f"{name}Length"] = len(value)
    body["record"] = record.raw
    # ASCII: SQS refuses some code points (and lone surrogates from JSON escapes cannot even be encoded).
    text = _dumps(body)
    if len(text) > SQS_MAX_BYTES - 1024:
        # Too big for SQS: keep the coordinates, which locate the record in the stream while it is retained.
        event_id = record.raw.get("eventID")
        body["record"] = {
            "truncated": True,
            "eventID": event_id[:256] if isinstance(event_id, str) else None,
            "bytes": len(text),
        }
        text = _dumps(body)
    return text


def _dumps(body: dict[str, Any]) -> str:
    try:
        return json.dumps(body, default=str)
    except (ValueError, RecursionError):  # a record nested too deeply to write back: keep the coordinates
        return json.dumps({**body, "record": {"truncated": True, "why": "too deeply nested"}}, default=str)


def _sqs_batches(poison: list[Verdict]) -> list[list[tuple[Verdict, str]]]:
    batches: list[list[tuple[Verdict, str]]] = []
    size = SQS_MAX_BYTES
    for verdict in poison:
        body = dlq_message(verdict)
        n = len(body)
        if not batches or len(batches[-1]) == SQS_BATCH_ENTRIES or size + n > SQS_MAX_BYTES:
            batches.append([])
            size = 0
        batches[-1].append((verdict, body))
        size += n
    return batches


@dataclass(slots=True)
class Ledger:
    """One outcome per record, in delivery order."""

    records: list[SourceRecord]
    outcomes: list[Outcome | None] = field(init=False)

    def __post_init__(self) -> None:
        self.outcomes = [None] * len(self.records)

    def settle(self, verdicts: list[Verdict]) -> None:
        for v in verdicts:
            self._set(v.record, v.outcome)
        missing = [r.position for r, o in zip(self.records, self.outcomes, strict=True) if o is None]
        if missing:
            raise RuntimeError(f"records without an outcome at positions {missing[:10]}")

    def _set(self, record: SourceRecord, outcome: Outcome) -> None:
        if self.outcomes[record.position] is not None:
            raise RuntimeError(f"record at position {record.position} got two outcomes")
        self.outcomes[record.position] = outcome

    def counts(self) -> dict[Outcome, int]:
        counted = Counter(o for o in self.outcomes if o is not None)
        return {o: counted.get(o, 0) for o in Outcome}

    def response(self) -> PartialItemFailureResponse:
        """The retried records' sequence numbers. A retried record without one is reported by the nearest earlier
        record that has one (Lambda redelivers from there, so it comes back too); only when no earlier record
        has one must the whole batch fail."""
        failures: list[PartialItemFailures] = []
        last_seq: str | None = None
        for record, outcome in zip(self.records, self.outcomes, strict=True):
            if record.sequence_number:
                last_seq = record.sequence_number
            if outcome is Outcome.RETRY:
                if last_seq is None:
                    raise UnreportableRecordError(
                        f"record at position {record.position} must be retried but neither it nor any record "
                        "before it has a sequence number"
                    )
                if not failures or failures[-1]["itemIdentifier"] != last_seq:
                    failures.append({"itemIdentifier": last_seq})
        return {"batchItemFailures": failures}
