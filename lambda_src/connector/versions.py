"""The version guard: never write an older CDC change over a newer one, across batches (``STATE_TABLE``).

Kinesis Data Streams for DynamoDB does not keep the order of changes and may deliver one twice, so a change
older than one already written can arrive in a later batch. Within a batch ``putitems.coalesce`` orders
changes by version; across batches this guard keeps, per item, the version of the last change written:
``ApproximateCreationDateTime`` in µs and the Kinesis sequence number as the tie-breaker (see ``change``).

Items of the ``STATE_TABLE`` (string partition key ``pk``; the budget shares the table):
``pk = "version#<dataset ARN>#<item id>"``, ``ts`` (N, µs), ``seq`` (S, the sequence number zero-padded to
130 digits so that text order is numeric order), ``eids`` (SS, the ``eventID`` of every change of that instant
already written or superseded, so that a late duplicate of one of them is recognised even when the timestamps
tie, as they do at the stream's default millisecond precision) and ``expiresAt`` (N, epoch seconds, the TTL).

Per batch, before sending: one strongly consistent ``BatchGetItem`` per 100 CDC items (:meth:`VersionGuard.stored`);
a change whose version is not newer than the stored one is skipped (equal means it was already written). After
each accepted PutItems call: one conditional ``UpdateItem`` per item written (:meth:`VersionGuard.record`),
sent in parallel, that only ever raises the stored version, so concurrent writers cannot make it go back.
Cost per CDC item written: 1 write request unit and 1/100 of a read request (one read unit per item read).

Failures are never silent: if the table cannot be read, the batch's CDC changes are retried; if a version
cannot be recorded, that item is retried (PutItems replaces the item, so writing it again is harmless).

Hand-written because nothing in Powertools or boto3 does this; Powertools' idempotency utility keys on the
payload, not on a monotonic version per item.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from connector.deadline import Deadline

Version = tuple[int, int]  # (ApproximateCreationDateTime µs, Kinesis sequence number)


@dataclass(frozen=True, slots=True)
class Stored:
    """The version last written for an item, and the eventIDs of that instant."""

    version: Version
    event_ids: frozenset[str] = frozenset()

    def supersedes(self, version: Version, event_id: str | None) -> bool:
        """True when a change with ``version`` (and ``event_id``) is not newer than what was written."""
        ts, seq = version
        if ts != self.version[0]:
            return ts < self.version[0]
        if event_id and event_id in self.event_ids:
            return True  # a copy of a change already written or superseded
        return seq <= self.version[1]


BATCH_GET_MAX = 100
SEQ_DIGITS = 130  # Kinesis sequence numbers have at most 129 digits
DEFAULT_TTL_S = 8 * 24 * 3600  # longer than a Kinesis stream's 7-day extended retention
_UNPROCESSED_ROUNDS = 5
_NAMES = {"#ts": "ts", "#seq": "seq"}


class VersionStoreError(RuntimeError):
    """The state table could not be read; the message names the error code, never an item."""


class VersionGuard:
    def __init__(
        self,
        client: Any,
        table: str,
        dataset_arn: str,
        *,
        ttl_s: int = DEFAULT_TTL_S,
        workers: int = 10,
        worst_ms: float = 0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._table = table
        self._prefix = f"version#{dataset_arn}#"
        self._ttl_s = ttl_s
        self._clock = clock
        self._sleep = sleep
        self.worst_ms = worst_ms  # the worst case of one request, reserved from the deadline before each read
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="version-guard")
        self.requests = 0  # DynamoDB requests made, for the benchmark and the logs (counted by ``_count``)
        self._requests_lock = threading.Lock()  # the recording pool and the sink's sender threads count too

    def _count(self) -> None:
        with self._requests_lock:
            self.requests += 1

    def key(self, item_id: str) -> str:
        return self._prefix + item_id

    def stored(self, item_ids: Iterable[str], deadline: Deadline | None = None) -> dict[str, Stored]:
        """The stored version of each item that has one; raises :class:`VersionStoreError` (also when the
        ``deadline`` no longer leaves :attr:`worst_ms` for the next request)."""
        ids = list(dict.fromkeys(item_ids))
        found: dict[str, Stored] = {}
        for start in range(0, len(ids), BATCH_GET_MAX):
            keys = [{"pk": {"S": self.key(i)}} for i in ids[start : start + BATCH_GET_MAX]]
            request: dict[str, Any] = {
                self._table: {
                    "Keys": keys,
                    "ConsistentRead": True,
                    "ProjectionExpression": "pk, #ts, #seq, eids",
                    "ExpressionAttributeNames": _NAMES,
                }
            }
            for round_ in range(_UNPROCESSED_ROUNDS):
                if deadline is not None and not deadline.allows(self.worst_ms):
                    raise VersionStoreError("the deadline is too near to read versions")
                try:
                    self._count()
                    answer = self._client.batch_get_item(RequestItems=request)
                except (ClientError, BotoCoreError) as exc:
                    raise VersionStoreError(_code(exc)) from None
                for row in answer.get("Responses", {}).get(self._table, []):
                    parsed = _parse(row, self._prefix)
                    if parsed is not None:
                        found[parsed[0]] = parsed[1]
                request = answer.get("UnprocessedKeys") or {}
                if not request:
                    break
                self._sleep(0.05 * 2**round_)
            else:
                raise VersionStoreError("UnprocessedKeys after retries")
        return found

    def record(self, written: list[tuple[str, Version, frozenset[str]]]) -> list[str]:
        """Raise each item's stored version to the one just written (with the eventIDs of its instant); return
        the ids that could not be recorded."""
        expires = int(self._clock()) + self._ttl_s
        results = self._pool.map(lambda w: self._record_one(w[0], w[1], w[2], expires), written)
        return [item_id for (item_id, _, _), ok in zip(written, results, strict=True) if not ok]

    def _record_one(self, item_id: str, version: Version, event_ids: frozenset[str], expires: int) -> bool:
        ts, seq = version
        key = {"pk": {"S": self.key(item_id)}}
        values: dict[str, Any] = {
            ":ts": {"N": str(ts)},
            ":seq": {"S": f"{seq:0{SEQ_DIGITS}d}"},
            ":exp": {"N": str(expires)},
        }
        eids = {":eids": {"SS": sorted(event_ids)}} if event_ids else {}
        try:
            self._count()
            # A newer instant: replace everything.
            self._client.update_item(
                TableName=self._table,
                Key=key,
                UpdateExpression="SET #ts = :ts, #seq = :seq, expiresAt = :exp, eids = :eids"
                if eids
                else "SET #ts = :ts, #seq = :seq, expiresAt = :exp REMOVE eids",
                ConditionExpression="attribute_not_exists(pk) OR #ts < :ts",
                ExpressionAttributeNames=_NAMES,
                ExpressionAttributeValues={**values, **eids},
            )
            return True
        except ClientError as exc:
            if _code(exc) != "ConditionalCheckFailedException":
                return False
        except BotoCoreError:
            return False
        # The same instant (or an older one: then nothing to do): add the eventIDs, raise the sequence number.
        return self._same_instant(key, values, eids)

    def _same_instant(self, key: dict[str, Any], values: dict[str, Any], eids: dict[str, Any]) -> bool:
        updates = [("SET #seq = :seq", "#ts = :ts AND #seq < :seq", {":ts": values[":ts"], ":seq": values[":seq"]})]
        if eids:
            updates.append(("ADD eids :eids", "#ts = :ts", {":ts": values[":ts"], **eids}))
        for expression, condition, names_values in updates:
            try:
                self._count()
                self._client.update_item(
                    TableName=self._table,
                    Key=key,
                    UpdateExpression=expression,
                    ConditionExpression=condition,
                    ExpressionAttributeNames={k: v for k, v in _NAMES.items() if k in expression + condition},
                    ExpressionAttributeValues=names_values,
                )
            except ClientError as exc:
                if _code(exc) != "ConditionalCheckFailedException":
                    return False
            except BotoCoreError:
                return False
        return True


def _parse(row: dict[str, Any], prefix: str) -> tuple[str, Stored] | None:
    """A stored version, or None for a row this guard did not write (ignored, never an error)."""
    try:
        item_id = row["pk"]["S"][len(prefix) :]
        version = (int(row["ts"]["N"]), int(row["seq"]["S"]))
        event_ids = frozenset(row.get("eids", {}).get("SS", []))
    except (KeyError, TypeError, ValueError):
        return None
    return item_id, Stored(version, event_ids)


def _code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "Unknown"))
    return type(exc).__name__
