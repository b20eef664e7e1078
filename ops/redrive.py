"""``python -m ops redrive``: bring the poison DLQ's records back through the current mapping.

Each DLQ message is what ``connector.response.dlq_message`` wrote: ``{reason, source, format, eventSourceARN,
sequenceNumber, itemId, record}`` with the original record (a record too big for SQS is replaced by
``{"truncated": true, "eventID", "bytes"}``: those are left in the queue and reported, with their coordinates).

Per round (``--batch`` messages, received with a visibility timeout longer than one round):

1. **Deduplicate** by ``(eventSourceARN, sequenceNumber)``: Lambda redelivers, so one record can be in the DLQ
   several times. The first copy is redriven; the others are deleted with it.
2. **Feed** through :mod:`ops.feed`: for a DynamoDB Streams record, the table's **current** item, re-read by its
   keys (the DLQ's image may be older than what the stream has written since), then verified; for CDC over
   Kinesis, the original record (the version guard refuses a stale version); a plain Kinesis document only with
   ``--force`` (it has no version: it may regress the item; without ``--force`` it stays in the queue). What now
   lands is put; what still cannot is dead-lettered again **by the pipeline**, with its new reason.
3. **Delete** the round's messages, only then.

**Never lose a message on a crash.** The order is receive → put / dead-letter again → delete. A crash (or Ctrl-C)
before the delete leaves the messages in the queue; they reappear when their visibility timeout expires and the
next redrive handles them again (an item may then be put twice: harmless, PutItems replaces). The messages the
redrive itself dead-letters again are recognised by their message ids and never received as work in the same
run; they are made visible again at the end. Run one redrive at a time per DLQ.

``--dry-run`` receives the messages, reports what the current mapping would do with them (with the current table
items), and releases them (visibility 0) without writing or deleting anything.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table as RichTable

from connector.config import Settings
from ops.common import OpsError, add_settings_arguments, client, console, progress, settings_from, summary_table
from ops.feed import Feeder, Stopped, Tally, feed_plan, plan, preview_plan

DEFAULT_BATCH = 100
DEFAULT_VISIBILITY_S = 900


def register(sub: Any) -> None:
    p = sub.add_parser(
        "redrive",
        help="send the poison DLQ's records through the current mapping again; delete what was handled",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="messages per round (default 100)")
    p.add_argument(
        "--visibility-timeout",
        type=int,
        default=DEFAULT_VISIBILITY_S,
        help="seconds a received message stays hidden; must exceed one round (default 900)",
    )
    p.add_argument(
        "--force", action="store_true", help="also replay plain Kinesis JSON documents (no version: may regress)"
    )
    p.add_argument("--max-messages", type=int, help="stop after this many messages (default: until the DLQ is empty)")
    p.add_argument("--dry-run", action="store_true", help="report what would happen; write and delete nothing")
    add_settings_arguments(p, state_table_required=True)
    p.set_defaults(run=run)


class RecordingSQS:
    """The runtime's SQS client, remembering the ids of the messages it dead-letters (so the redrive does not
    take its own new DLQ messages for work)."""

    def __init__(self, sqs: Any) -> None:
        self._sqs = sqs
        self.sent: set[str] = set()
        self._lock = threading.Lock()

    def send_message_batch(self, **kwargs: Any) -> Any:
        answer = self._sqs.send_message_batch(**kwargs)
        with self._lock:
            self.sent.update(s["MessageId"] for s in answer.get("Successful", []) if "MessageId" in s)
        return answer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sqs, name)


@dataclass(slots=True)
class Report:
    received: int = 0
    duplicates: int = 0  # copies of a record already redriven (deleted)
    deleted: int = 0
    left: dict[str, int] = field(default_factory=dict)  # reason → messages left in the queue
    unreadable: int = 0  # bodies that are not a DLQ message (left)
    would: dict[str, int] = field(default_factory=dict)  # dry run: put / poison / skipped
    interrupted: bool = False
    elapsed_s: float = 0.0
    tally: Tally = field(default_factory=Tally)


class Redrive:
    def __init__(
        self,
        settings: Settings,
        *,
        batch: int = DEFAULT_BATCH,
        visibility_s: int = DEFAULT_VISIBILITY_S,
        force: bool = False,
        max_messages: int | None = None,
        dry_run: bool = False,
        sqs: Any = None,
        dynamodb: Any = None,
        personalize: Any = None,
        stop: threading.Event | None = None,
        show_progress: bool = True,
        wait_s: int = 1,
    ) -> None:
        if not settings.dlq_url:
            raise OpsError("DLQ_URL is not set: pass --dlq-url, the stack's DLQ URL")
        if batch < 1:
            raise OpsError("--batch must be at least 1")
        if not 0 <= visibility_s <= 43_200:
            raise OpsError("--visibility-timeout must be between 0 and 43200 seconds (SQS's limit)")
        self.settings, self.batch, self.visibility_s = settings, batch, visibility_s
        self.force, self.max_messages, self.dry_run, self.show_progress = force, max_messages, dry_run, show_progress
        self.dlq_url: str = settings.dlq_url
        self.wait_s = wait_s  # long polling on an empty queue before the run ends
        self.sqs = RecordingSQS(sqs or client("sqs"))
        self.dynamodb = dynamodb or client("dynamodb")
        self.stop = stop or threading.Event()
        self.feeder: Feeder | None = None
        if not dry_run:
            self.feeder = Feeder(
                settings, dynamodb=self.dynamodb, personalize=personalize, sqs=self.sqs, stop=self.stop
            )
        self.report = Report(tally=self.feeder.tally if self.feeder else Tally())
        self.seen: set[tuple[str, str]] = set()  # (eventSourceARN, sequenceNumber) redriven in this run
        self.held: list[str] = []  # receipt handles to make visible again at the end

    def run(self) -> Report:
        started = time.monotonic()
        depth = self._depth()
        try:
            with progress() as bar:
                if not self.show_progress:
                    bar.stop()
                task = bar.add_task("redrive", total=depth or None, rate="")
                while not self.stop.is_set():
                    if self.max_messages is not None and self.report.received >= self.max_messages:
                        break
                    messages = self._receive()
                    if not messages:
                        break
                    self._round(messages)
                    rate = self.report.received / max(1e-9, time.monotonic() - started)
                    t = self.report.tally
                    bar.update(
                        task,
                        advance=len(messages),
                        rate=f"{rate:,.1f} msg/s, put {t.put:,}, poison again {t.poison:,}",
                    )
        except (KeyboardInterrupt, Stopped):
            self.stop.set()
            self.report.interrupted = True
        finally:
            self._release()
            self.report.elapsed_s = time.monotonic() - started
        return self.report

    # --- steps -----------------------------------------------------------------------------------------------

    def _depth(self) -> int:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=self.dlq_url, AttributeNames=["ApproximateNumberOfMessages"]
        ).get("Attributes", {})
        return int(attrs.get("ApproximateNumberOfMessages", 0))

    def _receive(self) -> list[dict[str, Any]]:
        """Up to ``batch`` messages that this run did not send itself."""
        out: list[dict[str, Any]] = []
        want = self.batch
        if self.max_messages is not None:
            want = min(want, self.max_messages - self.report.received)
        while len(out) < want:
            got = self.sqs.receive_message(
                QueueUrl=self.dlq_url,
                MaxNumberOfMessages=min(10, want - len(out)),
                VisibilityTimeout=self.visibility_s,
                WaitTimeSeconds=self.wait_s,
            ).get("Messages", [])
            if not got:
                break
            for m in got:
                if m["MessageId"] in self.sqs.sent:
                    self.held.append(m["ReceiptHandle"])  # re-dead-lettered by this run: not work, released at the end
                else:
                    out.append(m)
        return out

    def _round(self, messages: list[dict[str, Any]]) -> None:
        r = self.report
        r.received += len(messages)
        records: list[Any] = []
        owners: list[list[dict[str, Any]]] = []  # for each record fed: its message and its duplicates
        by_key: dict[tuple[str, str], int] = {}
        done: list[dict[str, Any]] = []  # duplicates of records redriven in an earlier round
        for m in messages:
            try:
                body = json.loads(m["Body"])
                if not isinstance(body, dict) or "record" not in body:
                    raise ValueError
            except ValueError:
                r.unreadable += 1
                self.held.append(m["ReceiptHandle"])
                continue
            arn, seq = body.get("eventSourceARN"), body.get("sequenceNumber")
            key = (arn, seq) if isinstance(arn, str) and isinstance(seq, str) and arn and seq else None
            if key is not None and key in self.seen:
                r.duplicates += 1
                done.append(m)
                continue
            if key is not None and key in by_key:
                r.duplicates += 1
                owners[by_key[key]].append(m)
                continue
            if key is not None:
                by_key[key] = len(records)
            records.append(body["record"])
            owners.append([m])
        p = plan(records, force=self.force)
        for index, why in p.left:
            r.left[why] = r.left.get(why, 0) + len(owners[index])
            self.held.extend(m["ReceiptHandle"] for m in owners[index])
        if self.dry_run:
            for name, n in preview_plan(p, self.settings, self.dynamodb).items():
                r.would[name] = r.would.get(name, 0) + n
            self.held.extend(m["ReceiptHandle"] for i in p.accepted for m in owners[i])
            self.held.extend(m["ReceiptHandle"] for m in done)
            return
        assert self.feeder is not None
        try:
            missing = feed_plan(self.feeder, p)
        except BaseException:  # stopped, or a systemic failure: nothing of this round is deleted; show it again now
            self.held.extend(m["ReceiptHandle"] for i in p.accepted for m in owners[i])
            self.held.extend(m["ReceiptHandle"] for m in done)
            raise
        unfed = dict(p.unfed(missing))
        for index, why in unfed.items():  # left in the queue with the reason, like the plan's own leftovers
            r.left[why] = r.left.get(why, 0) + len(owners[index])
            self.held.extend(m["ReceiptHandle"] for m in owners[index])
        fed = [i for i in p.accepted if i not in unfed]
        handled = [m for i in fed for m in owners[i]] + done
        self.seen.update(k for k, i in by_key.items() if i in set(fed))
        self._delete(handled)

    def _delete(self, messages: list[dict[str, Any]]) -> None:
        for start in range(0, len(messages), 10):
            chunk = messages[start : start + 10]
            answer = self.sqs.delete_message_batch(
                QueueUrl=self.dlq_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)],
            )
            failed = answer.get("Failed", [])
            self.report.deleted += len(chunk) - len(failed)
            if failed:  # the message reappears after its visibility timeout; the next run sees a duplicate
                console.print(f"[yellow]warning:[/] {len(failed)} message(s) could not be deleted: {failed[0]}")

    def _release(self) -> None:
        """Make the messages this run held but did not handle visible again."""
        for start in range(0, len(self.held), 10):
            chunk = self.held[start : start + 10]
            self.sqs.change_message_visibility_batch(
                QueueUrl=self.dlq_url,
                Entries=[{"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0} for i, h in enumerate(chunk)],
            )
        self.held = []


def summary(report: Report, *, dry_run: bool) -> RichTable:
    rows: list[tuple[str, Any]] = [("messages received", report.received)]
    if dry_run:
        rows += [
            ("would be put", report.would.get("put", 0)),
            ("would still be poison", report.would.get("poison", 0)),
            ("would be skipped", report.would.get("skipped", 0)),
        ]
    else:
        tl = report.tally
        rows += [
            ("redriven (put)", tl.put),
            ("still poison (dead-lettered again with the new reason)", tl.poison),
            ("skipped (remove ignored, stale version)", tl.skipped),
            ("duplicates dropped", report.duplicates),
            ("messages deleted", report.deleted),
            ("retried (sent again after a retry outcome)", tl.retries),
        ]
    rows += [(f"left in the queue: {why}", n) for why, n in report.left.items()]
    if report.unreadable:
        rows.append(("left in the queue: not a connector DLQ message", report.unreadable))
    rows.append(("elapsed", f"{report.elapsed_s:.1f} s"))
    return summary_table("redrive" + (" (dry run: nothing written or deleted)" if dry_run else ""), rows)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    job = Redrive(
        settings,
        batch=args.batch,
        visibility_s=args.visibility_timeout,
        force=args.force,
        max_messages=args.max_messages,
        dry_run=args.dry_run,
    )
    report = job.run()
    console.print(summary(report, dry_run=args.dry_run))
    if report.interrupted:
        raise KeyboardInterrupt
    return 0
