"""``python -m ops replay``: batches that exhausted their retries, from the on-failure destination.

Two sources (one per run):

* ``--bucket`` (the **S3 on-failure destination**, the stack's default). Lambda writes one object per failed
  batch, key ``aws/lambda/<ESM UUID>/<shard id>/YYYY/MM/DD/YYYY-MM-DDTHH.MM.SS-<uuid>``, holding the invocation
  record: ``requestContext``, ``responseContext``, ``version``, ``timestamp``, ``DDBStreamBatchInfo`` or
  ``KinesisBatchInfo`` (shard, start and end sequence numbers, stream ARN) and ``payload``, "the original
  invocation record as an escaped JSON string" (AWS Lambda Developer Guide, "Retain discarded records for a
  DynamoDB event source" / "... for a Kinesis Data Streams event source", example Amazon S3 invocation record:
  https://docs.aws.amazon.com/lambda/latest/dg/services-dynamodb-errors.html). The payload's records are fed
  as :mod:`ops.feed` does for the DLQ: a DynamoDB record → the table's **current** item by its keys (then
  verified), CDC over Kinesis → the original record (the version guard refuses stale versions), a plain
  Kinesis document → only with ``--force``. An object without a payload is replayed from its coordinates.
  A replayed object is moved under ``replayed/`` (or deleted with ``--delete``) only after its records landed.
* ``--queue-url`` (an **SQS on-failure queue**: coordinates only). The shard range is read again from the stream
  (``GetShardIterator AT_SEQUENCE_NUMBER`` at the start, ``GetRecords`` until past the end sequence number) while
  the stream retains it (24 hours for DynamoDB Streams, the retention period for Kinesis). When the shard or the
  range is gone (``TrimmedDataAccessException``, ``ResourceNotFoundException``, ``ExpiredIteratorException``, or
  the first record read is past the start), the command says so and leaves the message (``--discard-expired``
  deletes it); then the items can only be recovered from the table (``backfill``). A replayed message is deleted
  only after its records landed.

The order is always read → put / dead-letter → move or delete, so a crash midway leaves the object or the
message to be replayed again (PutItems replaces: harmless). ``--dry-run`` reports what would happen.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError
from rich.table import Table as RichTable

from connector.change import sequence_value
from connector.config import Settings
from ops.common import OpsError, add_settings_arguments, client, console, progress, settings_from, summary_table
from ops.feed import Feeder, Stopped, Tally, feed_plan, plan, preview_plan

DEFAULT_PREFIX = "aws/lambda/"
REPLAYED_PREFIX = "replayed/"
EXPIRED_CODES = {"TrimmedDataAccessException", "ResourceNotFoundException", "ExpiredIteratorException"}
BATCH_INFO = ("DDBStreamBatchInfo", "KinesisBatchInfo")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "replay",
        help="replay batches that exhausted their retries (S3 on-failure destination or SQS coordinates)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--bucket", help="the S3 on-failure destination bucket (the stack's output; default: $ON_FAILURE_BUCKET)"
    )
    src.add_argument("--queue-url", help="an SQS on-failure queue, coordinates only (default: $ON_FAILURE_QUEUE_URL)")
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"S3 key prefix to replay (default {DEFAULT_PREFIX})")
    p.add_argument(
        "--delete", action="store_true", help=f"delete replayed S3 objects instead of moving them to {REPLAYED_PREFIX}"
    )
    p.add_argument(
        "--discard-expired", action="store_true", help="delete SQS messages whose range is no longer retained"
    )
    p.add_argument(
        "--force", action="store_true", help="also replay plain Kinesis JSON documents (no version: may regress)"
    )
    p.add_argument("--dry-run", action="store_true", help="report what would happen; write, move and delete nothing")
    add_settings_arguments(p, state_table_required=True)
    p.set_defaults(run=run)


class NotRetained(Exception):
    pass


@dataclass(slots=True)
class Report:
    batches: int = 0  # objects or messages read
    replayed: int = 0  # batches whose records all landed (moved or deleted)
    records: int = 0
    expired: int = 0  # SQS coordinates no longer retained
    discarded: int = 0
    left: dict[str, int] = field(default_factory=dict)
    would: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False
    elapsed_s: float = 0.0
    tally: Tally = field(default_factory=Tally)


def parse_invocation_record(body: str | bytes) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """The batch info (``DDBStreamBatchInfo`` / ``KinesisBatchInfo``) and the payload's records (``None`` when
    the record carries no payload: an SQS or SNS destination's coordinates)."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise OpsError("not an invocation record: the body is not JSON") from None
    if not isinstance(doc, dict):
        raise OpsError("not an invocation record: not a JSON object")
    info = next((doc[k] for k in BATCH_INFO if isinstance(doc.get(k), dict)), None)
    if info is None:
        raise OpsError("not a stream invocation record: no DDBStreamBatchInfo or KinesisBatchInfo")
    payload = doc.get("payload")
    if payload is None:
        return info, None
    try:
        event = json.loads(payload) if isinstance(payload, str) else payload  # documented: an escaped JSON string
    except ValueError:
        raise OpsError("the invocation record's payload is not JSON (truncated?)") from None
    if not isinstance(event, dict) or not isinstance(event.get("Records"), list):
        raise OpsError("the invocation record's payload is not a stream event with Records")
    return info, event["Records"]


