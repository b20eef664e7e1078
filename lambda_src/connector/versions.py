"""The version guard: never write an older CDC change over a newer one, across batches (``STATE_TABLE``).

Kinesis Data Streams for DynamoDB does not keep the order of changes and may deliver one twice, so a change
older than one already written can arrive in a later batch. Within a batch ``putitems.coalesce`` orders
changes by version; across batches this guard keeps, per item, the version of the last change written:
``ApproximateCreationDateTime`` in µs and the Kinesis sequence number as the tie-breaker (see ``change``).

Items of the ``STATE_TABLE`` (string partition key ``pk``; the budget shares the table):
``pk = "version#<dataset ARN>#<item id>"``, ``ts`` (N, µs), ``seq`` (S, the sequence number zero-padded to
130 digits so that text order is numeric order) and ``expiresAt`` (N, epoch seconds, the table's TTL).

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

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

Version = tuple[int, int]  # (ApproximateCreationDateTime µs, Kinesis sequence number)

BATCH_GET_MAX = 100
SEQ_DIGITS = 130  # Kinesis sequence numbers have at most 129 digits
DEFAULT_TTL_S = 8 * 24 * 3600  # longer than a Kinesis stream's 7-day extended retention
_UNPROCESSED_ROUNDS = 5
_CONDITION = "attribute_not_exists(pk) OR #ts < :ts OR (#ts = :ts AND #seq < :seq)"


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
        self.requests = 0  # DynamoDB requests made, for the benchmark and the logs

    def key(self, item_id: str) -> str:
        return self._prefix + item_id

    def stored(self, item_ids: Iterable[str]) -> dict[str, Version]:
        """The stored version of each item that has one; raises :class:`VersionStoreError`."""
        ids = list(dict.fromkeys(item_ids))
        found: dict[str, Version] = {}
        for start in range(0, len(ids), BATCH_GET_MAX):
            keys = [{"pk": {"S": self.key(i)}} for i in ids[start : start + BATCH_GET_MAX]]
            request: dict[str, Any] = {
                self._table: {"Keys": keys, "ConsistentRead": True, "ProjectionExpression": "pk, #ts, #seq"}
            }
            request[self._table]["ExpressionAttributeNames"] = {"#ts": "ts", "#seq": "seq"}
            for round_ in range(_UNPROCESSED_ROUNDS):
                try:
                    self.requests += 1
                    answer = self._client.batch_get_item(RequestItems=request)
                except (ClientError, BotoCoreError) as exc:
                    raise VersionStoreError(_code(exc)) from None
                for row in answer.get("Responses", {}).get(self._table, []):
                    item_id = row["pk"]["S"][len(self._prefix) :]
                    found[item_id] = (int(row["ts"]["N"]), int(row["seq"]["S"]))
                request = answer.get("UnprocessedKeys") or {}
                if not request:
                    break
                self._sleep(0.05 * 2**round_)
            else:
                raise VersionStoreError("UnprocessedKeys after retries")
        return found

    def record(self, written: list[tuple[str, Version]]) -> list[str]:
        """Raise each item's stored version to the one just written; return the ids that could not be recorded."""
        expires = int(self._clock()) + self._ttl_s
        results = self._pool.map(lambda w: self._record_one(w[0], w[1], expires), written)
        return [item_id for (item_id, _), ok in zip(written, results, strict=True) if not ok]

    def _record_one(self, item_id: str, version: Version, expires: int) -> bool:
        ts, seq = version
        try:
            self.requests += 1
            self._client.update_item(
                TableName=self._table,
                Key={"pk": {"S": self.key(item_id)}},
                UpdateExpression="SET #ts = :ts, #seq = :seq, expiresAt = :exp",
                ConditionExpression=_CONDITION,
                ExpressionAttributeNames={"#ts": "ts", "#seq": "seq"},
                ExpressionAttributeValues={
                    ":ts": {"N": str(ts)},
                    ":seq": {"S": f"{seq:0{SEQ_DIGITS}d}"},
                    ":exp": {"N": str(expires)},
                },
            )
        except ClientError as exc:
            # A newer (or the same) version is already stored: nothing to raise. Anything else failed.
            return _code(exc) == "ConditionalCheckFailedException"
        except BotoCoreError:
            return False
        return True


def _code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "Unknown"))
    return type(exc).__name__
