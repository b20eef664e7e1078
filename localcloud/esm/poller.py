"""The shard poller: reads one shard at Lambda's cadence, builds Lambda-shaped records, batches them, and applies
the error handling (partial checkpoints, bisect, retries, record age, throttle backoff) to the batch at its head."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import ClientError
from moto.events.models import EventPattern

from localcloud.esm.batch_policy import build_on_failure_message
from localcloud.esm.config import MappingConfig
from localcloud.esm.function_pool import _Throttled

if TYPE_CHECKING:
    from localcloud.esm.runner import EsmRunner

log = logging.getLogger("localcloud.esm")


MAX_PAYLOAD_BYTES = 6 * 1024 * 1024 - 64 * 1024  # 6 MB synchronous invoke payload, minus envelope headroom
GET_RECORDS_LIMIT = {"dynamodb": 1000, "kinesis": 10000}

#: Lambda's documented base poll rate per shard: Kinesis once a second, DynamoDB Streams four times a second.
POLL_INTERVAL_S = {"kinesis": 1.0, "dynamodb": 0.25}


# --------------------------------------------------------------------------------------------------------------
# Shard pollers
# --------------------------------------------------------------------------------------------------------------


@dataclass
class _Record:
    sequence_number: str
    arrival: float  # epoch seconds
    event: dict[str, Any]
    size: int
    read_at: float = 0.0  # monotonic time the poller read it: the batching window counts from the oldest


@dataclass
class _Segment:
    records: list[_Record]
    attempts: int = 0  # failed attempts counted against MaximumRetryAttempts
    invokes: int = 0
    throttles: int = 0  # consecutive invokes rejected at the reserved concurrency (drives the backoff)
    retry_waited: bool = False  # the retry delay before the next attempt is already served
    last_request_id: str | None = None
    last_function_error: str | None = None


def _jsonable(value: Any) -> Any:
    """boto3 decodes DynamoDB ``B``/``BS`` values to bytes; Lambda events carry them base64 encoded."""
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _key_hash(keys: Mapping[str, Any]) -> int:
    return int(hashlib.md5(_canonical_keys(keys).encode(), usedforsecurity=False).hexdigest()[:8], 16)


def _canonical_keys(keys: Mapping[str, Any]) -> str:
    return json.dumps(_jsonable(dict(keys)), sort_keys=True)


def _epoch(value: Any) -> float:
    if isinstance(value, dt.datetime):
        return value.timestamp()
    return float(value)


class _ShardPoller(threading.Thread):
    def __init__(
        self,
        runner: EsmRunner,
        mapping: MappingConfig,
        shard_id: str,
        iterator: str | None,
        parent: _ShardPoller | None,
        *,
        split: tuple[int, int] | None = None,
    ) -> None:
        """``split=(i, n)``: one of ``n`` shards carved out of the source shard ``shard_id`` by key hash."""
        self.source_shard_id = shard_id
        self.split = split
        if split is not None:
            shard_id = f"{shard_id}#{split[0]}"
        super().__init__(name=f"esm-{mapping.logical_id}-{shard_id}", daemon=True)
        self.runner = runner
        self.mapping = mapping
        self.shard_id = shard_id
        self.poll_interval = runner.poll_interval_for(mapping.source)
        self.iterator = iterator
        self.parent = parent
        self.buffer: deque[_Record] = deque()
        self.segments: deque[_Segment] = deque()
        self.shard_ended = False
        self.last_empty_poll = 0.0  # monotonic time of the last GetRecords that returned nothing new
        self.in_flight = False
        self.iterator_age_ms = 0.0
        self.last_sequence_number: str | None = None  # last record read (for iterator renewal)
        self._filters = [EventPattern.load(p) for p in mapping.filter_patterns]
        self._client = runner._client("kinesis" if mapping.source == "kinesis" else "dynamodbstreams")

    # -- state for wait_idle / stats --------------------------------------------------------------------------
    @property
    def drained(self) -> bool:
        return not self.buffer and not self.segments and not self.in_flight

    def idle_since(self, moment: float) -> bool:
        return self.drained and (self.shard_ended or self.last_empty_poll > moment)

    @property
    def pending(self) -> int:
        return len(self.buffer) + sum(len(s.records) for s in self.segments)

    # -- main loop ---------------------------------------------------------------------------------------------
    def run(self) -> None:
        stop = self.runner._stop
        while not stop.is_set():
            if self.parent is not None and not (self.parent.shard_ended and self.parent.drained):
                stop.wait(self._poll_wait())
                continue
            if self.shard_ended and self.drained:
                return
            try:
                worked = self._step()
            except Exception as exc:
                if stop.is_set():
                    return
                log.warning("%s: poll error: %r", self.name, exc)
                self.runner._count(self.mapping, "poll_errors")
                worked = False
            if not worked:
                stop.wait(self._poll_wait())

    def _poll_wait(self) -> float:
        """The next poll's delay: the source's base interval with jitter, cut short when a batching window ends."""
        wait = self.poll_interval * self.runner.poll_jitter_factor()
        if self.buffer:
            remaining = self.mapping.batching_window_s - (time.monotonic() - self.buffer[0].read_at)
            wait = min(wait, max(0.0, remaining))
        return wait

    def _step(self) -> bool:
        if not self.segments:
            self._fill()
            batch = self._take_batch()
            if batch is None:
                return False
            self.segments.append(_Segment(batch))
        self._process_head()
        return True

    def _fill(self) -> None:
        while self.iterator and len(self.buffer) < self.mapping.batch_size and not self.runner._stop.is_set():
            limit = min(GET_RECORDS_LIMIT[self.mapping.source], max(100, 2 * self.mapping.batch_size))
            # An empty answer proves the shard idle only as of when it was asked, not when it came back.
            asked = time.monotonic()
            try:
                page = self._client.get_records(ShardIterator=self.iterator, Limit=limit)
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "ExpiredIteratorException":
                    raise
                self.iterator = self._renew_iterator()
                continue
            self.iterator = page.get("NextShardIterator")
            if self.iterator is None:
                self.shard_ended = True
            raw = page.get("Records") or []
            for item in raw:
                if self.split is not None and _key_hash(item["dynamodb"]["Keys"]) % self.split[1] != self.split[0]:
                    self.last_sequence_number = str(item["dynamodb"]["SequenceNumber"])
                    continue  # another of the split shards owns this key
                record = self._to_record(item)
                self.last_sequence_number = record.sequence_number
                if self._filters and not self._matches(record.event):
                    self.runner._count(self.mapping, "records_filtered")
                    continue
                record.read_at = time.monotonic()
                self.buffer.append(record)
            if not raw:
                self.last_empty_poll = asked
                return

    def _renew_iterator(self) -> str:
        args: dict[str, Any] = {"ShardId": self.source_shard_id}
        if self.mapping.source == "kinesis":
            args["StreamName"] = self.mapping.stream_name
        else:
            args["StreamArn"] = self.mapping.source_arn
        if self.last_sequence_number:
            args.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=self.last_sequence_number)
            if self.mapping.source == "dynamodb":
                args["SequenceNumber"] = args.pop("StartingSequenceNumber")
        else:
            args["ShardIteratorType"] = "TRIM_HORIZON"
        return str(self._client.get_shard_iterator(**args)["ShardIterator"])

    def _to_record(self, item: Mapping[str, Any]) -> _Record:
        mapping = self.mapping
        region = self.runner.region
        if mapping.source == "kinesis":
            arrival = _epoch(item["ApproximateArrivalTimestamp"])
            payload: dict[str, Any] = {
                "kinesisSchemaVersion": "1.0",
                "partitionKey": item["PartitionKey"],
                "sequenceNumber": item["SequenceNumber"],
                "data": base64.b64encode(item["Data"]).decode("ascii"),
                "approximateArrivalTimestamp": round(arrival, 3),
            }
            if item.get("EncryptionType") and item["EncryptionType"] != "NONE":
                payload["encryptionType"] = item["EncryptionType"]
            event: dict[str, Any] = {
                "kinesis": payload,
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": f"{self.shard_id}:{item['SequenceNumber']}",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": mapping.function.role_arn,
                "awsRegion": region,
                "eventSourceARN": mapping.source_arn,
            }
            sequence_number = str(item["SequenceNumber"])
        else:
            change = dict(item["dynamodb"])
            arrival = _epoch(change["ApproximateCreationDateTime"])
            body: dict[str, Any] = {"ApproximateCreationDateTime": float(int(arrival))}
            for key in ("Keys", "NewImage", "OldImage", "SequenceNumber", "SizeBytes", "StreamViewType"):
                if key in change:
                    body[key] = _jsonable(change[key])
            event = {
                "eventID": item["eventID"],
                "eventName": item["eventName"],
                "eventVersion": "1.1",  # what Lambda delivers for DynamoDB Streams (moto says 1.0)
                "eventSource": "aws:dynamodb",
                "awsRegion": item.get("awsRegion", region),
                "dynamodb": body,
                "eventSourceARN": mapping.source_arn,
            }
            if item.get("userIdentity"):
                event["userIdentity"] = {
                    "type": item["userIdentity"].get("Type", "Service"),
                    "principalId": item["userIdentity"].get("PrincipalId", "dynamodb.amazonaws.com"),
                }
            elif item["eventName"] == "REMOVE" and self.runner._take_ttl_key(mapping.source_arn, change["Keys"]):
                event["userIdentity"] = {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
            sequence_number = str(change["SequenceNumber"])
        return _Record(sequence_number, arrival, event, len(json.dumps(event)))

    def _matches(self, event: Mapping[str, Any]) -> bool:
        if self.mapping.source == "kinesis":
            view: dict[str, Any] = {k: v for k, v in event.items() if k != "kinesis"}
            view.update({k: v for k, v in event["kinesis"].items() if k != "data"})
            with contextlib.suppress(ValueError):  # not JSON: a pattern on data cannot match
                view["data"] = json.loads(base64.b64decode(event["kinesis"]["data"]))
        else:
            view = dict(event)
        event_view: Any = view
        return any(pattern.matches_event(event_view) for pattern in self._filters)

    def _take_batch(self) -> list[_Record] | None:
        if not self.buffer:
            return None
        full = len(self.buffer) >= self.mapping.batch_size
        # The window runs from the oldest buffered record: records left over from the last batch have waited.
        waited = time.monotonic() - self.buffer[0].read_at
        if not (full or self.shard_ended or waited >= self.mapping.batching_window_s):
            return None
        batch: list[_Record] = []
        size = 0
        while self.buffer and len(batch) < self.mapping.batch_size:
            if batch and size + self.buffer[0].size > MAX_PAYLOAD_BYTES:
                break
            record = self.buffer.popleft()
            size += record.size
            batch.append(record)
        return batch

    # -- error handling ----------------------------------------------------------------------------------------
    def _process_head(self) -> None:
        mapping = self.mapping
        segment = self.segments[0]
        if mapping.max_record_age_s >= 0:
            now = time.time()
            expired = 0
            while expired < len(segment.records) and now - segment.records[expired].arrival > mapping.max_record_age_s:
                expired += 1
            if expired:
                self._send_on_failure(segment, segment.records[:expired], "RecordAgeExceeded")
                segment.records = segment.records[expired:]
                if not segment.records:
                    self.segments.popleft()
                return
        if segment.attempts and not segment.retry_waited:
            delay = min(self.runner.retry_backoff_s * 2 ** (segment.attempts - 1), self.runner.max_retry_backoff_s)
            if self.runner._stop.wait(delay):
                return
            self.runner._count(mapping, "retries")
            segment.retry_waited = True
        records = segment.records
        try:
            invocation = self.runner._invoke(self, records, attempt=segment.attempts)
        except _Throttled:
            # Rejected at the reserved concurrency: not a retry attempt; back off, and the records keep ageing.
            segment.throttles += 1
            self.runner._stop.wait(self.runner.throttle_delay(segment.throttles))
            return
        if invocation is None:  # stopping
            return
        segment.throttles = 0
        segment.retry_waited = False
        segment.invokes += 1
        segment.last_request_id = invocation.request_id
        segment.last_function_error = None
        if invocation.outcome == "success":
            self._succeeded(len(records))
            self.segments.popleft()
            return
        if invocation.outcome == "partial":
            index = records.index(next(r for r in records if r.sequence_number == invocation.detail))
            self._succeeded(index)
            segment.records = records[index:]
            if index and not self.runner.partial_counts_as_retry:
                segment.attempts = 0  # the checkpoint moved: the rest is taken as a new batch
            else:
                segment.attempts += 1
        else:
            segment.last_function_error = "Unhandled"
            if mapping.bisect_on_error and len(records) > 1:
                half = len(records) // 2
                self.segments.popleft()
                # Splitting does not consume the retry budget: both halves keep the attempts so far.
                self.segments.appendleft(_Segment(records[half:], attempts=segment.attempts))
                self.segments.appendleft(_Segment(records[:half], attempts=segment.attempts))
                self.runner._count(mapping, "bisects")
                return
            segment.attempts += 1
        if 0 <= mapping.max_retry_attempts < segment.attempts:
            self._send_on_failure(segment, segment.records, "RetryAttemptsExhausted")
            self.segments.popleft()

    def _succeeded(self, count: int) -> None:
        if count:
            self.runner._count(self.mapping, "records_succeeded", count)

    def _send_on_failure(
        self,
        segment: _Segment,
        records: list[_Record],
        condition: Literal["RetryAttemptsExhausted", "RecordAgeExceeded"],
    ) -> None:
        message = build_on_failure_message(
            mapping=self.mapping,
            shard_id=self.shard_id,
            sequence_numbers=[r.sequence_number for r in records],
            arrivals=[r.arrival for r in records],
            condition=condition,
            request_id=segment.last_request_id or str(uuid.uuid4()),
            invoke_count=segment.invokes,
            function_error=segment.last_function_error,
        )
        self.runner._deliver_on_failure(
            self.mapping,
            message,
            len(records),
            expired=condition == "RecordAgeExceeded",
            shard_id=self.shard_id,
            event={"Records": [r.event for r in records]},
        )