class Replay:
    def __init__(
        self,
        settings: Settings,
        *,
        bucket: str | None = None,
        queue_url: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        delete: bool = False,
        discard_expired: bool = False,
        force: bool = False,
        dry_run: bool = False,
        s3: Any = None,
        sqs: Any = None,
        dynamodb: Any = None,
        streams: Any = None,
        kinesis: Any = None,
        personalize: Any = None,
        stop: threading.Event | None = None,
        show_progress: bool = True,
    ) -> None:
        if (bucket is None) == (queue_url is None):
            raise OpsError("give exactly one of --bucket and --queue-url")
        self.settings, self.bucket, self.queue_url, self.prefix = settings, bucket, queue_url, prefix
        self.delete, self.discard_expired, self.force, self.dry_run = delete, discard_expired, force, dry_run
        self.show_progress = show_progress
        self.s3: Any = s3 or (client("s3") if bucket else None)
        self.sqs = sqs or client("sqs")
        self.dynamodb = dynamodb or client("dynamodb")
        self._streams, self._kinesis = streams, kinesis
        self.stop = stop or threading.Event()
        self.feeder: Feeder | None = None
        if not dry_run:
            self.feeder = Feeder(
                settings, dynamodb=self.dynamodb, personalize=personalize, sqs=self.sqs, stop=self.stop
            )
        self.report = Report(tally=self.feeder.tally if self.feeder else Tally())

    @property
    def streams(self) -> Any:
        if self._streams is None:
            self._streams = client("dynamodbstreams")
        return self._streams

    @property
    def kinesis(self) -> Any:
        if self._kinesis is None:
            self._kinesis = client("kinesis")
        return self._kinesis

    def run(self) -> Report:
        started = time.monotonic()
        try:
            with progress() as bar:
                if not self.show_progress:
                    bar.stop()
                task = bar.add_task("replay", total=None, rate="")
                batches = self._s3_batches() if self.bucket else self._sqs_batches()
                for _ in batches:
                    t = self.report.tally
                    bar.update(task, advance=1, rate=f"records {self.report.records:,}, put {t.put:,}")
                    if self.stop.is_set():
                        break
        except (KeyboardInterrupt, Stopped):
            self.stop.set()
            self.report.interrupted = True
        self.report.elapsed_s = time.monotonic() - started
        return self.report

    # --- one batch -------------------------------------------------------------------------------------------

    def _replay(self, records: list[dict[str, Any]]) -> bool:
        """Feed one batch's records; True when every one was handled (put, poison or skipped)."""
        self.report.records += len(records)
        p = plan(records, force=self.force)
        for _, why in p.left:
            self.report.left[why] = self.report.left.get(why, 0) + 1
        if self.dry_run:
            for name, n in preview_plan(p, self.settings, self.dynamodb).items():
                self.report.would[name] = self.report.would.get(name, 0) + n
            return False
        assert self.feeder is not None
        unfed = p.unfed(feed_plan(self.feeder, p))
        for _, why in unfed:
            self.report.left[why] = self.report.left.get(why, 0) + 1
        return not p.left and not unfed

    # --- S3 ----------------------------------------------------------------------------------------------------

    def _s3_batches(self) -> Any:
        assert self.bucket is not None
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key.startswith(REPLAYED_PREFIX):
                    continue
                self.report.batches += 1
                body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
                try:
                    info, records = parse_invocation_record(body)
                    if records is None:
                        records = self._read_range(info)
                except (OpsError, NotRetained) as exc:
                    why = f"{exc}"
                    self.report.left[why] = self.report.left.get(why, 0) + 1
                    yield key
                    continue
                if self._replay(records) and not self.dry_run:
                    if not self.delete:
                        self.s3.copy_object(
                            Bucket=self.bucket,
                            Key=REPLAYED_PREFIX + key,
                            CopySource={"Bucket": self.bucket, "Key": key},
                        )
                    self.s3.delete_object(Bucket=self.bucket, Key=key)
                    self.report.replayed += 1
                yield key

    # --- SQS coordinates ---------------------------------------------------------------------------------------

    def _sqs_batches(self) -> Any:
        assert self.queue_url is not None
        held: list[str] = []
        try:
            while not self.stop.is_set():
                got = self.sqs.receive_message(
                    QueueUrl=self.queue_url, MaxNumberOfMessages=1, VisibilityTimeout=900, WaitTimeSeconds=0
                ).get("Messages", [])
                if not got:
                    return
                m = got[0]
                self.report.batches += 1
                try:
                    info, records = parse_invocation_record(m["Body"])
                    if records is None:
                        records = self._read_range(info)
                except NotRetained as exc:
                    self.report.expired += 1
                    console.print(f"[yellow]not retained:[/] {exc}")
                    if self.discard_expired and not self.dry_run:
                        self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])
                        self.report.discarded += 1
                    else:
                        held.append(m["ReceiptHandle"])
                    yield m["MessageId"]
                    continue
                except OpsError as exc:
                    self.report.left[str(exc)] = self.report.left.get(str(exc), 0) + 1
                    held.append(m["ReceiptHandle"])
                    yield m["MessageId"]
                    continue
                if self._replay(records) and not self.dry_run:
                    self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])
                    self.report.replayed += 1
                else:
                    held.append(m["ReceiptHandle"])
                yield m["MessageId"]
        finally:
            for handle in held:  # visible again for the next run
                self.sqs.change_message_visibility(QueueUrl=self.queue_url, ReceiptHandle=handle, VisibilityTimeout=0)

    def _read_range(self, info: dict[str, Any]) -> list[dict[str, Any]]:
        """The records of ``info``'s shard range, read again from the stream; :class:`NotRetained` if gone."""
        arn, shard = info.get("streamArn"), info.get("shardId")
        start, end = info.get("startSequenceNumber"), info.get("endSequenceNumber")
        if not all(isinstance(v, str) and v for v in (arn, shard, start, end)):
            raise OpsError("the batch info lacks streamArn, shardId or the sequence numbers")
        assert isinstance(arn, str) and isinstance(shard, str) and isinstance(start, str) and isinstance(end, str)
        kinesis = arn.split(":")[2] == "kinesis"
        where = f"{arn} {shard} [{start} … {end}]"
        try:
            if kinesis:
                it = self.kinesis.get_shard_iterator(
                    StreamARN=arn, ShardId=shard, ShardIteratorType="AT_SEQUENCE_NUMBER", StartingSequenceNumber=start
                )["ShardIterator"]
            else:
                it = self.streams.get_shard_iterator(
                    StreamArn=arn, ShardId=shard, ShardIteratorType="AT_SEQUENCE_NUMBER", SequenceNumber=start
                )["ShardIterator"]
            out: list[dict[str, Any]] = []
            last, empty = sequence_value(end), 0
            while it and empty < 3:
                if kinesis:
                    got = self.kinesis.get_records(ShardIterator=it, Limit=1000, StreamARN=arn)
                    raw = [_kinesis_event_record(r, arn, shard) for r in got["Records"]]
                else:
                    got = self.streams.get_records(ShardIterator=it, Limit=1000)
                    raw = [_dynamodb_event_record(r, arn) for r in got["Records"]]
                it = got.get("NextShardIterator")
                empty = 0 if raw else empty + 1
                for r in raw:
                    seq = sequence_value(_seq(r))
                    if not out and seq > sequence_value(start):
                        raise NotRetained(f"{where}: the stream no longer holds the start of the range")
                    if seq > last:
                        return out
                    out.append(r)
                if out and sequence_value(_seq(out[-1])) >= last:
                    return out
            if not out:
                raise NotRetained(f"{where}: no record of the range is left in the stream")
            return out
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in EXPIRED_CODES:
                raise NotRetained(f"{where}: {code}: the stream no longer retains this range") from None
            raise


