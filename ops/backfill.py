"""``python -m ops backfill``: load an existing table's items into the dataset, beside the running stream.

A parallel Scan (``--segments N``: one thread per segment, ``TotalSegments = N``) of the table, page by page,
through :mod:`ops.feed`: the runtime's own pipeline (same mapping, 10-item calls, poison → DLQ, retries) with
**put, then verify** so that an image read before a concurrent stream write can never stay in the dataset (the
argument is in :mod:`ops.feed`).

* **Shares the quota.** Every PutItems attempt takes its slot from the shared budget in ``STATE_TABLE``; with
  ``--share S`` (default 0.5) the backfill takes at most ``S`` of the shared rate while the stream reserves too,
  and all of it alone (the budget's ``max_share``).
* **Resumable.** After each page has landed and been verified, the segment's checkpoint is written to
  ``STATE_TABLE``: ``pk = backfill#<table>#<dataset ARN>#seg<i>`` with ``LastEvaluatedKey`` (DynamoDB JSON text),
  the total segments and the segment's counts. A rerun with the same arguments continues each segment after its
  last checkpoint (the page that was under way is written again: PutItems replaces, so that is harmless);
  ``--restart`` starts over; a different ``--segments`` is refused while a checkpoint exists, because segment
  boundaries depend on the total. Ctrl-C stops every segment after its current call, keeps the checkpoints and
  exits with 130.
* **Soft-delete aware.** The Scan sees the table's live items only, and writes them with all their attributes,
  so a soft-delete attribute the table keeps (``deleted: true``, a status) reaches the dataset like any other
  property (a Personalize filter excludes those items). Items deleted from the table before the backfill need
  nothing: no API deletes an item from the dataset, a new dataset never had them, and an older one received
  their REMOVE through the stream (``onRemove``) when they were deleted.
* ``--dry-run`` scans and maps every item with the current mapping and counts what would be put and what is
  poison; it writes nothing (neither PutItems, nor the DLQ, nor checkpoints).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table as RichTable

from connector.config import Settings
from ops.common import OpsError, add_settings_arguments, client, console, progress, settings_from, summary_table
from ops.feed import Feeder, Stopped, Table, Tally, describe_table, preview, table_record

DEFAULT_SEGMENTS = 4
DEFAULT_SHARE = 0.5
DEFAULT_PAGE = 100


def register(sub: Any) -> None:
    p = sub.add_parser(
        "backfill",
        help="load an existing table's items into the dataset (parallel Scan, resumable, shares the quota)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--table", required=True, help="the DynamoDB table to scan")
    p.add_argument("--segments", type=int, default=DEFAULT_SEGMENTS, help="parallel Scan segments (default 4)")
    p.add_argument(
        "--share",
        type=float,
        default=DEFAULT_SHARE,
        help="the most of the shared PutItems rate the backfill takes while the stream writes too (default 0.5; "
        "alone it takes all of it)",
    )
    p.add_argument("--consistent-read", action="store_true", help="strongly consistent Scan (twice the read cost)")
    p.add_argument("--page-size", type=int, default=DEFAULT_PAGE, help="items per Scan page (default 100)")
    p.add_argument("--restart", action="store_true", help="forget the checkpoints and start over")
    p.add_argument("--dry-run", action="store_true", help="scan and map, count what would be put; write nothing")
    add_settings_arguments(p, state_table_required=True)
    p.set_defaults(run=run)


@dataclass(slots=True)
class Checkpoint:
    segment: int
    total: int
    last_key: dict[str, Any] | None = None
    done: bool = False
    scanned: int = 0
    put: int = 0
    poison: int = 0
    skipped: int = 0


class Checkpoints:
    """One item per segment in ``STATE_TABLE``."""

    def __init__(self, state: Any, state_table: str, table: str, dataset_arn: str) -> None:
        self.state, self.state_table = state, state_table
        self.prefix = f"backfill#{table}#{dataset_arn}#seg"

    def pk(self, segment: int) -> dict[str, dict[str, str]]:
        return {"pk": {"S": f"{self.prefix}{segment}"}}

    def load(self, segment: int) -> Checkpoint | None:
        row = self.state.get_item(TableName=self.state_table, Key=self.pk(segment), ConsistentRead=True).get("Item")
        if not row:
            return None
        last = row.get("last_key", {}).get("S")
        return Checkpoint(
            segment,
            int(row["total"]["N"]),
            json.loads(last) if last else None,
            bool(row.get("done", {}).get("BOOL", False)),
            *(int(row.get(n, {}).get("N", "0")) for n in ("scanned", "put", "poison", "skipped")),
        )

    def save(self, cp: Checkpoint) -> None:
        row: dict[str, Any] = {
            **self.pk(cp.segment),
            "total": {"N": str(cp.total)},
            "done": {"BOOL": cp.done},
            "updated": {"N": str(int(time.time()))},
            **{n: {"N": str(getattr(cp, n))} for n in ("scanned", "put", "poison", "skipped")},
        }
        if cp.last_key is not None:
            row["last_key"] = {"S": json.dumps(cp.last_key, sort_keys=True)}
        self.state.put_item(TableName=self.state_table, Item=row)

    def delete(self, segment: int) -> None:
        self.state.delete_item(TableName=self.state_table, Key=self.pk(segment))


@dataclass(slots=True)
class Report:
    scanned: int = 0
    would_put: int = 0  # dry run
    would_poison: int = 0
    would_skip: int = 0
    resumed: int = 0  # segments continued from a checkpoint
    interrupted: bool = False
    elapsed_s: float = 0.0
    tally: Tally = field(default_factory=Tally)


class Backfill:
    """The backfill of one table into one dataset (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        table_name: str,
        *,
        segments: int = DEFAULT_SEGMENTS,
        share: float = DEFAULT_SHARE,
        consistent_read: bool = False,
        page_size: int = DEFAULT_PAGE,
        restart: bool = False,
        dry_run: bool = False,
        dynamodb: Any = None,
        state: Any = None,
        personalize: Any = None,
        sqs: Any = None,
        stop: threading.Event | None = None,
        show_progress: bool = True,
    ) -> None:
        if segments < 1 or segments > 1_000_000:
            raise OpsError(f"--segments {segments} must be between 1 and 1000000 (DynamoDB's TotalSegments)")
        if page_size < 1:
            raise OpsError("--page-size must be at least 1")
        if not 0 < share <= 1:
            raise OpsError(f"--share {share:g} must be in (0, 1]")
        if not settings.state_table:
            raise OpsError(
                "STATE_TABLE is not set: the backfill keeps its checkpoints there and shares the PutItems quota "
                "with the stream through it (pass --state-table, the stack's StateTableName output)"
            )
        self.settings = settings
        self.segments, self.consistent, self.page_size = segments, consistent_read, page_size
        self.restart, self.dry_run, self.show_progress = restart, dry_run, show_progress
        self.dynamodb = dynamodb or client("dynamodb")
        self.table: Table = describe_table(self.dynamodb, table_name)
        self.stop = stop or threading.Event()
        self.checkpoints = Checkpoints(
            state or self.dynamodb, settings.state_table, self.table.name, settings.dataset_arn
        )
        self.feeder: Feeder | None = None
        if not dry_run:
            self.feeder = Feeder(
                settings,
                dynamodb=self.dynamodb,
                personalize=personalize,
                sqs=sqs,
                state_dynamodb=state,  # the state table's client, when given, serves the budget too
                max_share=share,
                stop=self.stop,
            )
        self.report = Report(tally=self.feeder.tally if self.feeder else Tally())
        self._lock = threading.Lock()

    # --- checkpoints -----------------------------------------------------------------------------------------

    def _prepare(self) -> list[Checkpoint]:
        """The checkpoint of every segment: a fresh one, or the saved one to continue from."""
        if self.dry_run:
            return [Checkpoint(i, self.segments) for i in range(self.segments)]
        first = self.checkpoints.load(0)
        if first is not None and first.total != self.segments and not self.restart:
            raise OpsError(
                f"a checkpoint of a backfill of {self.table.name!r} with --segments {first.total} exists: "
                f"rerun with --segments {first.total} to continue it, or pass --restart to start over"
            )
        if self.restart:
            for i in range(max(self.segments, first.total if first else 0)):
                self.checkpoints.delete(i)
            return [Checkpoint(i, self.segments) for i in range(self.segments)]
        out = []
        for i in range(self.segments):
            cp = self.checkpoints.load(i)
            if cp is not None:
                self.report.resumed += 1
            out.append(cp or Checkpoint(i, self.segments))
        return out

    # --- the run ---------------------------------------------------------------------------------------------

    def run(self) -> Report:
        started = time.monotonic()
        cps = self._prepare()
        todo = [cp for cp in cps if not cp.done]
        already = sum(cp.scanned for cp in cps)
        with progress() as bar:
            if not self.show_progress:
                bar.stop()
            task = bar.add_task(
                f"backfill {self.table.name}",
                total=max(self.table.item_count, already) or None,
                completed=already,
                rate="",
            )

            def advance(n: int) -> None:
                with self._lock:
                    self.report.scanned += n
                    done = self.report.scanned
                rate = done / max(1e-9, time.monotonic() - started)
                t = self.report.tally
                bar.update(task, advance=n, rate=f"{rate:,.1f} items/s, put {t.put:,}, poison {t.poison:,}")

            if todo:
                pool = ThreadPoolExecutor(max_workers=len(todo), thread_name_prefix="backfill")
                futures = [pool.submit(self._segment, cp, advance) for cp in todo]
                try:
                    done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                    for f in done:
                        if f.exception() is not None:
                            self.stop.set()
                    wait(futures)
                except KeyboardInterrupt:
                    self.stop.set()
                    self.report.interrupted = True
                    wait(futures)
                finally:
                    pool.shutdown(wait=True)
                errors = [e for f in futures if (e := f.exception()) is not None]
                for exc in sorted(errors, key=lambda e: isinstance(e, Stopped)):  # the cause, not the stops it set
                    raise exc
        self.report.interrupted = self.report.interrupted or self.stop.is_set()
        self.report.elapsed_s = time.monotonic() - started
        return self.report

    def _segment(self, cp: Checkpoint, advance: Any) -> None:
        start_key = cp.last_key
        while not self.stop.is_set():
            kwargs: dict[str, Any] = {
                "TableName": self.table.name,
                "Segment": cp.segment,
                "TotalSegments": cp.total,
                "ConsistentRead": self.consistent,
                "Limit": self.page_size,
            }
            if start_key:
                kwargs["ExclusiveStartKey"] = start_key
            page = self.dynamodb.scan(**kwargs)
            items = page.get("Items", [])
            if self.dry_run:
                seqs = self.feeder.seq if self.feeder else None
                records = [
                    table_record(self.table, self.table.key_of(i), i, seqs() if seqs else str(n))
                    for n, i in enumerate(items, 1)
                ]
                counts = preview(records, self.settings)
                with self._lock:
                    self.report.would_put += counts["put"]
                    self.report.would_poison += counts["poison"]
                    self.report.would_skip += counts["skipped"]
            elif items:
                assert self.feeder is not None
                seg = Tally()
                try:
                    self.feeder.feed_table(self.table, items, seg)
                except Stopped:
                    return  # the page is written again on the next run (its checkpoint was not advanced)
                cp.put += seg.put
                cp.poison += seg.poison
                cp.skipped += seg.skipped
            start_key = page.get("LastEvaluatedKey")
            cp.scanned += len(items)
            cp.last_key, cp.done = start_key, start_key is None
            if not self.dry_run:
                self.checkpoints.save(cp)
            advance(len(items))
            if cp.done:
                return