def _seq(record: dict[str, Any]) -> str | None:
    body = record.get("dynamodb") or record.get("kinesis") or {}
    return body.get("SequenceNumber") or body.get("sequenceNumber")


def _dynamodb_event_record(r: dict[str, Any], arn: str) -> dict[str, Any]:
    """A DynamoDB Streams GetRecords record in the shape of a Lambda event record (epoch seconds, the ARN)."""
    body = dict(r.get("dynamodb", {}))
    ts: Any = body.get("ApproximateCreationDateTime")
    if hasattr(ts, "timestamp"):
        body["ApproximateCreationDateTime"] = int(ts.timestamp())
    return {**r, "dynamodb": body, "eventSourceARN": arn}


def _kinesis_event_record(r: dict[str, Any], arn: str, shard: str) -> dict[str, Any]:
    """A Kinesis GetRecords record in the shape of a Lambda event record."""
    ts: Any = r.get("ApproximateArrivalTimestamp")
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": r.get("PartitionKey", ""),
            "sequenceNumber": r["SequenceNumber"],
            "data": base64.b64encode(r["Data"]).decode(),
            "approximateArrivalTimestamp": ts.timestamp() if hasattr(ts, "timestamp") else ts,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"{shard}:{r['SequenceNumber']}",
        "eventName": "aws:kinesis:record",
        "awsRegion": arn.split(":")[3],
        "eventSourceARN": arn,
    }


def summary(report: Report, *, dry_run: bool) -> RichTable:
    rows: list[tuple[str, Any]] = [("batches read", report.batches), ("records", report.records)]
    if dry_run:
        rows += [(f"would be {k}", v) for k, v in sorted(report.would.items())]
    else:
        tl = report.tally
        rows += [
            ("batches replayed (moved or deleted)", report.replayed),
            ("put", tl.put),
            ("poison (dead-lettered with the reason)", tl.poison),
            ("skipped", tl.skipped),
            ("retried", tl.retries),
        ]
    rows += [("ranges no longer retained", report.expired), ("of them discarded", report.discarded)]
    rows += [(f"left: {why}", n) for why, n in report.left.items()]
    rows.append(("elapsed", f"{report.elapsed_s:.1f} s"))
    return summary_table("replay" + (" (dry run: nothing written, moved or deleted)" if dry_run else ""), rows)


def on_failure_source(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """``(bucket, queue_url)``: a flag if given, else ``ON_FAILURE_BUCKET`` / ``ON_FAILURE_QUEUE_URL`` (what
    ``python -m localcloud up`` exports); exactly one of them."""
    if args.bucket or args.queue_url:
        return args.bucket, args.queue_url
    env = os.environ if env is None else env
    bucket, queue_url = env.get("ON_FAILURE_BUCKET") or None, env.get("ON_FAILURE_QUEUE_URL") or None
    if bucket and queue_url:
        raise OpsError("both ON_FAILURE_BUCKET and ON_FAILURE_QUEUE_URL are set: pass --bucket or --queue-url")
    if not (bucket or queue_url):
        raise OpsError(
            "no on-failure destination: pass --bucket (the stack's FailedBatchesBucketName output) or --queue-url, "
            "or set ON_FAILURE_BUCKET / ON_FAILURE_QUEUE_URL"
        )
    return bucket, queue_url


def run(args: argparse.Namespace) -> int:
    bucket, queue_url = on_failure_source(args)
    settings = settings_from(args)
    job = Replay(
        settings,
        bucket=bucket,
        queue_url=queue_url,
        prefix=args.prefix,
        delete=args.delete,
        discard_expired=args.discard_expired,
        force=args.force,
        dry_run=args.dry_run,
    )
    report = job.run()
    console.print(summary(report, dry_run=args.dry_run))
    if report.interrupted:
        raise KeyboardInterrupt
    return 0