def summary(report: Report, *, dry_run: bool, table: str) -> RichTable:
    rows: list[tuple[str, Any]] = [("items scanned (this run)", report.scanned)]
    if dry_run:
        rows += [
            ("would be put", report.would_put),
            ("poison (would go to the DLQ)", report.would_poison),
            ("skipped", report.would_skip),
        ]
    else:
        tl = report.tally
        rows += [
            ("put", tl.put),
            ("poison (dead-lettered with the reason)", tl.poison),
            ("skipped", tl.skipped),
            ("retried (sent again after a retry outcome)", tl.retries),
            ("written again after the verifying read", tl.rewritten),
            ("PutItems calls", tl.calls),
            ("items per call", f"{tl.items_sent / tl.calls:.2f}" if tl.calls else "-"),
            ("throttled attempts", tl.throttles),
            ("segments resumed from a checkpoint", report.resumed),
        ]
    rows += [
        ("elapsed", f"{report.elapsed_s:.1f} s"),
        ("items/s", f"{report.scanned / report.elapsed_s:,.1f}" if report.elapsed_s else "-"),
    ]
    return summary_table(f"backfill of {table}" + (" (dry run: nothing written)" if dry_run else ""), rows)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    job = Backfill(
        settings,
        args.table,
        segments=args.segments,
        share=args.share,
        consistent_read=args.consistent_read,
        page_size=args.page_size,
        restart=args.restart,
        dry_run=args.dry_run,
    )
    report = job.run()
    console.print(summary(report, dry_run=args.dry_run, table=args.table))
    if report.interrupted:
        raise KeyboardInterrupt
    if not args.dry_run and report.scanned == 0 and report.resumed:
        console.print("nothing left to do: every segment's checkpoint says done (--restart to backfill again)")
    return 0
